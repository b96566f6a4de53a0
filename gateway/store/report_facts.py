"""The report's verdict figures, counted as the writes that change them happen, so that a
year's report adds up some thousands of pre-counted rows instead of grouping a million
verdicts with each case's latest hosting lookup (bench/report.py).

What a case counts in the assessment and hosting figures (``gateway.store.report``) depends
on the report's period only through its end: the case's latest verdict recorded before the
end and, for an illegal one, its latest hosting lookup that did not fail; and on whether the
case was first assessed in the period. A period ends at midnight (UTC), so the state a case
counts in is the one after the last verdict or lookup of the days up to the period's last
day. ``report_verdicts`` keeps each case's states, each with the first last-day it holds
for (``from_day``, the day of the verdict or lookup that began it) and the first it no
longer does (``to_day``: the day of the next; :data:`FOREVER` for the current one), and
the items it counts (``verdict:illegal``, ``age_group:infant``, ``country:NL``, ...).
``report_verdict_days`` counts them by the day the case was first assessed, the two days
and the item: a report for the days ``first`` to ``last`` sums the rows with ``first <=
assessed_on <= last`` and ``from_day <= last < to_day``.

Every write that changes what a case counts (a verdict, a hosting lookup, the country named
on a verdict, a merge of cases) calls :func:`refresh` for the case in its transaction: the
case's states are computed again from its rows and the counts moved by the difference.

Likewise each filed report keeps its ``filed_code`` (:func:`file_codes`, called by filing
and merging): whether it is the first report of one of its cases (unique) and whether one
has no URL, so that the reports' figures are counted in the one pass over the reports
received that the report makes anyway. :func:`rebuild` computes both from scratch (the
migration's backfill, in batches). Each referral keeps its times to its acknowledgement and
to its removal (set with the outcome by ``gateway.store.outcomes``; :func:`referral_times`
computes them from the outcomes, migration 0029's backfill), so that the per-destination
medians read the referrals made and nothing else.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    and_,
    bindparam,
    case,
    delete,
    exists,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection

from gateway.store import audit
from gateway.store.classification import CONTENT_FLAGS
from gateway.store.figures import UNRECORDED
from gateway.store.report_sql import micros_between
from gateway.store.tables import (
    assessments,
    case_reports,
    cases,
    hosting_evidence,
    referral_outcomes,
    referrals,
    report_verdict_days,
    report_verdicts,
    submissions,
)

#: The ``to_day`` of a case's current state: after any last day a report can have.
FOREVER = date(9999, 12, 31)
#: The codes of an illegal verdict counted by their value (none: ``unrecorded``).
CODES = ("classification", "age_group", "gender", "media", "site_type")
#: Cases computed at once by :func:`rebuild`.
BATCH = 20_000

_VERDICT = (assessments.c.case_id, assessments.c.created_at, assessments.c.id,
            assessments.c.verdict, assessments.c.hosting_country, assessments.c.reason,
            *(assessments.c[name] for name in (*CODES, *CONTENT_FLAGS)))
_LOOKUP = (hosting_evidence.c.case_id, hosting_evidence.c.checked_at, hosting_evidence.c.id,
           hosting_evidence.c.status, hosting_evidence.c.country, hosting_evidence.c.asn,
           hosting_evidence.c.org, hosting_evidence.c.cdn)
_DAY_KEY = ("assessed_on", "from_day", "to_day", "item")


def day_of(moment: datetime) -> date:
    """A stored moment's UTC day (SQLite gives them back naive, in UTC)."""
    return (moment.astimezone(UTC) if moment.tzinfo else moment).date()


def items(verdict: Any, lookup: Any) -> tuple[str, ...]:
    """What a case counts with this verdict and (for an illegal one) this hosting lookup,
    by the rules of ``gateway.store.report``'s assessment and hosting figures."""
    found = [f"verdict:{verdict.verdict}"]
    if verdict.verdict == "legal":
        found.append(f"reason:{verdict.reason or UNRECORDED}")
    if verdict.verdict != "illegal":
        return tuple(found)
    found += [f"{code}:{getattr(verdict, code) or UNRECORDED}" for code in CODES]
    found += [f"flag:{flag}" for flag in CONTENT_FLAGS if getattr(verdict, flag)]
    status, country, asn, org, fronted = (
        (lookup.status, lookup.country, lookup.asn, lookup.org, lookup.cdn) if lookup
        else (None, None, None, None, None))
    where = verdict.hosting_country or country
    found.append(f"country:{where}" if where else "country_unknown")
    if asn is not None:
        found.append("network:" + (f"AS{asn} {org}".rstrip() if org else f"AS{asn}"))
    if fronted or status == "cdn":
        found.append("cdn")
    if status in (None, "unresolvable"):
        found.append("unresolvable")
    return tuple(found)


@dataclass(frozen=True, slots=True)
class State:
    """What a case counts for a report whose last day is from ``from_day`` to the day before
    ``to_day``."""

    from_day: date
    to_day: date
    assessed_on: date
    items: tuple[str, ...]


