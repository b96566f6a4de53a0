"""The report's definitions on ``/metrics``: on the report's history of known shape, the
gauges of cases awaiting an outcome by age, of overdue cases, and the removal-time histogram
show exactly what the specs imply, and agree with the report's own figures."""

from __future__ import annotations

from datetime import date, timedelta

from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.metrics import Metrics
from gateway.stats import collect_stats
from gateway.store.figures import Period
from gateway.store.report import build_report
from gateway.store.report_gauges import REMOVAL_BUCKETS
from tests.gateway.test_report import history  # noqa: F401 (the fixture)
from tests.report_history import HOME, NOW, REMOVAL_HOURS, Spec


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


async def test_the_gauges_show_the_reports_definitions(
    engine: AsyncEngine, history: list[Spec]  # noqa: F811
) -> None:
    """Cases awaiting an outcome by days since their referral, overdue cases and the
    histogram of hours from referral to removal are those of the specs at NOW, and the
    report over the whole history says the same."""
    stats = await collect_stats(engine, now=NOW)
    shown = _samples(Metrics().render(stats, {}).decode())

    waiting = [NOW - s.referred for s in history if s.referred and s.closed is None]
    ages = {"0-1d": sum(1 for a in waiting if a <= timedelta(days=1)),
            "1-3d": sum(1 for a in waiting if timedelta(days=1) < a <= timedelta(days=3)),
            "3-7d": sum(1 for a in waiting if timedelta(days=3) < a <= timedelta(days=7)),
            "7d+": sum(1 for a in waiting if a > timedelta(days=7))}
    assert {age: shown[("hotline_cases_awaiting_outcome", (("age", age),))]
            for age in ages} == ages
    assert ages["7d+"] > 0

    removed = [(s.closed_at - s.referred).total_seconds() / 3600 for s in history
               if s.closed == "removed" and s.closed_at and s.referred]
    # Removals on the 3 and 7 day marks count within them (a bound is "at most").
    assert {72.0, 168.0} <= set(removed) <= set(map(float, REMOVAL_HOURS))
    for bound in REMOVAL_BUCKETS:
        assert shown[("hotline_referral_to_removal_hours_bucket", (("le", f"{bound:g}"),))] \
            == sum(1 for h in removed if h <= bound), bound
    assert shown[("hotline_referral_to_removal_hours_bucket", (("le", "+Inf"),))] \
        == len(removed)
    assert shown[("hotline_referral_to_removal_hours_count", ())] == len(removed)
    assert shown[("hotline_referral_to_removal_hours_sum", ())] == sum(removed)

    overdue = sum(1 for s in history if s.referred and s.closed is None and (
        (s.remove_by is not None and s.remove_by <= NOW)
        or (s.acknowledged is None and s.acknowledge_by is not None
            and s.acknowledge_by <= NOW)))
    assert shown[("hotline_cases_overdue", ())] == overdue > 0

    async with engine.connect() as conn:
        report = await build_report(conn, Period(date(2026, 1, 1), date(2026, 12, 31)),
                                    home_country=HOME, now=NOW)
    assert report.figure("times.still_open").value == sum(ages.values())
    assert report.figure("times.overdue").value == overdue
    assert report.figure("times.removed").value == len(removed)
    referred = report.figure("times.referred").value
    assert isinstance(referred, int)
    for days in (1, 3, 7):  # all removals are of cases referred within the year
        within = sum(1 for h in removed if h <= days * 24)
        assert report.figure(f"times.removed_within_{days}d").value == round(
            within / referred, 4)
