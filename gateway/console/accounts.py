"""Staff accounts: argon2id passwords, TOTP at every login, lockout, API tokens.

A login needs the password and a current TOTP code. A code is accepted once: the time step it
belongs to is stored, and a code of that step or an earlier one is refused (RFC 6238 section
5.2). After ``lockout_after`` failures in a row the account is locked for ``lockout``, doubling
with every further failure up to an hour; a success resets the count. Failures say only
"login failed", whatever the reason, so that the form does not tell which names exist.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import re
import secrets
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import pyotp
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import and_, delete, insert, or_, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from gateway.ids import uuid7
from gateway.store.audit import AuditEntry, record
from gateway.store.backend import WriteBackend
from gateway.store.tables import api_tokens, staff_sessions, users
from gateway.store.text import plain_text

T = TypeVar("T")
ROLES = ("analyst", "supervisor", "admin")
ISSUER = "hotline-gateway"
MIN_PASSWORD = 12
MAX_LOCKOUT = timedelta(hours=1)

_HASHER = PasswordHasher()  # argon2id, the library's current recommended parameters


async def _hash_work(gate: asyncio.Semaphore | None, work: Callable[[], T]) -> T:
    """argon2 in a thread; with ``gate``, only a few at once (each takes ~64 MiB and ~50 ms of
    CPU: a burst of logins must not exhaust the machine)."""
    if gate is None:
        return await asyncio.to_thread(work)
    async with gate:
        return await asyncio.to_thread(work)
# Verified against when the name is unknown, so that both cases cost the same time.
_DUMMY_HASH = _HASHER.hash(secrets.token_urlsafe(16))


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


@dataclass(frozen=True, slots=True)
class LoginPolicy:
    lockout_after: int = 5
    lockout: timedelta = timedelta(minutes=1)

    def locked_for(self, failures: int) -> timedelta | None:
        if failures < self.lockout_after:
            return None
        lock: timedelta = self.lockout * (2 ** min(failures - self.lockout_after, 20))
        return min(lock, MAX_LOCKOUT)


def _verify_password(password_hash: str, password: str) -> bool:
    try:
        return _HASHER.verify(password_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def _totp_step(secret: str, code: str, moment: datetime) -> int | None:
    """The time step ``code`` is valid for (now, or one step either side for clock drift)."""
    if not re.fullmatch(r"\d{6}", code):
        return None
    totp = pyotp.TOTP(secret)
    for offset in (0, -1, 1):
        step = totp.timecode(moment) + offset
        if hmac.compare_digest(totp.generate_otp(step), code):
            return step
    return None


async def login(
    backend: WriteBackend, name: str, password: str, code: str, *, now: datetime,
    policy: LoginPolicy, peer: str | None = None, gate: asyncio.Semaphore | None = None,
) -> Staff | None:
    """The user, if the password and an unused TOTP code are right and the account is open.

    Unknown names cost the same: a hash is checked and a failure is recorded either way.
    """
    if not (plain_text(name) and plain_text(password) and len(name) <= 64):
        name, password = "", ""

    def read(conn: Connection) -> Any:
        return conn.execute(select(users).where(users.c.name == name)).first()

    row = await backend.transaction(read) if name else None
    stored = row.password_hash if row is not None else _DUMMY_HASH
    password_ok = await _hash_work(gate, lambda: _verify_password(stored, password))
    step = _totp_step(row.totp_secret, code, now) if row is not None and password_ok else None
    details: dict[str, Any] = {"user": name[:64]}
    if peer is not None:
        details["peer"] = peer

    def decide(conn: Connection) -> Staff | None:
        if row is None:
            record(conn, [AuditEntry("anonymous", "user.login_failed",
                                     details={**details, "reason": "unknown user"})], at=now)
            return None
        # Read again inside this transaction: logins racing each other see each other's
        # failures and locks.
        current = conn.execute(select(users).where(users.c.id == row.id)).one()
        locked = current.locked_until is not None and _aware(current.locked_until) > now
        open_now = or_(users.c.locked_until.is_(None), users.c.locked_until <= now)
        reason = ("locked" if locked else "disabled" if current.disabled
                  else "password" if not password_ok else "code")
        if password_ok and step is not None and not locked and not current.disabled:
            # One statement decides a replay and the lock, even with logins racing.
            fresh = or_(users.c.totp_last_step.is_(None), users.c.totp_last_step < step)
            if conn.execute(
                update(users).where(and_(users.c.id == row.id, fresh, open_now,
                                         users.c.disabled.is_(False)))
                .values(totp_last_step=step, failed_logins=0, locked_until=None)
            ).rowcount == 1:
                record(conn, [AuditEntry(name, "user.login", details=details)], at=now)
                return Staff(row.id, row.name, row.role, current.must_change_password)
            reason = "replayed code"
        failures = conn.execute(
            update(users).where(users.c.id == row.id)
            .values(failed_logins=users.c.failed_logins + 1)
            .returning(users.c.failed_logins)
        ).scalar_one()
        lock = policy.locked_for(failures)
        extra: dict[str, Any] = {}
        if lock is not None:
            until = now + lock
            if conn.execute(update(users).where(
                    users.c.id == row.id,
                    or_(users.c.locked_until.is_(None), users.c.locked_until < until))
                    .values(locked_until=until)).rowcount:
                extra["locked_seconds"] = int(lock.total_seconds())
        record(conn, [AuditEntry(name, "user.login_failed", details={
            **details, "reason": reason, "failures": failures, **extra})], at=now)
        return None

    return await backend.transaction(decide)


async def check_password(backend: WriteBackend, staff: Staff, password: str, *,
                         gate: asyncio.Semaphore | None = None) -> bool:
    def read(conn: Connection) -> str:
        return str(conn.execute(select(users.c.password_hash)
                                .where(users.c.id == staff.id)).scalar_one())

    stored = await backend.transaction(read)
    if not plain_text(password):
        return False
    return await _hash_work(gate, lambda: _verify_password(stored, password))


async def change_password(
    backend: WriteBackend, staff: Staff, new_password: str, *, now: datetime,
    gate: asyncio.Semaphore | None = None,
) -> None:
    """Set a new password; every session of the user ends (the caller starts a fresh one)."""
    if len(new_password) < MIN_PASSWORD:
        raise AccountError(f"a password has at least {MIN_PASSWORD} characters")
    if not plain_text(new_password) or len(new_password) > 1024:
        raise AccountError("a password is text of at most 1024 characters")
    password_hash = await _hash_work(gate, lambda: _HASHER.hash(new_password))

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
