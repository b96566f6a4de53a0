"""The hotline's report: a history of known shape (tests/report_history.py) gives exactly the
figures its specs imply, for each period, in text, JSON and CSV, on SQLite and PostgreSQL;
no output names a URL, a host or a reporter; the CLI refuses bad dates naming the option."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import math
import re
import statistics
import sys
from collections import Counter
from collections.abc import Iterable
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.report import as_csv, as_json, as_text
from gateway.store.backend import WriteBackend
from gateway.store.classification import AGE_GROUPS, GENDERS, MEDIA, REASONS, SITE_TYPES
from gateway.store.figures import Period
from gateway.store.report import build_report
from gateway.store.tables import metadata
from tests.report_history import HOME, NOW, UNFILED, Spec, build, specs

Expected = dict[str, tuple[Any, list[tuple[str, Any]]]]
#: Q2 and Q3 of 2026, the half-year, the month after (referrals and removals that spilled
#: over), and a period before anything happened.
PERIODS = ((date(2026, 4, 1), date(2026, 6, 30)), (date(2026, 7, 1), date(2026, 9, 30)),
           (date(2026, 4, 1), date(2026, 9, 30)), (date(2026, 10, 1), date(2026, 10, 31)),
           (date(2025, 1, 1), date(2025, 3, 31)))
DAY = timedelta(days=1)


def _in(moment: datetime | None, first: date, last: date) -> bool:
    start = datetime.combine(first, time(), UTC)
    return moment is not None and start <= moment < start + (last - first + DAY)


def _ranked(counts: Counter[str]) -> list[tuple[str, Any]]:
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))


def _coded(counts: Counter[str], codes: Iterable[str]) -> list[tuple[str, Any]]:
    codes = list(codes)
    return [(c, counts.get(c, 0)) for c in codes] + sorted(
        (k, v) for k, v in counts.items() if k not in codes)


def _share(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def _hours(later: datetime, earlier: datetime) -> float:
    return (later - earlier).total_seconds() / 3600


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 2) if values else None


def _p90(values: list[float]) -> float | None:
    if not values:
        return None
    return round(sorted(values)[math.ceil(0.9 * len(values)) - 1], 2)


def expected(history: list[Spec], first: date, last: date) -> Expected:
    """Every figure for the period, from the specs alone."""
    within = lambda moment: _in(moment, first, last)  # noqa: E731
    sent = [(s.received, s.channel) for s in history] + [
        (s.duplicate, "web") for s in history if s.duplicate is not None] + [
        (at, channel) for at, _, channel in UNFILED]
    by_channel = Counter(channel for at, channel in sent if within(at))
    received = sum(by_channel.values())
    unique = sum(1 for s in history if within(s.received))
    not_filed = Counter(status for at, status, _ in UNFILED if within(at))
    figures: Expected = {
        "reports.received": (received, _ranked(by_channel)),
        "reports.unique": (unique, []),
        "reports.unique_share": (_share(unique, received), []),
        "reports.duplicate": (sum(1 for s in history if within(s.duplicate)), []),
        "reports.without_url": (sum(1 for s in history if s.url is None
                                    and within(s.received)), []),
        "reports.not_filed": (sum(not_filed.values()), _ranked(not_filed)),
    }
    assessed = [s for s in history if within(s.assessed)]
    end = datetime.combine(last + DAY, time(), UTC)
    illegal = [s for s in assessed if s.illegal_before(end)]
    legal = [s for s in assessed if not s.illegal_before(end)]

    def by(detail: str) -> Counter[str]:
        return Counter(str(s.details[detail]) for s in illegal)

    figures.update({
        "assessment.assessed": (len(assessed), []),
        "assessment.illegal": (len(illegal), []),
        "assessment.illegal_share": (_share(len(illegal), len(assessed)), []),
        "assessment.by_classification": (len(illegal), _coded(by("classification"),
                                                              ("baseline", "national"))),
        "assessment.by_age_group": (len(illegal), _coded(by("age_group"), AGE_GROUPS)),
        "assessment.by_gender": (len(illegal), _coded(by("gender"), GENDERS)),
        "assessment.by_media": (len(illegal), _coded(by("media"), MEDIA)),
        "assessment.by_site_type": (len(illegal), _coded(by("site_type"), SITE_TYPES)),
        "assessment.flags": (None, [(flag, sum(1 for s in illegal
                                               if flag in s.details["flags"]))  # type: ignore[operator]
                                    for flag in ("self_generated", "computer_generated",
                                                 "commercial")]),
        "assessment.legal": (len(legal), _coded(Counter(str(s.reason) for s in legal),
                                                REASONS)),
    })
    countries = Counter(s.country for s in illegal if s.country)
    by_country = _ranked(countries)  # type: ignore[arg-type]
    networks = Counter(f"AS{s.asn} {s.org}" for s in illegal if s.asn)
    figures.update({
        "hosting.home": (countries[HOME], []),
        "hosting.abroad": (sum(countries.values()) - countries[HOME], []),
        "hosting.country_unknown": (sum(1 for s in illegal if not s.country), []),
        "hosting.top_countries": (None, by_country[:10]),
        "hosting.by_country": (sum(countries.values()), by_country),
        "hosting.by_network": (sum(networks.values()), _ranked(networks)),
        "hosting.cdn": (sum(1 for s in illegal if s.cdn), []),
        "hosting.unresolvable": (sum(1 for s in illegal if s.status == "unresolvable"), []),
    })
    referred = [s for s in history if within(s.referred)]
    kinds = Counter((s.destination or "").split(":")[0] for s in referred)
    partners = Counter(s.country for s in referred if (s.destination or "").startswith("hotline:"))
    iccam = Counter(s.country for s in referred if (s.destination or "").startswith("iccam:"))
    held = [s for s in history if s.route == "hold"
            and within(s.assessed + timedelta(hours=1))]  # type: ignore[operator]
    outcomes = Counter(o for s in history for o, at in (("acknowledged", s.acknowledged),
                                                         (s.closed, s.closed_at))
                       if o and within(at))
    reasons = Counter(s.na_reason for s in history if s.closed == "not_actionable"
                      and within(s.closed_at))
    figures.update({
        "forwarding.referrals": (len(referred), []),
        "forwarding.national_police": (kinds["police"], []),
        "forwarding.international_desk": (kinds["police_international"], []),
        "forwarding.partner_hotlines": (kinds["hotline"], _ranked(partners)),  # type: ignore[arg-type]
        "forwarding.iccam": (kinds["iccam"], _ranked(iccam)),  # type: ignore[arg-type]
        "forwarding.failed": (sum(1 for s in referred if s.failed), []),
        "forwarding.held": (len(held), _ranked(Counter(str(s.rule) for s in held))),
        "forwarding.outcomes": (sum(outcomes.values()), _coded(outcomes, (
            "acknowledged", "removed", "content_unavailable", "not_actionable", "moved"))),
        "forwarding.not_actionable": (sum(reasons.values()), _ranked(reasons)),  # type: ignore[arg-type]
    })
    to_referral = [_hours(s.referred, s.received) for s in referred]  # type: ignore[arg-type]
    removed = [s for s in history if s.closed == "removed" and within(s.closed_at)]
    to_removal = [_hours(s.closed_at, s.referred) for s in removed]  # type: ignore[arg-type]
    figures.update({
        "times.referred": (len(referred), []),
        "times.report_to_referral_median": (_median(to_referral), []),
        "times.report_to_referral_p90": (_p90(to_referral), []),
        "times.removed": (len(removed), []),
        "times.referral_to_removal_median": (_median(to_removal), []),
        "times.referral_to_removal_p90": (_p90(to_removal), []),
        **{f"times.removed_within_{days}d": (_share(sum(
            1 for s in referred if s.closed == "removed"
            and s.closed_at - s.referred <= timedelta(days=days)),  # type: ignore[operator]
            len(referred)), []) for days in (1, 3, 7)},
        "times.still_open": (sum(1 for s in referred if s.closed is None), []),
        "times.overdue": (sum(1 for s in referred if s.closed is None and (
            (s.remove_by is not None and s.remove_by <= NOW)
            or (s.acknowledged is None and s.acknowledge_by is not None
                and s.acknowledge_by <= NOW))), []),
    })
    destinations = Counter(str(s.destination) for s in referred)
    order = [d for d, _ in _ranked(destinations)]

    def per(pick: Any) -> list[tuple[str, Any]]:
        return [(d, pick([s for s in referred if s.destination == d])) for d in order]

    figures.update({
        "destinations.referrals": (len(referred), per(len)),
        "destinations.acknowledged": (sum(1 for s in referred if s.acknowledged),
                                      per(lambda ss: sum(1 for s in ss if s.acknowledged))),
        "destinations.removed": (sum(1 for s in referred if s.closed == "removed"),
                                 per(lambda ss: sum(1 for s in ss if s.closed == "removed"))),
        "destinations.acknowledge_median": (None, per(lambda ss: _median(
            [_hours(s.acknowledged, s.referred) for s in ss if s.acknowledged]))),
        "destinations.removal_median": (None, per(lambda ss: _median(
            [_hours(s.closed_at, s.referred) for s in ss if s.closed == "removed"]))),
    })
    figures.update(expected_series(history, first, last, sent, illegal, assessed, to_removal))
    return figures


def expected_series(history: list[Spec], first: date, last: date,
                    sent: list[tuple[datetime, str]], illegal: list[Spec],
                    assessed: list[Spec], to_removal: list[float]) -> Expected:
    """The series' figures for the period, from the specs alone."""
    days = [first + DAY * n for n in range((last - first).days + 1)]
    received = [(at, channel) for at, channel in sent if _in(at, first, last)]
    channels = sorted({channel for _, channel in received})
    per_day = Counter((at.date(), channel) for at, channel in received)

    def week(day: date) -> date:
        return max(day - DAY * day.weekday(), first)

    weeks = sorted({week(d) for d in days})
    illegal_by = Counter(week(s.assessed.date()) for s in illegal)  # type: ignore[union-attr]
    assessed_by = Counter(week(s.assessed.date()) for s in assessed)  # type: ignore[union-attr]
    bounds = ((6, "0-6h"), (24, "6-24h"), (72, "24-72h"), (168, "72-168h"),
              (336, "168-336h"))
    bins = Counter(next((label for bound, label in bounds if span <= bound), "336h+")
                   for span in to_removal)
    return {
        "series.received_per_day": (len(received), [
            (f"{d}/{channel}", per_day[d, channel]) for d in days for channel in channels]),
        "series.illegal_share_per_week": (_share(len(illegal), len(assessed)), [
            (str(w), _share(illegal_by[w], assessed_by[w])) for w in weeks]),
        "series.removal_times": (len(to_removal), [
            (label, bins[label]) for label in ("0-6h", "6-24h", "24-72h", "72-168h",
                                               "168-336h", "336h+")]),
    }


