"""Anonymising in the store, on a real SQLite file and PostgreSQL: a report that named two
cases keeps its words until both are anonymised; a damaged sealed value does not stop the
pass; migration 0023 goes down and up again."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import insert, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.config import RetentionConfig
from gateway.retention import purge
from gateway.store import migrate
from gateway.store.anonymise import REDACTED
from gateway.store.audit import verify
from gateway.store.backend import WriteBackend
from gateway.store.ids import uuid7
from gateway.store.sealed import open_row, seal_values, sealer_of
from gateway.store.tables import case_reports, cases, hosting_evidence, submissions
from tests.sealed_cases import altered, case_row

LONG_AGO = datetime(2024, 1, 10, tzinfo=UTC)
NOW = datetime(2026, 12, 1, tzinfo=UTC)
# Raw messages and contacts are kept longer than cases: only anonymising takes them here.
POLICY = RetentionConfig(anonymise_after_days=365, raw_message_days=3650,
                         reporter_contact_days=3650)


def submission(conn: Connection, text: str, sender: str) -> uuid.UUID:
    """A report as read, naming whatever ``text`` names, from ``sender``."""
    sub_id = uuid7()
    conn.execute(insert(submissions).values(seal_values(sealer_of(conn), submissions, sub_id, {
        "id": sub_id, "reference": f"CF-2024-{sub_id.hex[-6:]}", "channel": "smtp",
        "status": "parsed", "received_at": LONG_AGO, "rcpt_tos": ["report@hotline.test"],
        "mail_from": sender, "subject": f"about {text}", "report_text": text,
        "body_sha256": "0" * 64, "raw_size": len(text), "raw": text.encode(),
        "attachments": [{"filename": f"{sender}.png", "sha256": "1" * 64}]})))
    return sub_id


def case(conn: Connection, url: str, host: str, status: str, sub_id: uuid.UUID) -> uuid.UUID:
    """A case of ``url`` in ``status`` since long ago, reported by ``sub_id``, located."""
    sealer = sealer_of(conn)
    case_id = uuid7()
    conn.execute(insert(cases).values(case_row(
        sealer, id=case_id, kind="url", status=status, url=url, canonical_url=url,
        report_count=1, first_reported=LONG_AGO, last_reported=LONG_AGO, created_at=LONG_AGO,
        status_changed_at=LONG_AGO)))
    report_id = uuid7()
    conn.execute(insert(case_reports).values(seal_values(sealer, case_reports, report_id, {
        "id": report_id, "case_id": case_id, "submission_id": sub_id,
        "reported_at": LONG_AGO, "written_as": url, "url": url})))
    evidence_id = uuid7()
    conn.execute(insert(hosting_evidence).values(seal_values(
        sealer, hosting_evidence, evidence_id, {
            "id": evidence_id, "case_id": case_id, "checked_at": LONG_AGO, "trigger": "auto",
            "host": host, "resolver": "test", "outcome": "answer", "status": "located",
            "country": "NL", "asn": 1136, "org": "KPN", "cdn": False,
            "ips": ["192.0.2.44"], "records": [{"name": host, "type": "A",
                                                 "value": "192.0.2.44"}],
            "addresses": [{"ip": "192.0.2.44", "country": "NL", "asn": 1136}],
            "databases": {"country": {"name": "test"}}})))
    return case_id


async def opened(engine: AsyncEngine, table: sa.Table) -> list[dict[str, Any]]:
    async with engine.connect() as conn:
        sealer = sealer_of(conn)
        return [dict(open_row(sealer, table, row))
                for row in await conn.execute(select(table))]


async def test_a_report_naming_two_cases_keeps_its_words_until_both_are_anonymised(
        backend: WriteBackend, engine: AsyncEngine) -> None:
    def build(conn: Connection) -> tuple[uuid.UUID, uuid.UUID, uuid.UUID]:
        sub_id = submission(conn, "http://wombat-a.test/1 and http://wombat-b.test/2",
                            "wombat-reporter@example.org")
        return (sub_id, case(conn, "http://wombat-a.test/1", "wombat-a.test", "removed", sub_id),
                case(conn, "http://wombat-b.test/2", "wombat-b.test", "referred", sub_id))

    _, closed, still_open = await backend.transaction(build)
    first = await purge(backend, POLICY, now=NOW)
    assert (first.anonymised_cases, first.anonymised_submissions) == (1, 0)
    (kept,) = await opened(engine, submissions)
    assert kept["report_text"] and kept["mail_from"] == "wombat-reporter@example.org"
    by_case = {row["case_id"]: row for row in await opened(engine, hosting_evidence)}
    assert by_case[closed]["host"].startswith("hash:") and by_case[closed]["ips"] == []
    assert by_case[closed]["addresses"] == [{"country": "NL", "asn": 1136}]
    assert by_case[still_open]["host"] == "wombat-b.test"

    await backend.transaction(lambda conn: conn.execute(
        update(cases).where(cases.c.id == still_open)
        .values(status="not_actionable", status_changed_at=LONG_AGO)))
    second = await purge(backend, POLICY, now=NOW)
    assert (second.anonymised_cases, second.anonymised_submissions) == (1, 1)
    (gone,) = await opened(engine, submissions)
    assert all(gone[name] is None for name in ("mail_from", "subject", "report_text", "raw"))
    assert gone["attachments"] == [{"filename": None, "sha256": "1" * 64}]
    text = repr([await opened(engine, t) for t in (cases, case_reports, hosting_evidence,
                                                   submissions)])
    assert "wombat" not in text and "192.0.2.44" not in text
    async with engine.connect() as conn:
        assert (await verify(conn))[1] is None


async def test_a_damaged_value_is_replaced_and_the_pass_goes_on(
        backend: WriteBackend, engine: AsyncEngine) -> None:
    """A sealed value that no longer opens cannot stop retention: it is replaced too."""
    def build(conn: Connection) -> list[uuid.UUID]:
        sub_id = submission(conn, "http://numbat.test/x", "numbat@example.org")
        return [case(conn, f"http://numbat.test/{n}", "numbat.test", "closed_legal", sub_id)
                for n in range(3)]

    made = await backend.transaction(build)
    async with engine.begin() as conn:
        row = (await conn.execute(select(hosting_evidence.c.id, hosting_evidence.c.host)
                                  .where(hosting_evidence.c.case_id == made[1]))).one()
        await conn.execute(update(hosting_evidence).where(hosting_evidence.c.id == row.id)
                           .values(host=altered(row.host)))
    done = await purge(backend, POLICY, now=NOW, batch=1)
    assert done.anonymised_cases == 3
    hosts = {r["case_id"]: r["host"] for r in await opened(engine, hosting_evidence)}
    assert hosts[made[1]] == REDACTED
    assert all(hosts[c].startswith("hash:") for c in (made[0], made[2]))


@pytest.mark.startup  # Alembic reads its scripts from disk, as at start-up
async def test_0023_goes_down_and_up_again(backend: WriteBackend, engine: AsyncEngine) -> None:
    await backend.transaction(lambda conn: case(
        conn, "http://bilby.test/", "bilby.test", "removed",
        submission(conn, "http://bilby.test/", "bilby@example.org")))
    assert (await purge(backend, POLICY, now=NOW)).anonymised_cases == 1

    def columns(conn: Connection) -> set[str]:
        return {c["name"] for c in sa.inspect(conn).get_columns("cases")}

    await migrate.downgrade(engine, "0022")
    async with engine.connect() as conn:
        assert "anonymised_at" not in await conn.run_sync(columns)
    await migrate.upgrade(engine)
    async with engine.connect() as conn:
        assert "anonymised_at" in await conn.run_sync(columns)
        assert (await conn.execute(select(cases.c.anonymised_at))).scalar_one() is None
    assert await migrate.current(engine) == migrate.head()


async def test_a_report_left_holding_data_by_two_passes_at_once_is_swept(
        backend: WriteBackend, engine: AsyncEngine) -> None:
    """Two passes at once, each anonymising one of a report's two cases, each see the other
    case still open: the next pass finds the report whose every case is anonymised and
    clears it."""
    def build(conn: Connection) -> list[uuid.UUID]:
        sub_id = submission(conn, "http://quoll.test/1 http://quoll.test/2", "quoll@example.org")
        made = [case(conn, f"http://quoll.test/{n}", "quoll.test", "removed", sub_id)
                for n in (1, 2)]
        # As the two passes left it: both cases marked, the report untouched.
        conn.execute(update(cases).values(anonymised_at=NOW))
        return made

    await backend.transaction(build)
    done = await purge(backend, POLICY, now=NOW)
    assert (done.anonymised_cases, done.anonymised_submissions) == (0, 1)
    (swept,) = await opened(engine, submissions)
    assert swept["report_text"] is None and swept["mail_from"] is None
    assert (await purge(backend, POLICY, now=NOW)).anonymised_submissions == 0
