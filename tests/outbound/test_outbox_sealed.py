"""What the outbox keeps of an upstream's answers is sealed at rest, shown opened as before,
and a value that does not open is named, not served, while the other referrals still are."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.store.backend import WriteBackend
from gateway.store.case_view import UNREADABLE, get_case, get_referral, list_cases
from gateway.store.ids import uuid7
from gateway.store.sealed import open_value, seal_rows, sealer_of
from gateway.store.sealing import SealBroken
from gateway.store.tables import cases, outbox, outbox_attempts, referrals, routing_decisions
from outbound.outbox import OutboxStage
from outbound.transports import OutboundSettings, SmtpTransport
from tests.outbound.mta import Behaviour, FakeMta

T0 = datetime(2026, 12, 1, 12, tzinfo=UTC)
SECOND = timedelta(seconds=1)
MESSAGE = b"-----BEGIN PGP MESSAGE-----\r\n\r\nciphertext\r\n-----END PGP MESSAGE-----\r\n"
#: The EHLO name the upstream names in its refusal (as Postfix does): a host in the error.
HOST = "relay-distinct-outbox-host"


async def queue(backend: WriteBackend, count: int) -> list[dict[str, uuid.UUID]]:
    """Referrals queued as the refer stage queues them (every sealed column sealed); for each,
    its case, referral and outbox ids."""
    made: list[dict[str, uuid.UUID]] = []
    rows: dict[str, list[dict[str, Any]]] = {"cases": [], "decisions": [], "referrals": [],
                                             "outbox": []}
    for n in range(count):
        ids = {"case": uuid7(), "decision": uuid7(), "referral": uuid7(), "outbox": uuid7()}
        rows["cases"].append({
            "id": ids["case"], "kind": "no_url", "status": "referred",
            "url_key": uuid.uuid4().hex, "report_count": 1, "first_reported": T0 + n * SECOND,
            "last_reported": T0, "created_at": T0, "status_changed_at": T0})
        rows["decisions"].append({
            "id": ids["decision"], "case_id": ids["case"], "created_at": T0,
            "rule": "protocol-1-domestic", "outcome": "refer", "destination": "police",
            "facts": {}, "explanation": "test"})
        rows["referrals"].append({
            "id": ids["referral"], "case_id": ids["case"], "decision_id": ids["decision"],
            "reference": f"CF-2026-{n:06d}", "destination": "police",
            "email": "cp@police.test", "key_fingerprint": "A" * 40,
            "message_id": f"<referral-{ids['referral']}@hotline.test>", "status": "queued",
            "created_at": T0})
        rows["outbox"].append({
            "id": ids["outbox"], "referral_id": ids["referral"], "mail_from": "r@hotline.test",
            "rcpt_to": "cp@police.test", "message": MESSAGE, "status": "pending",
            "attempts": 0, "next_attempt_at": T0, "created_at": T0})
        made.append(ids)

    def work(conn: Any) -> None:
        sealer = sealer_of(conn)
        for table, key in ((cases, "cases"), (routing_decisions, "decisions"),
                           (referrals, "referrals"), (outbox, "outbox")):
            conn.execute(insert(table), seal_rows(sealer, table, rows[key]))

    await backend.transaction(work)
    return made


def at_rest(engine: AsyncEngine) -> bytes:
    """Every byte SQLite keeps of the database: the file, its WAL and shared memory."""
    path = Path(str(engine.url.database))
    return b"".join(p.read_bytes() for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm"))
                    if p.exists())


def without_the_audit_trail(engine: AsyncEngine) -> None:
    """Remove the audit trail, its bytes zeroed (``secure_delete``) and checkpointed: its copy
    of each refusal is the audit trail's to seal (``gateway.store.audit``), and this leaves a
    file scan speaking of the outbox's columns alone (every other page is left as it was)."""
    with contextlib.closing(sqlite3.connect(str(engine.url.database))) as db:
        db.execute("PRAGMA secure_delete = ON")
        with db:
            db.execute("DELETE FROM audit_log")
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")


async def refused_by_upstream(backend: WriteBackend, mta: FakeMta, tmp_path: Path) -> None:
    """Every queued referral offered to an upstream that refuses this client for good, naming
    the client's host in its answer."""
    mta.behaviour = Behaviour(require_fqdn_helo=True)
    transport = SmtpTransport(OutboundSettings(
        transport="smtp", file_dir=None, smtp_host="127.0.0.1", smtp_port=mta.port,
        tls="starttls", tls_ca_file=mta.ca_file, timeout=5.0, helo_name=HOST))
    worker = OutboxStage(backend, transport, worker="w1", max_attempt_age=timedelta(days=3),
                         clock=lambda: T0 + SECOND)
    while await worker.run_once():
        pass
    assert worker.failed >= 1