def from_json(text: str) -> Expected:
    figures = json.loads(text)["figures"]
    for name, figure in figures.items():
        assert figure["definition"].strip(), name
    return {name: (f["value"], [(item["key"], item["value"]) for item in f["by"]])
            for name, f in figures.items()}


def from_csv(text: str) -> Expected:
    rows = list(csv.DictReader(io.StringIO(text)))
    found: Expected = {}
    for row in rows:
        assert row["definition"].strip(), row
        value: Any = None
        if row["value"] != "":
            value = int(row["value"]) if row["unit"] in ("reports", "cases", "referrals") \
                else float(row["value"])
        if row["key"] == "":
            found[row["figure"]] = (value, [])
        else:
            found[row["figure"]][1].append((row["key"], value))
    return found


def _said(value: Any, unit: str) -> str:
    """How the text output writes a value."""
    if value is None:
        return "-"
    return {"share": f"{value * 100:.2f} %", "hours": f"{value:.2f} h"}.get(unit, str(value))


def from_text(text: str, units: dict[str, str]) -> dict[str, tuple[str, list[tuple[str, str]]]]:
    """Each figure's value and breakdown as the text writes them, by name (the definitions
    at the end name each numbered figure)."""
    names = dict(re.findall(r"^  \[(\d+)\] ([a-z_.0-9]+): .+$", text.split("\nDefinitions\n")[1],
                            re.M))
    found: dict[str, tuple[str, list[tuple[str, str]]]] = {}
    current = ""
    for line in text.split("\nDefinitions\n")[0].splitlines():
        if m := re.fullmatch(r"  \[(\d+)\] [^:]+(?:: (.+))?", line):
            current = names[m[1]]
            found[current] = (m[2] or "", [])
        elif m := re.fullmatch(r"        (\S.*?) {2,}(-|\S+(?: %| h)?)", line):
            found[current][1].append((m[1], m[2]))
    return found


