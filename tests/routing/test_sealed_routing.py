"""Hosting evidence, locate errors, routing decisions and changes and the audit details are
ciphertext at rest, read as before by the console, the API and ``get_case``; a value that does
not open shows as damaged on its case only, and the gateway goes on serving the others."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.app import Gateway
from gateway.console.accounts import create_token, utcnow
from gateway.store.audit import verify
from gateway.store.backend import WriteBackend
from gateway.store.case_view import get_case, list_cases
from gateway.store.sealing import TagMismatch
from gateway.store.tables import (
    audit_log,
    cases,
    hosting_evidence,
    routing_changes,
    routing_decisions,
)
from routing import decide
from routing.stage import LocateStage
from tests.conftest import Start
from tests.console_client import StaffClient, base, file_case, ready_user
from tests.dns_server import DnsServer, Zone
from tests.outbound.test_refer import api, assess, settle
from tests.routing.test_stage import add_cases, make_locator
from tests.smtp_client import deliver, report

ALIAS, TARGET, ADDRESS = "sealed-alias-q7.test", "sealed-target-q7.test", "145.100.7.7"


def database_bytes(engine: AsyncEngine) -> bytes:
    """The SQLite database with its WAL and SHM files."""
    database = engine.url.database
    assert database
    return b"".join(Path(database + suffix).read_bytes()
                    for suffix in ("", "-wal", "-shm") if Path(database + suffix).exists())


async def raw(engine: AsyncEngine, *columns: Any) -> list[bytes]:
    """Every non-null value of ``columns`` as stored, unopened."""
    found: list[bytes] = []
    async with engine.connect() as conn:
        for column in columns:
            found += [value for value in (await conn.execute(
                select(column).where(column.is_not(None)))).scalars()]
    return found


def sealed(value: bytes) -> bool:
    """Stored as a sealed value's bytes (version 1), not text."""
    return type(value) is bytes and value[:1] == b"\x01"


async def case(gw: Gateway, case_id: str) -> dict[str, Any]:
    async with gw.engine.connect() as conn:
        found = await get_case(conn, uuid.UUID(case_id))
    assert found is not None
    return found


async def failing_case(gw: Gateway) -> str:
    """A case whose lookup fails (SERVFAIL): its locate error is kept."""
    sent, _ = await deliver(gw.smtp.addresses[0][1], report("q7c", body="http://broken.test/q7c"))
    assert sent == 250
    async with asyncio.timeout(20):
        while True:
            async with gw.engine.connect() as conn:
                for found in await list_cases(conn):
                    if "q7c" in (found["canonical_url"] or "") and \
                            (found["hosting"] or {}).get("attempts"):
                        return str(found["id"])
            await asyncio.sleep(0.05)


