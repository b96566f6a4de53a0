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
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, case, exists, func, or_, select, tuple_
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.store.classification import (
    AGE_GROUPS,
    CONTENT_FLAGS,
    GENDERS,
    MEDIA,
    REASONS,
    SITE_TYPES,
)
from gateway.store.figures import UNRECORDED, Figure, Period, Report, in_order, ranked, share
from gateway.store.report_referrals import (
    destinations,
    forwarding,
    referrals_made,
    removals,
    times,
)
from gateway.store.report_series import series
from gateway.store.report_sql import day_of, report_settings
from gateway.store.tables import assessments, case_reports, cases, hosting_evidence, submissions

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
        figures = [
            *await _reports(conn, period, received),
            *await _assessment(conn, period, home_country=home_country, top=top),
            *await forwarding(conn, period, made),
            *await times(conn, period, now=now, removed=removed),
            *await destinations(conn, period, made),
            *await series(conn, period, _latest_verdict(period), received, removed),
        ]
    return Report(period, home_country, now, top, tuple(figures))


#: Reports received in a period by UTC day (``YYYY-MM-DD``), channel and state.
Received = Counter[tuple[str, str, str]]


async def received_counts(conn: AsyncConnection, period: Period) -> Received:
    """One pass over the reports received in the period, shared by the reports' figures
    and the daily series."""
    day = day_of(conn, submissions.c.received_at)
    return Counter({(str(d), str(channel), str(status)): int(n)
                    for d, channel, status, n in await conn.execute(
                        select(day, submissions.c.channel, submissions.c.status, func.count())
                        .where(period.holds(submissions.c.received_at))
                        .group_by(day, submissions.c.channel, submissions.c.status))})


def _filed_code(conn: AsyncConnection, received_in: ColumnElement[bool]) -> Select[Any]:
    """Each filed report received in the period once (a report may be in several cases),
    with its state and a code: 2 if it is the first report of at least one of its cases,
    plus 1 if one of them has no URL.

    A case's first report: no report of the case came before it (the same moment: the
    lower submission id first, so that exactly one is first). The case's first_reported
    is its earliest report's time (filing and merging keep it so), so only a report at
    that moment is looked at again, for a tie."""
    tie = case_reports.alias("tie")
    tied = and_(tie.c.case_id == case_reports.c.case_id,
                tie.c.reported_at == case_reports.c.reported_at,
                tie.c.submission_id < case_reports.c.submission_id)
    reports_cases = case_reports.join(cases, cases.c.id == case_reports.c.case_id)
    no_url = func.max(case((cases.c.kind == "no_url", 1), else_=0))
    if conn.dialect.name == "postgresql":
        # Hash joins (the tie as an outer join, not a lookup per report), then one group
        # per report.
        first = and_(case_reports.c.reported_at == cases.c.first_reported, tie.c.id.is_(None))
        return (select(submissions.c.status,
                       (func.max(case((first, 2), else_=0)) + no_url).label("code"))
                .select_from(submissions.join(
                    reports_cases, case_reports.c.submission_id == submissions.c.id)
                    .outerjoin(tie, tied))
                .where(received_in).group_by(submissions.c.id, submissions.c.status))
    first = and_(case_reports.c.reported_at == cases.c.first_reported, ~exists().where(tied))
    code = func.max(case((first, 2), else_=0)) + no_url
    # SQLite joins by looking up each row in an index: a report's cases are looked up
    # from the report (no sort of a million rows to group them). The LIMIT keeps SQLite
    # from flattening the subquery into the outer one, which would run it once for each
    # use of its column.
    each = (select(code).select_from(reports_cases)
            .where(case_reports.c.submission_id == submissions.c.id).scalar_subquery())
    inner = (select(submissions.c.status, each.label("code")).where(received_in)
             .limit(2 ** 62).subquery())
    return select(inner.c.status, inner.c.code).where(inner.c.code.is_not(None))


async def _reports(conn: AsyncConnection, period: Period, by_day: Received) -> list[Figure]:
    by_channel: Counter[str] = Counter()
    by_status: Counter[str] = Counter()
    for (_, channel, status), n in by_day.items():
        by_channel[channel] += n
        by_status[status] += n
    received = sum(by_channel.values())
    each = _filed_code(conn, period.holds(submissions.c.received_at)).subquery()
    filed_by: Counter[str] = Counter()
    unique = without_url = 0
    for status, filed, first, no_url in await conn.execute(
            select(each.c.status, func.count(), func.sum(case((each.c.code >= 2, 1), else_=0)),
                   func.sum(each.c.code % 2)).group_by(each.c.status)):
        filed_by[str(status)] += int(filed)
        unique += int(first)
        without_url += int(no_url)
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


