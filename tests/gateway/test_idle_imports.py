"""What ``serve`` keeps out of its memory until it is needed (issue 20: at most 150 MB peak
RSS under the intake benchmarks): Alembic only when the database is not at the shipped head;
Pillow, numpy and pdqhash with the first picture to hash; py_webauthn with the first security
key; holidays for destinations with business hours; jsonschema with the first document
checked; geoip2fast and numpy never (the builtin tables are mapped)."""

from __future__ import annotations

import asyncio
import re
import signal
import sqlite3
import subprocess
import sys
from email.message import EmailMessage
from pathlib import Path

from gateway.store import migrate
from tests.daemon import Daemon, daemon_config
from tests.dns_server import DnsServer, Zone
from tests.intake.fixtures.make_fixtures import png
from tests.smtp_client import deliver, queued_reference, report

#: Top-level packages a serving gateway loads only when it needs them (or never).
LAZY = ("alembic", "mako", "numpy", "PIL", "pdqhash", "geoip2fast", "webauthn", "holidays",
        "jsonschema")
#: Loaded by the first picture hashed.
FOR_PICTURES = ("numpy", "PIL", "pdqhash")


def _imported(log: str) -> set[str]:
    """The top-level packages the process imported, from ``-X importtime``'s lines."""
    return {match.group(1).split(".")[0]
            for match in re.finditer(r"^import time:\s+\d+ \|\s+\d+ \| *([\w.]+)$", log, re.M)}


async def _located(database: Path) -> None:
    """Until the builtin tables have given a country for the report's host."""
    async with asyncio.timeout(30):
        while True:
            with sqlite3.connect(database) as db:
                if db.execute("SELECT count(*) FROM hosting_evidence WHERE country = 'BE'"
                              ).fetchone()[0]:
                    return
            await asyncio.sleep(0.05)


def _picture_mail() -> bytes:
    message = EmailMessage()
    message["From"] = "reporter@example.test"
    message["To"] = "report@hotline.test"
    message["Subject"] = "a picture"
    message["Message-ID"] = "<picture@example.test>"
    message.set_content("This is what I saw at http://example.test/p")
    message.add_attachment(png(), maintype="image", subtype="png", filename="seen.png")
    return message.as_bytes()


async def test_serve_loads_the_heavy_modules_only_when_it_needs_them(tmp_path: Path) -> None:
    """A database at the shipped head (``db upgrade`` first): serve locates a text report
    with the builtin tables without importing any of ``LAZY`` (``-X importtime`` says what
    it imports), then loads the picture hashers with the first picture."""
    zone = Zone()
    zone.add("example.test", "A", "193.190.198.1")  # BELNET: the builtin tables say BE
    config = tmp_path / "config.toml"
    async with DnsServer(zone) as dns:
        config.write_text(daemon_config(nameserver=dns.nameserver))
        daemon = Daemon(config, tmp_path)
        subprocess.run([sys.executable, "-m", "gateway.cli", "--config", str(config), "db",
                        "upgrade"], check=True, capture_output=True, timeout=120)
        try:
            await _serve_and_send(daemon, tmp_path)
        finally:
            await daemon.close()


async def _serve_and_send(daemon: Daemon, tmp_path: Path) -> None:
    database = tmp_path / "var" / "gateway.db"
    await daemon.start(python_flags=("-X", "importtime"))
    code, text = await deliver(daemon.smtp_port, report(1))
    assert code == 250, text
    first = queued_reference(text)
    await _located(database)
    idle = daemon.log_path.read_text(errors="replace")
    assert _imported(idle) & set(LAZY) == set()
    assert {"sqlalchemy", "aiosmtpd", "gateway"} <= _imported(idle)  # the lines are read

    code, text = await deliver(daemon.smtp_port, _picture_mail())
    assert code == 250, text
    second = queued_reference(text)
    assert set(FOR_PICTURES) <= _imported(daemon.log_path.read_text(errors="replace"))
    daemon.send_signal(signal.SIGTERM)
    assert await daemon.wait() == 0
    with sqlite3.connect(database) as db:
        assert db.execute("SELECT version_num FROM alembic_version").fetchall() == \
            [(migrate.head(),)]
        assert {r for (r,) in db.execute("SELECT reference FROM submissions")} == \
            {first, second}


def test_the_shipped_head_is_alembics() -> None:
    """``migrate.head`` reads the revision files without Alembic: the same answer."""
    from alembic.script import ScriptDirectory

    assert migrate.head() == ScriptDirectory.from_config(
        migrate._alembic_config()).get_current_head()
