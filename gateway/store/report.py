"""The hotline's report for a period (``hotline-gateway report``): what came in, what was
assessed and how, where the illegal content was hosted, what was forwarded to whom, and how
fast it came down.

Every figure is read from columns that stay plain at rest and through anonymisation: states,
channels, times (the case milestones of ``gateway.store.lifecycle``), classification codes
(``gateway.store.classification``), countries, AS numbers and organisations, rule ids,
destinations and outcome codes. No sealed column is read, so the figures of a period come out
the same before and after the hotline's own data are anonymised, and a report never holds a
URL, a host or a reporter.

Which event puts a thing in the period is said in each figure's definition: a report counts
in the period it was received, a case's verdict in the period it was first assessed, a
referral in the period it was made, a removal in the period the content went down.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import DateTime, String, column, func, select, values
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.store.classification import (
    AGE_GROUPS,
    CONTENT_FLAGS,
    GENDERS,
    MEDIA,
    REASONS,
    SITE_TYPES,
)
from gateway.store.figures import Figure, Period, Report, in_order, ranked, share
from gateway.store.report_referrals import (
    destinations,
    forwarding,
    referrals_made,
    removals,
    times,
)
from gateway.store.report_series import days, series
from gateway.store.report_sql import report_settings
from gateway.store.tables import cases, report_verdict_days, submissions

#: Each figure's section is the start of its name.
_f = Figure.of
#: ICCAM's classifications of an illegal verdict.
ILLEGAL_CLASSES = ("baseline", "national")


async def build_report(conn: AsyncConnection, period: Period, *, home_country: str,
                       now: datetime, top: int = 10) -> Report:
    """Every figure for ``period``; ``now`` is the moment the snapshot figures (still open,
    overdue) are taken at; ``top`` how many countries the top list names."""
    async with report_settings(conn):
        received = await received_counts(conn, period)
        made = await referrals_made(conn, period)
        removed = await removals(conn, period)
        verdicts = await verdicts_counted(conn, period)
        figures = [
            *await _reports(conn, period, received),
            *await _assessment(conn, period, verdicts, home_country=home_country, top=top),
            *await forwarding(conn, period, made),
            *await times(conn, period, now=now, removed=removed),
            *await destinations(conn, period, made),
            *series(period, verdicts.by_day, received, removed),
        ]
    return Report(period, home_country, now, top, tuple(figures))


#: Reports received in a period by UTC day (``YYYY-MM-DD``), channel, state and filed code
#: (``submissions.filed_code``: None while in no case).
Received = Counter[tuple[str, str, str, int | None]]


async def received_counts(conn: AsyncConnection, period: Period) -> Received:
    """The reports received in the period by day, channel, state and filed code, shared by
    the reports' figures and the daily series, without sorting a year's reports: first the
    kinds of report (state, channel, code) there are, read along an index that begins with
    them (``ix_submissions_kind``), then each day's count of each kind, each a range of that
    index. A GROUP BY day would sort every report of the period (on SQLite most of the
    pass's time; bench/report.py). A kind of which none came in the period counts none."""
    kind = (submissions.c.status, submissions.c.channel, submissions.c.filed_code)
    kinds = [(str(status), str(channel), None if code is None else int(code))
             for status, channel, code in await conn.execute(select(*kind).distinct())]
    if not kinds:
        return Counter()
    moment = DateTime(timezone=True)
    day = (values(column("day", String), column("start", moment), column("end", moment),
                  name="days")
           .data([(d.isoformat(), *_bounds(d)) for d in days(period)]).cte("days"))

    def count_of(status: str, channel: str, code: int | None) -> Any:
        return (select(func.count()).select_from(submissions).where(
            submissions.c.status == status, submissions.c.channel == channel,
            submissions.c.filed_code.is_(None) if code is None
            else submissions.c.filed_code == code,
            submissions.c.received_at >= day.c.start, submissions.c.received_at < day.c.end)
            .scalar_subquery())

    found: Received = Counter()
    for d, *counts in await conn.execute(select(day.c.day, *(count_of(*k) for k in kinds))):
        for (status, channel, code), n in zip(kinds, counts, strict=True):
            if n:
                found[str(d), channel, status, code] = int(n)
    return found


def _bounds(day: date) -> tuple[datetime, datetime]:
    """The first moment of a UTC day and of the next."""
    start = datetime.combine(day, time(), UTC)
    return start, start + timedelta(days=1)


async def _reports(conn: AsyncConnection, period: Period, by_day: Received) -> list[Figure]:
    """The reports' figures, from the pass over the reports received: each filed report's
    code says whether it is the first report of one of its cases (unique: 2) and whether
    one has no URL (1), as ``gateway.store.report_facts.filed_code`` defines it."""
    by_channel: Counter[str] = Counter()
    by_status: Counter[str] = Counter()
    filed_by: Counter[str] = Counter()
    unique = without_url = 0
    for (_, channel, status, code), n in by_day.items():
        by_channel[channel] += n
        by_status[status] += n
        if code is not None:
            filed_by[status] += n
            unique += n if code >= 2 else 0
            without_url += n if code % 2 else 0
    received = sum(by_channel.values())
    filed = sum(filed_by.values())
    not_filed = {status: n - filed_by[status] for status, n in by_status.items()
                 if n > filed_by[status]}
    received_def = "reports (e-mails, web forms, API calls, partner referrals) received in " \
                   "the period, whatever they held, by the channel they came in by"
    return [
        _f("reports.received", "Reports received", "reports", received_def, received,
           ranked(by_channel.items())),
        _f("reports.unique", "Unique reports", "reports",
           "reports received in the period that were the first report of at least one case "
           "(a URL nobody had reported before, or a report without a URL): not duplicates "
           "of an earlier report", unique),
        _f("reports.unique_share", "Unique reports, share", "share",
           "unique reports divided by reports received in the period", share(unique, received)),
        _f("reports.duplicate", "Duplicate reports", "reports",
           "reports received in the period and filed, each of whose URLs had been reported "
           "before", filed - unique),
        _f("reports.without_url", "Reports without a URL", "reports",
           "reports received in the period in which no URL was found (each kept as a case of "
           "its own, for an analyst to read)", without_url),
        _f("reports.not_filed", "Reports not filed", "reports",
           "reports received in the period that are in no case, by their state: received "
           "(not yet read), parse_failed (could not be read)", sum(not_filed.values()),
           ranked(not_filed.items())),
    ]


#: The verdicts counted for a period (``gateway.store.report_facts``): how many cases count
#: each item, and each verdict's cases by the UTC day they were first assessed.
@dataclass(frozen=True, slots=True)
class Verdicts:
    items: Counter[str]
    by_day: Counter[tuple[date, str]]

    def of(self, field: str) -> dict[str, int]:
        """The items ``field:value`` as ``{value: cases}``."""
        return {item.partition(":")[2]: n for item, n in self.items.items()
                if item.startswith(f"{field}:")}


async def verdicts_counted(conn: AsyncConnection, period: Period) -> Verdicts:
    """The pre-counted verdicts of the cases first assessed in the period, as they stand for
    a period ending on its last day: two sums over some thousand rows a year, shared by the
    assessment and hosting figures and the weekly series."""
    days = report_verdict_days
    held = (days.c.assessed_on >= period.first, days.c.assessed_on <= period.last,
            days.c.from_day <= period.last, days.c.to_day > period.last)
    counted = func.sum(days.c.cases)
    items = Counter({str(item): int(n) for item, n in await conn.execute(
        select(days.c.item, counted).where(*held).group_by(days.c.item)) if n})
    by_day = Counter({(_as_date(day), str(item).removeprefix("verdict:")): int(n)
                      for day, item, n in await conn.execute(
                          select(days.c.assessed_on, days.c.item, counted)
                          .where(*held, days.c.item.startswith("verdict:", autoescape=True))
                          .group_by(days.c.assessed_on, days.c.item)) if n})
    return Verdicts(items, by_day)


def _as_date(day: Any) -> date:
    return day if isinstance(day, date) else date.fromisoformat(str(day))


async def _assessment(conn: AsyncConnection, period: Period, verdicts: Verdicts, *,
                      home_country: str, top: int) -> list[Figure]:
    assessed_in = period.holds(cases.c.assessed_at)
    assessed = int((await conn.execute(select(func.count()).where(assessed_in))).scalar_one())
    illegal = verdicts.items["verdict:illegal"]
    legal = verdicts.items["verdict:legal"]
    flag_counts = verdicts.of("flag")
    flags = {flag: flag_counts.get(flag, 0) for flag in CONTENT_FLAGS}

    def count_by(field: str) -> dict[str, int]:
        return verdicts.of(field)

    among = "cases first assessed in the period whose verdict (the latest recorded on the " \
            "case before the period's end) is illegal"
    figures = [
        _f("assessment.assessed", "Cases assessed", "cases",
           "cases an analyst first gave a verdict on in the period (the case's assessed "
           "milestone; a case reassessed later counts in the period of its first verdict)",
           assessed),
        _f("assessment.illegal", "Illegal (CSAM)", "cases", among, illegal),
        _f("assessment.illegal_share", "Illegal, share", "share",
           "illegal cases divided by cases assessed in the period", share(illegal, assessed)),
        _f("assessment.by_classification", "Illegal, by classification", "cases",
           f"{among}, by ICCAM classification: baseline (illegal everywhere) or national "
           "(illegal under the home country's law)", illegal,
           in_order(count_by("classification"), ILLEGAL_CLASSES)),
        _f("assessment.by_age_group", "Illegal, by age group", "cases",
           f"{among}, by the victims' age group", illegal,
           in_order(count_by("age_group"), AGE_GROUPS)),
        _f("assessment.by_gender", "Illegal, by gender", "cases",
           f"{among}, by the victims' gender", illegal,
           in_order(count_by("gender"), GENDERS)),
        _f("assessment.by_media", "Illegal, by media", "cases", f"{among}, by media", illegal,
           in_order(count_by("media"), MEDIA)),
        _f("assessment.by_site_type", "Illegal, by site type", "cases",
           f"{among}, by INHOPE site type", illegal,
           in_order(count_by("site_type"), SITE_TYPES)),
        _f("assessment.flags", "Illegal, flagged", "cases",
           f"{among} and flagged self-generated, computer-generated (or virtual), or "
           "commercial; a case may carry several flags", None,
           tuple((flag, flags[flag]) for flag in ("self_generated", "computer_generated",
                                                  "commercial"))),
        _f("assessment.legal", "Legal (not actionable)", "cases",
           "cases first assessed in the period whose verdict (the latest recorded before the "
           "period's end) is legal, by the analyst's reason code", legal,
           in_order(count_by("reason"), REASONS)),
    ]
    return figures + _hosting(verdicts, home_country=home_country, top=top)


def _hosting(verdicts: Verdicts, *, home_country: str, top: int) -> list[Figure]:
    """The hosting figures of the illegal verdicts counted for ``_assessment``."""
    countries = Counter(verdicts.of("country"))
    networks = Counter(verdicts.of("network"))
    cdn = verdicts.items["cdn"]
    unresolvable = verdicts.items["unresolvable"]
    unknown = verdicts.items["country_unknown"]
    home = countries.get(home_country, 0)
    abroad = sum(countries.values()) - home
    by_country = ranked(countries.items())
    among = "illegal cases (as counted under assessment)"
    where = "the country the analyst named with the verdict, else the country of the " \
            "case's latest hosting lookup before the period's end"
    return [
        _f("hosting.home", "Hosted at home", "cases",
           f"{among} hosted in the home country ({home_country}): {where}", home),
        _f("hosting.abroad", "Hosted abroad", "cases",
           f"{among} hosted in another country: {where}", abroad),
        _f("hosting.country_unknown", "Hosting country unknown", "cases",
           f"{among} with no hosting country: none named by the analyst, and none found "
           "(unresolvable, or behind a CDN whose origin is unknown)", unknown),
        _f("hosting.top_countries", f"Top {top} hosting countries", "cases",
           f"the {top} countries hosting the most {among}: {where}; ties by country code",
           None, by_country[:top]),
        _f("hosting.by_country", "By hosting country", "cases", f"{among}, by {where}",
           sum(countries.values()), by_country),
        _f("hosting.by_network", "By network", "cases",
           f"{among}, by the network (AS number and organisation) of the case's latest "
           "hosting lookup before the period's end; cases without one are not listed",
           sum(networks.values()), ranked(networks.items())),
        _f("hosting.cdn", "Behind a CDN", "cases",
           f"{among} whose latest hosting lookup before the period's end found a content "
           "delivery network in front of the host", cdn),
        _f("hosting.unresolvable", "Unresolvable", "cases",
           f"{among} whose host could not be resolved: the latest lookup before the period's "
           "end found no address, or no lookup succeeded", unresolvable),
    ]
