"""Staff security keys (WebAuthn / FIDO2): the stored credentials, and the ceremonies under way.

A key is registered from its user's own console page and used as the second factor after the
password (``gateway.console.securitykeys`` has the pages, py_webauthn checks the signatures).
What is kept of a key is its credential id, its public key and the last signature counter it
reported: a counter that does not grow is refused (the key was cloned, or a response replayed),
in one statement, so two logins racing with one response cannot both pass.

A ceremony's challenge lives here, in this process's memory, for ``CEREMONY_FOR``, and is
taken once: a registration's keyed to its session, a login's to a random id in a cookie of
the browser that gave the password. After a restart a ceremony under way starts again.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import secrets
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from gateway.config import ConsoleConfig
from gateway.console.accounts import Staff
from gateway.store.audit import AuditEntry, record
from gateway.store.backend import WriteBackend
from gateway.store.errors import Conflict, Invalid, NotFound
from gateway.store.ids import uuid7
from gateway.store.tables import console_secrets, staff_security_keys, users
from gateway.store.text import plain_text

#: How long a registration or a login may take between the page and the key's answer.
CEREMONY_FOR = 300.0
#: Ceremonies kept at once (the oldest go first): a login's first step makes one.
MAX_CEREMONIES = 10_000
MAX_KEYS = 10
_NAME = re.compile(r"[^\x00-\x1f\x7f]{1,64}")


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """A registered key as its user's page shows it (never its credential)."""

    id: uuid.UUID
    name: str
    created_at: datetime
    last_used_at: datetime | None


@dataclass(frozen=True, slots=True)
class StoredKey:
    """What checking an assertion needs."""

    id: uuid.UUID
    name: str
    public_key: bytes
    sign_count: int


def key_count(conn: Connection, user_id: uuid.UUID) -> int:
    return int(conn.execute(select(func.count()).select_from(staff_security_keys)
                            .where(staff_security_keys.c.user_id == user_id)).scalar_one())


async def count_keys(backend: WriteBackend, user_id: uuid.UUID) -> int:
    return await backend.transaction(lambda conn: key_count(conn, user_id))


async def list_keys(backend: WriteBackend, user_id: uuid.UUID) -> list[KeyInfo]:
    """The user's keys, oldest first."""

    def work(conn: Connection) -> list[KeyInfo]:
        return [KeyInfo(r.id, r.name, r.created_at, r.last_used_at)
                for r in conn.execute(select(staff_security_keys)
                                      .where(staff_security_keys.c.user_id == user_id)
                                      .order_by(staff_security_keys.c.created_at))]

    return await backend.transaction(work)


async def credential_ids(backend: WriteBackend, user_id: uuid.UUID) -> list[bytes]:
    def work(conn: Connection) -> list[bytes]:
        return [bytes(r) for r in conn.execute(
            select(staff_security_keys.c.credential_id)
            .where(staff_security_keys.c.user_id == user_id)
            .order_by(staff_security_keys.c.created_at)).scalars()]

    return await backend.transaction(work)


async def credential_ids_by_name(backend: WriteBackend, name: str) -> list[bytes]:
    """The credential ids of the user called ``name`` (none for an unknown name)."""

    def work(conn: Connection) -> list[bytes]:
        return [bytes(r) for r in conn.execute(
            select(staff_security_keys.c.credential_id)
            .join(users, users.c.id == staff_security_keys.c.user_id)
            .where(users.c.name == name)
            .order_by(staff_security_keys.c.created_at)).scalars()]

    return await backend.transaction(work)


def check_key_name(name: str) -> str:
    name = name.strip()
    if not _NAME.fullmatch(name) or not plain_text(name):
        raise Invalid("a key's name is 1-64 characters of text")
    return name


async def add_key(backend: WriteBackend, staff: Staff, name: str, *, credential_id: bytes,
                  public_key: bytes, sign_count: int, now: datetime) -> None:
    """Keep a verified new key of ``staff``, audited (its name, never its credential)."""
    name = check_key_name(name)

    def work(conn: Connection) -> None:
        if key_count(conn, staff.id) >= MAX_KEYS:
            raise Conflict(f"at most {MAX_KEYS} keys: remove one first")
        conn.execute(insert(staff_security_keys).values(
            id=uuid7(), user_id=staff.id, credential_id=credential_id, public_key=public_key,
            sign_count=sign_count, name=name, created_at=now))
        record(conn, [AuditEntry(staff.name, "user.security_key_added",
                                 details={"user": staff.name, "key": name})], at=now)

    try:
        await backend.transaction(work)
    except IntegrityError as exc:
        raise Conflict("this key is registered already") from exc


async def remove_key(backend: WriteBackend, staff: Staff, key_id: uuid.UUID, *,
                     now: datetime) -> str:
    """Remove one of ``staff``'s own keys, audited; its name."""

    def work(conn: Connection) -> str:
        name = conn.execute(
            delete(staff_security_keys)
            .where(staff_security_keys.c.id == key_id,
                   staff_security_keys.c.user_id == staff.id)
            .returning(staff_security_keys.c.name)).scalar_one_or_none()
        if name is None:
            raise NotFound("no such key of yours")
        record(conn, [AuditEntry(staff.name, "user.security_key_removed",
                                 details={"user": staff.name, "key": name})], at=now)
        return str(name)

    return await backend.transaction(work)


def stored_key(conn: Connection, user_id: uuid.UUID, credential_id: bytes) -> StoredKey | None:
    row = conn.execute(select(staff_security_keys).where(
        staff_security_keys.c.user_id == user_id,
        staff_security_keys.c.credential_id == credential_id)).first()
    if row is None:
        return None
    return StoredKey(row.id, row.name, bytes(row.public_key), int(row.sign_count))


