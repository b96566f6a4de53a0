"""The daemon speaks systemd's notify protocol: watchdog pings from the loop with status
lines, and reloads on SIGHUP without dropping a session."""

from __future__ import annotations

import asyncio
import re
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.daemon import Daemon, daemon_config
from tests.smtp_client import RawSession, queued_reference

CONFIG = daemon_config()


@pytest.fixture
async def daemon(tmp_path: Path) -> AsyncIterator[Daemon]:
    (tmp_path / "config.toml").write_text(CONFIG)
    d = Daemon(tmp_path / "config.toml", tmp_path)
    yield d
    await d.close()


async def test_watchdog_pings_at_half_the_interval_with_queue_depths(daemon: Daemon) -> None:
    """WATCHDOG=1 every WATCHDOG_USEC / 2, each with a STATUS line of the queues."""
    await daemon.start(env={"WATCHDOG_USEC": "1000000"})  # 1 s: a ping every 0.5 s
    loop = asyncio.get_running_loop()
    started = loop.time()
    pings = []
    statuses = []
    for _ in range(4):
        message = await daemon.wait_for("WATCHDOG=1", timeout=5)
        pings.append(loop.time())
        assert "STATUS=serving" in message, message
        statuses.append(message)
    # The first ping goes out before any count; later ones carry the last known depths.
    assert re.search(r"STATUS=serving; to normalise \d+, to locate \d+", statuses[-1])
    spacing = (pings[-1] - pings[0]) / 3
    assert 0.3 < spacing < 0.9, spacing  # about 0.5 s; the loop is alive to send each one
    assert pings[-1] - started < 5
    daemon.send_signal(signal.SIGTERM)
    assert await daemon.wait() == 0


async def test_no_watchdog_unless_systemd_asks(daemon: Daemon) -> None:
    """Without WATCHDOG_USEC there are no pings."""
    await daemon.start()
    await asyncio.sleep(1.0)
    daemon.send_signal(signal.SIGTERM)
    await daemon.wait_for("STOPPING=1")
    assert not any("WATCHDOG=1" in m for m in daemon.messages)
    assert await daemon.wait() == 0


async def test_a_reload_keeps_the_open_session_and_a_bad_config_is_refused(
    daemon: Daemon, tmp_path: Path
) -> None:
    """SIGHUP: RELOADING=1 (with MONOTONIC_USEC), then READY=1; an SMTP session open across it
    completes; a config with an error is refused and the old one keeps serving."""
    await daemon.start()
    session = await RawSession.open(daemon.smtp_port)
    assert (await session.command("EHLO reporter.example")).startswith("250")
    assert (await session.command("MAIL FROM:<a@example.org>")).startswith("250")
    config = tmp_path / "config.toml"
    config.write_text(CONFIG + """
[routing.destinations.police]
email = "cp@police.test"
key = "0123456789ABCDEF0123456789ABCDEF01234567"
[gpg]
warn_days = 10
""")
    daemon.send_signal(signal.SIGHUP)
    reloading = await daemon.wait_for("RELOADING=1")
    assert re.search(r"MONOTONIC_USEC=\d+", reloading)
    ready = await daemon.wait_for("READY=1")
    assert "reloaded" in ready
    assert (await session.command("RCPT TO:<report@hotline.test>")).startswith("250")
    assert (await session.command("DATA")).startswith("354")
    reply = await session.command(
        b"Subject: across a reload\r\n\r\nhttp://example.com/reload\r\n.\r\n")
    queued_reference(reply.removeprefix("250 "))
    await session.close()
    await daemon.wait_for_log("gateway.reloaded")

    config.write_text(CONFIG.replace('[smtp]\n', '[smtp]\nbogus = 1\n'))  # an unknown key
    daemon.send_signal(signal.SIGHUP)
    await daemon.wait_for("RELOADING=1")
    refused = await daemon.wait_for("READY=1")
    assert "reload refused" in refused
    await daemon.wait_for_log("gateway.reload_refused")
    session = await RawSession.open(daemon.smtp_port)  # still serving
    await session.close()
    daemon.send_signal(signal.SIGTERM)
    assert await daemon.wait() == 0