async def test_an_upstreams_refusal_is_ciphertext_at_rest_and_shown_as_before(
    engine: AsyncEngine, backend: WriteBackend, mta: FakeMta, tmp_path: Path
) -> None:
    """The outbox's last error, the attempt's detail and the referral's error name the host
    the upstream named: in the database they are sealed, bound to their rows; the referral's
    view (API, ``cases show``) shows them in clear."""
    [ids] = await queue(backend, 1)
    await refused_by_upstream(backend, mta, tmp_path)
    async with engine.connect() as conn:
        item = (await conn.execute(select(outbox))).one()
        attempt = (await conn.execute(select(outbox_attempts))).one()
        referral = (await conn.execute(select(referrals))).one()
        shown = await get_referral(conn, ids["referral"])
        case = await get_case(conn, ids["case"])
    for stored in (item.last_error, attempt.detail, referral.error):
        assert stored.startswith(b"\x01") and HOST.encode() not in stored
    sealer = sealer_of(engine)
    error = open_value(sealer, referrals.c.error, referral.id, referral.error)
    assert error.startswith("504 5.5.2") and f"<{HOST}>" in error
    assert open_value(sealer, outbox.c.last_error, item.id, item.last_error) == error
    assert open_value(sealer, outbox_attempts.c.detail, attempt.id, attempt.detail) == error
    # A value does not open as another row's.
    with pytest.raises(SealBroken, match=f"cannot open referrals.error of record {item.id}"):
        open_value(sealer, referrals.c.error, item.id, referral.error)
    assert shown is not None and case is not None
    assert shown["status"] == "failed" and shown["error"] == error
    assert shown["outbox"]["last_error"] == error
    assert [(a["outcome"], a["detail"]) for a in shown["attempts"]] == [("failed", error)]
    assert case["referrals"][0]["error"] == error and "referral_failed" in case["flags"]
    if engine.dialect.name == "sqlite":
        await asyncio.to_thread(without_the_audit_trail, engine)
        disk = at_rest(engine)
        assert HOST.encode() not in disk and HOST.encode("utf-16-le") not in disk


async def test_a_broken_error_is_named_and_the_other_referrals_are_served(
    engine: AsyncEngine, backend: WriteBackend, mta: FakeMta, tmp_path: Path
) -> None:
    """An error copied from another referral, or altered by one byte, does not open: the
    views show a marker naming the record instead of it, the queue lists every case, and
    the untouched referral reads as before."""
    first, second, third = await queue(backend, 3)
    await refused_by_upstream(backend, mta, tmp_path)

    def tamper(conn: Any) -> None:
        copied = conn.execute(select(referrals.c.error).where(
            referrals.c.id == third["referral"])).scalar_one()
        conn.execute(update(referrals).where(referrals.c.id == first["referral"])
                     .values(error=copied))
        stored = conn.execute(select(outbox.c.last_error).where(
            outbox.c.id == second["outbox"])).scalar_one()
        flipped = stored[:-6] + bytes((stored[-6] ^ 1,)) + stored[-5:]
        conn.execute(update(outbox).where(outbox.c.id == second["outbox"])
                     .values(last_error=flipped))

    await backend.transaction(tamper)
    async with engine.connect() as conn:
        listed = await list_cases(conn)
        one = await get_referral(conn, first["referral"])
        two = await get_referral(conn, second["referral"])
        three = await get_referral(conn, third["referral"])
    assert [c["id"] for c in listed] == [str(x["case"]) for x in (first, second, third)]
    assert one is not None and two is not None and three is not None
    assert one["error"] == listed[0]["referrals"][0]["error"]
    assert one["error"].startswith(UNREADABLE)
    assert f"referrals.error of record {first['referral']}" in one["error"]
    assert HOST not in one["error"]
    assert one["outbox"]["last_error"].endswith(f"<{HOST}>: Helo command rejected: "
                                                "need fully-qualified hostname")
    assert two["outbox"]["last_error"].startswith(UNREADABLE)
    assert f"outbox.last_error of record {second['outbox']}" in two["outbox"]["last_error"]
    assert f"<{HOST}>" in two["error"]
    assert f"<{HOST}>" in three["error"] and f"<{HOST}>" in three["outbox"]["last_error"]
    assert f"<{HOST}>" in listed[2]["referrals"][0]["error"]


async def test_the_log_says_the_code_of_an_answer_never_its_text(
    backend: WriteBackend, mta: FakeMta, tmp_path: Path
) -> None:
    """The upstream's answer names hosts and addresses and is sealed in the database: the
    log line of a failed or deferred delivery gives its SMTP code and the class of its
    enhanced status code, or the kind of error, and never the text."""
    from structlog.testing import capture_logs

    from outbound.outbox import answer_fields

    await queue(backend, 1)
    with capture_logs() as logs:
        await refused_by_upstream(backend, mta, tmp_path)
    [failed] = [e for e in logs if e["event"] == "outbox.failed"]
    assert failed["smtp_code"] == 504 and failed["enhanced_class"] == "5"
    assert "detail" not in failed
    assert HOST not in repr(logs)
    assert answer_fields("451 4.7.1 greylisted by mx.partner.test") == {
        "smtp_code": 451, "enhanced_class": "4"}
    assert answer_fields("not delivered within max_attempt_age: 421 try later at 10.0.0.9") \
        == {"expired": True, "smtp_code": 421}
    assert answer_fields("ConnectionRefusedError: [Errno 111] Connect call failed "
                         "('10.0.0.9', 25)") == {"error": "ConnectionRefusedError"}
    assert answer_fields("encrypted to a key no longer usable: A" * 2) == {"error": "other"}
