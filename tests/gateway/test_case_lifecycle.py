"""The case lifecycle: every transition of the table works for those it names, every other one
is refused and changes nothing, and no module but the lifecycle sets a case's status."""

from __future__ import annotations

import ast
import re
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import func, insert, select
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.store import lifecycle
from gateway.store.errors import Conflict, NotAllowed
from gateway.store.ids import uuid7
from gateway.store.lifecycle import (
    EVENTS,
    MILESTONES,
    STATES,
    TABLE,
    Actor,
    CaseChanged,
    IllegalTransition,
    TransitionNotAllowed,
    move,
)
from gateway.store.sealed import seal_values, sealer_of
from gateway.store.tables import assessments, audit_log, cases, routing_decisions, users
from tests.sealed_cases import case_row
from tests.trail import opened

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
ROOT = Path(__file__).resolve().parents[2]


def actor_for(who: tuple[str, ...]) -> Actor:
    """Someone the row allows."""
    if any(w.startswith("system:") for w in who):
        return Actor.system(next(w for w in who if w.startswith("system:")).partition(":")[2])
    return Actor("sue", "supervisor") if lifecycle.SUPERVISOR in who else Actor("ana", "analyst")


def allowed_actor(event: str) -> Actor:
    return actor_for(next(t.who for t in TABLE if t.event == event))


async def new_case(engine: AsyncEngine, status: str) -> uuid.UUID:
    case_id = uuid7()
    async with engine.begin() as conn:
        await conn.execute(insert(cases).values(case_row(
            sealer_of(engine), id=case_id, kind="url", status=status, url_key=case_id.hex,
            url="http://e.test/", canonical_url="http://e.test/", report_count=1,
            first_reported=T0, last_reported=T0, created_at=T0, status_changed_at=T0,
            hold_reason="hold-x")))
    return case_id


async def snapshot(engine: AsyncEngine, case_id: uuid.UUID) -> tuple[dict[str, Any], int]:
    async with engine.connect() as conn:
        row = (await conn.execute(select(cases).where(cases.c.id == case_id))).one()
        entries = (await conn.execute(select(func.count()).select_from(audit_log))).scalar()
    return dict(row._mapping), int(entries or 0)


async def attempt(engine: AsyncEngine, case_id: uuid.UUID, event: str, actor: Actor,
                  **kwargs: Any) -> BaseException | lifecycle.Transition:
    """Apply ``event`` in a transaction that commits whatever happened: a refusal must have
    written nothing before it was raised."""

    def work(conn: Connection) -> BaseException | lifecycle.Transition:
        try:
            return move(conn, case_id, event, actor=actor, at=T0 + timedelta(hours=1),
                        **kwargs)
        except Exception as exc:
            return exc

    async with engine.begin() as conn:
        return await conn.run_sync(work)


def test_the_table_is_well_formed() -> None:
    """Each row names known states, actors and milestones, and each state is reachable
    (DESIGN's ``located`` is not a state: see the module docstring)."""
    known = set(STATES)
    for row in TABLE:
        assert row.state is None or row.state in known, row
        assert row.next in STATES, row
        assert row.milestone in ("", *MILESTONES), row
        assert row.effect in ("", "afresh", "reroute")
        assert all(w.startswith("system:") or w in (lifecycle.STAFF, lifecycle.SUPERVISOR)
                   for w in row.who)
    reached = {row.next for row in TABLE}
    assert reached == set(STATES)
    assert "located" not in known


async def test_every_refused_transition_raises_and_changes_nothing(engine: AsyncEngine) -> None:
    """For every state and every event the table does not pair with it, the move is refused
    with a Conflict, the case is as it was, and the audit trail has no entry."""
    refused = [(state, event) for state in STATES for event in EVENTS
               if (state, event) not in {(t.state, t.event) for t in TABLE}]
    assert len(refused) > 100
    for state, event in refused:
        case_id = await new_case(engine, state)
        before = await snapshot(engine, case_id)
        outcome = await attempt(engine, case_id, event, allowed_actor(event))
        assert isinstance(outcome, IllegalTransition), (state, event, outcome)
        assert isinstance(outcome, Conflict)
        assert await snapshot(engine, case_id) == before, (state, event)
        assert before[1] == 0


