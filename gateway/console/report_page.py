"""The hotline's report on a console page, for supervisors: the period chosen in a form (ISO
dates, UTC days, ``to`` included, as the CLI's ``--from`` and ``--to``), every figure with its
definition in a legend, by section, the charts drawn as SVG on the server with their tables
beside them, and the same figures to download as JSON and CSV.

``page_context`` is shared with ``hotline-gateway report --format html``, which renders the
same body as a standalone page.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from typing import Any

from aiohttp import web
from markupsafe import Markup

from gateway.console.accounts import Staff
from gateway.console.base import CONSOLE, session_of, staff_of
from gateway.console.svg import Series, bars, columns
from gateway.store.figures import Figure, Period, Report, period_problem, shown
from gateway.store.report import build_report

#: How many hosting countries the top list names on the page.
TOP = 10
CSV_COLUMNS = ("figure", "key", "value", "unit", "title", "definition")
#: The removal-time bins of ``series.removal_times``, in words.
BIN_WORDS = {"0-6h": "up to 6 hours", "6-24h": "6 to 24 hours", "24-72h": "1 to 3 days",
             "72-168h": "3 to 7 days", "168-336h": "7 to 14 days", "336h+": "over 14 days"}


@dataclass(frozen=True, slots=True)
class Chart:
    """A chart and the table it pictures (``head``: the columns; ``rows``: the cells)."""

    id: str
    title: str
    figure: str
    svg: Markup
    head: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]


class BadPeriod(ValueError):
    """A form field that is not a date, or a period that ends before it starts."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


