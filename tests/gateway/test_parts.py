"""``[gateway] parts``: an instance runs only the parts it is given, their listeners and their
tasks; intake on one instance and the stages on another share the work through the database."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import sqlite3
from collections.abc import AsyncIterator
from contextlib import closing
from pathlib import Path

import aiohttp
import pytest
from sqlalchemy import func, select

from gateway import config as config_module
from gateway.app import Gateway, running
from gateway.reloading import reload
from gateway.store.tables import cases, submissions
from tests.cluster import StartOne, cluster, until
from tests.conftest import BACKENDS, ConfigFactory, copy_migrated_sqlite, no_blocking_calls
from tests.daemon import Daemon, daemon_config
from tests.dns_server import DnsServer
from tests.smtp_client import deliver, report


def _free_port() -> int:
    with closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _nobody_listens(port: int) -> bool:
    """Whether ``port`` can be bound here: no process listens on it."""
    with closing(socket.socket()) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


async def test_an_smtp_only_instance_takes_mail_and_opens_nothing_else(tmp_path: Path) -> None:
    """A serve with parts = ["smtp"] answers SMTP, binds no web, console or admin port and
    files nothing: the report waits, received, for an instance with the stages."""
    ports = {section: _free_port() for section in ("http", "console", "admin")}
    text = daemon_config().replace("[gateway]\n", '[gateway]\nparts = ["smtp"]\n', 1)
    for section, port in ports.items():
        text = text.replace(f'[{section}]\nlisten = ["127.0.0.1:0"]',
                            f'[{section}]\nlisten = ["127.0.0.1:{port}"]')
    config = tmp_path / "config.toml"
    config.write_text(text)
    daemon = Daemon(config, tmp_path)
    try:
        await daemon.start()
        code, _ = await deliver(daemon.smtp_port, report(1))
        assert code == 250
        status = next(m for m in daemon.messages if "READY=1" in m)
        assert "smtp 127.0.0.1:" in status
        assert not any(word in status for word in ("http ", "console ", "admin "))
        assert all(_nobody_listens(port) for port in ports.values())
        ready = next(json.loads(line) for line in daemon.log_path.read_text().splitlines()
                     if '"gateway.ready"' in line)
        assert ready["parts"] == ["smtp"] and ready["http"] == [] and ready["console"] == []
        daemon.send_signal(signal.SIGTERM)
        assert await daemon.wait() == 0
    finally:
        await daemon.close()
    with closing(sqlite3.connect(tmp_path / "var" / "gateway.db")) as db:
        assert db.execute("SELECT status FROM submissions").fetchall() == [("received",)]


@pytest.fixture(params=BACKENDS)
async def start_instance(request: pytest.FixtureRequest, make_config: ConfigFactory,
                         dns: DnsServer, mmdb: dict[str, Path]) -> AsyncIterator[StartOne]:
    async with cluster(request.param, make_config, dns, mmdb) as go:
        yield go


async def _located(gw: Gateway) -> int:
    async with gw.engine.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(cases).where(
            cases.c.located_at.is_not(None)))).scalar_one())


async def test_a_stages_instance_files_and_locates_what_an_intake_instance_took(
    start_instance: StartOne,
) -> None:
    """Intake on one instance, the stages on another: a report taken by SMTP on the first is
    read, filed and located by the second; neither does the other's work."""
    edge = await start_instance(gateway={"parts": ["smtp", "http"]})
    inside = await start_instance(gateway={"parts": ["stages", "console", "admin"]})
    assert edge.console.addresses == [] and edge.admin.addresses == []
    assert inside.smtp.addresses == [] and inside.public.addresses == []
    with no_blocking_calls():
        code, _ = await deliver(edge.smtp.addresses[0][1],
                                report(1, "Please look at http://nl.test/x"))
        assert code == 250
        assert await until("the case located", lambda: _located(inside)) == 1
    assert inside.normaliser.processed == 1 and inside.locate.located == 1
    assert edge.normaliser.processed == 0 and edge.locate.located == 0
    async with edge.engine.connect() as conn:
        assert (await conn.execute(select(submissions.c.status))).scalars().all() == ["parsed"]
    host, port = inside.admin.addresses[0]
    async with aiohttp.ClientSession() as http, \
            http.get(f"http://{host}:{port}/readyz") as response:
        body = await response.json()
    assert body["parts"] == ["stages", "console", "admin"]
    assert body["checks"]["listeners"] == "up"


@pytest.mark.parametrize(("parts", "problem"), [
    ([], "gateway.parts: List should have at least 1 item"),
    (["smtp", "mx"], "gateway.parts.1: Input should be 'smtp', 'http', 'console', 'admin' or"),
    (["smtp", "stages", "smtp"], "gateway.parts: names smtp more than once"),
], ids=["empty", "unknown", "twice"])
def test_a_bad_parts_list_is_a_config_error_naming_the_key(
    parts: list[str], problem: str, tmp_path: Path,
) -> None:
    """An empty list, an unknown part or one named twice: refused, the key named."""
    with pytest.raises(config_module.ConfigError) as refused:
        config_module.parse({"gateway": {"parts": parts}}, base=tmp_path)
    assert any(found.startswith(problem) for found in refused.value.problems)


async def test_a_reload_that_changes_the_parts_says_it_needs_a_restart(
    make_config: ConfigFactory,
) -> None:
    """The parts are chosen at start: a reload names them among what needs a restart."""
    config = make_config(gateway={"parts": ["smtp", "admin"]})
    await asyncio.to_thread(copy_migrated_sqlite, config)
    # Not watched for blocking calls: reading the shipped membership list is the reload's.
    async with running(config) as gw:
        assert "gateway.parts" in reload(gw, make_config(gateway={"parts": ["smtp"]}))
        assert "gateway.parts" not in reload(gw, make_config(gateway={"parts": ["smtp"]}))