async def test_routing_facts_are_sealed_read_as_before_and_damage_stays_on_its_case(
    start: Start, zone: Zone
) -> None:
    """End to end: the DNS names, addresses, explanations, facts, errors and audit details are
    ciphertext in the database and its files; cases show them as before; a copied or altered
    value shows as damaged on its case, naming the record, while the gateway goes on."""
    zone.cname(ALIAS, TARGET, ttl=30)
    zone.add(TARGET, "A", ADDRESS)
    gw = await start()
    backend = gw.console.context.backend
    ana = await ready_user(backend, "ana")
    token = await create_token(backend, "ana", now=utcnow())
    located = await file_case(gw, f"Look at http://{ALIAS}/q7a", "q7a")
    behind_cdn = await file_case(gw, "Look at http://cdn.test/q7b", "q7b")
    failing = await failing_case(gw)
    for case_id in (located, behind_cdn):
        await assess(gw, token, case_id)
    await settle(gw, located, "awaiting_iccam")
    await settle(gw, behind_cdn, "held")
    status, answer = await api(gw, "POST", f"/api/v1/cases/{behind_cdn}/hosting-country",
                               token, {"country": "NL"})
    assert status == 200, answer
    await settle(gw, behind_cdn, "awaiting_iccam")
    status, answer = await api(gw, "POST", f"/api/v1/cases/{located}/iccam", token,
                               {"reference": "ICCAM-Q7"})
    assert status == 200, answer

    # As before: what the lookups found, why the cases went where they went.
    shown = await case(gw, located)
    (evidence, *_) = shown["hosting_evidence"]
    assert evidence["host"] == ALIAS and ADDRESS in evidence["ips"]
    assert TARGET in str(evidence["records"]) and evidence["addresses"][0]["ip"] == ADDRESS
    assert shown["hosting"]["ips"] == [ADDRESS] and shown["hosting"]["country"] == "NL"
    explanation = shown["decision"]["explanation"]
    assert isinstance(explanation, str) and explanation and "damaged" not in shown["decision"]
    assert shown["decision"]["facts"]["country"] == "NL"
    assert [r["destination"] for r in shown["referrals"]] == ["iccam:NL"]
    change = (await case(gw, behind_cdn))["routing_change"]
    assert change["facts"]["status"] == "held" and change["country"] == "NL"
    pending = (await case(gw, failing))["hosting"]
    assert "SERVFAIL" in pending["error"] and "damaged" not in pending
    assert all("damaged" not in entry for entry in shown["history"])
    assert shown["history"][0]["details"]["to"] == "new"
    async with gw.engine.connect() as conn:
        assert (await verify(conn))[1] is None

    # At rest: ciphertext in every such column, and nowhere in the database's files.
    stored = await raw(gw.engine, *(hosting_evidence.c[name] for name in (
        "host", "ips", "records", "addresses", "databases", "error")),
        cases.c.locate_error, routing_decisions.c.facts, routing_decisions.c.explanation,
        routing_changes.c.facts, audit_log.c.details)
    assert len(await raw(gw.engine, cases.c.locate_error)) == 1
    assert stored and all(sealed(value) for value in stored), [
        value for value in stored if not sealed(value)][:3]
    files = database_bytes(gw.engine)
    for needle in (TARGET, ADDRESS, explanation):
        for encoding in ("utf-8", "utf-16-le"):
            assert needle.encode(encoding) not in files, needle

    # A host copied from another case's evidence, an explanation altered by one byte.
    async with gw.engine.begin() as conn:
        rows = {row.case_id: row for row in await conn.execute(
            select(hosting_evidence.c.id, hosting_evidence.c.case_id, hosting_evidence.c.host)
            .where(hosting_evidence.c.status != "failed")
            .order_by(hosting_evidence.c.checked_at))}
        victim = rows[uuid.UUID(behind_cdn)]
        await conn.execute(update(hosting_evidence).where(hosting_evidence.c.id == victim.id)
                           .values(host=rows[uuid.UUID(located)].host))
        decision = (await conn.execute(select(routing_decisions.c.id,
                                              routing_decisions.c.explanation).where(
            routing_decisions.c.case_id == uuid.UUID(located),
            routing_decisions.c.superseded.is_(False)))).one()
        altered = decision.explanation[:-2] + bytes((decision.explanation[-2] ^ 1,)) \
            + decision.explanation[-1:]
        await conn.execute(update(routing_decisions)
                           .where(routing_decisions.c.id == decision.id)
                           .values(explanation=altered))
        entry = (await conn.execute(select(audit_log.c.seq).where(
            audit_log.c.case_id == uuid.UUID(failing)).order_by(audit_log.c.seq))).scalars()
        first_seq = entry.first()
        other = (await conn.execute(select(audit_log.c.details).where(
            audit_log.c.seq == 1))).scalar_one()
        await conn.execute(update(audit_log).where(audit_log.c.seq == first_seq)
                           .values(details=other))

    damaged = await case(gw, behind_cdn)
    assert damaged["hosting"]["damaged"].startswith(
        f"cannot open hosting_evidence.host of record {victim.id}: it fails authentication")
    assert "damaged" in damaged["flags"] and damaged["hosting"]["ips"] is None
    assert [e.get("damaged") is not None for e in damaged["hosting_evidence"]][-1]
    shown = await case(gw, located)
    assert shown["decision"]["damaged"].startswith(
        f"cannot open routing_decisions.explanation of record {decision.id}")
    assert shown["decision"]["explanation"] is None and "damaged" in shown["flags"]
    assert "damaged" not in shown["hosting"]  # the rest of the case reads as before
    history = (await case(gw, failing))["history"]
    assert history[0]["details"] == {} and history[0]["damaged"].startswith(
        f"cannot open audit_log.details of record {first_seq}")
    assert all("damaged" not in e for e in history[1:])
    async with gw.engine.connect() as conn:
        queue = {c["id"]: c for c in await list_cases(conn)}
        count, broken, _ = await verify(conn)
        with pytest.raises(TagMismatch, match=f"hosting_evidence.host of record {victim.id}"):
            await conn.run_sync(decide.read_case, uuid.UUID(behind_cdn))
    assert broken is not None and broken.seq == first_seq and count == first_seq - 1
    assert "damaged" in queue[behind_cdn]["flags"] and "damaged" in queue[located]["flags"]
    assert "damaged" not in queue[failing]["flags"]

    # The console shows each case, the damage named; the gateway goes on with new reports.
    client = StaffClient(base(gw))
    try:
        status, _ = await client.login(ana)
        assert status == 200
        status, page = await client.get(f"/cases/{located}")
        assert status == 200 and "Damaged: cannot open routing_decisions.explanation" in page
        assert ADDRESS in page
        status, page = await client.get(f"/cases/{behind_cdn}")
        assert status == 200 and "Damaged: cannot open hosting_evidence.host" in page
        status, page = await client.get("/")
        assert status == 200
    finally:
        await client.close()
    fresh = await file_case(gw, "And http://be.test/q7d", "q7d")
    assert (await case(gw, fresh))["hosting"]["country"] == "BE"

    # Routing a case whose evidence does not open holds it for a supervisor; the next routes.
    async with gw.engine.begin() as conn:
        await conn.execute(update(hosting_evidence)
                           .where(hosting_evidence.c.case_id == uuid.UUID(fresh))
                           .values(host=rows[uuid.UUID(located)].host))
    other = await file_case(gw, "And http://us.test/q7e", "q7e")
    await assess(gw, token, fresh)
    await assess(gw, token, other)
    held = await settle(gw, fresh, "held")
    assert held["decision"]["rule"] == "hold-damaged"
    assert held["decision"]["facts"] == {"error_type": "TagMismatch"}
    assert (await settle(gw, other, "awaiting_iccam"))["decision"]["facts"]["country"] == "US"


