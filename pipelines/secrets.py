"""Masking what looks like a credential before it reaches a log line, an MLflow param or an artefact.

Two shapes are caught: a key whose name says it holds a secret (``spark.hadoop.fs.s3a.secret.key``,
``...access.key``, ``password``, ``token``, ...) and a URI with a user and password in it
(``http://user:pass@host``). The rule is by name, not by value, so it never has to guess.
"""

from __future__ import annotations

import re
from typing import Any

MASK = "***"
_SECRET_KEY = re.compile(r"(password|passwd|secret|access[._-]?key|api[._-]?key|private[._-]?key|credential"
                         r"|(^|[._-])([a-z]+_)?tokens?$)", re.I)   # token, auth_token; not tokenizer, token_dropout
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^/@\s:]+):(?P<pw>[^/@\s]+)@")


def secret_key(name: str) -> bool:
    return bool(_SECRET_KEY.search(name))


def mask_text(text: str) -> str:
    """``scheme://user:password@host`` -> ``scheme://user:***@host``."""
    return _USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", text)


def mask_secrets(tree: Any, key: str = "") -> Any:
    """A copy of a nested config with secret-named values and URI passwords masked."""
    if isinstance(tree, dict):
        return {k: MASK if secret_key(f"{key}.{k}") and not isinstance(v, dict) else mask_secrets(v, f"{key}.{k}")
                for k, v in tree.items()}
    if isinstance(tree, list):
        return [mask_secrets(v, key) for v in tree]
    if isinstance(tree, str):
        return mask_text(tree)
    return tree


def mask_override(text: str) -> str:
    """``--set key=value`` as shown in messages: the value masked when the key names a secret."""
    key, sep, value = text.partition("=")
    return f"{key}={MASK}" if sep and secret_key(key) else mask_text(text)