async def _assessment(conn: AsyncConnection, period: Period, *, home_country: str,
                      top: int) -> list[Figure]:
    assessed_in = period.holds(cases.c.assessed_at)
    assessed = int((await conn.execute(select(func.count()).where(assessed_in))).scalar_one())
    coded = (assessments.c.verdict, assessments.c.classification, assessments.c.age_group,
             assessments.c.gender, assessments.c.media, assessments.c.site_type,
             assessments.c.computer_generated, assessments.c.self_generated,
             assessments.c.commercial, assessments.c.reason)
    hosted = (assessments.c.hosting_country, hosting_evidence.c.status,
              hosting_evidence.c.country, hosting_evidence.c.asn, hosting_evidence.c.org,
              hosting_evidence.c.cdn)
    # One pass for the verdicts and the hosting of the illegal ones (a legal verdict joins
    # no lookup): each case is one row of the join, so the counts add up as two queries'.
    joined = (cases.join(assessments, assessments.c.case_id == cases.c.id)
              .outerjoin(hosting_evidence, and_(
                  hosting_evidence.c.case_id == cases.c.id,
                  assessments.c.verdict == "illegal", _latest_hosting(period))))
    where = (assessed_in, *_latest_verdict(period))
    fields = ("classification", "age_group", "gender", "media", "site_type")
    by: dict[str, Counter[str]] = {field: Counter() for field in (*fields, "reason")}
    flags = dict.fromkeys(CONTENT_FLAGS, 0)
    illegal = legal = 0
    illegal_rows: list[Any] = []
    if conn.dialect.name == "postgresql":
        # Grouping sets: the verdict with each code on its own, and with the hosting, in one
        # pass of hash aggregates (some hundred rows back, not one per combination of codes).
        # GROUPING() says which set a row counts (its bit 0 for the set's first column).
        sets = [(column,) for column in coded[1:]] + [hosted]
        which = func.grouping(*(columns[0] for columns in sets)).label("which")
        found = await conn.execute(
            select(*coded, *hosted, which, func.count().label("n")).select_from(joined)
            .where(*where).group_by(func.grouping_sets(
                *(tuple_(assessments.c.verdict, *columns) for columns in sets))))
        names = [columns[0].name for columns in sets]
        for row in found:
            n = int(row.n)
            name = names[len(sets) - (~int(row.which) & ((1 << len(sets)) - 1)).bit_length()]
            if row.verdict == "illegal":
                if name == "classification":
                    illegal += n
                if name in fields:
                    by[name][getattr(row, name) or UNRECORDED] += n
                elif name in flags:
                    flags[name] += n if getattr(row, name) else 0
                elif name == "hosting_country":
                    illegal_rows.append(row)
            elif row.verdict == "legal":
                if name == "classification":
                    legal += n
                if name == "reason":
                    by["reason"][row.reason or UNRECORDED] += n
    else:
        # SQLite has no grouping sets: grouped by every code, walked once in Python.
        for row in await conn.execute(select(*coded, *hosted, func.count().label("n"))
                                      .select_from(joined).where(*where)
                                      .group_by(*coded, *hosted)):
            n = int(row.n)
            if row.verdict == "illegal":
                illegal += n
                illegal_rows.append(row)
                for field in fields:
                    by[field][getattr(row, field) or UNRECORDED] += n
                for flag in CONTENT_FLAGS:
                    if getattr(row, flag):
                        flags[flag] += n
            elif row.verdict == "legal":
                legal += n
                by["reason"][row.reason or UNRECORDED] += n

    def count_by(field: str) -> dict[str, int]:
        return dict(by[field])

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
    return figures + _hosting(illegal_rows, home_country=home_country, top=top)


def _latest_verdict(period: Period) -> tuple[ColumnElement[bool], ...]:
    """``assessments`` is the case's latest verdict recorded before the period's end (the
    same moment: the higher id): no later one exists (each an index lookup by case)."""
    later = assessments.alias("later")
    return (assessments.c.created_at < period.end, ~exists().where(
        later.c.case_id == assessments.c.case_id, later.c.created_at < period.end,
        or_(later.c.created_at > assessments.c.created_at,
            and_(later.c.created_at == assessments.c.created_at,
                 later.c.id > assessments.c.id))))


def _latest_hosting(period: Period) -> ColumnElement[bool]:
    """``hosting_evidence`` is the case's latest lookup that gave a verdict (not failed)
    before the period's end, for a join on the case."""
    later = hosting_evidence.alias("later_evidence")
    return and_(
        hosting_evidence.c.status != "failed", hosting_evidence.c.checked_at < period.end,
        ~exists().where(
            later.c.case_id == hosting_evidence.c.case_id, later.c.status != "failed",
            later.c.checked_at < period.end,
            or_(later.c.checked_at > hosting_evidence.c.checked_at,
                and_(later.c.checked_at == hosting_evidence.c.checked_at,
                     later.c.id > hosting_evidence.c.id))))


def _hosting(rows: list[Any], *, home_country: str, top: int) -> list[Figure]:
    """The hosting figures from the illegal verdicts' rows of ``_assessment``'s query."""
    countries: Counter[str] = Counter()
    networks: Counter[str] = Counter()
    cdn = unresolvable = unknown = 0
    for row in rows:
        named, status, country, asn, org, fronted = (
            row.hosting_country, row.status, row.country, row.asn, row.org, row.cdn)
        n = int(row.n)
        where = named or country
        if where:
            countries[where] += n
        else:
            unknown += n
        if asn is not None:
            networks[f"AS{asn} {org}".rstrip() if org else f"AS{asn}"] += n
        if fronted or status == "cdn":
            cdn += n
        if status in (None, "unresolvable"):
            unresolvable += n
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
