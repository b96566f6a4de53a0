"""MAIL FROM / RCPT TO arguments: a direct path for the plain form nearly every client sends.

aiosmtpd's ``SMTP._getaddr`` defines a class on every call and runs the stdlib's full RFC 5322
parser on every argument; ``intake.smtp`` reads the plain form here and leaves anything else to
aiosmtpd. A test holds the two readings equal on generated input that leans on the edges, and
``bench/private_paths.py`` measures what the direct path saves.
"""

from __future__ import annotations

import re

# ``<local@domain>`` in the plain form nearly every client sends: a dot-atom local part, a
# host name, then spaces or tabs before any parameters. The stdlib's parser reads exactly these
# as themselves; anything else (comments, quoting, literals, non-ASCII, ``<>``, encoded words)
# goes to it.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
# A local part starting "=?" is read by the stdlib as an RFC 2047 encoded word, and after the
# ">" it skips any whitespace str.isspace() knows: both are left to it.
_PLAIN_ANGLE_ADDR = re.compile(
    rf"<(?!=\?)((?:{_ATEXT}(?:\.{_ATEXT})*)@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)>[ \t]*(?![\s(])")


def plain_address(arg: str, local_part_limit: int = 0) -> tuple[str, str] | None:
    """The address of a MAIL FROM / RCPT TO argument in the plain form and the rest (its
    parameters), as aiosmtpd reads them; None for any other argument, and for a local part
    over ``local_part_limit`` (aiosmtpd's own reading then decides)."""
    plain = _PLAIN_ANGLE_ADDR.match(arg)
    if plain is None:
        return None
    address = plain[1]
    if local_part_limit and len(address.rpartition("@")[0]) > local_part_limit:
        return None
    return address, arg[plain.end():]
