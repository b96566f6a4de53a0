"""The markers the stages' polls read (``gateway.store.due``), on real SQLite and PostgreSQL:
set by the moves that give a stage work and cleared by those that end it; filled by migration
0028 for the cases already waiting; and read through their partial indexes, so that a poll
reads what is due rather than every case."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import insert, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from gateway.database import open_database
from gateway.store import due, leases, migrate
from gateway.store.backend import WriteBackend
from gateway.store.ids import uuid7
from gateway.store.lifecycle import Actor, move
from gateway.store.tables import (
    assessments,
    cases,
    hosting_evidence,
    referrals,
    routing_decisions,
    users,
)
from routing import decide, recheck
from routing import stage as locating
from tests.conftest import BACKENDS, PG_URL, ConfigFactory, PgSchema

T0 = datetime(2026, 12, 1, 9, tzinfo=UTC)
HOUR = timedelta(hours=1)
MINUTE = timedelta(minutes=1)
ANA, ROUTE = Actor("ana", "analyst"), Actor.system("route")
ANA_ID = uuid.UUID(int=7)


def new_case(conn: Connection, case_id: uuid.UUID, *, status: str = "awaiting_assessment",
             kind: str = "url", **values: Any) -> None:
    conn.execute(insert(cases).values(
        id=case_id, kind=kind, status=status, url_key=f"k:{case_id.hex}", report_count=1,
        **{"first_reported": T0, "last_reported": T0, "created_at": T0,
           "status_changed_at": T0, **values}))


def looked_up_at(conn: Connection, case_id: uuid.UUID, at: datetime) -> None:
    conn.execute(insert(hosting_evidence).values(
        id=uuid7(), case_id=case_id, checked_at=at, trigger="auto", host=b"x", resolver="r",
        outcome="answer", status="located", country="NL", cdn=False, ips=b"x", records=b"x",
        addresses=b"x", databases=b"x"))


def markers(conn: Connection, case_id: uuid.UUID) -> tuple[Any, Any]:
    row = conn.execute(select(cases.c.route_due_at, cases.c.recheck_since)
                       .where(cases.c.id == case_id)).one()
    return tuple(None if v is None else v.replace(tzinfo=UTC) for v in row)


async def test_markers_follow_the_case_through_routing_and_outcomes(
        backend: WriteBackend) -> None:
    """Assessed: due for routing; held for a key: still due, from the last try; referred: no
    longer, and watched by the re-check from its latest lookup, which a later lookup moves
    on (an earlier one does not); closed by an outcome: watched no more. A legal verdict is
    due for routing until it is routed (closed)."""
    illegal, legal = uuid7(), uuid7()

    def work(conn: Connection) -> list[tuple[Any, Any]]:
        seen = []
        new_case(conn, illegal)
        new_case(conn, legal)
        looked_up_at(conn, illegal, T0 - HOUR)
        seen.append(markers(conn, illegal))
        move(conn, illegal, "assess_illegal", actor=ANA, at=T0, state="awaiting_assessment")
        seen.append(markers(conn, illegal))
        move(conn, illegal, "route_hold", actor=ROUTE, at=T0 + HOUR, state="assessed",
             values={"hold_reason": due.KEY_HOLD})
        seen.append(markers(conn, illegal))
        move(conn, illegal, "route_refer", actor=ROUTE, at=T0 + 2 * HOUR, state="held")
        seen.append(markers(conn, illegal))
        for at in (T0 + 3 * HOUR, T0):  # a lookup later, then one reported late
            conn.execute(update(cases).where(cases.c.id == illegal).values(
                recheck_since=due.looked_up(at)))
        seen.append(markers(conn, illegal))
        move(conn, illegal, "acknowledge", actor=ANA, at=T0 + 4 * HOUR, state="referred")
        seen.append(markers(conn, illegal))
        move(conn, illegal, "record_removed", actor=ANA, at=T0 + 5 * HOUR,
             state="acknowledged")
        seen.append(markers(conn, illegal))
        move(conn, legal, "assess_legal", actor=ANA, at=T0, state="awaiting_assessment")
        seen.append(markers(conn, legal))
        move(conn, legal, "route_close", actor=ROUTE, at=T0 + HOUR, state="closed_legal")
        seen.append(markers(conn, legal))
        return seen

    assert await backend.transaction(work) == [
        (None, None), (T0, None), (T0 + HOUR, None), (None, T0 - HOUR),
        (None, T0 + 3 * HOUR), (None, T0 + 3 * HOUR), (None, None),
        (T0, None), (None, None)]


async def test_claims_take_only_what_is_due(backend: WriteBackend) -> None:
    """Routing claims the assessed case with a final verdict and not the one routed already;
    the re-check claims the referred case looked up long ago and not the one looked up now."""
    waiting, routed, stale, fresh = uuid7(), uuid7(), uuid7(), uuid7()
    now = T0 + 48 * HOUR

    def work(conn: Connection) -> tuple[list[Any], list[Any]]:
        conn.execute(insert(users).values(id=ANA_ID, name="ana", role="analyst",
                                          password_hash="x", totp_secret=b"x", created_at=T0))
        for case_id in (waiting, routed, stale, fresh):
            new_case(conn, case_id)
            conn.execute(insert(assessments).values(
                id=uuid7(), case_id=case_id, user_id=ANA_ID, verdict="illegal",
                classification="baseline", created_at=T0, status="final"))
            move(conn, case_id, "assess_illegal", actor=ANA, at=T0,
                 state="awaiting_assessment")
        looked_up_at(conn, routed, now - HOUR)
        looked_up_at(conn, stale, T0)
        looked_up_at(conn, fresh, now - HOUR)
        for case_id in (routed, stale, fresh):
            move(conn, case_id, "route_refer", actor=ROUTE, at=T0, state="assessed")
        to_route = decide.claim(conn, worker="w", now=now, until=now + HOUR,
                                key_retry=HOUR)
        to_check = leases.claim(conn, cases, worker="w", now=now, until=now + HOUR,
                                where=[recheck.due(now, 12 * HOUR)],
                                order_by=cases.c.recheck_since, limit=16,
                                returning=[cases.c.id])
        return to_route, to_check

    to_route, to_check = await backend.transaction(work)
    assert to_route == [(waiting, "assessed")]
    assert [row[0] for row in to_check] == [stale]


async def plan(conn: AsyncConnection, query: Any) -> str:
    """The plan of ``query`` (EXPLAIN QUERY PLAN; EXPLAIN on PostgreSQL, sequential scans
    off: whether the index can serve it, not whether a tiny table is better read whole)."""
    sql = str(query.compile(conn.sync_connection, compile_kwargs={"literal_binds": True}))
    if conn.dialect.name == "sqlite":
        return " | ".join(r[-1] for r in await conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}"))
    await conn.exec_driver_sql("SET LOCAL enable_seqscan = off")
    return " | ".join(r[0] for r in await conn.exec_driver_sql(f"EXPLAIN {sql}"))


async def test_polls_read_their_partial_indexes(engine: AsyncEngine) -> None:
    """The routing and re-check polls, a worker handing back its leases, and a case's
    referrals are each read through their index, not by reading every case or referral."""
    now = datetime(2026, 12, 1, tzinfo=UTC)
    free = leases.free(cases, now)
    queries = {
        "ix_cases_route_due": select(cases.c.id).where(*decide.due_now(now, HOUR), free)
        .order_by(cases.c.route_due_at).limit(8),
        "ix_cases_recheck": select(cases.c.id).where(recheck.due(now, HOUR), free)
        .order_by(cases.c.recheck_since).limit(16),
        "ix_cases_claimed": select(cases.c.id).where(cases.c.claimed_by == "w",
                                                     cases.c.status.in_(due.WATCHED)),
        "ix_referrals_claimed": select(referrals.c.id).where(referrals.c.claimed_by == "w"),
        "ix_referrals_case": select(referrals.c.id).where(referrals.c.case_id == uuid7())
        .order_by(referrals.c.created_at),
        "ix_cases_locate_due": select(cases.c.id).where(*locating.due_now(now), free)
        .order_by(locating.DUE).limit(64),
    }
    async with engine.begin() as conn:
        for index, query in queries.items():
            assert index in await plan(conn, query), index


async def test_the_locating_poll_reads_its_index_as_the_stage_binds_it(
        engine: AsyncEngine) -> None:
    """The locating poll's index is partial: it serves the poll only if the statement says
    which cases in the words of the index (not in bound parameters, whose values SQLite does
    not plan with); so its plan is asked with the stage's own parameters, bound."""
    if engine.dialect.name != "sqlite":
        pytest.skip("PostgreSQL plans a parameterised EXPLAIN with the values")
    now = datetime(2026, 12, 1, tzinfo=UTC)
    query = (select(cases.c.id).where(*locating.due_now(now), leases.free(cases, now))
             .order_by(locating.DUE).limit(64))
    async with engine.connect() as conn:
        compiled = query.compile(conn.sync_connection)
        params = compiled.construct_params()
        processors = compiled._bind_processors
        bound = tuple(processors[name](params[name]) if name in processors else params[name]
                      for name in compiled.positiontup or [])
        found = " | ".join(r[-1] for r in await conn.exec_driver_sql(
            f"EXPLAIN QUERY PLAN {compiled}", bound))
    assert "ix_cases_locate_due" in found, found


