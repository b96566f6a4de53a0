"""Managing staff accounts: list, disable and enable, unlock, reset TOTP or password, change
the role, end sessions, remove security keys, remove. Every action is audited under the acting
name; the last enabled admin can be neither removed, demoted nor disabled, even by changes made
at once."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pyotp
from sqlalchemy import delete, func, select, update
from sqlalchemy.engine import Connection

from gateway.console.accounts import (
    ROLES,
    NewUser,
    end_tokens_on_password_change,
    shipped_or,
)
from gateway.console.passwords import Passwords
from gateway.store.audit import AuditEntry, record
from gateway.store.backend import WriteBackend
from gateway.store.errors import Conflict, Invalid, NotFound
from gateway.store.sealed import seal_value, sealer_of
from gateway.store.tables import (
    api_tokens,
    assessments,
    cases,
    referral_outcomes,
    staff_security_keys,
    staff_sessions,
    users,
)
from gateway.store.times import aware


class UnknownUser(NotFound):
    """No account has the name given."""


@dataclass(frozen=True, slots=True)
class UserInfo:
    """A staff account as ``users list`` shows it."""

    name: str
    role: str
    disabled: bool
    must_change_password: bool
    locked_until: datetime | None
    last_login_at: datetime | None
    created_at: datetime
    #: Security keys registered (``gateway.console.keystore``).
    keys: int = 0

    def state(self, now: datetime) -> str:
        if self.disabled:
            return "disabled"
        if self.locked_until is not None and aware(self.locked_until) > now:
            return "waiting"  # after wrong codes with the right password
        if self.must_change_password:
            return "new"  # the one-time password is still to be changed
        return "active"


async def list_users(backend: WriteBackend) -> list[UserInfo]:
    """Every account, by name."""

    def work(conn: Connection) -> list[UserInfo]:
        keys = {row[0]: int(row[1]) for row in conn.execute(
            select(staff_security_keys.c.user_id, func.count())
            .group_by(staff_security_keys.c.user_id))}
        return [UserInfo(r.name, r.role, r.disabled, r.must_change_password, r.locked_until,
                         r.last_login_at, r.created_at, keys.get(r.id, 0))
                for r in conn.execute(select(users).order_by(users.c.name))]

    return await backend.transaction(work)


Change = Callable[[Connection, Any], dict[str, Any]]


async def _change(backend: WriteBackend, name: str, action: str, change: Change, *,
                  actor: str, now: datetime) -> dict[str, Any]:
    """Run ``change`` on ``name``'s row in one transaction with its audit entry."""

    def work(conn: Connection) -> dict[str, Any]:
        row = conn.execute(select(users).where(users.c.name == name)).first()
        if row is None:
            raise UnknownUser(f"no user named {name!r}")
        details = change(conn, row)
        record(conn, [AuditEntry(actor, action, details={"user": name, **details})], at=now)
        return details

    return await backend.transaction(work)


def _end_sessions(conn: Connection, user_id: Any) -> int:
    return int(conn.execute(delete(staff_sessions)
                            .where(staff_sessions.c.user_id == user_id)).rowcount)


def _keep_an_admin(conn: Connection, row: Any, doing: str) -> None:
    """Refuse a change that would leave no enabled admin. The enabled admins' rows are locked
    first (``SELECT ... FOR UPDATE`` on PostgreSQL; SQLite's single writer needs none), so two
    changes at once cannot each count the other's admin as the one that remains: the second
    waits, then sees the first's change."""
    admins = conn.execute(
        select(users.c.id).where(users.c.role == "admin", users.c.disabled.is_(False))
        .order_by(users.c.id).with_for_update()).scalars().all()
    if row.id in admins and len(admins) == 1:
        raise Conflict(f"{row.name} is the last admin: make another admin before you "
                       f"{doing}")


async def set_disabled(backend: WriteBackend, name: str, disabled: bool, *, actor: str,
                       now: datetime) -> None:
    """Disable (sessions end, tokens and logins are refused) or enable an account; the last
    enabled admin is not disabled."""

    def change(conn: Connection, row: Any) -> dict[str, Any]:
        if disabled:
            _keep_an_admin(conn, row, "disable them")
        conn.execute(update(users).where(users.c.id == row.id).values(disabled=disabled))
        return {"sessions_ended": _end_sessions(conn, row.id)} if disabled else {}

    await _change(backend, name, "user.disabled" if disabled else "user.enabled", change,
                  actor=actor, now=now)


async def unlock(backend: WriteBackend, name: str, *, actor: str, now: datetime) -> None:
    """Clear the account's wait and count after wrong codes."""

    def change(conn: Connection, row: Any) -> dict[str, Any]:
        conn.execute(update(users).where(users.c.id == row.id)
                     .values(failed_logins=0, locked_until=None))
        return {"code_failures": row.failed_logins}

    await _change(backend, name, "user.unlocked", change, actor=actor, now=now)