async def test_located_evidence_is_sealed_and_a_copied_value_is_named_on_its_case(
    engine: AsyncEngine, backend: WriteBackend, dns: DnsServer, mmdb: dict[str, Path],
    zone: Zone,
) -> None:
    """On SQLite and PostgreSQL: the locate stage stores every DNS name, address and error of
    its evidence sealed; a value copied into another case's evidence shows as damaged there
    only, naming the record, and ``cases show``'s view of the other case is as before."""
    zone.cname(ALIAS, TARGET, ttl=30)
    zone.add(TARGET, "A", ADDRESS)
    first, second, failing = await add_cases(backend, [
        f"http://{ALIAS}/x", "http://nl.test/y", "http://broken.test/z"])
    stage = LocateStage(backend, make_locator(dns, mmdb), worker="w1")
    assert await stage.run_once() == 3
    stored = await raw(engine, *(hosting_evidence.c[name] for name in (
        "host", "ips", "records", "addresses", "databases", "error")), cases.c.locate_error)
    assert len(stored) >= 14 and all(sealed(value) for value in stored)
    for needle in (ALIAS, TARGET, ADDRESS, "SERVFAIL"):
        assert needle.encode() not in b"".join(stored)
    async with engine.connect() as conn:
        before = await get_case(conn, first)
    assert before is not None and before["hosting_evidence"][0]["host"] == ALIAS
    async with engine.begin() as conn:
        rows = {row.case_id: row for row in await conn.execute(
            select(hosting_evidence.c.id, hosting_evidence.c.case_id,
                   hosting_evidence.c.records))}
        await conn.execute(update(hosting_evidence)
                           .where(hosting_evidence.c.id == rows[second].id)
                           .values(records=rows[first].records))
    async with engine.connect() as conn:
        shown = {c["id"]: c for c in await list_cases(conn)}
        after = await get_case(conn, first)
        damaged = await get_case(conn, second)
    assert after == before
    assert damaged is not None
    (evidence,) = damaged["hosting_evidence"]
    assert evidence["damaged"].startswith(
        f"cannot open hosting_evidence.records of record {rows[second].id}")
    assert evidence["records"] is None and evidence["status"] == "located"
    assert "damaged" in shown[str(second)]["flags"]
    assert "damaged" not in shown[str(first)]["flags"]
    assert "SERVFAIL" in shown[str(failing)]["hosting"]["error"]
