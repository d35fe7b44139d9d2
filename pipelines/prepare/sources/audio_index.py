"""A CSV or Parquet table of audio paths (relative to the table's folder) with a label or transcript
column; the clips are read and decoded in Spark tasks by pipelines/prepare/audio.py."""

from __future__ import annotations

from typing import Any, Optional

from ...source_registry import IndexSource, register_source


@register_source("audio_index", "audio")
class AudioIndexSource(IndexSource):
    """A CSV or Parquet table of audio paths (relative to the table's folder) with a label or transcript."""

    label_column: Optional[str] = None
    transcript_column: Optional[str] = None

    def read(self, spark: Any, exp: Any, listing: list[dict[str, Any]], stack: Any) -> Any:
        from .. import audio

        return audio.read_index(spark, exp)
