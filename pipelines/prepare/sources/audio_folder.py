"""WAV / FLAC / OGG clips in a file tree, decoded to log-mel frames in Spark tasks by
pipelines/prepare/audio.py; a label or a transcript comes from the path or a text file beside the clip."""

from __future__ import annotations

from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field

from ...source_registry import FileTreeSource, register_source


class TranscriptSidecar(BaseModel):
    """The transcript is one line of a text file beside the clip, e.g. Tux Paint's spoken captions:
    ``badger_desc_fr.ogg`` -> ``badger.txt``, line ``fr.utf8=Un blaireau.``"""

    model_config = ConfigDict(extra="forbid", frozen=True)

    strip: str = Field("", description="regex removed from the clip's file stem to get the text file's stem")
    suffix: str = ".txt"
    key: str = Field(min_length=1)          # the line's prefix; the rest of the line is the transcript


@register_source("audio_folder", "audio")
class AudioFolderSource(FileTreeSource):
    """WAV / FLAC / OGG files in a tree; a label or a transcript from the path."""

    extensions: list[str] = Field(default_factory=lambda: ["wav", "flac", "ogg"])
    label_level: Optional[int] = None   # folder under `path` that names the class
    label_regex: Optional[str] = None   # or: group 1 of this regex on the path under `path` (lower-cased)
    transcript_regex: Optional[str] = None  # group 1 on the path under `path` is the transcript (CTC)
    transcript_sidecar: Optional[TranscriptSidecar] = None   # or: a line of a text file beside the clip

    def read(self, spark: Any, exp: Any, listing: list[dict[str, Any]], stack: Any) -> Any:
        from .. import audio

        return audio.read_folder(spark, exp, listing)