Said = dict[str, tuple[str, list[tuple[str, str]]]]


def as_said(figures: Expected, units: dict[str, str]) -> Said:
    return {name: ("" if value is None and by else _said(value, units[name]),
                   [(k, _said(v, units[name])) for k, v in by])
            for name, (value, by) in figures.items()}


FORBIDDEN = ("example.test", "mail.test", "reporter-", "http", "192.0.2.7", "/p/")


def assert_anonymous(text: str) -> None:
    for word in FORBIDDEN:
        assert word not in text, word


@pytest.fixture
async def history(backend: WriteBackend) -> list[Spec]:
    made = specs()
    await build(backend, made)
    return made


async def test_a_known_history_gives_the_expected_figures_in_every_format(
    engine: AsyncEngine, history: list[Spec]
) -> None:
    """For each period, the figures in JSON, CSV and text are exactly those the history's
    specs imply, each with its definition, and none names a URL, a host or a reporter."""
    for first, last in PERIODS:
        want = expected(history, first, last)
        async with engine.connect() as conn:
            report = await build_report(conn, Period(first, last), home_country=HOME, now=NOW)
        units = {f.name: f.unit for f in report.figures}
        assert set(units) == set(want)
        as_json_text, as_csv_text, text = as_json(report), as_csv(report), as_text(report)
        assert from_json(as_json_text) == want, (first, last)
        assert from_csv(as_csv_text) == want, (first, last)
        assert from_text(text, units) == as_said(want, units), (first, last)
        for output in (as_json_text, as_csv_text, text):
            assert_anonymous(output)
    # The history has every route in each quarter: the figures are not trivially zero.
    q2, q3, half = (expected(history, *period) for period in PERIODS[:3])
    assert all(q2[name][0] for name in (
        "reports.duplicate", "reports.without_url", "hosting.cdn", "hosting.unresolvable",
        "forwarding.iccam", "forwarding.international_desk", "forwarding.held",
        "forwarding.not_actionable", "forwarding.failed", "times.overdue", "times.still_open"))
    assert all(dict(q2["forwarding.outcomes"][1]).values())
    assert {"hold-no-key", "hold-unknown-hosting"} == {k for k, _ in q2["forwarding.held"][1]}
    assert any(s.named for s in history)
    # A legal verdict of June reassessed illegal in July: legal in Q2's report, illegal in
    # the half-year's (its first verdict's period, the latest verdict before the end).
    assert half["assessment.illegal"][0] == q2["assessment.illegal"][0] + \
        q3["assessment.illegal"][0] + 1


