"""Logging in with password and TOTP: throttled per source and per account, never locked out.

Two throttles, each slowing only what its victim cannot be blamed for:

- **Per source** (``gateway.console.throttle``): every failed attempt (wrong password, unknown
  name, wrong code) makes that address wait longer before its next one. A wrong password never
  touches the account, so nobody elsewhere can stop its owner from logging in.
- **Per account**: only attempts with the right password and a wrong or replayed code count,
  which only someone who knows the password can make. After ``lockout_after`` of them in a row,
  each further attempt waits ``lockout`` doubling up to ``MAX_CODE_DELAY``; a success resets
  the count. That bounds how fast anyone holding the password can guess the code (the README
  and the tests compute the expected time: years). An attempt during the account's wait is
  answered exactly like a wrong password (after the same hash, its code not accepted): a distinct
  answer could only follow a right password. Admins see the wait (a warning, the audit, the
  state ``waiting``).

A code is accepted once: its time step is stored and a code of that step or an earlier one is
refused (RFC 6238 section 5.2). Attempts the source must wait for are refused before anything
is hashed or checked, and do not count. Failures say only "login failed", whatever the reason;
unknown names cost the same hash, and the audit records for them the source's keyed hash and count,
never the typed text (a password typed into the name field must not stay in the trail).
"""

from __future__ import annotations

import hmac
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import pyotp
import structlog
from sqlalchemy import and_, or_, select, update
from sqlalchemy.engine import Connection

from gateway.console.accounts import Staff, hash_work
from gateway.console.devices import DeviceCookies
from gateway.console.fairgate import FairGate
from gateway.console.passwords import Passwords
from gateway.console.throttle import Backoff, Outcome, SourceThrottle
from gateway.store.audit import AuditEntry, record
from gateway.store.backend import WriteBackend
from gateway.store.sealed import open_value, sealer_of
from gateway.store.sealing import SealBroken
from gateway.store.tables import users
from gateway.store.text import plain_text
from gateway.store.times import aware

log = structlog.get_logger("gateway.console")

#: The time steps a code may belong to: now, and one either side for clock drift.
TOTP_STEPS = (0, -1, 1)
TOTP_DIGITS = 6
#: The longest an account's next attempt waits after wrong codes with the right password.
MAX_CODE_DELAY = timedelta(minutes=10)


@dataclass(frozen=True, slots=True)
class LoginPolicy:
    """The account's throttle: how long to wait after ``failures`` wrong codes in a row."""

    lockout_after: int = 5
    lockout: timedelta = timedelta(minutes=1)

    @property
    def backoff(self) -> Backoff:
        return Backoff(free=self.lockout_after, base=self.lockout.total_seconds(),
                       cap=MAX_CODE_DELAY.total_seconds())

    def delay(self, failures: int) -> timedelta:
        return timedelta(seconds=self.backoff.delay(failures))


@dataclass(frozen=True, slots=True)
class LoginResult:
    """A login's outcome: the user, or a failure, or a refusal to try before ``retry_after``
    (an account's wait is never told: it answers as a failure)."""

    staff: Staff | None
    #: Seconds to wait: the attempt was not tried (its source must wait).
    retry_after: float = 0.0
    #: "source" when the source's throttle refused it.
    throttled: str | None = None
    #: Why a right password was refused whatever the code (a security key is required; the
    #: code was not checked). Answered as a failure, and counted as one.
    refused: str | None = None


@dataclass(frozen=True, slots=True)
class Guard:
    """The shared state of logins: the per-source throttle, the fair hashing queue, the
    password hashing, and the key that marks browsers their users logged in with before."""

    throttle: SourceThrottle
    gate: FairGate
    passwords: Passwords
    devices: DeviceCookies = field(default_factory=DeviceCookies)


def new_guard(slots: int, passwords: Passwords) -> Guard:
    """The console's guard: ``slots`` hashes at once, ranked by each source's standing."""
    throttle = SourceThrottle()
    return Guard(throttle, FairGate(slots, rank=throttle.standing), passwords)


def totp_step(secret: str, code: str, moment: datetime) -> int | None:
    """The time step ``code`` is valid for among ``TOTP_STEPS``, or None."""
    if not re.fullmatch(rf"\d{{{TOTP_DIGITS}}}", code):
        return None
    totp = pyotp.TOTP(secret, digits=TOTP_DIGITS)
    for offset in TOTP_STEPS:
        step = totp.timecode(moment) + offset
        if hmac.compare_digest(totp.generate_otp(step), code):
            return step
    return None


