"""Junk at the reply address (anyone can mail it): kept for an analyst, but bounded. Its
alerts are collapsed per reason (not a pinned key's), the metrics count what is kept by reason,
and retention deletes untrusted replies ``untrusted_reply_days`` after an analyst handled them;
never one still waiting, a trusted or an unread one.
Real gpg, real databases, an injected clock."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
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
from gateway.store.replies import NewReply, keep_in, mark_handled
from gateway.store.tables import audit_log, replies, users
from outbound.gpg import Gpg
from tests.clock import Clock
from tests.console_client import ready_user
from tests.outbound.conftest import Keys
from tests.outbound.test_reply_stage import (
    ARRIVED,
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


async def test_a_reply_signed_by_another_destination_s_key_always_alerts(
        backend: WriteBackend, gpg: Gpg, keys: Keys, executor: ThreadPoolExecutor,
        tmp_path: Path) -> None:
    """Not junk: a reply signed by a pinned key that is not the referral's destination's
    (``signer_not_destination``) raises its alert every time, while junk beside it is
    collapsed."""
    _, referral = await referred(backend, keys)
    for n in range(3):
        await kept(backend, reply_from_nl(keys, tmp_path, referral, by=keys.weak))
        await kept(backend, junk(n))
    with capture_logs() as logs:
        assert await stage(backend, gpg, keys, executor, Clock(T), []).run_once() == 6
    alerts = [e for e in logs if e["event"] == "replies.needs_attention"]
    assert sorted(a["reason"] for a in alerts) == ["not_encrypted", *["signer_not_destination"] * 3]
    assert all(a["signer"] == keys.weak for a in alerts if a["reason"] != "not_encrypted")


async def handled(backend: WriteBackend, reply_ids: list[uuid.UUID], at: datetime) -> None:
    """An analyst (made here once) marks each of ``reply_ids`` handled at ``at``."""
    if not await backend.transaction(lambda conn: conn.execute(
            select(users.c.id).where(users.c.name == "ana")).first()):
        await ready_user(backend, "ana")
    ana = await backend.transaction(lambda conn: conn.execute(
        select(users.c.id).where(users.c.name == "ana")).scalar_one())
    for reply_id in reply_ids:
        await mark_handled(backend, reply_id, user_id=ana, name="ana", note=None, now=at)


async def test_retention_deletes_untrusted_replies_only_once_handled(
        backend: WriteBackend, engine: AsyncEngine, gpg: Gpg, keys: Keys,
        executor: ThreadPoolExecutor, tmp_path: Path) -> None:
    """``untrusted_reply_days`` after an analyst handled it, junk goes, audited with the
    count; junk still waiting for an analyst stays however old (kept for an analyst, never
    dropped unread), and so do junk handled lately, a trusted reply, a trusted one that needs
    an analyst and one not read yet."""
    _, referral = await referred(backend, keys)
    old_handled = [await keep_at(backend, junk(n), 60) for n in range(3)]
    waiting = await keep_at(backend, junk(8), 60)
    lately_handled = await keep_at(backend, junk(9), 60)
    trusted = await keep_at(backend, reply_from_nl(keys, tmp_path, referral), 0)
    await stage(backend, gpg, keys, executor, Clock(T), []).run_once()
    bad = await keep_at(backend, reply_from_nl(keys, tmp_path, referral, {"outcome": "x"}), 0)
    await stage(backend, gpg, keys, executor, Clock(T), []).run_once()
    unread = await keep_at(backend, junk(7), 0)
    await handled(backend, old_handled, ARRIVED)
    await handled(backend, [lately_handled], ARRIVED + timedelta(days=20))
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
    assert set(left) == {waiting, lately_handled, trusted, bad, unread}
    assert not set(old_handled) & set(left)
    assert (left[waiting], left[lately_handled]) == ("needs_attention", "handled")
    assert (left[trusted], left[bad], left[unread]) == ("read", "needs_attention", "received")
    assert entry.details["untrusted_replies"] == 3
    # However long it waits, an unhandled one is not deleted.
    assert (await purge(backend, policy, now=ARRIVED + timedelta(days=3650))
            ).untrusted_replies == 1
    async with engine.connect() as conn:
        assert (await conn.execute(select(replies.c.status).where(replies.c.id == waiting))
                ).scalar_one() == "needs_attention"
