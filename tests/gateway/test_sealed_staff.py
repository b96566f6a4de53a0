"""Staff secrets and words sealed at rest: TOTP secrets and assessment notes are ciphertext in
the database, work and read as before, and one that does not open fails that user or that
record only, named, never a crash."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyotp
from aiohttp import web
from aiohttp.test_utils import TestServer
from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine
from structlog.testing import capture_logs

from gateway.compose import make_locator
from gateway.console import assess as actions
from gateway.console import people
from gateway.console.accounts import NewUser, Staff, add_user, create_token
from gateway.console.base import SESSION_COOKIE
from gateway.console.fairgate import FairGate
from gateway.console.logins import Guard, LoginPolicy, LoginResult, login
from gateway.console.throttle import SourceThrottle
from gateway.console.web import build_app, make_console
from gateway.store.backend import WriteBackend
from gateway.store.case_view import UNREADABLE, get_case, list_cases
from gateway.store.ids import uuid7
from gateway.store.sealed import open_value, seal_rows, seal_value, sealer_of
from gateway.store.tables import assessments, audit_log, cases, outbox, users
from tests.conftest import ConfigFactory
from tests.console_client import StaffClient, code, ready_user
from tests.passwords import CHEAP

T0 = datetime(2026, 12, 1, 9, tzinfo=UTC)
NOTE = "seen on note-distinct-host.example, as reporter@note-distinct.example said"


def at_rest(engine: AsyncEngine) -> bytes:
    """Every byte SQLite keeps of the database: the file, its WAL and shared memory."""
    path = Path(str(engine.url.database))
    return b"".join(p.read_bytes() for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm"))
                    if p.exists())


def absent(disk: bytes, text: str) -> bool:
    return text.encode() not in disk and text.encode("utf-16-le") not in disk


def _guard() -> Guard:
    throttle = SourceThrottle()
    return Guard(throttle, FairGate(2, rank=throttle.failures), CHEAP)


async def _login(backend: WriteBackend, guard: Guard, new: NewUser, moment: datetime,
                 source: str = "192.0.2.1") -> LoginResult:
    return await login(backend, guard, new.name, new.password,
                       pyotp.TOTP(new.totp_secret).at(moment), source=source, now=moment,
                       policy=LoginPolicy())


async def _user(backend: WriteBackend, name: str) -> Any:
    return await backend.transaction(lambda conn: conn.execute(
        select(users).where(users.c.name == name)).one())


async def test_totp_secrets_are_sealed_and_logins_open_them(
    engine: AsyncEngine, backend: WriteBackend
) -> None:
    """``users add`` and ``reset-totp`` store the secret sealed to its user; a login checks
    the code against it as before."""
    ana = await add_user(backend, "ana", "analyst", now=T0, passwords=CHEAP)
    row = await _user(backend, "ana")
    assert row.totp_secret.startswith(b"\x01")
    assert ana.totp_secret.encode() not in row.totp_secret
    assert open_value(sealer_of(engine), users.c.totp_secret, row.id,
                      row.totp_secret) == ana.totp_secret
    assert (await _login(backend, _guard(), ana, T0)).staff is not None
    again = replace(await people.reset_totp(backend, "ana", actor="root", now=T0),
                    password=ana.password)
    later = T0 + timedelta(minutes=1)
    assert (await _login(backend, _guard(), ana, later)).staff is None  # the old secret
    assert (await _login(backend, _guard(), again, later + timedelta(seconds=30))).staff \
        is not None
    stored = (await _user(backend, "ana")).totp_secret
    assert again.totp_secret.encode() not in stored
    if engine.dialect.name == "sqlite":
        disk = at_rest(engine)
        assert absent(disk, ana.totp_secret) and absent(disk, again.totp_secret)


async def test_a_totp_secret_that_does_not_open_refuses_that_user_only(
    engine: AsyncEngine, backend: WriteBackend
) -> None:
    """A secret copied from another user, or altered by one byte, does not open: that user's
    login fails (no wrong code counted), logged and audited with the user id and never the
    secret; everyone else logs in."""
    ana = await add_user(backend, "ana", "analyst", now=T0, passwords=CHEAP)
    bob = await add_user(backend, "bob", "analyst", now=T0, passwords=CHEAP)
    cid = await add_user(backend, "cid", "analyst", now=T0, passwords=CHEAP)
    ana_row, bob_row = await _user(backend, "ana"), await _user(backend, "bob")

    def tamper(conn: Any) -> None:
        conn.execute(update(users).where(users.c.id == ana_row.id)
                     .values(totp_secret=bob_row.totp_secret))
        stored = bob_row.totp_secret
        flipped = stored[:-10] + bytes((stored[-10] ^ 1,)) + stored[-9:]
        conn.execute(update(users).where(users.c.id == bob_row.id)
                     .values(totp_secret=flipped))

    await backend.transaction(tamper)
    guard = _guard()
    with capture_logs() as logs:
        assert await _login(backend, guard, ana, T0, "192.0.2.1") == LoginResult(None)
        assert await _login(backend, guard, bob, T0, "192.0.2.2") == LoginResult(None)
        assert (await _login(backend, guard, cid, T0, "192.0.2.3")).staff is not None
    unreadable = [e for e in logs if e["event"] == "console.totp_secret_unreadable"]
    assert [e["user_id"] for e in unreadable] == [str(ana_row.id), str(bob_row.id)]
    assert all(e["log_level"] == "error" for e in unreadable)
    assert f"users.totp_secret of record {ana_row.id}" in unreadable[0]["error"]
    for secret in (ana.totp_secret, bob.totp_secret, cid.totp_secret):
        assert secret not in repr(logs)
    trail = await backend.transaction(lambda conn: conn.execute(
        select(audit_log.c.actor, audit_log.c.action).order_by(audit_log.c.seq)).all())
    assert [tuple(t) for t in trail[-3:]] == [
        ("ana", "user.login_failed"), ("bob", "user.login_failed"), ("cid", "user.login")]
    assert (await _user(backend, "ana")).failed_logins == 0  # not a wrong code
    # An admin gives a new secret: the user is back.
    again = replace(await people.reset_totp(backend, "ana", actor="root", now=T0),
                    password=ana.password)
    later = T0 + timedelta(minutes=1)
    assert (await _login(backend, guard, again, later, "192.0.2.4")).staff is not None


async def _case(backend: WriteBackend, n: int) -> uuid.UUID:
    """A case waiting for assessment (a report without a URL), every sealed column sealed."""
    case_id = uuid7()
    row = {"id": case_id, "kind": "no_url", "status": "awaiting_assessment",
           "url_key": uuid.uuid4().hex, "report_count": 1,
           "first_reported": T0 + timedelta(seconds=n), "last_reported": T0,
           "created_at": T0, "status_changed_at": T0}
    await backend.transaction(lambda conn: conn.execute(
        insert(cases), seal_rows(sealer_of(conn), cases, [row])))
    return case_id


async def test_a_note_is_sealed_and_every_view_shows_it(
    engine: AsyncEngine, backend: WriteBackend
) -> None:
    """An analyst's note is ciphertext in the database; the action's answer, the case and the
    queue show it as written; with four-eyes the approval's answer too."""
    await add_user(backend, "ana", "analyst", now=T0, passwords=CHEAP)
    await add_user(backend, "sue", "supervisor", now=T0, passwords=CHEAP)
    ana_row, sue_row = await _user(backend, "ana"), await _user(backend, "sue")
    ana = Staff(ana_row.id, "ana", "analyst")
    sue = Staff(sue_row.id, "sue", "supervisor")
    legal, illegal = await _case(backend, 1), await _case(backend, 2)
    done = await actions.assess(backend, ana, legal, actions.Assessment(
        "legal", "doubtful", note=NOTE), four_eyes=True, now=T0)
    assert done.assessment["note"] == NOTE
    # An illegal verdict on a report without a URL is refused: a URL case stands in for it.
    await backend.transaction(lambda conn: conn.execute(
        update(cases).where(cases.c.id == illegal).values(kind="url")))
    await actions.assess(backend, ana, illegal, actions.Assessment(
        "illegal", "baseline", note=NOTE + " (2)"), four_eyes=True, now=T0)
    approved = await actions.approve(backend, sue, illegal, now=T0)
    assert approved.assessment["note"] == NOTE + " (2)"
    async with engine.connect() as conn:
        stored = (await conn.execute(select(assessments.c.note))).scalars().all()
        case = await get_case(conn, legal)
        queue = await list_cases(conn)
    assert len(stored) == 2 and all(s.startswith(b"\x01") and b"distinct" not in s
                                    for s in stored)
    assert case is not None and case["assessment"]["note"] == NOTE
    assert [c["assessment"]["note"] for c in queue] == [NOTE, NOTE + " (2)"]
    if engine.dialect.name == "sqlite":
        assert absent(at_rest(engine), "note-distinct")


