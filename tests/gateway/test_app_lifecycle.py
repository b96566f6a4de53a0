"""One lifecycle: a start-up that fails half way stops what already runs and says why."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.app import running
from gateway.cli import main
from routing.geo import GeoError
from tests.conftest import ConfigFactory
from tests.daemon import daemon_config
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
    assert main(["--config", str(path), "serve"]) == 1
    assert f"{taken}): address already in use" in capsys.readouterr().err
