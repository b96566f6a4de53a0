"""The report's figures about referrals (``gateway.store.report`` has the rest): what was
forwarded to whom and what was held, the outcomes, the times from report to referral and from
referral to removal, and each destination's record. Read from plain columns only, as every
figure of the report.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.store.figures import (
    UNRECORDED,
    Figure,
    Number,
    Period,
    in_order,
    ranked,
    share,
)
from gateway.store.follow_ups import overdue_referrals
from gateway.store.lifecycle import AWAITING_OUTCOME
from gateway.store.outcome_codes import NOT_ACTIONABLE_REASONS, OUTCOMES
from gateway.store.report_sql import Rows, Spread, micros_between, spread_rows, spreads
from gateway.store.tables import cases, referral_outcomes, referrals, routing_decisions

#: Each figure's section is the start of its name.
_f = Figure.of
#: The days within which the share of referred content removed is given.
WITHIN_DAYS = (1, 3, 7)
#: The bins of the removal times, by their upper bound in hours (included); the last is open.
REMOVAL_BINS = ((6, "0-6h"), (24, "6-24h"), (72, "24-72h"), (168, "72-168h"),
                (336, "168-336h"), (None, "336h+"))
HOUR = 3600 * 1_000_000  # microseconds
#: The referrals made in a period, by destination: how many, how many ``failed``, and the
#: spreads of their times to ``acknowledged`` and to ``removed``.
Made = dict[str, Rows]


async def referrals_made(conn: AsyncConnection, period: Period) -> Made:
    """The referrals made in the period by destination, which the forwarding and
    per-destination figures share: one pass over an index that holds each referral's
    destination, state and times to its acknowledgement and removal (kept with the outcome:
    ``gateway.store.outcomes``)."""
    found = await spread_rows(conn, select(
        referrals.c.destination, (referrals.c.status == "failed").label("failed"),
        referrals.c.acknowledged_micros.label("acknowledged"),
        referrals.c.removed_micros.label("removed"))
        .where(period.holds(referrals.c.created_at)),
        names=("acknowledged", "removed"), flags=("failed",))
    return {str(destination): rows for (destination,), rows in found.items()}


@dataclass(frozen=True, slots=True)
class Removals:
    """The referred cases whose content first went down in the period: the times from
    their first referral (median, percentile) and how many in each removal bin."""

    spread: Spread
    bins: tuple[tuple[str, Number], ...]


async def removals(conn: AsyncConnection, period: Period) -> Removals:
    """One pass for the removal times' median, percentile and counts by bin (``times`` and
    the series share them)."""
    span = micros_between(conn, cases.c.removed_at, cases.c.referred_at)
    removed_in = (period.holds(cases.c.removed_at), cases.c.referred_at.is_not(None))
    bounds = [bound * HOUR for bound, _ in REMOVAL_BINS if bound is not None]
    spread = (await spreads(conn, select(span.label("span")).where(*removed_in),
                            bounds=bounds)).get((), Spread(within=(0,) * len(bounds)))
    # Each bin holds those up to its bound but not up to the one before.
    upto = [*spread.within, spread.count]
    bins = tuple((label, upto[n] - (upto[n - 1] if n else 0))
                 for n, (_, label) in enumerate(REMOVAL_BINS))
    return Removals(spread, bins)


def _destination_kind(destination: str) -> tuple[str, str | None]:
    """``police``, ``police_international``, ``hotline`` or ``iccam``, with the country."""
    kind, _, country = destination.partition(":")
    return kind, country or None


async def forwarding(conn: AsyncConnection, period: Period, made: Made) -> list[Figure]:
    kinds: Counter[str] = Counter()
    partners: Counter[str] = Counter()
    iccam: Counter[str] = Counter()
    failed = 0
    for destination, rows in made.items():
        kind, country = _destination_kind(destination)
        kinds[kind] += rows.count
        if kind == "hotline":
            partners[country or UNRECORDED] += rows.count
        elif kind == "iccam":
            iccam[country or UNRECORDED] += rows.count
        failed += rows.flagged["failed"]
    held_in = and_(routing_decisions.c.outcome == "hold",
                   period.holds(routing_decisions.c.created_at))
    held_by = {str(rule): int(n) for rule, n in await conn.execute(
        select(routing_decisions.c.rule, func.count(func.distinct(routing_decisions.c.case_id)))
        .where(held_in).group_by(routing_decisions.c.rule))}
    held = int((await conn.execute(
        select(func.count(func.distinct(routing_decisions.c.case_id))).where(held_in)
    )).scalar_one())
    outcomes = list(await conn.execute(
        select(referral_outcomes.c.outcome, referral_outcomes.c.reason_code, func.count())
        .where(period.holds(referral_outcomes.c.occurred_at))
        .group_by(referral_outcomes.c.outcome, referral_outcomes.c.reason_code)))
    by_outcome: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    for outcome, reason, n in outcomes:
        by_outcome[str(outcome)] += int(n)
        if outcome == "not_actionable":
            reasons[reason or UNRECORDED] += int(n)
    def made_def(what: str = "") -> str:
        return (f"referrals{what} made in the period (queued to be sent, or recorded as made "
                "through ICCAM by hand; a case referred again after it was reopened or "
                "re-routed counts again)")

    return [
        _f("forwarding.referrals", "Referrals made", "referrals", made_def(),
           sum(kinds.values())),
        _f("forwarding.national_police", "To the national police", "referrals",
           made_def(" to the national police (content hosted at home)"),
           kinds.get("police", 0)),
        _f("forwarding.international_desk", "To the police's international desk", "referrals",
           made_def(" to the police's international desk (content hosted in a country "
                    "without an INHOPE hotline)"), kinds.get("police_international", 0)),
        _f("forwarding.partner_hotlines", "To partner hotlines", "referrals",
           made_def(" by e-mail to the partner hotline of the hosting country") + ", by "
           "country", kinds.get("hotline", 0), ranked(partners.items())),
        _f("forwarding.iccam", "Through ICCAM", "referrals",
           made_def(" through ICCAM by hand") + ", by the hosting country",
           kinds.get("iccam", 0), ranked(iccam.items())),
        _f("forwarding.failed", "Referrals not delivered", "referrals",
           made_def() + " whose delivery failed and has not been retried successfully (as "
           "the report is made)", failed),
        _f("forwarding.held", "Cases held", "cases",
           "cases the routing held in the period, by why (the rule: hold-unknown-hosting, "
           "hold-no-key, ...); a case held for two reasons counts once in the total",
           held, ranked(held_by.items())),
        _f("forwarding.outcomes", "Outcomes", "referrals",
           "outcomes of referrals that happened in the period (when the destination "
           "acknowledged, when the content went down, ...), by outcome", sum(by_outcome.values()),
           in_order(dict(by_outcome), OUTCOMES)),
        _f("forwarding.not_actionable", "Not actionable, by reason", "referrals",
           "referrals a destination said in the period it would not or could not act on, "
           "by its reason code", by_outcome.get("not_actionable", 0),
           in_order(dict(reasons), [c for c in NOT_ACTIONABLE_REASONS if reasons.get(c)])),
    ]


async def times(conn: AsyncConnection, period: Period, *, now: datetime,
                removed: Removals) -> list[Figure]:
    referred_in = period.holds(cases.c.referred_at)
    # One pass over the cases first referred in the period: how many, how many still open,
    # their times from the first report (median, percentile) and to the removal (a case not
    # removed has none: within no bound).
    bounds = [days * 24 * HOUR for days in WITHIN_DAYS]
    none = Rows(0, {"open": 0}, {"to_referral": Spread(),
                                 "to_removal": Spread(within=(0,) * len(bounds))})
    referred_rows = (await spread_rows(conn, select(
        cases.c.status.in_(AWAITING_OUTCOME).label("open"),
        micros_between(conn, cases.c.referred_at, cases.c.first_reported).label("to_referral"),
        micros_between(conn, cases.c.removed_at, cases.c.referred_at).label("to_removal"))
        .where(referred_in), names=("to_referral", "to_removal"), flags=("open",),
        bounds=bounds, unranked=("to_removal",))).get((), none)
    referred, still_open = referred_rows.count, referred_rows.flagged["open"]
    to_referral = referred_rows.spread["to_referral"]
    within = dict(zip(WITHIN_DAYS, referred_rows.spread["to_removal"].within, strict=True))
    overdue = int((await conn.execute(select(func.count()).where(
        referred_in, cases.c.id.in_(overdue_referrals(now))))).scalar_one())
    first = "from the case's first report to its first referral (the referred milestone)"
    removal = "from the case's first referral to when its content first went down (the " \
              "removed milestone: the time the outcome says)"
    return [
        _f("times.referred", "Cases referred", "cases",
           "cases first referred in the period (the referred milestone: a referral made, or "
           "recorded as made through ICCAM)", referred),
        _f("times.report_to_referral_median", "Report to referral, median", "hours",
           f"median time {first}, over the cases first referred in the period; the mean of "
           "the two middle values for an even count", to_referral.median_hours()),
        _f("times.report_to_referral_p90", "Report to referral, 90th percentile", "hours",
           f"90th percentile (nearest rank) of the time {first}, over the cases first "
           "referred in the period", to_referral.percentile_hours()),
        _f("times.removed", "Cases removed", "cases",
           "referred cases whose content first went down in the period",
           removed.spread.count),
        _f("times.referral_to_removal_median", "Referral to removal, median", "hours",
           f"median time {removal}, over the cases whose content went down in the period",
           removed.spread.median_hours()),
        _f("times.referral_to_removal_p90", "Referral to removal, 90th percentile", "hours",
           f"90th percentile (nearest rank) of the time {removal}, over the cases whose "
           "content went down in the period", removed.spread.percentile_hours()),
        *(_f(f"times.removed_within_{days}d", f"Removed within {days} day"
             + ("s" if days > 1 else ""), "share",
             f"of the cases first referred in the period, the share whose content went down "
             f"at most {days * 24} hours after the referral (as known when the report is "
             "made)", share(within[days], referred)) for days in WITHIN_DAYS),
        _f("times.still_open", "Still open", "cases",
           "cases first referred in the period still waiting for what becomes of their "
           "referral (referred or acknowledged) when the report is made", still_open),
        _f("times.overdue", "Overdue", "cases",
           "cases first referred in the period with a referral past a deadline it has not "
           "met (acknowledgement or removal, as the destination's policy sets them) when the "
           "report is made", overdue),
    ]


async def destinations(conn: AsyncConnection, period: Period, made: Made) -> list[Figure]:
    """Each destination's record, from the pass over the referrals made: each referral's
    time to its acknowledgement and to its removal is kept with the outcome (at most one of
    each: a referral's outcomes only go forward)."""
    by_destination = {destination: rows.count for destination, rows in made.items()}
    order = sorted(by_destination, key=lambda d: (-by_destination[d], d))

    def each(values: dict[str, Any]) -> tuple[tuple[str, Number], ...]:
        return tuple((d, values.get(d)) for d in order)

    def of(outcome: str, destination: str) -> Spread:
        return made[destination].spread[outcome]

    acknowledged = {d: of("acknowledged", d).count for d in order}
    removed = {d: of("removed", d).count for d in order}
    made_def = "referrals made in the period, by destination (police, police_international, " \
               "hotline:<country>, iccam:<country>)"
    return [
        _f("destinations.referrals", "Referrals", "referrals", made_def,
           sum(by_destination.values()), each(by_destination)),
        _f("destinations.acknowledged", "Acknowledged", "referrals",
           f"{made_def}, that the destination has acknowledged (as known when the report is "
           "made)", sum(acknowledged.values()), each(acknowledged)),
        _f("destinations.removed", "Removed", "referrals",
           f"{made_def}, whose content went down (as known when the report is made)",
           sum(removed.values()), each(removed)),
        _f("destinations.acknowledge_median", "Time to acknowledge, median", "hours",
           f"{made_def}: the median time from the referral to its acknowledgement, over "
           "those acknowledged", None,
           each({d: of("acknowledged", d).median_hours() for d in order})),
        _f("destinations.removal_median", "Time to removal, median", "hours",
           f"{made_def}: the median time from the referral to the content going down, over "
           "those removed", None, each({d: of("removed", d).median_hours() for d in order})),
    ]
