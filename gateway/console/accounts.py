"""Staff accounts: argon2id passwords, TOTP secrets, API tokens, password changes.

How a login is decided and throttled is in ``gateway.console.logins``; how passwords are
hashed, in ``gateway.console.passwords``.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import secrets
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import pyotp
from sqlalchemy import delete, insert, or_, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from gateway.console.fairgate import FairGate
from gateway.console.passwords import Passwords, passwords_for
from gateway.store.audit import CLI_ACTOR, AuditEntry, record
from gateway.store.backend import WriteBackend
from gateway.store.errors import Conflict, Invalid, NotFound
from gateway.store.ids import uuid7
from gateway.store.sealed import seal_value, sealer_of
from gateway.store.tables import api_tokens, staff_sessions, users
from gateway.store.text import plain_text
from gateway.store.times import aware

T = TypeVar("T")
ROLES = ("analyst", "supervisor", "admin")
ISSUER = "hotline-gateway"
MIN_PASSWORD = 12



def shipped_or(passwords: Passwords | None) -> Passwords:
    """``passwords``, or the hashing that ships when the caller names none."""
    return passwords if passwords is not None else passwords_for("argon2id")


async def hash_work(gate: FairGate | None, source: str, work: Callable[[], T], *,
                    urgent: bool = False) -> T:
    """argon2 in a thread; with ``gate``, in ``source``'s fair turn (each hash takes ~64 MiB
    and ~100 ms of CPU: a burst of logins must neither exhaust the machine nor starve others)."""
    if gate is None:
        return await asyncio.to_thread(work)
    return await gate.run(source, work, urgent=urgent)


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
        raise Invalid(f"{name!r}: a user name is 2-64 of a-z 0-9 . _ -, starting with a letter",
                      {"name": "2-64 of a-z 0-9 . _ -, starting with a letter"})


async def add_user(backend: WriteBackend, name: str, role: str, *, now: datetime,
                   passwords: Passwords | None = None) -> NewUser:
    """Create an account with a one-time password (changed at first login) and a TOTP secret;
    the password hashed with ``passwords`` (the shipped hashing when None)."""
    _check_name(name)
    if role not in ROLES:
        raise Invalid(f"role must be one of {', '.join(ROLES)}", {"role": ", ".join(ROLES)})
    new = NewUser(name, role, secrets.token_urlsafe(12), pyotp.random_base32())
    password_hash = await asyncio.to_thread(shipped_or(passwords).hash, new.password)

    def work(conn: Connection) -> None:
        user_id = uuid7()
        secret = seal_value(sealer_of(conn), users.c.totp_secret, user_id, new.totp_secret)
        conn.execute(insert(users).values(
            id=user_id, name=name, role=role, password_hash=password_hash,
            totp_secret=secret, must_change_password=True, created_at=now))
        record(conn, [AuditEntry(CLI_ACTOR, "user.added", details={"user": name,
                                                                       "role": role})], at=now)

    try:
        await backend.transaction(work)
    except IntegrityError as exc:
        raise Conflict(f"a user named {name!r} exists already") from exc
    return new


def token_sha256(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


_TOKEN_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")


@dataclass(frozen=True, slots=True)
class TokenInfo:
    """An API token as ``tokens list`` shows it (never the token itself)."""

    user: str
    name: str
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked_at: datetime | None
    revoked: bool
    survives_password_change: bool

    def state(self, now: datetime) -> str:
        if self.revoked:
            return "revoked"
        if self.expires_at is not None and aware(self.expires_at) <= now:
            return "expired"
        return "active"


def _user_id(conn: Connection, name: str) -> uuid.UUID:
    user = conn.execute(select(users.c.id).where(users.c.name == name)).first()
    if user is None:
        raise NotFound(f"no user named {name!r}")
    return uuid.UUID(str(user.id))


async def create_token(
    backend: WriteBackend, name: str, *, now: datetime, token_name: str | None = None,
    expires: timedelta | None = None, survive_password_change: bool = False,
) -> str:
    """A new API token for ``name``; only its hash is kept. Its name is unique among the
    user's live tokens (``token-N`` when not given)."""
    if token_name is not None and not _TOKEN_NAME.fullmatch(token_name):
        raise Invalid(f"{token_name!r}: a token name is 1-64 of a-z 0-9 . _ -",
                      {"token_name": "1-64 of a-z 0-9 . _ -"})
    if expires is not None and expires <= timedelta(0):
        raise Invalid("an expiry is a positive duration", {"expires": "a positive duration"})
    token = "hgt_" + secrets.token_urlsafe(32)

    def work(conn: Connection) -> None:
        user_id = _user_id(conn, name)
        taken = set(conn.execute(select(api_tokens.c.name).where(
            api_tokens.c.user_id == user_id, api_tokens.c.revoked.is_(False))).scalars())
        chosen = token_name
        if chosen is None:
            chosen = next(f"token-{n}" for n in range(1, len(taken) + 2)
                          if f"token-{n}" not in taken)
        elif chosen in taken:
            raise Conflict(f"{name} has a live token named {chosen!r} already")
        expires_at = now + expires if expires is not None else None
        conn.execute(insert(api_tokens).values(
            id=uuid7(), user_id=user_id, token_sha256=token_sha256(token), created_at=now,
            name=chosen, expires_at=expires_at,
            survives_password_change=survive_password_change))
        details: dict[str, Any] = {"user": name, "token": chosen}
        if expires_at is not None:
            details["expires_at"] = expires_at.isoformat()
        if survive_password_change:
            details["survives_password_change"] = True
        record(conn, [AuditEntry(CLI_ACTOR, "token.created", details=details)], at=now)

    await backend.transaction(work)
    return token