async def test_every_transition_of_the_table_moves_and_records(engine: AsyncEngine) -> None:
    """Each row, caused by someone it names, moves the case to its next state and writes one
    audit entry with the row's action, from and to."""
    for row in TABLE:
        if row.state is None:
            continue  # creation is filing's (tests/intake/test_cases.py)
        case_id = await new_case(engine, row.state)
        _, entries = await snapshot(engine, case_id)
        outcome = await attempt(engine, case_id, row.event, actor_for(row.who))
        assert outcome == row, (row, outcome)
        after, now_entries = await snapshot(engine, case_id)
        assert after["status"] == row.next
        assert (after["hold_reason"] is None) == bool(row.effect)
        async with engine.connect() as conn:
            (entry,) = opened(conn, await conn.execute(
                select(audit_log).order_by(audit_log.c.seq.desc()).limit(1)))
        assert now_entries == entries + 1
        assert (entry.action, entry.case_id, entry.details["from"], entry.details["to"]) == (
            row.action, case_id, row.state, row.next)


async def test_who_may_cause_a_transition(engine: AsyncEngine) -> None:
    """An analyst cannot reopen, and a stage cannot assess: refused as not allowed, and the
    case stays as it was."""
    for state, event, actor in [("held", "reopen", Actor("ana", "analyst")),
                                ("awaiting_assessment", "assess_legal", Actor.system("locate")),
                                ("new", "locate", Actor("system:locate", "analyst"))]:
        case_id = await new_case(engine, state)
        before = await snapshot(engine, case_id)
        outcome = await attempt(engine, case_id, event, actor)
        assert isinstance(outcome, TransitionNotAllowed) and isinstance(outcome, NotAllowed)
        assert await snapshot(engine, case_id) == before


async def test_a_case_that_changed_meanwhile_is_not_moved(engine: AsyncEngine) -> None:
    """The caller's state is a guard: a case no longer in it is refused (CaseChanged)."""
    case_id = await new_case(engine, "held")
    before = await snapshot(engine, case_id)
    outcome = await attempt(engine, case_id, "assess_legal", Actor("ana", "analyst"),
                            state="awaiting_assessment")
    assert isinstance(outcome, CaseChanged)
    assert await snapshot(engine, case_id) == before


async def test_reopening_supersedes_verdicts_and_decisions(engine: AsyncEngine) -> None:
    """Reopening (an ``afresh`` transition) marks the verdicts and the live decision
    superseded; naming the country (``reroute``) supersedes only the decision."""
    user_id = uuid7()
    results = {}
    for event, state in (("reopen", "held"), ("set_country", "held")):
        case_id = await new_case(engine, state)
        async with engine.begin() as conn:
            if event == "reopen":
                await conn.execute(insert(users).values(
                    id=user_id, name="ana", role="analyst", password_hash="x",
                    totp_secret=b"x", created_at=T0))
            await conn.execute(insert(assessments).values(
                id=uuid7(), case_id=case_id, user_id=user_id, verdict="illegal",
                classification="baseline", created_at=T0, status="final"))
            decision_id = uuid7()
            await conn.execute(insert(routing_decisions).values(seal_values(
                sealer_of(conn), routing_decisions, decision_id, {
                    "id": decision_id, "case_id": case_id, "created_at": T0,
                    "rule": "hold-unknown-hosting", "outcome": "hold", "facts": {},
                    "explanation": "x"})))
        await attempt(engine, case_id, event, Actor("sue", "supervisor"))
        async with engine.connect() as conn:
            verdict = (await conn.execute(select(assessments.c.status).where(
                assessments.c.case_id == case_id))).scalar()
            superseded = (await conn.execute(select(routing_decisions.c.superseded).where(
                routing_decisions.c.case_id == case_id))).scalar()
        results[event] = (verdict, superseded)
    assert results == {"reopen": ("superseded", True), "set_country": ("final", True)}