def _account_wait(row: Any, now: datetime) -> float:
    if row is None or row.locked_until is None:
        return 0.0
    return max(0.0, (aware(row.locked_until) - now).total_seconds())


#: Asked, once a code is right, whether this user (the row) may log in with a code: why not.
RefuseCode = Callable[[Connection, Any], str | None]


async def login(
    backend: WriteBackend, guard: Guard, name: str, password: str, code: str | None, *,
    source: str, now: datetime, policy: LoginPolicy, peer: str | None = None,
    device: str | None = None, refuse_code: RefuseCode | None = None,
) -> LoginResult:
    """Try a login from ``source`` (a ``throttle.source_key``); ``peer`` goes to the audit.

    ``code`` None is the first step of a login with a security key: the password only. Its
    result (the user, when the password is right) is never shown as such: the key step
    answers alike either way (``gateway.console.securitykeys``), and the attempt counts as
    a failure for the source and the device until the key step succeeds and forgives it, so
    that the throttle's answer does not tell a right password either.

    ``device`` is the browser's known-browser cookie: if it names this user and is still
    trusted (``gateway.console.devices``), the attempt passes its address's wait and is
    hashed early, one at a time per cookie; its failures count against the cookie, which
    soon stops being trusted. Otherwise the attempt is an ordinary one from its address.
    """
    if not (plain_text(name) and plain_text(password) and len(name) <= 64):
        name, password = "", ""
    throttle, devices = guard.throttle, guard.devices
    known = devices.user(device, now)
    row: Any = None
    if known is not None and name:  # read first: is the cookie this user's?
        row = await backend.transaction(_reader(name))
    cookie = device if known is not None and row is not None and row.id == known else None
    trusted = cookie is not None and devices.admit(cookie)
    if not trusted:
        wait = throttle.admit(source)
        if wait > 0:
            return LoginResult(None, wait, "source")
        if known is None and name:
            row = await backend.transaction(_reader(name))
    outcome: Outcome = "failed"
    try:
        result = await _attempt(backend, guard, row, password, code, source=source, now=now,
                                policy=policy, peer=peer, urgent=trusted,
                                refuse_code=refuse_code)
        # A refusal (a key is required) answers and counts as a failure: it follows a right
        # password whatever the code, so a distinct answer would tell the password.
        if result.staff is not None and code is not None:
            outcome = "succeeded"
        return result
    finally:
        if cookie is not None:
            devices.finish(cookie, admitted=trusted, failed=outcome == "failed")
        if not trusted:
            throttle.finish(source, outcome, None if row is None else row.id.hex)


def _reader(name: str) -> Callable[[Connection], Any]:
    def read(conn: Connection) -> Any:
        return conn.execute(select(users).where(users.c.name == name)).first()

    return read


