"""Migration 0022 on real SQLite and PostgreSQL databases: sealed text and JSON become the
sealed bytes, values in clear (a database not sealed yet) are marked clear, damaged values stay
damaged, and the downgrade gives back exactly what 0021 held."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.database import open_database
from gateway.store import migrate
from gateway.store.ids import uuid7
from gateway.store.resealing import count_by_key, seal_pass
from gateway.store.sealed import clear_form, clear_value, open_value, sealer_of
from gateway.store.sealing import SealBroken, SealContext, armor
from gateway.store.sealing.cipher import json_plaintext
from gateway.store.tables import audit_log, cases, routing_decisions
from tests.conftest import BACKENDS, PG_URL, ConfigFactory, PgSchema

pytestmark = pytest.mark.startup  # migrations read their scripts from disk

T0 = datetime(2026, 12, 1, 9, tzinfo=UTC)
URL = "http://bytes-migration.example/sealed"
CLEAR_URL = "http://bytes-migration.example/in-clear"
DAMAGED = "hgs:not base64!"
FACTS = {"host": "facts.bytes-migration.example", "n": [1, 2]}
DETAILS = {"url": "http://trail.bytes-migration.example/", "n": 1}

# The three tables as 0021 declared their sealed columns (Text and JSON).
OLD_CASES = sa.table("cases", sa.column("id", sa.Uuid()), sa.column("kind", sa.String()),
                     sa.column("status", sa.String()), sa.column("url_key", sa.String()),
                     sa.column("url", sa.Text()), sa.column("canonical_url", sa.Text()),
                     sa.column("locate_error", sa.Text()),
                     sa.column("report_count", sa.Integer()),
                     sa.column("first_reported", sa.DateTime(timezone=True)),
                     sa.column("last_reported", sa.DateTime(timezone=True)),
                     sa.column("created_at", sa.DateTime(timezone=True)),
                     sa.column("status_changed_at", sa.DateTime(timezone=True)))
OLD_DECISIONS = sa.table("routing_decisions", sa.column("id", sa.Uuid()),
                         sa.column("case_id", sa.Uuid()),
                         sa.column("created_at", sa.DateTime(timezone=True)),
                         sa.column("rule", sa.String()), sa.column("outcome", sa.String()),
                         sa.column("facts", sa.JSON()), sa.column("explanation", sa.Text()))
OLD_TRAIL = sa.table("audit_log", sa.column("seq", sa.BigInteger()),
                     sa.column("at", sa.DateTime(timezone=True)),
                     sa.column("actor", sa.String()), sa.column("action", sa.String()),
                     sa.column("details", sa.JSON()), sa.column("prev_hash", sa.String()),
                     sa.column("hash", sa.String()))


@pytest.fixture(params=BACKENDS)
async def older(request: pytest.FixtureRequest, make_config: ConfigFactory
                ) -> AsyncIterator[AsyncEngine]:
    """An engine on a real database at revision 0021 (the text forms)."""
    schema = None
    if request.param == "sqlite":
        engine = await open_database(make_config())
    else:
        schema = PgSchema(PG_URL)
        await schema.create()
        engine = await open_database(make_config(database={"url": PG_URL}),
                                     **schema.connect_args)
    try:
        await migrate.upgrade(engine, "0021")
        yield engine
    finally:
        await engine.dispose()
        if schema is not None:
            await schema.drop()


async def write_0021(engine: AsyncEngine) -> dict[str, Any]:
    """A sealed case (``hgs:`` text), a case in clear, a damaged one, a decision with sealed
    facts (a JSON string of ``hgs:`` text), and a trail entry in clear (a JSON object)."""
    sealer = sealer_of(engine)
    sealed_id, clear_id, damaged_id, decision = uuid7(), uuid7(), uuid7(), uuid7()
    url = sealer.seal_text(SealContext("cases", "url", sealed_id), URL)
    facts = armor(sealer.seal(SealContext("routing_decisions", "facts", decision),
                              json_plaintext(FACTS)))
    explanation = sealer.seal_text(SealContext("routing_decisions", "explanation", decision),
                                   "why")
    common = {"kind": "url", "status": "new", "report_count": 1, "first_reported": T0,
              "last_reported": T0, "created_at": T0, "status_changed_at": T0}
    async with engine.begin() as conn:
        await conn.execute(sa.insert(OLD_CASES), [
            {"id": sealed_id, "url_key": "k1:a", "url": url, "canonical_url": None,
             "locate_error": None, **common},
            {"id": clear_id, "url_key": "b" * 64, "url": CLEAR_URL, "canonical_url": CLEAR_URL,
             "locate_error": "ünïcode error", **common},
            {"id": damaged_id, "url_key": "k1:c", "url": DAMAGED, "canonical_url": None,
             "locate_error": None, **common}])
        await conn.execute(sa.insert(OLD_DECISIONS).values(
            id=decision, case_id=sealed_id, created_at=T0, rule="r", outcome="hold",
            facts=facts, explanation=explanation))
        await conn.execute(sa.insert(OLD_TRAIL).values(
            seq=1, at=T0, actor="system:locate", action="case.located", details=DETAILS,
            prev_hash="0" * 64, hash="1" * 64))
    return {"sealed": sealed_id, "clear": clear_id, "damaged": damaged_id,
            "decision": decision, "url": url, "facts": facts, "explanation": explanation}


async def read_0022(engine: AsyncEngine) -> dict[str, Any]:
    async with engine.connect() as conn:
        rows = {row.id: row for row in await conn.execute(sa.select(cases))}
        decision = (await conn.execute(sa.select(routing_decisions))).one()
        details = (await conn.execute(sa.select(audit_log.c.details))).scalar_one()
    return {"cases": rows, "decision": decision, "details": details}


async def read_0021(engine: AsyncEngine) -> dict[str, Any]:
    async with engine.connect() as conn:
        rows = {row.id: row for row in await conn.execute(sa.select(OLD_CASES))}
        decision = (await conn.execute(sa.select(OLD_DECISIONS))).one()
        details = (await conn.execute(sa.select(OLD_TRAIL.c.details))).scalar_one()
    return {"cases": rows, "decision": decision, "details": details}


async def test_0022_stores_sealed_bytes_and_its_downgrade_gives_the_text_back(
    older: AsyncEngine
) -> None:
    """Up: sealed values open as before from their bytes (no text form left); values in clear
    are marked clear with their text as it was; a damaged value is still refused naming the
    table, column and record. Down: 0021's values come back exactly; up again, the same bytes."""
    written = await write_0021(older)
    sealer = sealer_of(older)
    await migrate.upgrade(older)
    up = await read_0022(older)
    sealed, clear, damaged = (up["cases"][written[k]] for k in ("sealed", "clear", "damaged"))
    decision = up["decision"]
    stored = [sealed.url, decision.facts, decision.explanation]
    assert all(type(value) is bytes and value[:1] == b"\x01" for value in stored)
    assert open_value(sealer, cases.c.url, sealed.id, sealed.url) == URL
    assert open_value(sealer, routing_decisions.c.facts, decision.id, decision.facts) == FACTS
    assert open_value(sealer, routing_decisions.c.explanation, decision.id,
                      decision.explanation) == "why"
    assert (clear.url, clear.canonical_url, clear.locate_error) == (
        clear_form("text", CLEAR_URL), clear_form("text", CLEAR_URL),
        clear_form("text", "ünïcode error"))
    assert up["details"] == clear_form("json", DETAILS)
    assert clear_value("json", up["details"]) == DETAILS
    assert damaged.url == DAMAGED.encode()
    with pytest.raises(SealBroken, match=f"cases.url of record {damaged.id}"):
        open_value(sealer, cases.c.url, damaged.id, damaged.url)

    await migrate.downgrade(older, "0021")
    down = await read_0021(older)
    assert down["cases"][written["sealed"]].url == written["url"]
    assert down["cases"][written["clear"]].url == CLEAR_URL
    assert down["cases"][written["clear"]].locate_error == "ünïcode error"
    assert down["cases"][written["damaged"]].url == DAMAGED
    assert (down["decision"].facts, down["decision"].explanation) == (
        written["facts"], written["explanation"])
    assert down["details"] == DETAILS

    await migrate.upgrade(older)
    again = await read_0022(older)
    assert {k: tuple(v) for k, v in again["cases"].items()} == {
        k: tuple(v) for k, v in up["cases"].items()}
    assert tuple(again["decision"]) == tuple(decision)
    assert again["details"] == up["details"]


