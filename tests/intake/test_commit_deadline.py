"""A report whose commit stalls past ``[database] commit_deadline`` gets "try again" (SMTP 451,
HTTP 503 with Retry-After) instead of an open connection; the stalled write still commits
with its batch, and the retry finds it and gets its reference: committed once, never half."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from gateway.app import Gateway
from tests.conftest import Start
from tests.gateway.test_admin import get
from tests.intake.test_web import post, stored
from tests.smtp_client import deliver, queued_reference, report
from tests.submissions import opened_submissions

#: The writer waits this long for the lock (longer than the stall), the client this long.
SETTINGS = {"database": {"busy_timeout": "60s", "commit_deadline": "500ms"}}


@asynccontextmanager
async def write_lock(database: Path) -> AsyncIterator[Callable[[], None]]:
    """Another process's write transaction on the gateway's SQLite file; the callable ends
    it (and so does leaving)."""
    locker = sqlite3.connect(database, isolation_level=None, check_same_thread=False,
                             timeout=30)
    # Off the event loop: a write the gateway has under way needs the loop to finish.
    await asyncio.to_thread(locker.execute, "BEGIN IMMEDIATE")
    held = [True]

    def release() -> None:
        if held.pop():
            locker.execute("ROLLBACK")
            locker.close()
        held.append(False)

    try:
        yield release
    finally:
        release()


def database_of(gw: Gateway) -> Path:
    return Path(str(gw.engine.url.database))


async def until_stored(gw: Gateway, count: int) -> None:
    for _ in range(600):
        if await stored(gw) == count:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{await stored(gw)} reports stored, expected {count}")


async def test_smtp_gets_451_at_the_deadline_and_the_retry_its_reference(start: Start) -> None:
    gw = await start(**SETTINGS)
    port = gw.smtp.addresses[0][1]
    async with write_lock(database_of(gw)) as release:
        code, text = await deliver(port, report(1))
        assert (code, text[:5]) == (451, "4.3.0")
        assert gw.writer.stats.late == 1
        assert await stored(gw) == 0  # nothing yet: the write waits for the lock
        release()
        await until_stored(gw, 1)  # the stalled write went on, with its batch
    code, text = await deliver(port, report(1))  # the sender's retry
    assert code == 250
    [row] = await opened_submissions(gw.engine)
    assert row["reference"] == queued_reference(text)
    assert row["message_id"] == "<1@example.test>"


async def test_the_api_gets_503_at_the_deadline_and_the_retry_its_reference(
    start: Start
) -> None:
    gw = await start(**SETTINGS)
    body, key = {"urls": ["example.test/stalled"]}, {"Idempotency-Key": "stall-1"}
    async with write_lock(database_of(gw)) as release:
        status, headers, text = await post(gw, "/api/v1/reports", json_body=body,
                                           headers=key)
        assert status == 503, text
        assert headers["Retry-After"] == "60"
        release()
        await until_stored(gw, 1)
    status, _, text = await post(gw, "/api/v1/reports", json_body=body, headers=key)
    assert status == 201, text
    [row] = await opened_submissions(gw.engine)
    assert row["reference"] == json.loads(text)["reference"]
    assert await stored(gw) == 1


async def test_the_form_gets_503_with_retry_after_at_the_deadline(start: Start) -> None:
    gw = await start(**SETTINGS)
    form = {"urls": "example.test/form-stalled", "description": "", "seen_where": "",
            "email": "", "form_id": "f" * 32}
    async with write_lock(database_of(gw)):
        status, headers, _ = await post(gw, "/report", data=form)
        assert status == 503
        assert headers["Retry-After"] == "30"
    await until_stored(gw, 1)
    status, headers, _ = await post(gw, "/report", data=form)  # the reporter sends again
    assert status == 303
    [row] = await opened_submissions(gw.engine)
    assert headers["Location"].startswith(f"/receipt?ref={row['reference']}&")


async def test_readyz_says_when_intake_is_stuck_or_failing_and_recovers(
    start: Start
) -> None:
    """Reports queued behind a commit stalled past the deadline: /readyz 503 "stuck"; a batch
    that failed: "failing"; both clear by themselves once a batch commits."""
    gw = await start(**SETTINGS)
    port = gw.smtp.addresses[0][1]

    async def intake_check() -> str:
        _, body = await get(gw, "/readyz")
        return str(json.loads(body)["checks"]["intake"])

    async with write_lock(database_of(gw)):
        late = [asyncio.create_task(deliver(port, report(n))) for n in (1, 2, 3)]
        codes = [code for code, _ in await asyncio.gather(*late)]
        assert 451 in codes
        assert (await intake_check()).startswith("stuck: ")
        status, _ = await get(gw, "/readyz")
        assert status == 503
    await until_stored(gw, 3)
    assert await intake_check() == "taking reports"



async def test_readyz_says_when_the_last_commit_failed_and_recovers(start: Start) -> None:
    gw = await start(database={"busy_timeout": "200ms"})
    port = gw.smtp.addresses[0][1]

    async def intake_check() -> str:
        _, body = await get(gw, "/readyz")
        return str(json.loads(body)["checks"]["intake"])

    assert await intake_check() == "taking reports"
    async with write_lock(database_of(gw)):
        code, _ = await deliver(port, report(1))
        assert code == 451
        assert await intake_check() == "failing: the last commit failed"
    assert (await deliver(port, report(2)))[0] == 250
    assert await intake_check() == "taking reports"