def stored_key_by_name(conn: Connection, name: str, credential_id: bytes
                       ) -> StoredKey | None:
    """The key with ``credential_id`` of the user called ``name`` (the login's key step looks
    a key up this way whether the password step was right or not)."""
    row = conn.execute(select(staff_security_keys)
                       .join(users, users.c.id == staff_security_keys.c.user_id)
                       .where(users.c.name == name,
                              staff_security_keys.c.credential_id == credential_id)).first()
    if row is None:
        return None
    return StoredKey(row.id, row.name, bytes(row.public_key), int(row.sign_count))


def advance(conn: Connection, key: StoredKey, new_count: int, now: datetime) -> bool:
    """Record a use of ``key`` that reported ``new_count``: False if the counter did not grow
    past the stored one meanwhile (a clone, or the same response twice). Keys that keep no
    counter report 0 every time, and are let through as WebAuthn says."""
    counter = staff_security_keys.c.sign_count
    grows = (counter < new_count) if new_count > 0 else (counter == 0)
    return conn.execute(
        update(staff_security_keys)
        .where(staff_security_keys.c.id == key.id, counter == key.sign_count, grows)
        .values(sign_count=new_count, last_used_at=now)).rowcount == 1


STAND_IN_NAME = "webauthn_stand_in"


async def stand_in_secret(backend: WriteBackend) -> bytes:
    """The key of the stand-in credential ids, made once and kept in the database, so that a
    name without keys is offered the same ids before and after a restart (as a real key's
    are)."""

    def read(conn: Connection) -> bytes | None:
        value = conn.execute(select(console_secrets.c.value)
                             .where(console_secrets.c.name == STAND_IN_NAME)).scalar()
        return None if value is None else bytes(value)

    def make(conn: Connection) -> None:
        conn.execute(insert(console_secrets).values(name=STAND_IN_NAME,
                                                    value=secrets.token_bytes(32)))

    if (found := await backend.transaction(read)) is not None:
        return found
    with contextlib.suppress(IntegrityError):  # another instance made it first: theirs
        await backend.transaction(make)
    found = await backend.transaction(read)
    assert found is not None
    return found


# --- ceremonies under way ---------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class PendingLogin:
    """A login whose password step is done: who (None when the name or password was not
    right: the key step then fails alike), the challenge, and where it came from."""

    staff: Staff | None
    name: str
    challenge: bytes
    source: str
    device: str | None
    deadline: float


class Ceremonies:
    """Challenges of registrations and logins under way, in bounded memory, each taken once."""

    def __init__(self, *, ttl: float = CEREMONY_FOR, max_pending: int = MAX_CEREMONIES,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl = ttl
        self._max = max_pending
        self._clock = clock
        # Makes the stand-in credential ids a name without keys gets: ``stand_in_secret``,
        # read from the database on the first login with a key.
        self.stand_in_key: bytes | None = None
        self._registrations: OrderedDict[str, tuple[bytes, float]] = OrderedDict()
        self._logins: OrderedDict[str, PendingLogin] = OrderedDict()

    def _bound(self, table: OrderedDict[str, Any]) -> None:
        while len(table) > self._max:
            table.popitem(last=False)

    def begin_registration(self, session: str) -> bytes:
        """A new challenge for a registration from ``session`` (its earlier one is void)."""
        challenge = secrets.token_bytes(32)
        self._registrations.pop(session, None)
        self._registrations[session] = (challenge, self._clock() + self._ttl)
        self._bound(self._registrations)
        return challenge

    def take_registration(self, session: str) -> bytes | None:
        found = self._registrations.pop(session, None)
        if found is None or found[1] < self._clock():
            return None
        return found[0]

    def begin_login(self, staff: Staff | None, name: str, *, source: str,
                    device: str | None) -> tuple[str, bytes]:
        """A login's key step: the id for its cookie, and its challenge."""
        token, challenge = secrets.token_urlsafe(32), secrets.token_bytes(32)
        self._logins[token] = PendingLogin(staff, name, challenge, source, device,
                                           self._clock() + self._ttl)
        self._bound(self._logins)
        return token, challenge

    def take_login(self, token: str) -> PendingLogin | None:
        pending = self._logins.pop(token, None)
        if pending is None or pending.deadline < self._clock():
            return None
        return pending

    def stand_in_ids(self, name: str) -> list[bytes]:
        """What the key step offers for a name without keys: one credential id derived from
        the name, so the page looks alike whether the name, or its password, is right."""
        key = self.stand_in_key if self.stand_in_key is not None else secrets.token_bytes(32)
        return [hashlib.blake2b(name.encode("utf-8", "surrogatepass"), key=key,
                                digest_size=32).digest()]


REQUIRED = ("Supervisors and admins with a security key log in with it: use “Log in with a "
            "security key” (no code needed).")


@dataclass
class SecurityKeys:
    """The console's security key settings and the ceremonies under way."""

    public_origin: str | None = None
    rp_id: str | None = None
    required: bool = False
    ceremonies: Ceremonies = field(default_factory=Ceremonies)

    @classmethod
    def from_config(cls, config: ConsoleConfig) -> SecurityKeys:
        return cls(config.public_origin, config.rp_id, config.require_security_key)

    def required_for(self, role: str) -> bool:
        return self.required and role in ("supervisor", "admin")

    def refuse_code(self) -> Callable[[Connection, Any], str | None] | None:
        """For ``logins.login``: a right code is refused for a supervisor or admin with a key
        when keys are required."""
        if not self.required:
            return None

        def refuse(conn: Connection, row: Any) -> str | None:
            if self.required_for(row.role) and key_count(conn, row.id) > 0:
                return REQUIRED
            return None

        return refuse
