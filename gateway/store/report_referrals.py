"""The report's figures about referrals (``gateway.store.report`` has the rest): what was
forwarded to whom and what was held, the outcomes, the times from report to referral and from
referral to removal, and each destination's record. Read from plain columns only, as every
figure of the report.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.store.figures import (
    UNRECORDED,
    Figure,
    Number,
    Period,
    hours,
    in_order,
    median_hours,
    percentile_hours,
    ranked,
    share,
)
from gateway.store.follow_ups import overdue_cases
from gateway.store.lifecycle import AWAITING_OUTCOME
from gateway.store.outcome_codes import NOT_ACTIONABLE_REASONS, OUTCOMES
from gateway.store.tables import cases, referral_outcomes, referrals, routing_decisions
from gateway.store.times import utc

#: Each figure's section is the start of its name.
_f = Figure.of
#: The days within which the share of referred content removed is given.
WITHIN_DAYS = (1, 3, 7)


def _destination_kind(destination: str) -> tuple[str, str | None]:
    """``police``, ``police_international``, ``hotline`` or ``iccam``, with the country."""
    kind, _, country = destination.partition(":")
    return kind, country or None


async def forwarding(conn: AsyncConnection, period: Period) -> list[Figure]:
    made = list(await conn.execute(
        select(referrals.c.destination, referrals.c.status, func.count())
        .where(period.holds(referrals.c.created_at))
        .group_by(referrals.c.destination, referrals.c.status)))
    kinds: Counter[str] = Counter()
    partners: Counter[str] = Counter()
    iccam: Counter[str] = Counter()
    failed = 0
    for destination, status, n in made:
        n = int(n)
        kind, country = _destination_kind(str(destination))
        kinds[kind] += n
        if kind == "hotline":
            partners[country or UNRECORDED] += n
        elif kind == "iccam":
            iccam[country or UNRECORDED] += n
        if status == "failed":
            failed += n
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


async def times(conn: AsyncConnection, period: Period, *, now: datetime) -> list[Figure]:
    referred_in = period.holds(cases.c.referred_at)
    referred = list(await conn.execute(
        select(cases.c.first_reported, cases.c.referred_at, cases.c.removed_at)
        .where(referred_in)))
    to_referral = [hours(utc(r.referred_at) - utc(r.first_reported)) for r in referred]
    removed = list(await conn.execute(
        select(cases.c.referred_at, cases.c.removed_at)
        .where(period.holds(cases.c.removed_at), cases.c.referred_at.is_not(None))))
    to_removal = [hours(utc(r.removed_at) - utc(r.referred_at)) for r in removed]
    within = {days: sum(1 for r in referred if r.removed_at is not None
                        and utc(r.removed_at) - utc(r.referred_at) <= timedelta(days=days))
              for days in WITHIN_DAYS}
    still_open = int((await conn.execute(
        select(func.count()).where(referred_in, cases.c.status.in_(AWAITING_OUTCOME))
    )).scalar_one())
    overdue = int((await conn.execute(
        select(func.count()).where(referred_in, cases.c.id.in_(overdue_cases(now)))
    )).scalar_one())
    first = "from the case's first report to its first referral (the referred milestone)"
    removal = "from the case's first referral to when its content first went down (the " \
              "removed milestone: the time the outcome says)"
    return [
        _f("times.referred", "Cases referred", "cases",
           "cases first referred in the period (the referred milestone: a referral made, or "
           "recorded as made through ICCAM)", len(referred)),
        _f("times.report_to_referral_median", "Report to referral, median", "hours",
           f"median time {first}, over the cases first referred in the period; the mean of "
           "the two middle values for an even count", median_hours(to_referral)),
        _f("times.report_to_referral_p90", "Report to referral, 90th percentile", "hours",
           f"90th percentile (nearest rank) of the time {first}, over the cases first "
           "referred in the period", percentile_hours(to_referral, 90)),
        _f("times.removed", "Cases removed", "cases",
           "referred cases whose content first went down in the period", len(removed)),
        _f("times.referral_to_removal_median", "Referral to removal, median", "hours",
           f"median time {removal}, over the cases whose content went down in the period",
           median_hours(to_removal)),
        _f("times.referral_to_removal_p90", "Referral to removal, 90th percentile", "hours",
           f"90th percentile (nearest rank) of the time {removal}, over the cases whose "
           "content went down in the period", percentile_hours(to_removal, 90)),
        *(_f(f"times.removed_within_{days}d", f"Removed within {days} day"
             + ("s" if days > 1 else ""), "share",
             f"of the cases first referred in the period, the share whose content went down "
             f"at most {days * 24} hours after the referral (as known when the report is "
             "made)", share(within[days], len(referred))) for days in WITHIN_DAYS),
        _f("times.still_open", "Still open", "cases",
           "cases first referred in the period still waiting for what becomes of their "
           "referral (referred or acknowledged) when the report is made", still_open),
        _f("times.overdue", "Overdue", "cases",
           "cases first referred in the period with a referral past a deadline it has not "
           "met (acknowledgement or removal, as the destination's policy sets them) when the "
           "report is made", overdue),
    ]


async def destinations(conn: AsyncConnection, period: Period) -> list[Figure]:
    rows = await conn.execute(
        select(referrals.c.id, referrals.c.destination, referrals.c.created_at,
               referral_outcomes.c.outcome, referral_outcomes.c.occurred_at)
        .select_from(referrals.outerjoin(referral_outcomes, and_(
            referral_outcomes.c.referral_id == referrals.c.id,
            referral_outcomes.c.outcome.in_(("acknowledged", "removed")))))
        .where(period.holds(referrals.c.created_at)))
    made: dict[str, set[Any]] = defaultdict(set)
    spans: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for referral_id, destination, created_at, outcome, occurred_at in rows:
        made[destination].add(referral_id)
        if outcome is not None:
            spans[outcome][destination].append(hours(utc(occurred_at) - utc(created_at)))
    order = sorted(made, key=lambda d: (-len(made[d]), d))

    def each(values: dict[str, Any]) -> tuple[tuple[str, Number], ...]:
        return tuple((d, values.get(d)) for d in order)

    acknowledged = {d: len(spans["acknowledged"][d]) for d in order}
    removed = {d: len(spans["removed"][d]) for d in order}
    made_def = "referrals made in the period, by destination (police, police_international, " \
               "hotline:<country>, iccam:<country>)"
    return [
        _f("destinations.referrals", "Referrals", "referrals", made_def,
           sum(len(v) for v in made.values()), each({d: len(made[d]) for d in order})),
        _f("destinations.acknowledged", "Acknowledged", "referrals",
           f"{made_def}, that the destination has acknowledged (as known when the report is "
           "made)", sum(acknowledged.values()), each(acknowledged)),
        _f("destinations.removed", "Removed", "referrals",
           f"{made_def}, whose content went down (as known when the report is made)",
           sum(removed.values()), each(removed)),
        _f("destinations.acknowledge_median", "Time to acknowledge, median", "hours",
           f"{made_def}: the median time from the referral to its acknowledgement, over "
           "those acknowledged", None,
           each({d: median_hours(spans["acknowledged"][d]) for d in order})),
        _f("destinations.removal_median", "Time to removal, median", "hours",
           f"{made_def}: the median time from the referral to the content going down, over "
           "those removed", None, each({d: median_hours(spans["removed"][d]) for d in order})),
    ]