async def test_a_note_that_does_not_open_is_named_and_the_queue_is_served(
    engine: AsyncEngine, backend: WriteBackend
) -> None:
    """A note moved to another verdict does not open: the queue and the case show a marker
    naming the record in its place; the other cases read as before."""
    await add_user(backend, "ana", "analyst", now=T0, passwords=CHEAP)
    row = await _user(backend, "ana")
    ana = Staff(row.id, "ana", "analyst")
    first, second = await _case(backend, 1), await _case(backend, 2)
    for case_id, note in ((first, "first note"), (second, "second note")):
        await actions.assess(backend, ana, case_id, actions.Assessment(
            "legal", "doubtful", note=note), four_eyes=False, now=T0)

    def swap(conn: Any) -> uuid.UUID:
        rows = conn.execute(select(assessments.c.id, assessments.c.case_id,
                                   assessments.c.note)).all()
        by_case = {r.case_id: r for r in rows}
        conn.execute(update(assessments).where(assessments.c.id == by_case[first].id)
                     .values(note=by_case[second].note))
        return uuid.UUID(str(by_case[first].id))

    moved = await backend.transaction(swap)
    async with engine.connect() as conn:
        queue = await list_cases(conn)
        case = await get_case(conn, first)
    notes = [c["assessment"]["note"] for c in queue]
    assert notes[0].startswith(UNREADABLE)
    assert f"assessments.note of record {moved}" in notes[0]
    assert "second note" not in notes[0] and notes[1] == "second note"
    assert case is not None and case["assessment"]["note"] == notes[0]


