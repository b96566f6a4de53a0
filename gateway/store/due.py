"""What the stages' polls read: a marker column on each case, set only while it has work waiting
and NULL otherwise, with a partial index of the set ones (``tables.cases``, migration 0028).

A stage's poll then reads the index range of what is due, a few rows, instead of testing every
case of years against its condition (a database of a million cases took seconds per poll, and
intake slowed to a tenth). The marker only narrows the search: each stage still tests its full
condition on the rows the marker gives. The markers are set in the statement that changes the
case's state (``lifecycle.move``, through :func:`markers`), so they cannot drift from it.

- ``route_due_at``: routing (``routing.decide``) takes the case, since then: it reached
  ``assessed`` or ``closed_legal`` (before ``route_close``), or is held for a key
  (``hold-no-key``, retried after ``key_retry``).
- ``recheck_since``: the hosting re-check watches the case (a URL case referred or
  acknowledged: ``routing.recheck``), whose latest lookup was then; each lookup stored while it
  is watched moves it on (:func:`looked_up`).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, case, func, literal, select

from gateway.store.tables import cases, hosting_evidence

#: The states routing takes a case from; ``held`` too, for a key (:data:`KEY_HOLD`).
ROUTED_FROM = ("assessed", "closed_legal")
#: The hold that routing retries by itself (``routing.protocol``'s rule id).
KEY_HOLD = "hold-no-key"
#: The states the hosting re-check watches a URL case in (``lifecycle.AWAITING_OUTCOME``).
WATCHED = ("referred", "acknowledged")
#: A watched case that was never looked up is due at once: its "latest lookup" is this.
NEVER = datetime(1970, 1, 1, tzinfo=UTC)
#: A case reopened by a new report waits for nothing of these (it is located afresh).
CLEARED = {"route_due_at": None, "recheck_since": None}


def markers(state: str | None, event: str, next_state: str, values: Mapping[str, Any],
            at: datetime) -> dict[str, Any]:
    """The markers' values for a case moving from ``state`` to ``next_state`` by ``event`` at
    ``at``, with ``values`` the other columns the move sets (its ``hold_reason``)."""
    routed = (next_state in ROUTED_FROM and event != "route_close") or (
        next_state == "held" and values.get("hold_reason") == KEY_HOLD)
    columns: dict[str, Any] = {"route_due_at": at if routed else None}
    if next_state not in WATCHED:
        columns["recheck_since"] = None
    elif state not in WATCHED:
        columns["recheck_since"] = case((cases.c.kind == "url", latest_lookup()), else_=None)
    return columns


def latest_lookup() -> ColumnElement[Any]:
    """The time of the case's latest lookup (:data:`NEVER` if none), in an UPDATE of it."""
    latest = (select(func.max(hosting_evidence.c.checked_at))
              .where(hosting_evidence.c.case_id == cases.c.id).scalar_subquery())
    return func.coalesce(latest, literal(NEVER, cases.c.recheck_since.type))


def looked_up(at: datetime) -> ColumnElement[Any]:
    """``recheck_since`` in an UPDATE of a case whose lookup at ``at`` was just stored: a
    watched case's re-check counts from it (a case not watched stays unmarked)."""
    since = cases.c.recheck_since
    return case((since < literal(at, since.type), literal(at, since.type)), else_=since)
