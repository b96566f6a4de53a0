"""Junk at the reply address (anyone can mail it): kept for an analyst, but bounded. Its
alerts are collapsed per reason, the metrics count what is kept by reason, and retention
deletes untrusted replies after ``untrusted_reply_days``; never a trusted or unread one.
Real gpg, real databases, an injected clock."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from functools import partial
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine
from structlog.testing import capture_logs

from gateway.config import RetentionConfig
from gateway.metrics import Metrics
from gateway.retention import purge
from gateway.stats import collect_stats
from gateway.store.backend import WriteBackend
from gateway.store.replies import NewReply, keep_in
from gateway.store.tables import audit_log, replies
from outbound.gpg import Gpg
from tests.outbound.conftest import Keys
from tests.outbound.test_reply_stage import (
    ARRIVED,
    Clock,
    T,
    kept,
    referred,
    reply_from_nl,
    stage,
)
from tests.trail import opened


def junk(n: int) -> bytes:
    """A stranger's mail to the reply address: not encrypted, names nothing."""
    return f"From: someone@elsewhere.test\r\nSubject: offer {n}\r\n\r\nBuy now {n}.\r\n".encode()


async def keep_at(backend: WriteBackend, raw: bytes, days_ago: int) -> uuid.UUID:
    reply = NewReply(received_at=ARRIVED - timedelta(days=days_ago), raw=raw,
                     body_sha256=uuid.uuid4().hex * 2)
    return (await backend.transaction(partial(keep_in, reply=reply))).reply_id


async def test_junk_raises_one_alert_per_reason_per_interval_and_is_counted(
        backend: WriteBackend, engine: AsyncEngine, gpg: Gpg, keys: Keys,
        executor: ThreadPoolExecutor) -> None:
    """Five junk mails at once: all kept and counted, one alert; after the interval the next
    alert says how many were held back."""
    for n in range(5):
        await kept(backend, junk(n))
    clock, seen = Clock(T), []
    reader = stage(backend, gpg, keys, executor, clock, seen)
    with capture_logs() as logs:
        assert await reader.run_once() == 5
    alerts = [e for e in logs if e["event"] == "replies.needs_attention"]
    assert [(a["log_level"], a["reason"]) for a in alerts] == [("error", "not_encrypted")]
    assert "held_back" not in alerts[0]
    assert seen == ["not_encrypted"] * 5
    async with engine.connect() as conn:
        statuses = (await conn.execute(select(replies.c.status))).scalars().all()
    assert statuses == ["needs_attention"] * 5
    await kept(backend, junk(5))
    clock.now = T + timedelta(minutes=16)
    with capture_logs() as logs:
        assert await reader.run_once() == 1
    [alert] = [e for e in logs if e["event"] == "replies.needs_attention"]
    assert alert["held_back"] == 4
    assert "elsewhere.test" not in repr(logs) and "Buy now" not in repr(logs)
    stats = await collect_stats(engine)
    assert stats["replies_kept_by_reason"] == {"not_encrypted": 6}
    text = Metrics().render(stats, {}).decode()
    assert 'hotline_replies_kept{reason="not_encrypted"} 6.0' in text


async def test_a_trusted_reply_that_needs_an_analyst_always_alerts(
        backend: WriteBackend, gpg: Gpg, keys: Keys, executor: ThreadPoolExecutor,
        tmp_path: Path) -> None:
    """Collapsing is for what anyone can send: a reply signed by the destination's pinned key
    whose document is not valid raises its alert every time."""
    _, referral = await referred(backend, keys)
    for n in range(2):
        await kept(backend, reply_from_nl(keys, tmp_path, referral, {"outcome": f"x{n}"}))
    with capture_logs() as logs:
        await stage(backend, gpg, keys, executor, Clock(T), []).run_once()
    alerts = [e for e in logs if e["event"] == "replies.needs_attention"]
    assert [a["reason"] for a in alerts] == ["bad_document", "bad_document"]


async def test_retention_deletes_old_untrusted_replies_only(
        backend: WriteBackend, engine: AsyncEngine, gpg: Gpg, keys: Keys,
        executor: ThreadPoolExecutor, tmp_path: Path) -> None:
    """Past ``untrusted_reply_days``: junk goes (waiting or handled alike), audited with the
    count; a trusted reply, a trusted one that needs an analyst, one not read yet and recent
    junk stay."""
    _, referral = await referred(backend, keys)
    old_junk = [await keep_at(backend, junk(n), 0) for n in range(3)]
    new_junk = await keep_at(backend, junk(9), -20)
    trusted = await keep_at(backend, reply_from_nl(keys, tmp_path, referral), 0)
    await stage(backend, gpg, keys, executor, Clock(T), []).run_once()
    bad = await keep_at(backend, reply_from_nl(keys, tmp_path, referral, {"outcome": "x"}), 0)
    await stage(backend, gpg, keys, executor, Clock(T), []).run_once()
    unread = await keep_at(backend, junk(7), 0)
    policy = RetentionConfig()
    assert policy.untrusted_reply_days == 30
    purged = await purge(backend, policy, now=ARRIVED + timedelta(days=31))
    assert purged.untrusted_replies == 3
    async with engine.connect() as conn:
        left = {row.id: row.status
                for row in await conn.execute(select(replies.c.id, replies.c.status))}
        [entry] = opened(conn, await conn.execute(
            select(audit_log.c.seq, audit_log.c.details)
            .where(audit_log.c.action == "retention.purged")))
    assert set(left) == {new_junk, trusted, bad, unread}
    assert not set(old_junk) & set(left)
    assert (left[trusted], left[bad], left[unread]) == ("read", "needs_attention", "received")
    assert entry.details["untrusted_replies"] == 3