async def reset_totp(backend: WriteBackend, name: str, *, actor: str, now: datetime) -> NewUser:
    """A new TOTP secret (shown once); the user's sessions end."""
    secret = pyotp.random_base32()
    found: list[Any] = []

    def change(conn: Connection, row: Any) -> dict[str, Any]:
        sealed = seal_value(sealer_of(conn), users.c.totp_secret, row.id, secret)
        conn.execute(update(users).where(users.c.id == row.id)
                     .values(totp_secret=sealed, totp_last_step=None))
        found.append(row)
        return {"sessions_ended": _end_sessions(conn, row.id)}

    await _change(backend, name, "user.totp_reset", change, actor=actor, now=now)
    return NewUser(name, found[0].role, "", secret)


async def reset_password(backend: WriteBackend, name: str, *, actor: str,
                         now: datetime, passwords: Passwords | None = None) -> str:
    """A new one-time password (shown once, changed at the next login, hashed with
    ``passwords``: the shipped hashing when None); sessions end, and tokens not made to
    survive a password change are revoked."""
    password = secrets.token_urlsafe(12)
    password_hash = await asyncio.to_thread(shipped_or(passwords).hash, password)

    def change(conn: Connection, row: Any) -> dict[str, Any]:
        conn.execute(update(users).where(users.c.id == row.id)
                     .values(password_hash=password_hash, must_change_password=True))
        return {"sessions_ended": _end_sessions(conn, row.id),
                "tokens_revoked": end_tokens_on_password_change(conn, row.id, now)}

    await _change(backend, name, "user.password_reset", change, actor=actor, now=now)
    return password


async def set_role(backend: WriteBackend, name: str, role: str, *, actor: str,
                   now: datetime) -> None:
    """Change the role; the last admin is not demoted."""
    if role not in ROLES:
        raise Invalid(f"role must be one of {', '.join(ROLES)}", {"role": ", ".join(ROLES)})

    def change(conn: Connection, row: Any) -> dict[str, Any]:
        if role != "admin":
            _keep_an_admin(conn, row, "demote them")
        conn.execute(update(users).where(users.c.id == row.id).values(role=role))
        return {"from": row.role, "to": role}

    await _change(backend, name, "user.role_changed", change, actor=actor, now=now)


async def end_sessions(backend: WriteBackend, name: str, *, actor: str, now: datetime) -> int:
    """Log the user out everywhere; how many sessions ended."""
    details = await _change(backend, name, "user.logged_out", lambda conn, row: {
        "sessions_ended": _end_sessions(conn, row.id)}, actor=actor, now=now)
    return int(details["sessions_ended"])


async def remove_user(backend: WriteBackend, name: str, *, actor: str, now: datetime) -> None:
    """Remove an account with its sessions and tokens (the audit trail keeps its name). One
    whose verdicts are on record stays, to be disabled instead; the last admin stays."""

    def change(conn: Connection, row: Any) -> dict[str, Any]:
        _keep_an_admin(conn, row, "remove them")
        if conn.execute(select(assessments.c.id).where(
                (assessments.c.user_id == row.id) | (assessments.c.approved_by == row.id))
                .limit(1)).first() is not None:
            raise Conflict(f"{name}'s verdicts are on record: disable the account instead")
        if conn.execute(select(referral_outcomes.c.id).where(
                referral_outcomes.c.recorded_by == row.id).limit(1)).first() is not None:
            raise Conflict(f"{name}'s outcomes are on record: disable the account instead")
        ended = _end_sessions(conn, row.id)
        tokens = conn.execute(delete(api_tokens).where(api_tokens.c.user_id == row.id)).rowcount
        conn.execute(delete(staff_security_keys).where(staff_security_keys.c.user_id == row.id))
        conn.execute(update(cases).where(cases.c.assigned_to == row.id).values(assigned_to=None))
        conn.execute(delete(users).where(users.c.id == row.id))
        return {"role": row.role, "sessions_ended": ended, "tokens_removed": int(tokens)}

    await _change(backend, name, "user.removed", change, actor=actor, now=now)


async def remove_keys(backend: WriteBackend, name: str, *, actor: str, now: datetime) -> int:
    """Remove every security key of ``name`` (a lost key); how many. Their sessions end: one
    made with a removed key is not to go on. The audit has the keys' names."""

    def change(conn: Connection, row: Any) -> dict[str, Any]:
        names = conn.execute(delete(staff_security_keys)
                             .where(staff_security_keys.c.user_id == row.id)
                             .returning(staff_security_keys.c.name)).scalars().all()
        return {"keys_removed": len(names), "keys": sorted(names),
                "sessions_ended": _end_sessions(conn, row.id)}

    details = await _change(backend, name, "user.security_keys_removed", change, actor=actor,
                            now=now)
    return int(details["keys_removed"])