async def test_the_locating_poll_takes_what_is_due_oldest_first(backend: WriteBackend) -> None:
    """New URL cases at once, and failed ones at their next attempt, oldest due first; not
    a failed one whose attempt is later, not a case of another state, nor one without a
    URL."""
    first, later, retry_due, retry_later, assessed, no_url = (uuid7() for _ in range(6))
    now = T0 + 2 * HOUR

    def work(conn: Connection) -> tuple[set[Any], set[Any]]:
        new_case(conn, later, status="new", first_reported=T0 + HOUR)
        new_case(conn, first, status="new")
        new_case(conn, retry_due, status="locate_failed", locate_after=T0 + 30 * MINUTE)
        new_case(conn, retry_later, status="locate_failed", locate_after=now + HOUR)
        new_case(conn, assessed, status="assessed")
        new_case(conn, no_url, status="new", kind="no_url")
        def take(limit: int) -> set[Any]:
            return {row[0] for row in leases.claim(
                conn, cases, worker="w", now=now, until=now + HOUR, where=locating.due_now(now),
                order_by=locating.DUE, limit=limit, returning=[cases.c.id])}

        return take(2), take(64)

    oldest, rest = await backend.transaction(work)
    assert oldest == {first, retry_due} and rest == {later}
    assert set(locating.TO_LOCATE) == {"new", "locate_failed"}  # as LOCATE_WAITING names them


