"""Retention with a moved clock, and a backup taken while reports keep arriving."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.backup import BackupError, backup
from gateway.cli import main
from gateway.config import RetentionConfig
from gateway.retention import purge
from gateway.stats import collect_stats
from gateway.store.backend import open_write_backend
from gateway.store.ids import uuid7
from gateway.store.sealed import seal_rows
from gateway.store.tables import submissions
from tests.conftest import Start
from tests.daemon import ensure_keyring
from tests.smtp_client import deliver, queued_reference, report
from tests.submissions import opened_submissions


async def test_raw_messages_then_contacts_go_and_the_counts_stay(start: Start) -> None:
    gw = await start(intake={"keep_reporter_ip": True})
    port = gw.smtp.addresses[0][1]
    for n in range(3):
        assert (await deliver(port, report(f"r{n}", body="http://example.com/keep")))[0] == 250
    host, web_port = gw.public.addresses[0]
    async with aiohttp.ClientSession() as http, http.post(
            f"http://{host}:{web_port}/api/v1/reports",
            json={"urls": ["example.com/web"], "reporter": {"email": "me@example.org"}}) as r:
        assert r.status == 201
    async with asyncio.timeout(20):
        while (await collect_stats(gw.engine))["submissions_by_status"].get("received"):
            await asyncio.sleep(0.05)
    before = await collect_stats(gw.engine)
    backend = gw.console.context.backend
    policy = RetentionConfig(raw_message_days=30, reporter_contact_days=90)
    now = datetime.now(UTC)
    nothing = await purge(backend, policy, now=now)  # nothing old enough yet
    assert (nothing.raw_messages, nothing.contacts) == (0, 0)

    async def rows() -> list[tuple[object, ...]]:
        return [(r.raw is None, r.mail_from, r.peer_ip, r.report_text)
                for r in await opened_submissions(
                    gw.engine, submissions.c.raw, submissions.c.mail_from,
                    submissions.c.peer_ip, submissions.c.report_text,
                    order_by=submissions.c.received_at)]

    purged = await purge(backend, policy, now=now + timedelta(days=31))
    assert purged.raw_messages == 4
    after_raw = await rows()
    assert all(gone for gone, *_ in after_raw)
    assert [mail_from for _, mail_from, _, _ in after_raw[:3]] == ["reporter@example.test"] * 3
    assert all(peer for _, _, peer, _ in after_raw)  # contact details still within their window
    purged = await purge(backend, policy, now=now + timedelta(days=91))
    assert purged.contacts == 4
    assert all(mail_from is None and peer is None for _, mail_from, peer, _ in await rows())
    after = await collect_stats(gw.engine)
    for key in ("submissions", "submissions_by_status", "submissions_by_channel"):
        assert after[key] == before[key], key
    # The locate stage may move a case on meanwhile: the purge keeps every case, in any state.
    assert sum(after["cases"].values()) == sum(before["cases"].values()) == 2
    stored = b"".join(r.raw or b"" for r in await opened_submissions(gw.engine,
                                                                     submissions.c.raw))
    assert b"me@example.org" not in stored


async def test_a_backup_under_write_load_holds_every_report_acknowledged_before_it(
    start: Start, tmp_path: Path
) -> None:
    gw = await start()
    port = gw.smtp.addresses[0][1]
    acknowledged: list[tuple[float, str]] = []
    stop = asyncio.Event()

    async def sender(n: int) -> None:
        seq = 0
        while not stop.is_set():
            code, text = await deliver(port, report(f"load-{n}-{seq}"))
            assert code == 250
            acknowledged.append((asyncio.get_running_loop().time(), queued_reference(text)))
            seq += 1

    senders = [asyncio.create_task(sender(n)) for n in range(4)]
    await asyncio.sleep(0.5)
    started = asyncio.get_running_loop().time()
    before = {ref for at, ref in acknowledged if at < started}
    target = tmp_path / "copy.db"
    count = await asyncio.to_thread(backup, gw.config.database.url, target)
    await asyncio.sleep(0.2)
    stop.set()
    await asyncio.gather(*senders)
    with contextlib.closing(sqlite3.connect(target)) as copy:
        assert copy.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        stored = {r for (r,) in copy.execute("SELECT reference FROM submissions")}
    assert before and before <= stored and count == len(stored)
    assert target.stat().st_mode & 0o777 == 0o600  # reporter data: the owner's only
    assert not list(tmp_path.glob("*.partial"))
    with pytest.raises(BackupError, match="exists already"):
        await asyncio.to_thread(backup, gw.config.database.url, target)


def test_backup_of_postgresql_points_at_pg_dump(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[database]\nurl = "postgresql+asyncpg://u@127.0.0.1:5432/hotline"\n')
    assert main(["--config", str(config), "backup", str(tmp_path / "x.db")]) == 1
    assert "pg_dump" in capsys.readouterr().err


def test_purge_from_the_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "config.toml"
    config.write_text("")
    ensure_keyring(config)
    assert main(["--config", str(config), "db", "upgrade"]) == 0
    assert main(["--config", str(config), "purge"]) == 0
    assert "removed the raw message of 0 report(s)" in capsys.readouterr().out


async def test_reports_not_read_keep_their_bytes(engine: AsyncEngine) -> None:
    """A report that could not be read (parse_failed) or is not read yet keeps everything,
    however old: it can still be read once the cause is fixed."""
    backend = await open_write_backend(engine)
    old = datetime.now(UTC) - timedelta(days=400)
    rows = [{"id": uuid7(), "reference": f"CF-2025-{n:06d}", "channel": "smtp",
             "status": status, "received_at": old, "rcpt_tos": [], "mail_from": "a@b.test",
             "body_sha256": "0" * 64, "raw_size": 3, "raw": b"raw"}
            for n, status in enumerate(("parsed", "parse_failed", "received"))]
    try:
        sealed = seal_rows(backend.sealer, submissions, rows)
        await backend.transaction(lambda conn: conn.execute(insert(submissions), sealed))
        purged = await purge(backend, RetentionConfig(), now=datetime.now(UTC))
        assert (purged.raw_messages, purged.contacts) == (1, 1)
        kept = {r.status: r.raw
                for r in await opened_submissions(engine, submissions.c.status,
                                                  submissions.c.raw)}
        assert kept == {"parsed": None, "parse_failed": b"raw", "received": b"raw"}
    finally:
        await backend.close()
