"""The gateway's exceptions: one tree for the domain, and which database errors mean "try again".

Domain code raises these; only the edges turn them into answers (the console and API into HTTP
statuses, the CLI into messages and exit codes). Nothing below knows about HTTP::

    GatewayError                 anything the gateway refuses or cannot do, said in words
    ├── NotFound                 no such case, referral, user, token, key
    ├── Conflict                 the thing exists, but its state does not allow this now
    │                            (a case already decided, a transition the lifecycle refuses)
    ├── NotAllowed               this person may not do this (role, four-eyes, own work)
    ├── Invalid                  the input is refused; ``fields`` names each field and why
    └── Unavailable              a part the action needs is down (database, gpg, DNS);
                                 the same request may succeed later

Parsers of hostile input (MIME, URLs, the web form) keep their own narrow errors and are
caught where they are parsed; they are not domain outcomes.
"""

from __future__ import annotations

from collections.abc import Mapping

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError


class GatewayError(Exception):
    """The root of the domain tree: the message is fit to show to the person who asked."""


class NotFound(GatewayError):
    """No such thing (a case, a referral, a user, a token)."""


class Conflict(GatewayError):
    """The thing exists but its current state does not allow the action."""


class NotAllowed(GatewayError):
    """The actor may not do this: their role, four-eyes, or their own earlier work forbids it."""


class Invalid(GatewayError):
    """The input is refused. ``fields`` maps each refused field to the reason."""

    def __init__(self, message: str, fields: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.fields: dict[str, str] = dict(fields or {})


class Unavailable(GatewayError):
    """A part the action needs is down; trying again later may succeed."""


#: PostgreSQL: serialization failure and deadlock (the transaction was chosen to lose).
RETRY_SQLSTATES = frozenset({"40001", "40P01"})


def retryable(exc: BaseException) -> bool:
    """The database is unavailable or made this transaction lose a race: nothing is wrong
    with the data, and the same work may succeed when tried again."""
    if isinstance(exc, OperationalError | InterfaceError):
        return True
    if isinstance(exc, DBAPIError):
        return getattr(exc.orig, "sqlstate", None) in RETRY_SQLSTATES
    return False