# --- migration 0028 fills the markers ------------------------------------------------------


@pytest.fixture(params=BACKENDS)
async def at_0027(request: pytest.FixtureRequest, make_config: ConfigFactory
                  ) -> AsyncIterator[AsyncEngine]:
    """An engine on a real database at revision 0027 (before the markers)."""
    schema = None
    if request.param == "sqlite":
        engine = await open_database(make_config())
    else:
        schema = PgSchema(PG_URL)
        await schema.create()
        engine = await open_database(make_config(database={"url": PG_URL}),
                                     **schema.connect_args)
    try:
        await migrate.upgrade(engine, "0027")
        yield engine
    finally:
        await engine.dispose()
        if schema is not None:
            await schema.drop()


OLD_CASES = sa.table("cases", *(sa.column(c.name, c.type) for c in cases.columns
                                if c.name not in ("route_due_at", "recheck_since")))


@pytest.mark.startup
async def test_migration_0028_marks_the_cases_already_waiting(at_0027: AsyncEngine) -> None:
    """Assessed, closed as legal and not routed yet, and held for a key: due for routing
    since their last change; closed as legal and routed, held for another reason: not.
    Referred or acknowledged with a URL: watched from their latest lookup (never looked up:
    at once); without a URL, or removed: not watched."""
    ids = {name: uuid7() for name in (
        "assessed", "legal_waiting", "legal_routed", "held_key", "held_other", "referred",
        "acknowledged_never", "no_url", "removed")}
    changed = T0 + HOUR
    rows = {
        "assessed": ("assessed", "url", None), "legal_waiting": ("closed_legal", "url", None),
        "legal_routed": ("closed_legal", "url", None),
        "held_key": ("held", "url", "hold-no-key"),
        "held_other": ("held", "url", "hold-unknown-hosting"),
        "referred": ("referred", "url", None), "acknowledged_never": ("acknowledged", "url", None),
        "no_url": ("referred", "no_url", None), "removed": ("removed", "url", None)}
    async with at_0027.begin() as conn:
        for name, (status, kind, hold) in rows.items():
            await conn.execute(insert(OLD_CASES).values(
                id=ids[name], kind=kind, status=status, url_key=name, report_count=1,
                first_reported=T0, last_reported=T0, created_at=T0,
                status_changed_at=changed, hold_reason=hold, locate_attempts=0,
                reappeared=False))
        await conn.execute(insert(routing_decisions).values(
            id=uuid7(), case_id=ids["legal_routed"], created_at=T0, rule="legal",
            outcome="close", facts=b"x", explanation=b"x", superseded=False))
        for at in (T0 - HOUR, T0):
            await conn.run_sync(looked_up_at, ids["referred"], at)
    await migrate.upgrade(at_0027)
    async with at_0027.connect() as conn:
        found = {name: await conn.run_sync(markers, case_id) for name, case_id in ids.items()}
    assert found == {
        "assessed": (changed, None), "legal_waiting": (changed, None),
        "legal_routed": (None, None), "held_key": (changed, None),
        "held_other": (None, None), "referred": (None, T0),
        "acknowledged_never": (None, due.NEVER), "no_url": (None, None),
        "removed": (None, None)}