def states(assessed_at: datetime, verdicts: Sequence[Any], lookups: Sequence[Any]
           ) -> list[State]:
    """A case's states from its verdicts and its lookups that did not fail (each in any
    order): one from each day a verdict or lookup changed what it counts, the latest of a
    day being what holds for a period ending that day (later moment first, then higher
    id: as the report's latest verdict and lookup)."""
    verdicts_in = [(day_of(v.created_at), v)
                   for v in sorted(verdicts, key=lambda v: (v.created_at, v.id))]
    lookups_in = [(day_of(h.checked_at), h)
                  for h in sorted(lookups, key=lambda h: (h.checked_at, h.id))]
    found: list[tuple[date, tuple[str, ...]]] = []
    for day in sorted({day for day, _ in verdicts_in} | {day for day, _ in lookups_in}):
        verdict = _latest(verdicts_in, day)
        if verdict is None:
            continue
        counted = items(verdict, _latest(lookups_in, day))
        if not found or found[-1][1] != counted:
            found.append((day, counted))
    if not found:
        return []
    assessed_on = day_of(assessed_at)
    ends = [day for day, _ in found[1:]] + [FOREVER]
    return [State(day, end, assessed_on, counted)
            for (day, counted), end in zip(found, ends, strict=True)]


def _latest(rows: Sequence[tuple[date, Any]], day: date) -> Any:
    """The last of ``rows`` (in time order, each with its day) of ``day`` or before, or
    None."""
    latest = None
    for on, row in rows:
        if on > day:
            break
        latest = row
    return latest


def _computed(conn: Connection, case_ids: Sequence[uuid.UUID] | None = None, *,
              after: uuid.UUID | None = None, upto: uuid.UUID | None = None
              ) -> dict[uuid.UUID, list[State]]:
    """The states of these cases (or of those with an id in ``(after, upto]``): only the
    assessed ones have any."""
    def within(column: Any) -> Any:
        if case_ids is not None:
            return column.in_(case_ids)
        bounds = [column <= upto]
        if after is not None:
            bounds.append(column > after)
        return and_(*bounds)

    assessed = dict(conn.execute(select(cases.c.id, cases.c.assessed_at).where(
        within(cases.c.id), cases.c.assessed_at.is_not(None))).all())
    if not assessed:
        return {}
    verdicts: dict[uuid.UUID, list[Any]] = {}
    for row in conn.execute(select(*_VERDICT).where(within(assessments.c.case_id))):
        verdicts.setdefault(row.case_id, []).append(row)
    lookups: dict[uuid.UUID, list[Any]] = {}
    for row in conn.execute(select(*_LOOKUP).where(within(hosting_evidence.c.case_id),
                                                   hosting_evidence.c.status != "failed")):
        lookups.setdefault(row.case_id, []).append(row)
    return {case_id: states(at, verdicts.get(case_id, []), lookups.get(case_id, []))
            for case_id, at in assessed.items()}


def _rows(case_id: uuid.UUID, found: Iterable[State]) -> Iterator[dict[str, Any]]:
    for state in found:
        yield {"case_id": case_id, "from_day": state.from_day, "to_day": state.to_day,
               "assessed_on": state.assessed_on,
               "items": json.dumps(state.items, separators=(",", ":"))}


def _counted(found: Iterable[State], sign: int, into: Counter[tuple[Any, ...]]) -> None:
    for state in found:
        for item in state.items:
            into[state.assessed_on, state.from_day, state.to_day, item] += sign


def refresh(conn: Connection, case_ids: Iterable[uuid.UUID]) -> None:
    """In the caller's transaction, after a write that may change what these cases count:
    their states computed again, and the day counts moved by the difference."""
    ids = sorted(set(case_ids))
    if not ids:
        return
    kept: dict[uuid.UUID, list[State]] = {}
    for row in conn.execute(select(report_verdicts).where(report_verdicts.c.case_id.in_(ids))
                            .order_by(report_verdicts.c.case_id, report_verdicts.c.from_day)):
        kept.setdefault(row.case_id, []).append(State(
            row.from_day, row.to_day, row.assessed_on, tuple(json.loads(row.items))))
    now = _computed(conn, ids)
    changed = [case_id for case_id in ids if kept.get(case_id, []) != now.get(case_id, [])]
    if not changed:
        return
    delta: Counter[tuple[Any, ...]] = Counter()
    for case_id in changed:
        _counted(kept.get(case_id, []), -1, delta)
        _counted(now.get(case_id, []), 1, delta)
    conn.execute(delete(report_verdicts).where(report_verdicts.c.case_id.in_(changed)))
    fresh = [row for case_id in changed for row in _rows(case_id, now.get(case_id, []))]
    if fresh:
        conn.execute(insert(report_verdicts), fresh)
    add_days(conn, delta)