async def staff_for_token(backend: WriteBackend, token: str, *, now: datetime) -> Staff | None:
    """The owner of a live API token, or None: a token is refused once revoked or expired,
    and while its user is disabled, has a password to choose, or must wait after wrong codes
    (someone who knows the password is at work)."""
    digest = token_sha256(token)

    def work(conn: Connection) -> Staff | None:
        row = conn.execute(
            select(users.c.id, users.c.name, users.c.role, api_tokens.c.id.label("token_id"))
            .join(api_tokens, api_tokens.c.user_id == users.c.id)
            .where(api_tokens.c.token_sha256 == digest, api_tokens.c.revoked.is_(False),
                   or_(api_tokens.c.expires_at.is_(None), api_tokens.c.expires_at > now),
                   or_(users.c.locked_until.is_(None), users.c.locked_until <= now),
                   users.c.disabled.is_(False), users.c.must_change_password.is_(False))
        ).first()
        if row is None:
            return None
        conn.execute(update(api_tokens).where(api_tokens.c.id == row.token_id)
                     .values(last_used_at=now))
        return Staff(row.id, row.name, row.role)

    return await backend.transaction(work)


async def list_tokens(backend: WriteBackend, name: str | None = None) -> list[TokenInfo]:
    """Every API token (of ``name``), by user and then oldest first."""

    def work(conn: Connection) -> list[TokenInfo]:
        query = (select(users.c.name.label("user"), api_tokens)
                 .join(users, users.c.id == api_tokens.c.user_id)
                 .order_by(users.c.name, api_tokens.c.created_at))
        if name is not None:
            _user_id(conn, name)
            query = query.where(users.c.name == name)
        return [TokenInfo(r.user, r.name, r.created_at, r.expires_at, r.last_used_at,
                          r.revoked_at, r.revoked, r.survives_password_change)
                for r in conn.execute(query)]

    return await backend.transaction(work)


def end_tokens_on_password_change(conn: Connection, user_id: uuid.UUID,
                                  now: datetime) -> int:
    """Revoke the user's live tokens not made to survive a password change; how many."""
    return int(conn.execute(update(api_tokens).where(
        api_tokens.c.user_id == user_id, api_tokens.c.revoked.is_(False),
        api_tokens.c.survives_password_change.is_(False)).values(
        revoked=True, revoked_at=now)).rowcount)




async def check_password(backend: WriteBackend, staff: Staff, password: str, *,
                         gate: FairGate | None = None,
                         passwords: Passwords | None = None) -> bool:
    def read(conn: Connection) -> str:
        return str(conn.execute(select(users.c.password_hash)
                                .where(users.c.id == staff.id)).scalar_one())

    stored = await backend.transaction(read)
    if not plain_text(password):
        return False
    return await hash_work(gate, f"staff:{staff.id}",
                           lambda: shipped_or(passwords).verify(stored, password))


async def change_password(
    backend: WriteBackend, staff: Staff, new_password: str, *, now: datetime,
    gate: FairGate | None = None, passwords: Passwords | None = None,
) -> None:
    """Set a new password (hashed with ``passwords``, the shipped hashing when None); every
    session of the user ends (the caller starts a fresh one)."""
    if len(new_password) < MIN_PASSWORD:
        raise Invalid(f"a password has at least {MIN_PASSWORD} characters",
                      {"password": f"at least {MIN_PASSWORD} characters"})
    if not plain_text(new_password) or len(new_password) > 1024:
        raise Invalid("a password is text of at most 1024 characters",
                      {"password": "text of at most 1024 characters"})
    password_hash = await hash_work(gate, f"staff:{staff.id}",
                                    lambda: shipped_or(passwords).hash(new_password))

    def work(conn: Connection) -> None:
        conn.execute(update(users).where(users.c.id == staff.id)
                     .values(password_hash=password_hash, must_change_password=False))
        conn.execute(delete(staff_sessions).where(staff_sessions.c.user_id == staff.id))
        ended = end_tokens_on_password_change(conn, staff.id, now)
        record(conn, [AuditEntry(staff.name, "user.password_changed",
                                 details={"tokens_revoked": ended})], at=now)

    await backend.transaction(work)


async def revoke_tokens(backend: WriteBackend, name: str, *, now: datetime,
                        token_name: str | None = None) -> int:
    """Revoke ``name``'s live token called ``token_name``, or every one when None; how many."""

    def work(conn: Connection) -> int:
        user_id = _user_id(conn, name)
        which = [api_tokens.c.user_id == user_id, api_tokens.c.revoked.is_(False)]
        if token_name is not None:
            which.append(api_tokens.c.name == token_name)
        count = int(conn.execute(update(api_tokens).where(*which)
                                 .values(revoked=True, revoked_at=now)).rowcount)
        if token_name is not None and count == 0:
            raise NotFound(f"{name} has no live token named {token_name!r}")
        details: dict[str, Any] = {"user": name, "count": count}
        if token_name is not None:
            details["token"] = token_name
        record(conn, [AuditEntry(CLI_ACTOR, "token.revoked", details=details)], at=now)
        return count

    return await backend.transaction(work)


def utcnow() -> datetime:
    return datetime.now(UTC)