# --- no other module sets a case's status ----------------------------------------------------

STATUS_COLUMNS = {"status", "status_changed_at"}
SOURCES = [p for package in ("gateway", "intake", "routing", "outbound")
           for p in sorted((ROOT / package).rglob("*.py"))
           if "migrations" not in p.parts and p.name != "lifecycle.py"]


def _root(node: ast.expr) -> ast.expr:
    """The innermost call of a method chain: ``update(cases)`` in
    ``update(cases).where(…).values(…)``."""
    while isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
            and isinstance(node.func.value, ast.Call):
        node = node.func.value
    return node


def _on_cases(call: ast.Call) -> bool:
    root = _root(call)
    if not isinstance(root, ast.Call):
        return False
    func_name = root.func.attr if isinstance(root.func, ast.Attribute) else getattr(
        root.func, "id", "")
    args = [a for a in root.args if isinstance(a, ast.Name)]
    target = root.func.value if isinstance(root.func, ast.Attribute) else None
    if func_name.endswith(("update", "insert")):  # dialect inserts too
        return any(a.id == "cases" for a in args) or (
            isinstance(target, ast.Name) and target.id == "cases")
    return False


def _sets_status(call: ast.Call) -> str | None:
    """Why this call may set a status column, or None."""
    for keyword in call.keywords:
        if keyword.arg is None:
            return "values(**…): cannot tell which columns"
        if keyword.arg in STATUS_COLUMNS:
            return f"sets {keyword.arg}"
    for arg in call.args:
        if isinstance(arg, ast.Dict) and any(
                isinstance(k, ast.Constant) and k.value in STATUS_COLUMNS for k in arg.keys):
            return "a dict with a status column"
    return None


def status_writes(source: str) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and node.func.attr in ("values", "on_conflict_do_update") and _on_cases(node):
            why = _sets_status(node)
            if why is not None:
                found.append((node.lineno, why))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and node.func.attr == "on_conflict_do_update" and any(
                    k.arg == "set_" and _sets_status(ast.Call(ast.Name("x"), [k.value], []))
                    for k in node.keywords):
            found.append((node.lineno, "an upsert that sets a status column"))
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and re.search(
                r"\b(update|insert\s+into)\s+cases\b", node.value, re.IGNORECASE):
            found.append((node.lineno, "SQL text on cases"))
    return found


def test_the_check_finds_status_writes() -> None:
    """The check below sees the forms a status write takes."""
    assert status_writes("update(cases).where(x).values(status='held')")
    assert status_writes("update(cases).values(**values)")
    assert status_writes("insert(cases).values({'status': 'new'})")
    assert status_writes("cases.update().where(x).values(status_changed_at=now)")
    assert status_writes("text('UPDATE cases SET status = 1')")
    assert status_writes("sqlite.insert(cases).values(status=bindparam('s'))")
    assert status_writes("statement.on_conflict_do_update(set_={'status': case(x)})")
    assert not status_writes("update(cases).where(x).values(claimed_by=None)")
    assert not status_writes("update(referrals).values(status='sent')")


def test_no_module_but_the_lifecycle_sets_a_case_status() -> None:
    """Every change of ``cases.status`` goes through gateway.store.lifecycle (migrations
    aside: they change the schema, not a case's life)."""
    assert len(SOURCES) > 50
    offenders = {str(path.relative_to(ROOT)): writes for path in SOURCES
                 if (writes := status_writes(path.read_text("utf-8")))}
    assert offenders == {}
    assert status_writes((ROOT / "gateway/store/lifecycle.py").read_text("utf-8"))
