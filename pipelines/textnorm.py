"""Text normalisation and tokenisation, shared by prepare (building token ids) and the scorer (a model
logged with its vocabulary can score raw ``text``): one definition, so serving sees what training saw."""

from __future__ import annotations

import re
import unicodedata

_WORD = re.compile(r"\w+|[^\w\s]", re.UNICODE)
_SPACES = re.compile(r"\s+")


def normalise(text: str, lowercase: bool) -> str:
    """NFKC (folds width and compatibility forms), optional lower case, single spaces, trimmed."""
    text = unicodedata.normalize("NFKC", text)
    if lowercase:
        text = text.lower()
    return _SPACES.sub(" ", text).strip()


def tokenize(text: str, how: str) -> list[str]:
    if how == "char":
        return list(text)
    if how == "space":
        return text.split()
    return _WORD.findall(text)
