"""The outbox worker on real databases (SQLite and PostgreSQL), with the file transport."""

from __future__ import annotations

import asyncio
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.store.audit import CLI_ACTOR
from gateway.store.backend import WriteBackend
from gateway.store.errors import NotAllowed
from gateway.store.ids import uuid7
from gateway.store.lifecycle import Actor
from gateway.store.sealed import open_value, seal_rows, seal_value, sealer_of
from gateway.store.tables import cases, outbox, outbox_attempts, referrals, routing_decisions
from outbound.gpg import Gpg
from outbound.outbox import OutboxStage, retry_failed
from outbound.transports import FileTransport
from tests.outbound.conftest import Keys, add_subkey, make_key, run_gpg
from tests.sealed_cases import case_row

T0 = datetime(2026, 11, 28, 12, tzinfo=UTC)
MESSAGE = b"-----BEGIN PGP MESSAGE-----\r\n\r\nciphertext\r\n-----END PGP MESSAGE-----\r\n"


async def queue(backend: WriteBackend, count: int, created: datetime = T0,
                message: bytes = MESSAGE) -> list[uuid.UUID]:
    """Referrals queued as the refer stage queues them; their outbox ids."""
    ids = []
    rows: dict[str, list[dict[str, Any]]] = {"cases": [], "decisions": [], "referrals": [],
                                             "outbox": []}
    for n in range(count):
        case_id, decision_id, referral_id, item_id = uuid7(), uuid7(), uuid7(), uuid7()
        rows["cases"].append({
            "id": case_id, "kind": "url", "status": "referred", "url_key": uuid.uuid4().hex,
            "url": "http://x.test/", "canonical_url": "http://x.test/", "report_count": 1,
            "first_reported": T0, "last_reported": T0, "created_at": T0,
            "status_changed_at": T0})
        rows["decisions"].append({
            "id": decision_id, "case_id": case_id, "created_at": T0,
            "rule": "protocol-1-domestic", "outcome": "refer", "destination": "police",
            "facts": {}, "explanation": "test"})
        rows["referrals"].append({
            "id": referral_id, "case_id": case_id, "decision_id": decision_id,
            "reference": f"CF-2026-{n:06d}", "destination": "police",
            "email": "cp@police.test", "key_fingerprint": "A" * 40,
            "message_id": f"<referral-{referral_id}@hotline.test>", "status": "queued",
            "created_at": created})
        rows["outbox"].append({
            "id": item_id, "referral_id": referral_id, "mail_from": "r@hotline.test",
            "rcpt_to": "cp@police.test", "message": message, "status": "pending",
            "attempts": 0, "next_attempt_at": created, "created_at": created})
        ids.append(item_id)

    def work(conn: Any) -> None:
        conn.execute(insert(cases), [case_row(sealer_of(conn), **row) for row in rows["cases"]])
        conn.execute(insert(routing_decisions),
                     seal_rows(sealer_of(conn), routing_decisions, rows["decisions"]))
        conn.execute(insert(referrals), rows["referrals"])
        conn.execute(insert(outbox), rows["outbox"])

    await backend.transaction(work)
    return ids


async def states(engine: AsyncEngine) -> list[tuple[str, int]]:
    async with engine.connect() as conn:
        return [(r.status, r.attempts) for r in await conn.execute(
            select(outbox.c.status, outbox.c.attempts).order_by(outbox.c.created_at))]


async def test_a_key_that_went_bad_is_never_sent_to(
    engine: AsyncEngine, backend: WriteBackend, tmp_path: Path
) -> None:
    """Checked again before each delivery: a revoked key fails the item, nothing is written."""
    await queue(backend, 1)

    async def revoked(fingerprint: str) -> list[str]:
        return ["revoked"]

    worker = OutboxStage(backend, FileTransport(tmp_path / "out"), worker="w1",
                          max_attempt_age=timedelta(days=3), keys=revoked,
                          clock=lambda: T0 + timedelta(seconds=1))
    assert await worker.run_once() == 1
    assert await states(engine) == [("failed", 1)]
    assert not (tmp_path / "out").exists()
    async with engine.connect() as conn:
        attempt = (await conn.execute(select(outbox_attempts))).one()
        referral = (await conn.execute(select(referrals))).one()
    sealer = sealer_of(engine)
    detail = open_value(sealer, outbox_attempts.c.detail, attempt.id, attempt.detail)
    assert "no longer usable: revoked" in detail
    assert referral.status == "failed" and "revoked" in open_value(
        sealer, referrals.c.error, referral.id, referral.error)


