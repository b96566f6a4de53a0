"""Console sessions, kept server-side: the cookie holds a random id, the database its SHA-256.

A session ends after ``idle`` without a request and ``absolute`` after login, whichever comes
first; logging in always starts a new one (no session fixation). Each session has its own CSRF
token, which every state-changing form carries.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, insert, or_, select, update
from sqlalchemy.engine import Connection

from gateway.console.accounts import Staff
from gateway.store.backend import WriteBackend
from gateway.store.tables import staff_sessions, users
from gateway.store.times import aware

#: last_seen_at is written at most this often (it only moves the idle deadline).
TOUCH_EVERY = timedelta(seconds=60)


@dataclass(frozen=True, slots=True)
class Session:
    staff: Staff
    csrf_token: str
    #: How its user logged in: "totp" (a code) or "key" (a security key).
    factor: str = "totp"


def _key(session_id: str) -> str:
    return hashlib.sha256(session_id.encode("utf-8", "surrogatepass")).hexdigest()


class SessionStore:
    def __init__(self, backend: WriteBackend, *, idle: timedelta, absolute: timedelta) -> None:
        self._backend = backend
        self._idle = idle
        self._absolute = absolute

    @property
    def absolute(self) -> timedelta:
        return self._absolute

    async def start(self, user_id: uuid.UUID, *, now: datetime, factor: str = "totp") -> str:
        """A new session for ``user_id``, logged in with ``factor``; the id for the cookie."""
        session_id = secrets.token_urlsafe(32)

        def work(conn: Connection) -> None:
            # Expired sessions of anyone are swept here: logins are rare, sessions few.
            conn.execute(delete(staff_sessions).where(or_(
                staff_sessions.c.last_seen_at < now - self._idle,
                staff_sessions.c.created_at < now - self._absolute)))
            conn.execute(insert(staff_sessions).values(
                id_sha256=_key(session_id), user_id=user_id,
                csrf_token=secrets.token_urlsafe(32), created_at=now, last_seen_at=now,
                factor=factor))

        await self._backend.transaction(work)
        return session_id

    async def get(self, session_id: str, *, now: datetime) -> Session | None:
        """The live session with this id (its idle deadline moved on), or None."""
        key = _key(session_id)

        def work(conn: Connection) -> Session | None:
            row = conn.execute(
                select(staff_sessions, users.c.name, users.c.role, users.c.disabled,
                       users.c.must_change_password)
                .join(users, users.c.id == staff_sessions.c.user_id)
                .where(staff_sessions.c.id_sha256 == key)
            ).first()
            if row is None:
                return None
            last_seen, created = aware(row.last_seen_at), aware(row.created_at)
            if row.disabled or now - last_seen > self._idle or now - created > self._absolute:
                conn.execute(delete(staff_sessions).where(staff_sessions.c.id_sha256 == key))
                return None
            if now - last_seen >= TOUCH_EVERY:
                conn.execute(update(staff_sessions).where(staff_sessions.c.id_sha256 == key)
                             .values(last_seen_at=now))
            staff = Staff(row.user_id, row.name, row.role, row.must_change_password)
            return Session(staff, row.csrf_token, row.factor or "totp")

        return await self._backend.transaction(work)

    async def end_others(self, user_id: uuid.UUID, keep: str | None) -> int:
        """End every session of ``user_id`` but ``keep`` (the current one's id): how many."""

        def work(conn: Connection) -> int:
            statement = delete(staff_sessions).where(staff_sessions.c.user_id == user_id)
            if keep is not None:
                statement = statement.where(staff_sessions.c.id_sha256 != _key(keep))
            return int(conn.execute(statement).rowcount)

        return await self._backend.transaction(work)

    async def end(self, session_id: str) -> None:
        key = _key(session_id)
        await self._backend.transaction(
            lambda conn: conn.execute(
                delete(staff_sessions).where(staff_sessions.c.id_sha256 == key)))