def add_days(conn: Connection, delta: Counter[tuple[Any, ...]]) -> None:
    """Each day count moved by its delta (made where missing; gone at zero), in key order:
    two transactions moving the same counts lock them in one order."""
    moved = [dict(zip((*_DAY_KEY, "cases"), (*key, n), strict=True))
             for key, n in sorted(delta.items()) if n]
    if not moved:
        return
    if conn.dialect.name == "postgresql":
        # The audit trail's lock first, which every write that changes a verdict or a lookup
        # takes too (to record it), before or after this: never a day count held while
        # waiting for it, which a transaction holding it could be waiting for.
        conn.execute(select(func.pg_advisory_xact_lock(audit.LOCK_KEY)))
    days = report_verdict_days
    upsert = (postgresql_insert(days) if conn.dialect.name == "postgresql"
              else sqlite_insert(days))
    conn.execute(upsert.on_conflict_do_update(
        index_elements=[days.c[name] for name in _DAY_KEY],
        set_={"cases": days.c.cases + upsert.excluded.cases}), moved)
    emptied = [{f"k_{name}": row[name] for name in _DAY_KEY}
               for row in moved if row["cases"] < 0]
    if emptied:
        conn.execute(delete(days).where(
            *(days.c[name] == bindparam(f"k_{name}") for name in _DAY_KEY),
            days.c.cases == 0), emptied)


def filed_code() -> ColumnElement[Any]:
    """A submission's ``filed_code``, for an UPDATE of ``submissions``: over the cases it
    reported, 2 if it is the first report of at least one (no report of the case came
    before it; at the same moment, the lower submission id first, so that exactly one is),
    plus 1 if one has no URL; NULL in none. A case's first_reported is its earliest
    report's time (filing and merging keep it so), so only a report at that moment is
    looked at again, for a tie."""
    tie = case_reports.alias("tie")
    tied = and_(tie.c.case_id == case_reports.c.case_id,
                tie.c.reported_at == case_reports.c.reported_at,
                tie.c.submission_id < case_reports.c.submission_id)
    first = and_(case_reports.c.reported_at == cases.c.first_reported, ~exists().where(tied))
    code = (func.max(case((first, 2), else_=0))
            + func.max(case((cases.c.kind == "no_url", 1), else_=0)))
    reported = case_reports.join(cases, cases.c.id == case_reports.c.case_id)
    return (select(code).select_from(reported)
            .where(case_reports.c.submission_id == submissions.c.id).scalar_subquery())


def file_codes(conn: Connection, submission_ids: Iterable[uuid.UUID]) -> None:
    """In the caller's transaction, after these reports were filed (or their cases' first
    reports changed): their ``filed_code`` computed again."""
    ids = sorted(set(submission_ids))
    for start in range(0, len(ids), 500):
        conn.execute(update(submissions).where(submissions.c.id.in_(ids[start:start + 500]))
                     .values(filed_code=filed_code()))


def _batches(conn: Connection, column: Any, batch: int
             ) -> Iterator[tuple[uuid.UUID | None, uuid.UUID]]:
    """The ids of ``column``'s table in ranges ``(after, upto]`` of ``batch`` rows each."""
    after: uuid.UUID | None = None
    while True:
        ids = list(conn.execute(select(column).where(
            *([column > after] if after is not None else [])).order_by(column).limit(batch))
            .scalars())
        if not ids:
            return
        yield after, ids[-1]
        after = ids[-1]


def rebuild(conn: Connection, *, batch: int = BATCH) -> int:
    """Every report's ``filed_code``, and every case's states and the day counts, computed
    afresh from the rows, ``batch`` at a time (the migration's backfill; the bench's after a
    bulk load); how many states."""
    for after, upto in _batches(conn, submissions.c.id, batch):
        conn.execute(update(submissions).where(
            *([submissions.c.id > after] if after is not None else []),
            submissions.c.id <= upto).values(filed_code=filed_code()))
    conn.execute(delete(report_verdicts))
    conn.execute(delete(report_verdict_days))
    total: Counter[tuple[Any, ...]] = Counter()
    made = 0
    for after, upto in _batches(conn, cases.c.id, batch):
        found = _computed(conn, after=after, upto=upto)
        rows = [row for case_id, each in found.items() for row in _rows(case_id, each)]
        if rows:
            conn.execute(insert(report_verdicts), rows)
        for each in found.values():
            _counted(each, 1, total)
        made += len(rows)
    add_days(conn, total)
    return made


def referral_times(conn: Connection) -> None:
    """Every referral's ``acknowledged_micros`` and ``removed_micros`` computed afresh from
    its outcomes (a referral has at most one of each: its outcomes only go forward)."""
    def after(outcome: str) -> Any:
        return (select(micros_between(conn, referral_outcomes.c.occurred_at,
                                      referrals.c.created_at))
                .where(referral_outcomes.c.referral_id == referrals.c.id,
                       referral_outcomes.c.outcome == outcome)
                .order_by(referral_outcomes.c.recorded_at).limit(1).scalar_subquery())

    conn.execute(update(referrals).where(referrals.c.outcome.is_not(None)).values(
        acknowledged_micros=after("acknowledged"), removed_micros=after("removed")))