async def _attempt(
    backend: WriteBackend, guard: Guard, row: Any, password: str, code: str | None, *,
    source: str, now: datetime, policy: LoginPolicy, peer: str | None, urgent: bool,
    refuse_code: RefuseCode | None = None,
) -> LoginResult:
    # An account that must wait (after wrong codes with the right password) is answered like
    # a wrong password, after the same hash (``decide`` tells, from the row as it is then): a
    # distinct answer could only follow a right password, and would tell a guesser which.
    passwords = guard.passwords
    throttle = guard.throttle
    password_ok = await hash_work(guard.gate, source, lambda: passwords.verify(
        row.password_hash if row is not None else passwords.dummy_hash, password), urgent=urgent)
    label = throttle.label(source)
    counts = {"source_failures": throttle.failures(source) + 1,
              "source_refused": throttle.take_refused(source)}
    waited: list[float] = []
    unreadable: list[SealBroken] = []

    def decide(conn: Connection) -> LoginResult:
        if row is None:
            record(conn, [AuditEntry("anonymous", "user.login_failed", details={
                "reason": "unknown user", "source": label, **counts})], at=now)
            return LoginResult(None)
        details: dict[str, Any] = {"user": row.name, "source": label}
        if peer is not None:
            details["peer"] = peer
        # Read again inside this transaction: logins racing each other see each other's
        # failures and delays, so running many at once evaluates no more codes.
        current = conn.execute(select(users).where(users.c.id == row.id)).one()
        # Asked whatever the password, so that a right one does no more work than a wrong one.
        refusal = refuse_code(conn, current) \
            if refuse_code is not None and code is not None else None
        # The account's wait is for code guesses: the password step of a login with a key
        # (no code) does not wait for it, nor does the key.
        if code is not None and (waiting := _account_wait(current, now)) > 0:
            waited.append(waiting)
            record(conn, [AuditEntry(row.name, "user.login_failed", details={
                **details, **counts, "reason": "account waiting",
                "wait_seconds": math.ceil(waiting)})], at=now)
            return LoginResult(None)
        if current.disabled or not password_ok:
            reason = "disabled" if current.disabled else "password"
            record(conn, [AuditEntry(row.name, "user.login_failed",
                                     details={**details, **counts, "reason": reason})],
                   at=now)
            return LoginResult(None)
        if code is None:
            # The password was right: the security key step decides. Audited as one entry,
            # as a wrong password is, so that both do the same work (lookups and writes).
            record(conn, [AuditEntry(row.name, "user.login_password_step", details={
                **details, **counts, "factor": "security key"})], at=now)
            return LoginResult(Staff(row.id, row.name, row.role, current.must_change_password))
        if refusal is not None:
            # A key is required: the code is neither evaluated nor counted (wrong codes do not
            # make the account wait), and the answer is a failure's.
            record(conn, [AuditEntry(row.name, "user.login_refused", details={
                **details, **counts, "reason": "security key required"})], at=now)
            return LoginResult(None, refused=refusal)
        try:
            secret = open_value(sealer_of(conn), users.c.totp_secret, row.id, row.totp_secret)
        except SealBroken as exc:
            # Not the user's doing: refused without counting a wrong code; an admin resets
            # the secret (``users reset-totp``). The trail names the account, not the value.
            unreadable.append(exc)
            record(conn, [AuditEntry(row.name, "user.login_failed", details={
                **details, **counts, "reason": "totp secret unreadable",
                "user_id": str(row.id)})], at=now)
            return LoginResult(None)
        step = totp_step(secret, code, now)
        if step is not None:
            # One statement decides a replay and the delay, even with logins racing.
            fresh = or_(users.c.totp_last_step.is_(None), users.c.totp_last_step < step)
            open_now = or_(users.c.locked_until.is_(None), users.c.locked_until <= now)
            done: dict[str, Any] = {"totp_last_step": step, "failed_logins": 0,
                                    "locked_until": None, "last_login_at": now}
            if conn.execute(
                update(users).where(and_(users.c.id == row.id, fresh, open_now,
                                         users.c.disabled.is_(False)))
                .values(**done)
            ).rowcount == 1:
                record(conn, [AuditEntry(row.name, "user.login", details=details)], at=now)
                return LoginResult(Staff(row.id, row.name, row.role,
                                         current.must_change_password))
        failures = conn.execute(
            update(users).where(users.c.id == row.id)
            .values(failed_logins=users.c.failed_logins + 1)
            .returning(users.c.failed_logins)
        ).scalar_one()
        delay = policy.delay(failures)
        if delay:
            conn.execute(update(users).where(users.c.id == row.id)
                         .values(locked_until=now + delay))
        record(conn, [AuditEntry(row.name, "user.login_failed", details={
            **details, **counts, "reason": "replayed code" if step is not None else "code",
            "code_failures": failures, "delay_seconds": int(delay.total_seconds())})],
               at=now)
        return LoginResult(None)

    result = await backend.transaction(decide)
    if result.staff is not None and row is not None and passwords.stronger(row.password_hash):
        # The right password, hashed with weaker parameters than ship (say, after the test
        # suite's setting was switched back): hashed again with the shipped ones, unless it
        # was changed meanwhile.
        made = await hash_work(guard.gate, source, lambda: passwords.hash(password))
        await backend.transaction(lambda conn: conn.execute(
            update(users).where(users.c.id == row.id,
                                users.c.password_hash == row.password_hash)
            .values(password_hash=made)))
        log.info("console.password_rehashed", user_id=str(row.id))
    if unreadable:
        log.error("console.totp_secret_unreadable", user_id=str(row.id),
                  error=str(unreadable[0]))
    if waited:
        # Visible to admins only (and in the audit, and as "waiting" in ``users list``):
        # whoever makes the account wait knows its password, which must be changed.
        log.warning("console.login_account_waiting", user_id=str(row.id),
                    seconds=math.ceil(waited[0]))
    return result