async def test_the_console_names_a_record_that_does_not_open(
    engine: AsyncEngine, backend: WriteBackend, make_config: ConfigFactory
) -> None:
    """A sealed value that does not open in a console handler answers a page or JSON that
    names the record (never a bare 500); a user whose TOTP secret does not open gets the
    ordinary failed login, and others log in."""
    config = make_config()
    locator = await make_locator(config)
    console = await asyncio.to_thread(  # it reads the templates
        make_console, config.console, backend, engine, locator, four_eyes=False)
    item, elsewhere = uuid7(), uuid7()
    sealed = seal_value(sealer_of(engine), outbox.c.last_error, item, "a host's answer")

    async def broken(request: web.Request) -> web.Response:
        open_value(sealer_of(engine), outbox.c.last_error, elsewhere, sealed)
        raise AssertionError("opened as another record")

    app = build_app(console)
    app.router.add_get("/api/v1/test-broken", broken)
    app.router.add_get("/test-broken", broken)
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    client = StaffClient(str(server.make_url("")).rstrip("/"))
    try:
        ana = await ready_user(backend, "ana")
        bob = await ready_user(backend, "bob")
        token = await create_token(backend, "ana", now=datetime.now(UTC))
        async with client.http.get(client.base + "/api/v1/test-broken",
                                   headers={"Authorization": f"Bearer {token}"}) as answer:
            assert answer.status == 500
            body = await answer.json()
        assert body["error"].startswith(f"cannot open outbox.last_error of record {elsewhere}")
        row = await _user(backend, "ana")
        session = await console.sessions.start(row.id, now=console.now())
        client.http.cookie_jar.update_cookies({SESSION_COOKIE: session})
        status, page = await client.get("/test-broken")
        assert status == 500 and f"outbox.last_error of record {elsewhere}" in page
        assert "a host" not in page and "Traceback" not in page

        bob_row = await _user(backend, "bob")
        await backend.transaction(lambda conn: conn.execute(
            update(users).where(users.c.id == bob_row.id)
            .values(totp_secret=row.totp_secret)))
        other = StaffClient(client.base)
        try:
            assert (await other.login(bob))[0] == 401
            assert (await other.login(ana, totp=code(ana.totp_secret, 1)))[0] == 200
        finally:
            await other.close()
    finally:
        await client.close()
        await server.close()
        await locator.resolver.close()
