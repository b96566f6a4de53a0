"""The report's series, for charts (the console's page draws them) and for anyone who wants
the figures over time: reports received per day by channel, the illegal share per week, and
the distribution of times from referral to removal. Read from plain columns only, as every
figure of the report, and counted by the same rules as the period's totals, so that a series
adds up to its total.
"""

from __future__ import annotations

from collections import Counter
from datetime import date, timedelta
from typing import TYPE_CHECKING

from gateway.store.figures import Figure, Number, Period, share
from gateway.store.report_referrals import Removals

if TYPE_CHECKING:
    from gateway.store.report import Received

_f = Figure.of


def days(period: Period) -> list[date]:
    return [period.first + timedelta(days=n) for n in range((period.last - period.first).days + 1)]


def week_of(day: date, period: Period) -> date:
    """The first day of ``day``'s week (Monday to Sunday) within the period."""
    return max(day - timedelta(days=day.weekday()), period.first)


def series(period: Period, verdicts_by_day: Counter[tuple[date, str]], by_day: Received,
           removed: Removals) -> list[Figure]:
    """The series of ``period``; ``verdicts_by_day`` are the cases first assessed in it by
    day and verdict, as the assessment figures count them; ``by_day`` are the reports
    received, ``removed`` the removal times, as their totals count them."""
    received: Counter[tuple[str, str]] = Counter()
    for (d, channel, *_), n in by_day.items():
        received[d, channel] += n
    channels = sorted({channel for _, channel in received})
    per_day: tuple[tuple[str, Number], ...] = tuple(
        (f"{d.isoformat()}/{channel}", received.get((d.isoformat(), channel), 0))
        for d in days(period) for channel in channels)

    assessed: Counter[date] = Counter()
    illegal: Counter[date] = Counter()
    for (on, verdict), n in verdicts_by_day.items():
        week = week_of(on, period)
        assessed[week] += n
        if verdict == "illegal":
            illegal[week] += n
    weeks = sorted({week_of(d, period) for d in days(period)})

    return [
        _f("series.received_per_day", "Reports received per day, by channel", "reports",
           "reports received in the period (as reports.received), by the UTC day they were "
           "received and the channel they came in by: one item per day and channel, "
           "day/channel", sum(received.values()), per_day),
        _f("series.illegal_share_per_week", "Illegal share per week", "share",
           "of the cases first assessed in each week (Monday to Sunday, UTC; the first and "
           "last weeks cut at the period's bounds, each named by its first day in the "
           "period), the share whose verdict (as for assessment.illegal) is illegal; none "
           "for a week without an assessment", share(sum(illegal.values()),
                                                    sum(assessed.values())),
           tuple((w.isoformat(), share(illegal[w], assessed[w])) for w in weeks)),
        _f("series.removal_times", "Removal times", "cases",
           "referred cases whose content first went down in the period (as times.removed), "
           "by the time from the first referral to the removal, in bins of hours: each "
           "includes its upper bound", removed.spread.count, removed.bins),
    ]
