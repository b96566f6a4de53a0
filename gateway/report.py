"""``hotline-gateway report --from DATE --to DATE [--format text|json|csv|html]``: the hotline's
figures for a period (``gateway.store.report`` computes them), written as text for people,
JSON for programs (each figure with its ``definition``), CSV for a spreadsheet, or HTML
(the console's report page, charts included, as a standalone file).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from datetime import date
from typing import Any

from gateway.console.report_page import as_csv, as_json, page_context
from gateway.console.web import load_assets
from gateway.store.figures import Figure, Report, shown

__all__ = ["FORMATS", "RENDER", "add_parser", "as_csv", "as_html", "as_json", "as_text"]

FORMATS = ("text", "json", "csv", "html")
#: How many hosting countries the top list names, unless told.
TOP = 10


def iso_date(option: str) -> Callable[[str], date]:
    """An argparse type for an ISO date (``2026-03-31``), its error naming ``option``."""

    def parse(value: str) -> date:
        try:
            return date.fromisoformat(value) if len(value) == 10 else _refuse(value, option)
        except ValueError:
            return _refuse(value, option)

    return parse


def _refuse(value: str, option: str) -> date:
    raise argparse.ArgumentTypeError(
        f"{option} takes an ISO date such as 2026-03-31, not {value!r}")


def add_parser(commands: Any) -> None:
    """``report`` under the CLI's command parsers."""
    report = commands.add_parser(
        "report", help="the hotline's figures for a period (reports, assessment, hosting, "
                       "forwarding, removal times)",
        description="The hotline's figures for the UTC days from --from to --to, both "
                    "included (a quarter: --from 2026-01-01 --to 2026-03-31). Each figure "
                    "comes with its definition; none names a URL, a host or a reporter.")
    report.add_argument("--from", dest="first", required=True, type=iso_date("--from"),
                        metavar="DATE", help="the first day of the period (YYYY-MM-DD, UTC)")
    report.add_argument("--to", dest="last", required=True, type=iso_date("--to"),
                        metavar="DATE", help="the last day of the period, included "
                                             "(YYYY-MM-DD, UTC)")
    report.add_argument("--format", choices=FORMATS, default="text",
                        help="text (default), json (each figure with its definition), csv, or html "
                             "(the console's page, with its charts, as one file)")
    report.add_argument("--top", type=int, default=TOP, metavar="N",
                        help=f"how many hosting countries the top list names (default {TOP})")


def as_text(report: Report) -> str:
    """For people: each section, each figure with its value and breakdown; the definitions
    follow at the end, numbered as the figures are."""
    made = f"{report.generated_at:%Y-%m-%d %H:%M}"
    lines = [f"Report for {report.period.first} to {report.period.last} (UTC days, both "
             f"included); home country {report.home_country}; made {made} UTC", ""]
    notes: list[Figure] = []
    for _, title, figures in report.sections():
        lines.append(title)
        for figure in figures:
            notes.append(figure)
            head = f"  [{len(notes)}] {figure.title}"
            lines.append(head if figure.value is None and figure.by
                         else f"{head}: {shown(figure.value, figure.unit)}")
            width = max((len(key) for key, _ in figure.by), default=0)
            lines.extend(f"        {key:<{width}}  {shown(value, figure.unit)}"
                         for key, value in figure.by)
        lines.append("")
    lines.append("Definitions")
    lines.extend(f"  [{n}] {figure.name}: {figure.definition}"
                 for n, figure in enumerate(notes, 1))
    return "\n".join(lines) + "\n"


def as_html(report: Report) -> str:
    """The console's report page as a standalone HTML file (its stylesheet inline, no
    script): the same template, figures, legend, charts and tables."""
    templates, static = load_assets()
    css = static["console.css"].decode()
    return templates.get_template("report_standalone.html").render(
        css=css, **page_context(report)) + "\n"


RENDER = {"text": as_text, "json": as_json, "csv": as_csv, "html": as_html}
