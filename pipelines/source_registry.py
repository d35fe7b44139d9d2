"""The source registry: every ``data.source.kind`` is one decorated class in one file.

A source class is the pydantic schema of its ``data.source`` section and, as methods, everything the
pipeline asks about that kind: which files its version fingerprint lists, which config parts do not
shape its rows, how Spark reads it, and (optionally) how its rows are finished. Config validation looks
the kind up here when it validates, not when ``config.py`` is imported, so a source registered later
(a plugin, a test module) is valid YAML from then on, with no edit to the config schema.

Why here and not under ``pipelines/prepare``: ``config`` validates sources, and a library must not import
a stage. The built-in sources live in ``pipelines/prepare/sources/`` beside the readers they use; they
are found by walking that folder (:func:`builtin_sources`), so adding one is dropping one file there.
"""

from __future__ import annotations

import difflib
import importlib
import os
import pkgutil
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Literal, Optional, TypeVar

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator

# The modalities a prepared dataset can have; each has a writer module in pipelines/prepare.
MODALITIES = ("image", "text", "audio")
# Where the built-in sources live, relative to this package (found by walking it, never listed by hand).
BUILTIN_PACKAGE = "prepare.sources"


class SourceConfig(BaseModel):
    """Base of every ``data.source`` schema: strict (a typo is an error), frozen, with a path and an
    optional fixed class order. ``kind`` and ``modality`` are set by :func:`register_source`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: str
    path: str
    label_names: list[str] = Field(default_factory=list)  # fixed class order; empty = sorted labels found

    modality: ClassVar[str] = ""
    # data.* sections that do not shape this kind's rows, so changing them keeps the dataset version
    # (the other modalities' settings never count; see version_excludes)
    unused_data_keys: ClassVar[frozenset[str]] = frozenset()

    @field_validator("path")
    @classmethod
    def _home(cls, value: str) -> str:
        # The data sets setup.sh downloads live in ~/.cache/sparkzoo/data; YAML cannot expand ~ itself.
        return os.path.expanduser(value) if value.startswith("~") else value

    # ---- listing / version fingerprint -----------------------------------------------------------

    def listing_root(self) -> str:
        """The file or folder whose files (with size and mtime) are the version fingerprint."""
        return self.path

    def extra_listed_files(self) -> list[str]:
        """Files outside ``listing_root`` that also shape the rows (a word list, say)."""
        return []

    def version_excludes(self) -> set[str]:
        """``data.*`` keys left out of the version hash: other modalities' settings and ``unused_data_keys``."""
        return (set(MODALITIES) - {self.modality}) | set(self.unused_data_keys)

    # ---- reading ---------------------------------------------------------------------------------

    def read(self, spark: Any, exp: Any, listing: list[dict[str, Any]], stack: Any) -> Any:
        """Every input record as a Spark DataFrame of rows in the modality's row schema (good and
        flagged bad, never dropped; pipelines/prepare/rows.py). ``stack`` closes what the read opened."""
        raise NotImplementedError(f"source kind {self.kind!r} has no read()")

    # A source may also define ``finish(spark, exp, good, label_names, totals) -> (DataFrame, extra)``;
    # without one, its modality's writer module finishes the rows (label ids, vocabularies, stats).


class FileTreeSource(SourceConfig):
    """What every file-tree source shares: which files under ``path`` count."""

    include: list[str] = Field(default_factory=list)   # globs on the path under `path`; empty = all
    exclude: list[str] = Field(default_factory=list)


class IndexSource(SourceConfig):
    """A CSV or Parquet table of file paths (relative to the table's folder): the table and the files it
    names, which sit beside it, are the fingerprint."""

    path_column: str = "path"

    def listing_root(self) -> str:
        return self.path.rsplit("/", 1)[0] or "/"


S = TypeVar("S", bound=type[SourceConfig])


@dataclass(frozen=True)
class Registered:
    """One registered kind: what ``lookup`` answers (the schema class is also the reader)."""

    kind: str
    modality: str
    schema: type[SourceConfig]


_SOURCES: dict[str, Registered] = {}
_builtins_loaded = False


def register_source(kind: str, modality: str) -> Callable[[S], S]:
    """Class decorator: ``kind`` in YAML picks this schema; its rows are of ``modality``.

    Returns a subclass whose ``kind`` field is ``Literal[kind]`` (so ``model_dump`` and JSON schemas
    carry the tag), under the same module and name, so pickling an instance finds it again.
    """
    if modality not in MODALITIES:
        raise ValueError(f"source {kind!r}: modality {modality!r} is not one of {', '.join(MODALITIES)}")

    def wrap(cls: S) -> S:
        if not issubclass(cls, SourceConfig):
            raise TypeError(f"@register_source({kind!r}) needs a SourceConfig subclass, got {cls.__name__}")
        made = create_model(cls.__name__, __base__=cls, __module__=cls.__module__, __doc__=cls.__doc__,
                            kind=(Literal[kind], kind))   # type: ignore[call-overload]
        made.__qualname__ = cls.__qualname__
        made.modality = modality
        have = _SOURCES.get(kind)
        if have is not None and (have.schema.__module__, have.schema.__qualname__) != (made.__module__, made.__qualname__):
            raise ValueError(f"source kind {kind!r} is registered twice: {have.schema.__module__} and {made.__module__}")
        _SOURCES[kind] = Registered(kind, modality, made)
        return made  # type: ignore[return-value]

    return wrap


def unregister_source(kind: str) -> None:
    """Forget a kind (a plugin's, a test's); registering it again is allowed afterwards."""
    _SOURCES.pop(kind, None)


def builtin_sources() -> None:
    """Import every module of ``pipelines/prepare/sources`` once: their decorators register the kinds."""
    global _builtins_loaded
    if _builtins_loaded:
        return
    package = importlib.import_module(f"{__package__}.{BUILTIN_PACKAGE}")
    for info in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{package.__name__}.{info.name}")
    _builtins_loaded = True


def kinds() -> list[str]:
    """Every registered kind, sorted."""
    builtin_sources()
    return sorted(_SOURCES)


def lookup(kind: str) -> Registered:
    """The registration of ``kind``; a ``KeyError`` whose message lists every registered kind."""
    builtin_sources()
    if kind not in _SOURCES:
        raise KeyError(unknown_kind_message(kind))
    return _SOURCES[kind]


def unknown_kind_message(kind: Any) -> str:
    names = sorted(_SOURCES)
    hint = difflib.get_close_matches(str(kind), names, n=1)
    more = f" (did you mean '{hint[0]}'?)" if hint else ""
    return f"unknown source kind {kind!r}{more}; registered kinds: {', '.join(names)}"


def validate(value: Any) -> SourceConfig:
    """A ``data.source`` mapping -> the instance of its kind's schema (errors keep pydantic's locations)."""
    if isinstance(value, SourceConfig):
        return value
    if not isinstance(value, dict):
        raise ValueError(f"must be a mapping with a kind ({', '.join(kinds())}), not {type(value).__name__}")
    if "kind" not in value:
        raise ValueError(f"needs a kind; registered kinds: {', '.join(kinds())}")
    try:
        schema = lookup(value["kind"]).schema
    except KeyError as exc:
        raise ValueError(exc.args[0]) from None
    return schema.model_validate(value)


def schema_of(kind: str) -> Optional[type[SourceConfig]]:
    """The schema of a registered kind, or None (used to list valid keys in an unknown-key message)."""
    builtin_sources()
    got = _SOURCES.get(kind)
    return got.schema if got else None


