"""Text every database and every encoder accepts."""

from __future__ import annotations

import re

_UNSTORABLE = re.compile("[\0\ud800-\udfff]")


def plain_text(value: str) -> bool:
    """No NUL (PostgreSQL refuses it) and no lone surrogate (UTF-8 cannot encode it)."""
    if value.isascii():  # no surrogate, and a substring test is many times a regex's speed
        return "\0" not in value
    return _UNSTORABLE.search(value) is None
