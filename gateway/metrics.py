"""Prometheus metrics: counters kept as things happen, gauges read from the database at
scrape time. One registry per gateway (no process-wide state)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.registry import Collector

from gateway.store.leases import Holding
from gateway.store.space import DiskSpace
from outbound.gpg import KeyStatus


class _Snapshot(Collector):
    """Gauges from the last ``collect_stats`` and key check, emitted on scrape."""

    def __init__(self) -> None:
        self.stats: dict[str, Any] = {}
        self.keys: Mapping[str, KeyStatus | None] = {}
        self.space: DiskSpace | None = None
        #: The stages' leases (renewals, losses), where this instance runs the stages.
        self.holdings: Sequence[Holding] = ()

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily
                                  | HistogramMetricFamily]:
        stats = self.stats
        cases = GaugeMetricFamily("hotline_cases", "Cases by state", labels=["state"])
        for state, count in (stats.get("cases") or {}).items():
            cases.add_metric([state], count)
        yield cases
        backlog = GaugeMetricFamily("hotline_pipeline_backlog",
                                    "Work waiting for a stage", labels=["stage"])
        backlog.add_metric(["normalise"],
                           (stats.get("submissions_by_status") or {}).get("received", 0))
        backlog.add_metric(["locate"], stats.get("cases_to_locate", 0))
        yield backlog
        yield GaugeMetricFamily("hotline_cases_recheck_flagged",
                                "Referred cases whose hosting re-check needs a person",
                                value=stats.get("cases_recheck_flagged", 0))
        yield GaugeMetricFamily("hotline_cases_anonymised",
                                "Closed cases whose URLs and reporters' data retention removed",
                                value=stats.get("cases_anonymised", 0))
        yield GaugeMetricFamily("hotline_cases_overdue",
                                "Cases with a referral past a deadline it has not met",
                                value=stats.get("cases_overdue", 0))
        awaiting = GaugeMetricFamily(
            "hotline_cases_awaiting_outcome",
            "Cases waiting for what becomes of their referral (referred or acknowledged: the "
            "report's still open), by days since their first referral", labels=["age"])
        for age, count in (stats.get("cases_awaiting_outcome_by_age") or {}).items():
            awaiting.add_metric([age], count)
        yield awaiting
        removal = stats.get("removal_hours")
        if removal is not None:
            yield HistogramMetricFamily(
                "hotline_referral_to_removal_hours",
                "Hours from a case's first referral to when its content first went down (the "
                "report's referral-to-removal time), over every removed case",
                buckets=[(f"{bound:g}", n) for bound, n in removal["buckets"]]
                + [("+Inf", removal["count"])], sum_value=removal["sum"])
        yield GaugeMetricFamily("hotline_cases_supervisor_flagged",
                                "Cases awaiting an outcome whose reminders ran out, flagged "
                                "for a supervisor",
                                value=stats.get("cases_supervisor_flagged", 0))
        yield GaugeMetricFamily("hotline_outbox_pending", "Referrals waiting to be delivered",
                                value=stats.get("outbox_pending", 0))
        yield GaugeMetricFamily("hotline_outbox_oldest_pending_seconds",
                                "Age of the oldest undelivered referral",
                                value=stats.get("outbox_oldest_pending_seconds", 0.0))
        referrals = GaugeMetricFamily("hotline_referrals", "Referrals by destination and state",
                                      labels=["destination", "state"])
        for row in stats.get("referrals_by_destination") or []:
            referrals.add_metric([row["destination"], row["status"]], row["count"])
        yield referrals
        yield GaugeMetricFamily("hotline_replies_needing_attention",
                                "Destinations' replies kept for an analyst, not handled yet",
                                value=(stats.get("replies") or {}).get("needs_attention", 0))
        kept = GaugeMetricFamily("hotline_replies_kept",
                                 "Replies kept for an analyst (waiting or handled, until "
                                 "[retention] deletes untrusted ones), by reason",
                                 labels=["reason"])
        for reason, count in (stats.get("replies_kept_by_reason") or {}).items():
            kept.add_metric([reason], count)
        yield kept
        days = GaugeMetricFamily("hotline_key_days_until_expiry",
                                 "Days until a pinned key expires (-1: unusable)",
                                 labels=["key"])
        now = datetime.now(UTC)
        for name, status in self.keys.items():
            if status is None or status.problems:
                days.add_metric([name], -1)
                continue
            expiry = status.encrypt_expires or status.expires
            if expiry is not None:
                days.add_metric([name], round((expiry - now).total_seconds() / 86400, 1))
        yield days
        if self.space is not None:
            free = GaugeMetricFamily("hotline_disk_free_bytes",
                                     "Free bytes on the filesystem of a folder the gateway "
                                     "writes to, at the last check", labels=["folder"])
            for folder, value in self.space.free.items():
                free.add_metric([folder], value)
            yield free
            yield GaugeMetricFamily("hotline_disk_below_watermark",
                                    "1 while free space is below [gateway] min_free_bytes "
                                    "and new reports are refused",
                                    value=int(self.space.low))
        for name, value in (stats.get("counters") or {}).items():
            yield CounterMetricFamily(f"hotline_{name}", name.replace("_", " "), value=value)
        yield from _leases(self.holdings)


def _leases(holdings: Sequence[Holding]) -> Iterator[CounterMetricFamily]:
    """Rows whose lease a stage renewed while it worked on them, and rows it lost: another
    instance claimed them (our renewals stopped reaching the database for a lease's length),
    or it held one an hour. Any lost is worth a look: work was done twice, or stuck."""
    renewals = CounterMetricFamily("hotline_lease_renewals",
                                   "Rows whose lease a stage renewed while working on them",
                                   labels=["stage"])
    lost = CounterMetricFamily("hotline_leases_lost",
                               "Rows a stage held whose lease it lost before it was done",
                               labels=["stage"])
    for holding in holdings:
        renewals.add_metric([holding.stage], holding.renewals)
        lost.add_metric([holding.stage], holding.losses)
    yield renewals
    yield lost


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.intake = Counter("hotline_intake_reports", "Reports by channel and outcome",
                              ["channel", "outcome"], registry=self.registry)
        self.commit = Histogram("hotline_commit_seconds",
                                "How long each report waited for its durable commit",
                                buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                         0.5, 1.0, 2.5),
                                registry=self.registry)
        self.replies = Counter("hotline_replies",
                               "Destinations' replies read: trusted, or why one was kept for "
                               "an analyst", ["result"], registry=self.registry)
        self.snapshot = _Snapshot()
        self.registry.register(self.snapshot)

    def stored(self, channel: str, outcome: str, seconds: float | None) -> None:
        """The writer's observer: one report stored (or not)."""
        self.intake.labels(channel, outcome).inc()
        if seconds is not None:
            self.commit.observe(seconds)

    def reply_read(self, result: str) -> None:
        """The reply stage's observer: one reply read ("trusted", or its reason)."""
        self.replies.labels(result).inc()

    def render(self, stats: dict[str, Any], keys: Mapping[str, KeyStatus | None]) -> bytes:
        self.snapshot.stats = stats
        self.snapshot.keys = keys
        rendered: bytes = generate_latest(self.registry)
        return rendered
