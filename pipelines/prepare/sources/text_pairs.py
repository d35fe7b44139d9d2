"""(source, target) text pairs for seq2seq, parsed in Spark tasks by pipelines/prepare/text.py."""

from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import Field, model_validator

from ...source_registry import FileTreeSource, register_source


@register_source("text_pairs", "text")
class TextPairsSource(FileTreeSource):
    """(source, target) pairs for seq2seq: CSV / TSV / JSON-lines, `whitespace` (first space splits), or
    `keyed_lines`: one pair per file, the first line is the source and the line `<target_key>=...` the
    target (Tux Paint's stamp descriptions: English first, then `fr.utf8=...` per language)."""

    member: Optional[str] = None
    format: Literal["csv", "tsv", "jsonl", "whitespace", "keyed_lines"] = "tsv"
    header: bool = False
    columns: list[str] = Field(default_factory=lambda: ["source", "target"])
    source_column: str = "source"
    target_column: str = "target"
    comment_prefix: Optional[str] = None
    source_strip: Optional[str] = None   # regex removed from the source text, e.g. "\\(\\d+\\)$"
    target_key: Optional[str] = None     # keyed_lines: the key whose value is the target, e.g. fr.utf8

    @model_validator(mode="after")
    def _key_for_keyed_lines(self) -> "TextPairsSource":
        if self.format == "keyed_lines" and not self.target_key:
            raise ValueError("format keyed_lines needs target_key (the key of the target line, e.g. fr.utf8)")
        return self

    def read(self, spark: Any, exp: Any, listing: list[dict[str, Any]], stack: Any) -> Any:
        from .. import text

        return text.read(spark, exp, listing, stack, pairs=True)

    def finish(self, spark: Any, exp: Any, good: Any, label_names: list[str], totals: Any) -> tuple[Any, dict[str, Any]]:
        from .. import text

        return text.finish(spark, exp, good, label_names, totals, pairs=True)