def parse_period(query: Any, today: date) -> Period:
    """The period of the form's ``from`` and ``to`` (ISO dates, both included); without
    them, the current quarter up to today."""
    quarter = date(today.year, 3 * ((today.month - 1) // 3) + 1, 1)
    found: dict[str, date] = {}
    for field, default in (("from", quarter), ("to", today)):
        value = str(query.get(field, "")).strip()
        if not value:
            found[field] = default
            continue
        try:
            if len(value) != 10:
                raise ValueError(value)
            found[field] = date.fromisoformat(value)
        except ValueError:
            raise BadPeriod(field, f"takes an ISO date such as 2026-03-31, not {value[:40]!r}"
                            ) from None
    problem = period_problem(found["from"], found["to"])
    if problem is not None:
        raise BadPeriod("to", problem)
    return Period(found["from"], found["to"])


def _series(figure: Figure) -> tuple[list[str], list[str], dict[tuple[str, str], float]]:
    """A ``day/channel`` breakdown as its days, its channels and each value."""
    days: list[str] = []
    channels: list[str] = []
    values: dict[tuple[str, str], float] = {}
    for key, value in figure.by:
        day, _, channel = key.partition("/")
        if day not in days:
            days.append(day)
        if channel not in channels:
            channels.append(channel)
        values[day, channel] = float(value or 0)
    return days, channels, values


def charts(report: Report) -> list[Chart]:
    """The four charts of the page, each with its table."""
    days, channels, per_day = _series(report.figure("series.received_per_day"))
    daily = columns(
        "chart-received", "Reports received per day, by channel",
        f"Stacked columns, one per UTC day from {report.period.first} to "
        f"{report.period.last}, one colour per channel ({', '.join(channels) or 'none'}).",
        days, [Series(c, [per_day[d, c] for d in days]) for c in channels])
    weekly = report.figure("series.illegal_share_per_week")
    weeks = [key for key, _ in weekly.by]
    share_chart = columns(
        "chart-illegal-share", "Illegal share per week",
        "Columns, one per week (named by its first day in the period): the share of the "
        "cases first assessed that week found illegal, from 0 to 100 %.",
        weeks, [Series("illegal share", [float(v) if v is not None else None
                                         for _, v in weekly.by])],
        top=1, tick=lambda v: f"{v * 100:.0f} %")
    countries = report.figure("hosting.by_country")
    country_chart = bars(
        "chart-countries", "Hosting countries of the illegal content",
        "Horizontal bars, one per hosting country, largest first: the illegal cases "
        "hosted there.", [(k, float(v or 0)) for k, v in countries.by])
    removal = report.figure("series.removal_times")
    removal_chart = bars(
        "chart-removal", "Time from referral to removal",
        "Horizontal bars, one per span of time: the cases whose content went down in the "
        "period, by how long after the referral.",
        [(BIN_WORDS.get(k, k), float(v or 0)) for k, v in removal.by])
    return [
        Chart("chart-received", "Reports received per day, by channel",
              "series.received_per_day", daily, ("Day", *channels, "Total"),
              tuple((d, *(str(int(per_day[d, c])) for c in channels),
                     str(int(sum(per_day[d, c] for c in channels)))) for d in days)),
        Chart("chart-illegal-share", "Illegal share per week", "series.illegal_share_per_week",
              share_chart, ("Week from", "Illegal share"),
              tuple((k, shown(v, "share")) for k, v in weekly.by)),
        Chart("chart-countries", "Hosting countries", "hosting.by_country", country_chart,
              ("Country", "Illegal cases"), tuple((k, shown(v, "cases"))
                                                  for k, v in countries.by)),
        Chart("chart-removal", "Time from referral to removal", "series.removal_times",
              removal_chart, ("Time to removal", "Cases"),
              tuple((BIN_WORDS.get(k, k), shown(v, "cases")) for k, v in removal.by)),
    ]


def page_context(report: Report) -> dict[str, Any]:
    """What ``report_body.html`` shows: each section's figures, numbered for the legend,
    the charts, and the value formatter."""
    numbered: list[tuple[str, str, list[tuple[int, Figure]]]] = []
    n = 0
    for name, title, figures in report.sections():
        items = []
        for figure in figures:
            n += 1
            items.append((n, figure))
        numbered.append((name, title, items))
    return {"report": report, "sections": numbered, "charts": charts(report), "shown": shown,
            "first": report.period.first.isoformat(), "last": report.period.last.isoformat()}


def as_json(report: Report) -> str:
    return json.dumps(report.as_json(), indent=1, ensure_ascii=True) + "\n"


#: A spreadsheet takes a cell that starts with one of these for a formula. A breakdown's key
#: can come from outside (a network's name as its registry has it), so such a key is written
#: with an apostrophe in front, which spreadsheets show as text (OWASP's advice on CSV
#: injection).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_text(text: str) -> str:
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def as_csv(report: Report) -> str:
    """One row per figure (``key`` empty) and one per item of its breakdown; values as
    numbers (shares from 0 to 1, times in hours), empty where there is none."""
    out = io.StringIO()
    # RFC 4180's line ends: a field holding a carriage return or a line feed is then quoted.
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    for figure in report.figures:
        for key, value in [("", figure.value), *figure.by]:
            writer.writerow((figure.name, csv_text(key), "" if value is None else value,
                             figure.unit, figure.title, figure.definition))
    return out.getvalue()


# --- the page ---------------------------------------------------------------------------------

def _supervisor(request: web.Request) -> Staff:
    staff = staff_of(request)
    if not staff.supervises:
        raise web.HTTPForbidden(reason="Only a supervisor can see the hotline's report.")
    return staff


async def _report(request: web.Request, period: Period) -> Report:
    console = request.app[CONSOLE]
    async with console.engine.connect() as conn:
        return await build_report(conn, period, home_country=console.home_country,
                                  now=console.now(), top=TOP)


async def report_page(request: web.Request) -> web.Response:
    staff = _supervisor(request)
    console = request.app[CONSOLE]
    context: dict[str, Any] = {"staff": staff, "csrf": session_of(request).csrf_token}
    try:
        period = parse_period(request.query, console.now().date())
    except BadPeriod as exc:
        return console.render("report.html", code=422, error=str(exc), field=exc.field,
                              first=str(request.query.get("from", ""))[:40],
                              last=str(request.query.get("to", ""))[:40], **context)
    return console.render("report.html", error=None, field=None,
                          **page_context(await _report(request, period)), **context)


def _download(render: Callable[[Report], str], content_type: str, suffix: str
              ) -> Callable[[web.Request], Any]:
    async def handler(request: web.Request) -> web.Response:
        _supervisor(request)
        console = request.app[CONSOLE]
        try:
            period = parse_period(request.query, console.now().date())
        except BadPeriod as exc:
            return web.Response(status=422, text=str(exc) + "\n", content_type="text/plain")
        name = f"report-{period.first}-{period.last}.{suffix}"
        return web.Response(text=render(await _report(request, period)),
                            content_type=content_type, charset="utf-8",
                            headers={"Content-Disposition": f'attachment; filename="{name}"'})

    return handler


def add_routes(app: web.Application) -> None:
    app.router.add_get("/report", report_page)
    app.router.add_get("/report.json", _download(as_json, "application/json", "json"))
    app.router.add_get("/report.csv", _download(as_csv, "text/csv", "csv"))