async def test_the_cli_prints_the_report_in_each_format(
    engine: AsyncEngine, history: list[Spec], tmp_path: Path
) -> None:
    """``hotline-gateway report`` on the database prints the same figures as text, JSON and
    CSV (SQLite: the command opens the file the history is in)."""
    if engine.dialect.name != "sqlite":
        pytest.skip("the CLI opens the configured database; PostgreSQL runs in a test schema")
    config = tmp_path / "config.toml"
    config.write_text('[database]\nurl = "sqlite+aiosqlite:///var/gateway.db"\n')
    first, last = PERIODS[0]
    want = expected(history, first, last)
    outputs = {}
    for fmt in ("json", "csv", "text", "html"):
        code, out, err = await run_cli(config, "report", "--from", str(first), "--to",
                                       str(last), "--format", fmt)
        assert (code, err) == (0, ""), err
        assert_anonymous(out)
        outputs[fmt] = out
    document = json.loads(outputs["json"])
    assert (document["from"], document["to"], document["to_included"]) == (
        "2026-04-01", "2026-06-30", True)
    assert from_json(outputs["json"]) == want
    assert from_csv(outputs["csv"]) == want
    units = {name: f["unit"] for name, f in document["figures"].items()}
    assert from_text(outputs["text"], units) == as_said(want, units)
    page = outputs["html"]
    assert page.startswith("<!doctype html>") and "<script" not in page
    said = as_said(want, units)
    for name, (value, _) in said.items():
        row = re.search(rf'<tr id="figure-{re.escape(name.replace(".", "-"))}" .*?'
                        r'<td class="num value">([^<]*)</td>', page, re.S)
        assert row and row[1] == (value or "-"), name
        assert f"<code>{name}</code>" in page
    for chart in ("chart-received", "chart-illegal-share", "chart-countries", "chart-removal"):
        assert f'<svg id="{chart}"' in page and f'id="{chart}-table"' in page


