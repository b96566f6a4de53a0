"""The daemon as a process: systemd notifications, orderly stop, and no loss on SIGKILL."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.daemon import Daemon, daemon_config
from tests.smtp_client import RawSession, deliver, queued_reference, report

CONFIG = daemon_config()


@pytest.fixture
async def daemon(tmp_path: Path) -> AsyncIterator[Daemon]:
    config = tmp_path / "config.toml"
    config.write_text(CONFIG)
    d = Daemon(config, tmp_path)
    yield d
    await d.close()


def stored_references(tmp_path: Path) -> set[str]:
    with contextlib.closing(sqlite3.connect(tmp_path / "var" / "gateway.db")) as db:
        return {r for (r,) in db.execute("SELECT reference FROM submissions")}


async def test_ready_then_stopping_and_exit_0_on_sigterm(daemon: Daemon, tmp_path: Path) -> None:
    """READY=1 comes once the listener is up; SIGTERM gives STOPPING=1 and exit code 0."""
    await daemon.start()
    code, text = await deliver(daemon.smtp_port, report(1))
    assert code == 250
    daemon.send_signal(signal.SIGTERM)
    await daemon.wait_for("STOPPING=1")
    assert await daemon.wait() == 0
    assert stored_references(tmp_path) == {queued_reference(text)}
    assert '"event": "gateway.stopped"' in daemon.log()


async def test_sigint_stops_an_idle_session_with_421(daemon: Daemon) -> None:
    """Ctrl-C stops the daemon in order: an open session is told 421, the exit code is 0."""
    await daemon.start()
    session = await RawSession.open(daemon.smtp_port)
    daemon.send_signal(signal.SIGINT)
    assert (await session.reply()).startswith("421")
    await session.close()
    assert await daemon.wait() == 0


async def _client(port: int, numbers: range, attempted: set[int], acked: dict[int, str]) -> None:
    """Send reports one after another on fresh connections until the server goes away."""
    for n in numbers:
        attempted.add(n)
        try:
            code, text = await deliver(port, report(f"kill-{n}"))
        except Exception:  # the daemon was killed: connection refused, reset or cut short
            return
        if code == 250:
            acked[n] = queued_reference(text)


async def test_no_acknowledged_report_is_lost_when_killed(daemon: Daemon, tmp_path: Path) -> None:
    """SIGKILL in the middle of a stream from several clients loses no acknowledged report, and
    resending the unacknowledged ones afterwards stores each message exactly once."""
    await daemon.start()
    attempted: set[int] = set()
    acked: dict[int, str] = {}
    clients = [
        asyncio.create_task(
            _client(daemon.smtp_port, range(i * 1000, i * 1000 + 1000), attempted, acked))
        for i in range(8)
    ]
    async with asyncio.timeout(60):
        while len(acked) < 300:
            await asyncio.sleep(0.005)
    daemon.send_signal(signal.SIGKILL)
    await daemon.wait()
    await asyncio.gather(*clients)
    assert len(acked) >= 300

    stored = stored_references(tmp_path)
    assert set(acked.values()) <= stored

    # The senders retry what was never acknowledged: duplicates are recognised, nothing doubles.
    await daemon.start()
    for n in sorted(attempted - set(acked)):
        code, text = await deliver(daemon.smtp_port, report(f"kill-{n}"))
        assert code == 250
        acked[n] = queued_reference(text)
    daemon.send_signal(signal.SIGTERM)
    assert await daemon.wait() == 0
    assert stored_references(tmp_path) >= set(acked.values())
    with contextlib.closing(sqlite3.connect(tmp_path / "var" / "gateway.db")) as db:
        (count,) = db.execute("SELECT count(*) FROM submissions").fetchone()
    assert count == len(attempted) == len(set(acked.values()))


async def test_second_sigint_forces_exit(tmp_path: Path) -> None:
    """When an orderly stop is stuck (a commit waits on a lock), a second Ctrl-C exits at once."""
    config = tmp_path / "config.toml"
    config.write_text(CONFIG.replace('"3s"', '"60s"\nlog_level = "debug"')
                      + '[database]\nbusy_timeout = "60s"\n')
    daemon = Daemon(config, tmp_path)
    try:
        await daemon.start()
        with contextlib.closing(
            sqlite3.connect(tmp_path / "var" / "gateway.db", isolation_level=None)
        ) as locker:
            locker.execute("BEGIN EXCLUSIVE")
            stuck = asyncio.create_task(deliver(daemon.smtp_port, report(1)))
            await daemon.wait_for_log("writer.batch_started")  # the commit is now blocked
            daemon.send_signal(signal.SIGINT)
            await daemon.wait_for("STOPPING=1")
            daemon.send_signal(signal.SIGINT)
            assert await daemon.wait(timeout=10) == 1
            locker.execute("ROLLBACK")
        # The sender never got a reply: its connection was cut.
        with pytest.raises(Exception):  # noqa: B017 - any client-side connection error
            await stuck
    finally:
        await daemon.close()
