"""One lifecycle: a start-up that fails half way stops what already runs and says why."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.app import running, serve
from gateway.cli import main
from gateway.config import Config
from gateway.lifecycle import Lifecycle
from gateway.notify import Notifier
from routing.geo import GeoError
from tests.conftest import ConfigFactory
from tests.daemon import daemon_config, ensure_keyring
from tests.postfix import free_port


@pytest.fixture
def taken() -> Iterator[int]:
    """A port on 127.0.0.1 that someone else listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


async def refused(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except ConnectionRefusedError:
        return True
    writer.close()
    await writer.wait_closed()
    return False


@pytest.mark.startup
async def test_a_start_up_that_fails_half_way_leaves_nothing_running(
    make_config: ConfigFactory, taken: int
) -> None:
    """The console's port is taken: SMTP and the public web already listen, the writer and
    the stages already run. Start-up fails with the error; after it no port is open, no task
    runs and no worker thread is left."""
    smtp, http = free_port(), free_port()
    config = make_config(smtp={"listen": [f"127.0.0.1:{smtp}"]},
                         http={"listen": [f"127.0.0.1:{http}"]},
                         console={"listen": [f"127.0.0.1:{taken}"]})
    with pytest.raises(OSError):
        async with running(config):
            raise AssertionError("the gateway started on a taken port")
    assert await refused(smtp) and await refused(http)
    assert asyncio.all_tasks() == {asyncio.current_task()}
    assert left_over() == []


@pytest.mark.startup
async def test_a_part_that_fails_to_build_stops_the_parts_before_it(
    make_config: ConfigFactory, tmp_path: Path
) -> None:
    """The GeoIP database is not one: the locator fails after the database's writer and the
    gpg pool are up; they are closed again, and the error is the locator's."""
    (tmp_path / "bad.mmdb").write_bytes(b"\0" * 4096)
    config = make_config(locate={"geoip_db": str(tmp_path / "bad.mmdb")})
    with pytest.raises(GeoError):
        async with running(config):
            raise AssertionError("the gateway started without a GeoIP database")
    assert asyncio.all_tasks() == {asyncio.current_task()}
    assert left_over() == []


def left_over() -> list[str]:
    """The gateway's worker threads still alive."""
    return [t.name for t in threading.enumerate()
            if t.name.startswith(("gateway-cpu", "gpg", "sqlite-writer"))]


def test_serve_exits_1_naming_the_error(
    tmp_path: Path, taken: int, capsys: pytest.CaptureFixture[str]
) -> None:
    """``serve`` with its console port taken exits 1 and says why."""
    path = tmp_path / "config.toml"
    path.write_text(daemon_config().replace(
        '[console]\nlisten = ["127.0.0.1:0"]', f'[console]\nlisten = ["127.0.0.1:{taken}"]'))
    ensure_keyring(path)
    assert main(["--config", str(path), "serve"]) == 1
    assert f"{taken}): address already in use" in capsys.readouterr().err


class Part:
    """A service that runs until asked to stop; its stop may hang or fail instead."""

    def __init__(self, stop: str = "stops") -> None:
        self.how = stop
        self.asked = asyncio.Event()
        self.stopped = False

    async def run(self) -> None:
        await self.asked.wait()
        self.stopped = True

    async def stop(self) -> None:
        if self.how == "hangs":
            await asyncio.Event().wait()
        if self.how == "fails":
            raise RuntimeError("cannot stop")
        self.asked.set()


async def test_a_stop_that_hangs_or_fails_does_not_hold_up_shutdown() -> None:
    """A part whose stop hangs and one whose stop fails are each given the step bound and
    cancelled; the part started before them still stops, and no task is left."""
    first, hangs, fails = Part(), Part("hangs"), Part("fails")
    async with Lifecycle(0.05) as parts:
        parts.run("first", first)
        parts.run("hangs", hangs)
        parts.run("fails", fails)
    assert first.stopped and not hangs.stopped and not fails.stopped
    assert asyncio.all_tasks() == {asyncio.current_task()}


class Dies(Part):
    async def run(self) -> None:
        raise RuntimeError("the database went away for good")


async def test_a_part_that_dies_ends_the_wait_with_its_reason() -> None:
    """Waiting for a shutdown that never comes ends when a part's task dies: the reason names
    it (what ``normalise`` on its own raises as ``GatewayFailed``)."""
    async with Lifecycle(0.05) as parts:
        parts.run("normaliser", Dies())
        reason = await parts.until(asyncio.Event().wait())
    assert reason == "normaliser stopped"
    async with Lifecycle(0.05) as parts:
        parts.run("normaliser", Part())
        assert await parts.until(asyncio.sleep(0)) is None


async def test_a_reload_that_fails_stops_everything_and_tells_systemd(
    make_config: ConfigFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reading the config again fails unexpectedly: serve raises it after an orderly stop,
    the watchdog task is gone and systemd was told STOPPING=1."""
    folder = tempfile.mkdtemp(prefix="notify")  # a unix socket's path is short
    address = os.path.join(folder, "s")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as systemd:
        systemd.bind(address)
        systemd.setblocking(False)
        monkeypatch.setenv("WATCHDOG_USEC", "60000000")
        monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
        reload_requested = asyncio.Event()
        reload_requested.set()

        def load_config() -> Config:
            raise RuntimeError("the config's disk is gone")

        notifier = Notifier(address)
        with pytest.raises(RuntimeError, match="disk is gone"):
            await serve(make_config(), shutdown_trigger=asyncio.Event().wait,
                        notifier=notifier, reload_requested=reload_requested,
                        load_config=load_config)
        notifier.close()
        heard = []
        with contextlib.suppress(BlockingIOError):
            while True:
                heard.append(systemd.recv(4096).decode())
    os.unlink(address)
    os.rmdir(folder)
    assert any(line.startswith("WATCHDOG=1") for line in heard)
    assert heard[-1] == "STOPPING=1"
    assert asyncio.all_tasks() == {asyncio.current_task()}
    assert left_over() == []
