"""Quarantine: bad records are kept with where they came from and why, and the job goes on.

Only when the bad share passes ``prepare.max_bad_fraction`` does the job stop, with a summary that
says how many records failed for which reason and shows a few of them.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import DataError

COLUMNS = ["id", "source", "stage", "reason", "detail"]


@dataclass(frozen=True)
class BadSummary:
    total: int
    bad: int
    by_reason: dict[str, int]
    examples: list[dict[str, str]]

    @property
    def fraction(self) -> float:
        return self.bad / self.total if self.total else 0.0


def check_threshold(summary: BadSummary, max_bad_fraction: float, where: str) -> None:
    """Fail with a readable summary when too much of the input is bad."""
    if summary.total == 0:
        raise DataError(f"{where} yielded no records at all; check data.source.path and data.max_records")
    if summary.fraction > max_bad_fraction:
        reasons = ", ".join(f"{r}: {n}" for r, n in sorted(summary.by_reason.items()))
        shown = "; ".join(f"{e['source']} ({e['reason']}: {e['detail']})" for e in summary.examples)
        raise DataError(
            f"{summary.bad} of {summary.total} records ({summary.fraction:.1%}) from {where} are bad, more than "
            f"prepare.max_bad_fraction={max_bad_fraction}; by reason: {reasons}; e.g. {shown}. Fix or replace those "
            f"files, or raise prepare.max_bad_fraction to keep the good records"
        )


class BadRecord(Exception):
    """Raised inside a Spark task for one record; the task turns it into a quarantine row and goes on.

    ``reason`` is a short fixed word (the summary and the tests group by it); ``detail`` says what was
    found, in words a person fixing the file can act on.
    """

    def __init__(self, reason: str, detail: str, stage: str = "decode") -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail, self.stage = reason, detail, stage

    def __reduce__(self):
        return (BadRecord, (self.reason, self.detail, self.stage))