async def run_cli(config: Path, *args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.cli", "--config", str(config), *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


@pytest.mark.parametrize(("args", "said"), [
    (("--from", "2026-13-01", "--to", "2026-12-31"), "--from takes an ISO date"),
    (("--from", "2026-01-01", "--to", "31/12/2026"), "--to takes an ISO date"),
    (("--from", "2026-01-01", "--to", "2026-1-5"), "--to takes an ISO date"),
    (("--from", "2026-04-01", "--to", "2026-03-31"), "--to 2026-03-31 is before --from"),
    (("--from", "0001-01-01", "--to", "2026-03-31"), "--to a report covers at most 3653 days"),
    (("--from", "2026-04-01", "--to", "9999-12-31"), "--to 9999-12-31 is past the last day"),
    (("--from", "2026-04-01", "--to", "2026-06-30", "--format", "xml"), "--format"),
    (("--to", "2026-06-30",), "--from"),
])
def test_bad_dates_are_refused_naming_the_option(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: tuple[str, ...], said: str
) -> None:
    """A date that is not an ISO date, a period that ends before it starts, or an unknown
    format exits 2 with a message naming the option; nothing is read."""
    from gateway.cli import main

    config = tmp_path / "config.toml"
    config.write_text("")
    try:
        code = main(["--config", str(config), "report", *args])
    except SystemExit as exc:  # argparse's own refusals
        code = int(exc.code or 0)
    assert code == 2
    err = capsys.readouterr().err
    assert said in err
    assert not (tmp_path / "var").exists()


async def test_the_documentation_lists_every_figure_with_its_definition(
    engine: AsyncEngine
) -> None:
    """docs/reporting.md names every figure with the definition the report gives it, word
    for word, so that the users' page and the JSON never disagree."""
    docs = (Path(__file__).resolve().parents[2] / "docs" / "reporting.md").read_text()
    async with engine.connect() as conn:
        report = await build_report(conn, Period(*PERIODS[0]), home_country=HOME, now=NOW)
    for figure in report.figures:
        assert f"| `{figure.name}` | {figure.unit} | {figure.definition} |" in docs, figure.name


async def test_the_figures_read_nothing_that_anonymising_clears(
    engine: AsyncEngine, history: list[Spec]
) -> None:
    """With every sealed value in the database wiped (what anonymising clears, and more:
    URLs, hosts, addresses, texts, contacts, notes, documents), every figure of every period
    is what it was."""
    before = []
    for first, last in PERIODS:
        async with engine.connect() as conn:
            before.append(as_json(await build_report(conn, Period(first, last),
                                                     home_country=HOME, now=NOW)))
    async with engine.begin() as conn:
        for table in metadata.sorted_tables:
            sealed = [c for c in table.columns if c.info.get("sealed")]
            if sealed:
                await conn.execute(update(table).values(
                    {c.name: None if c.nullable else b"" for c in sealed}))
    for (first, last), was in zip(PERIODS, before, strict=True):
        async with engine.connect() as conn:
            assert as_json(await build_report(conn, Period(first, last), home_country=HOME,
                                              now=NOW)) == was
