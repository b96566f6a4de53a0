"""Known browsers: a signed cookie that a browser gets when its user logs in.

It proves nothing about the person (the password and code still decide), only that this
browser logged in as that user before, which no attacker elsewhere can claim. Such a login
is let through its address's wait and hashed before everyone else's, so a burst from any
number of fresh addresses cannot hold the owner back (the device cookies of OWASP's
"Slow down online guessing attacks with device cookies"). The key lives in this process's
memory: after a restart a browser's first login is an ordinary one again.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import uuid
from datetime import datetime, timedelta

COOKIE = "hg_device"
#: A browser stays known this long after its last login there.
KNOWN_FOR = timedelta(days=90)
_VALUE = re.compile(r"([0-9a-f]{32})\.([0-9]{1,12})\.([0-9a-f]{32})")


class DeviceCookies:
    """Issues and checks known-browser cookies under a key of this process."""

    def __init__(self) -> None:
        self._key = secrets.token_bytes(32)

    def _mac(self, text: str) -> str:
        return hashlib.blake2b(text.encode(), key=self._key, digest_size=16).hexdigest()

    def issue(self, user_id: uuid.UUID, now: datetime) -> str:
        text = f"{user_id.hex}.{int(now.timestamp())}"
        return f"{text}.{self._mac(text)}"

    def user(self, value: str | None, now: datetime) -> uuid.UUID | None:
        """The user this browser logged in as, if ``value`` is a good, recent cookie."""
        found = _VALUE.fullmatch(value or "")
        if found is None:
            return None
        text = f"{found.group(1)}.{found.group(2)}"
        if not hmac.compare_digest(self._mac(text), found.group(3)):
            return None
        if now.timestamp() - int(found.group(2)) > KNOWN_FOR.total_seconds():
            return None
        return uuid.UUID(found.group(1))
