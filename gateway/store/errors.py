"""Which database errors mean "try again" rather than "this data is refused"."""

from __future__ import annotations

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

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
