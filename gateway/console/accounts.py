"""Staff accounts: argon2id passwords, TOTP secrets, API tokens, password changes.

How a login is decided and throttled is in ``gateway.console.logins``.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import secrets
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeVar

import pyotp
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import delete, insert, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from gateway.console.fairgate import FairGate
from gateway.ids import uuid7
from gateway.store.audit import AuditEntry, record
from gateway.store.backend import WriteBackend
from gateway.store.tables import api_tokens, staff_sessions, users
from gateway.store.text import plain_text

T = TypeVar("T")
ROLES = ("analyst", "supervisor", "admin")
ISSUER = "hotline-gateway"
MIN_PASSWORD = 12

_HASHER = PasswordHasher()  # argon2id, the library's current recommended parameters


async def hash_work(gate: FairGate | None, source: str, work: Callable[[], T]) -> T:
    """argon2 in a thread; with ``gate``, in ``source``'s fair turn (each hash takes ~64 MiB
    and ~100 ms of CPU: a burst of logins must neither exhaust the machine nor starve others)."""
    if gate is None:
        return await asyncio.to_thread(work)
    return await gate.run(source, work)


# Verified against when the name is unknown, so that both cases cost the same time.
DUMMY_HASH = _HASHER.hash(secrets.token_urlsafe(16))


class AccountError(Exception):
    """A staff account operation cannot be done; the message is for the operator."""


@dataclass(frozen=True, slots=True)
class Staff:
    """Who is acting: a logged-in user or the owner of an API token."""

    id: uuid.UUID
    name: str
    role: str
    must_change_password: bool = False

    @property
    def supervises(self) -> bool:
        return self.role in ("supervisor", "admin")


@dataclass(frozen=True, slots=True)
class NewUser:
    name: str
    role: str
    password: str
    totp_secret: str

    @property
    def otpauth_uri(self) -> str:
        return pyotp.TOTP(self.totp_secret).provisioning_uri(name=self.name, issuer_name=ISSUER)


def _check_name(name: str) -> None:
    if not re.fullmatch(r"[a-z][a-z0-9._-]{1,63}", name):
        raise AccountError(f"{name!r}: a user name is 2-64 of a-z 0-9 . _ -, starting with a "
                           "letter")


async def add_user(backend: WriteBackend, name: str, role: str, *, now: datetime) -> NewUser:
    """Create an account with a one-time password (changed at first login) and a TOTP secret."""
    _check_name(name)
    if role not in ROLES:
        raise AccountError(f"role must be one of {', '.join(ROLES)}")
    new = NewUser(name, role, secrets.token_urlsafe(12), pyotp.random_base32())
    password_hash = await asyncio.to_thread(_HASHER.hash, new.password)

    def work(conn: Connection) -> None:
        conn.execute(insert(users).values(
            id=uuid7(), name=name, role=role, password_hash=password_hash,
            totp_secret=new.totp_secret, must_change_password=True, created_at=now))
        record(conn, [AuditEntry("system:cli", "user.added", details={"user": name,
                                                                       "role": role})], at=now)

    try:
        await backend.transaction(work)
    except IntegrityError as exc:
        raise AccountError(f"a user named {name!r} exists already") from exc
    return new


def token_sha256(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


async def create_token(backend: WriteBackend, name: str, *, now: datetime) -> str:
    """A new API token for ``name``; only its hash is kept."""
    token = "hgt_" + secrets.token_urlsafe(32)

    def work(conn: Connection) -> None:
        user = conn.execute(select(users.c.id).where(users.c.name == name)).first()
        if user is None:
            raise AccountError(f"no user named {name!r}")
        conn.execute(insert(api_tokens).values(
            id=uuid7(), user_id=user.id, token_sha256=token_sha256(token), created_at=now))
        record(conn, [AuditEntry("system:cli", "token.created", details={"user": name})],
               at=now)

    await backend.transaction(work)
    return token


async def staff_for_token(backend: WriteBackend, token: str, *, now: datetime) -> Staff | None:
    """The owner of a valid API token, or None."""
    digest = token_sha256(token)

    def work(conn: Connection) -> Staff | None:
        row = conn.execute(
            select(users.c.id, users.c.name, users.c.role, api_tokens.c.id.label("token_id"))
            .join(api_tokens, api_tokens.c.user_id == users.c.id)
            .where(api_tokens.c.token_sha256 == digest, api_tokens.c.revoked.is_(False),
                   users.c.disabled.is_(False), users.c.must_change_password.is_(False))
        ).first()
        if row is None:
            return None
        conn.execute(update(api_tokens).where(api_tokens.c.id == row.token_id)
                     .values(last_used_at=now))
        return Staff(row.id, row.name, row.role)

    return await backend.transaction(work)


def verify_password(password_hash: str, password: str) -> bool:
    try:
        return _HASHER.verify(password_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False



async def check_password(backend: WriteBackend, staff: Staff, password: str, *,
                         gate: FairGate | None = None) -> bool:
    def read(conn: Connection) -> str:
        return str(conn.execute(select(users.c.password_hash)
                                .where(users.c.id == staff.id)).scalar_one())

    stored = await backend.transaction(read)
    if not plain_text(password):
        return False
    return await hash_work(gate, f"staff:{staff.id}",
                           lambda: verify_password(stored, password))


async def change_password(
    backend: WriteBackend, staff: Staff, new_password: str, *, now: datetime,
    gate: FairGate | None = None,
) -> None:
    """Set a new password; every session of the user ends (the caller starts a fresh one)."""
    if len(new_password) < MIN_PASSWORD:
        raise AccountError(f"a password has at least {MIN_PASSWORD} characters")
    if not plain_text(new_password) or len(new_password) > 1024:
        raise AccountError("a password is text of at most 1024 characters")
    password_hash = await hash_work(gate, f"staff:{staff.id}",
                                    lambda: _HASHER.hash(new_password))

    def work(conn: Connection) -> None:
        conn.execute(update(users).where(users.c.id == staff.id)
                     .values(password_hash=password_hash, must_change_password=False))
        conn.execute(delete(staff_sessions).where(staff_sessions.c.user_id == staff.id))
        record(conn, [AuditEntry(staff.name, "user.password_changed")], at=now)

    await backend.transaction(work)


async def revoke_tokens(backend: WriteBackend, name: str, *, now: datetime) -> int:
    """Revoke every API token of ``name``; how many."""

    def work(conn: Connection) -> int:
        user = conn.execute(select(users.c.id).where(users.c.name == name)).first()
        if user is None:
            raise AccountError(f"no user named {name!r}")
        count = conn.execute(update(api_tokens).where(api_tokens.c.user_id == user.id,
                                                      api_tokens.c.revoked.is_(False))
                             .values(revoked=True)).rowcount
        record(conn, [AuditEntry("system:cli", "token.revoked",
                                 details={"user": name, "count": count})], at=now)
        return int(count)

    return await backend.transaction(work)


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


Clock = Callable[[], datetime]
