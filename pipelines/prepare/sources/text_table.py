"""CSV / TSV / JSON-lines files with a text column and a label column (also inside .tar.gz/.zip),
parsed in Spark tasks by pipelines/prepare/text.py."""

from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import Field

from ...source_registry import FileTreeSource, register_source


@register_source("text_table", "text")
class TextTableSource(FileTreeSource):
    """CSV / TSV / JSON-lines files with a text column and a label column (also inside .tar.gz/.zip)."""

    member: Optional[str] = None        # a file inside the archive at `path`, read in the task
    format: Literal["csv", "tsv", "jsonl"] = "csv"
    header: bool = True
    columns: list[str] = Field(default_factory=list)   # names when header is false
    text_column: str = "text"
    label_column: Optional[str] = "label"

    def read(self, spark: Any, exp: Any, listing: list[dict[str, Any]], stack: Any) -> Any:
        from .. import text

        return text.read(spark, exp, listing, stack)