async def test_a_message_to_an_own_key_that_went_bad_is_never_sent(
    engine: AsyncEngine, backend: WriteBackend, tmp_path: Path, fast_home: Path, keys: Keys,
    executor: ThreadPoolExecutor,
) -> None:
    """A referral also encrypted to the hotline's own key is not sent once that key is
    revoked (its secret may be out), though the destination's key is good: failed, visibly."""
    hotline = make_key(fast_home, "Hotline <referrals@hotline.test>")
    add_subkey(fast_home, hotline)
    run_gpg(keys.partner_home, "--armor", "--output", str(fast_home / "recipient.asc"),
            "--export", keys.recipient)
    run_gpg(fast_home, "--import", str(fast_home / "recipient.asc"))
    gpg = Gpg(fast_home, executor=executor)
    sealed = await gpg.encrypt_and_sign(b"referral", recipient=keys.recipient, signer=hotline,
                                        archive=hotline)
    await queue(backend, 2, message=b"Subject: Referral\r\n\r\n" + sealed)
    worker = OutboxStage(backend, FileTransport(tmp_path / "out"), worker="w1",
                          max_attempt_age=timedelta(days=3), concurrency=1,
                          keys=lambda fpr: gpg.problems(keys.recipient, "encrypt"),
                          sealed_for=gpg.sealed_for_problems,
                          clock=lambda: T0 + timedelta(seconds=1))
    assert await worker.run_once() == 1
    assert sorted(await states(engine)) == [("pending", 0), ("sent", 1)]
    certificate = (fast_home / "openpgp-revocs.d" / f"{hotline}.rev").read_text()
    (fast_home / "revoke.asc").write_text(certificate.replace(":-----BEGIN", "-----BEGIN"))
    await gpg.import_keys((fast_home / "revoke.asc").read_bytes())
    assert await worker.run_once() == 1
    assert sorted(await states(engine)) == [("failed", 1), ("sent", 1)]
    assert len(list((tmp_path / "out").glob("*.eml"))) == 1
    async with engine.connect() as conn:
        referral = (await conn.execute(select(referrals.c.id, referrals.c.error).where(
            referrals.c.status == "failed"))).one()
    error = open_value(sealer_of(engine), referrals.c.error, referral.id, referral.error)
    assert error == f"encrypted to a key no longer usable: key {hotline}: revoked"


async def test_deferred_until_max_attempt_age_then_failed(
    engine: AsyncEngine, backend: WriteBackend, tmp_path: Path
) -> None:
    """A transport that keeps failing is retried with backoff, then failed after the age."""
    await queue(backend, 1)
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the outbox folder should be")
    now = [T0]
    worker = OutboxStage(backend, FileTransport(blocked / "out"), worker="w1",
                          max_attempt_age=timedelta(hours=1),
                          retry_after=timedelta(minutes=1), retry_max=timedelta(minutes=10),
                          clock=lambda: now[0], jitter=lambda: 1.0)
    assert await worker.run_once() == 1
    assert await states(engine) == [("pending", 1)]
    assert await worker.run_once() == 0  # not due for a minute
    for _ in range(20):
        now[0] += timedelta(minutes=10)
        await worker.run_once()
    assert await states(engine) == [("failed", 7)]  # T0, then every 10 min to T0 + 1 h
    async with engine.connect() as conn:
        outcomes = [r.outcome for r in await conn.execute(
            select(outbox_attempts.c.outcome).order_by(outbox_attempts.c.at))]
    assert outcomes == ["deferred"] * 6 + ["failed"]


def test_backoff_doubles_with_jitter_and_stays_under_the_cap() -> None:
    for jitter in (0.8, 1.0, 1.2):
        worker = OutboxStage(None, FileTransport(Path("/nonexistent")), worker="w",  # type: ignore[arg-type]
                              max_attempt_age=timedelta(days=1),
                              retry_after=timedelta(seconds=60), retry_max=timedelta(hours=1),
                              jitter=lambda j=jitter: j)
        delays = [worker.retry_delay(n).total_seconds() for n in range(1, 10)]
        assert delays[0] == 60 * jitter and delays[1] == 120 * jitter
        assert max(delays) <= 3600


async def test_two_workers_deliver_each_item_once(
    engine: AsyncEngine, backend: WriteBackend, tmp_path: Path
) -> None:
    """Several workers (or processes) share the outbox: every item is sent exactly once."""
    await queue(backend, 24)
    transport = FileTransport(tmp_path / "out")
    workers = [OutboxStage(backend, transport, worker=f"w{n}",
                            max_attempt_age=timedelta(days=3), concurrency=4,
                            clock=lambda: T0 + timedelta(seconds=1)) for n in range(3)]

    async def drain(worker: OutboxStage) -> None:
        while await worker.run_once():
            pass

    await asyncio.gather(*(drain(w) for w in workers))
    assert await states(engine) == [("sent", 1)] * 24
    assert len(list((tmp_path / "out").glob("*.eml"))) == 24
    assert sum(w.sent for w in workers) == 24


async def failed(backend: WriteBackend) -> None:
    """Every referral failed, as the outbox leaves one the upstream refused."""

    def work(conn: Any) -> None:
        conn.execute(update(outbox).values(status="failed"))
        sealer = sealer_of(conn)
        for (referral_id,) in conn.execute(select(referrals.c.id)).all():
            conn.execute(update(referrals).where(referrals.c.id == referral_id).values(
                status="failed",
                error=seal_value(sealer, referrals.c.error, referral_id, "550 refused")))

    await backend.transaction(work)


async def test_only_a_supervisor_or_the_operator_retries_a_failed_referral(
    engine: AsyncEngine, backend: WriteBackend
) -> None:
    """An analyst (or a stage) may not queue a failed referral again; a supervisor may, and so
    may the operator's ``referrals retry`` (system:cli)."""
    await queue(backend, 1)
    await failed(backend)
    async with engine.connect() as conn:
        referral_id = (await conn.execute(select(referrals.c.id))).scalar_one()
    for refused in (Actor("ana", "analyst"), Actor.system("route")):
        with pytest.raises(NotAllowed):
            await retry_failed(backend, referral_id, actor=refused, now=T0)
    assert await states(engine) == [("failed", 0)]
    for allowed in (Actor("sue", "supervisor"), Actor(CLI_ACTOR, "system")):
        await retry_failed(backend, referral_id, actor=allowed, now=T0)
        assert await states(engine) == [("pending", 0)]
        await failed(backend)