async def test_values_in_clear_after_0022_are_sealed_by_the_upgrade_pass(
    older: AsyncEngine
) -> None:
    """``db upgrade``'s pass after 0022: the values 0022 marked clear are sealed and open to
    what the older release wrote; a damaged value is counted broken and left as it is; a
    sealed one is kept."""
    written = await write_0021(older)
    sealer = sealer_of(older)
    await migrate.upgrade(older)
    report = await seal_pass(older, sealer, run="upgrade-test")
    assert report.broken == {"cases": 1}
    after = await read_0022(older)
    clear = after["cases"][written["clear"]]
    for name in ("url", "canonical_url", "locate_error"):
        assert getattr(clear, name)[:1] == b"\x01"
    assert open_value(sealer, cases.c.canonical_url, clear.id, clear.canonical_url) == CLEAR_URL
    assert open_value(sealer, cases.c.locate_error, clear.id,
                      clear.locate_error) == "ünïcode error"
    assert after["cases"][written["damaged"]].url == DAMAGED.encode()
    sealed = after["cases"][written["sealed"]]
    assert open_value(sealer, cases.c.url, sealed.id, sealed.url) == URL
    counts = await count_by_key(older, sealer)
    assert counts["cases"] == {sealer.keyring.current.name: 4, "broken": 1}


def _migration() -> Any:
    path = Path(migrate.MIGRATIONS / "versions" / "0022_sealed_bytes.py")
    spec = importlib.util.spec_from_file_location("sealed_bytes_0022", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


MIGRATION = _migration()


@settings(max_examples=60, deadline=None)
@given(text=st.text(), document=st.dictionaries(st.text(), st.text(), max_size=3),
       junk=st.binary())
def test_0022_converts_each_form_and_back(text: str, document: dict[str, str],
                                          junk: bytes) -> None:
    """Any text or JSON in clear goes down as it came up (and is marked clear, whatever its
    first character); bytes that are neither marked clear nor a sealed value go down as text
    0021 refuses as damaged (``hgs:``), never as a value it would take for one in clear."""
    as_json = json.dumps(document).encode()
    for kind, old in (("text", text.encode()), ("json", as_json)):
        new = MIGRATION.to_bytes(kind, old)
        assert new[:1] == b"\x00" and MIGRATION.to_text(kind, new) == old
    for kind in ("text", "json"):
        if junk[:1] in (b"\x00", b"\x01"):
            continue
        down = MIGRATION.to_text(kind, junk)
        shown = json.loads(down) if kind == "json" else down.decode()
        assert isinstance(shown, str) and shown.startswith("hgs:")
        assert MIGRATION.to_bytes(kind, down)[:1] != b"\x00"  # up again: still damaged
