"""``hotline-gateway report --from DATE --to DATE [--format text|json|csv]``: the hotline's
figures for a period (``gateway.store.report`` computes them), written as text for people,
JSON for programs (each figure with its ``definition``) or CSV for a spreadsheet.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
from collections.abc import Callable
from datetime import date
from typing import Any

from gateway.store.figures import Figure, Number, Report

FORMATS = ("text", "json", "csv")
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
                        help="text (default), json (each figure with its definition) or csv")
    report.add_argument("--top", type=int, default=TOP, metavar="N",
                        help=f"how many hosting countries the top list names (default {TOP})")


def _shown(value: Number, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "share":
        return f"{value * 100:.2f} %"
    if unit == "hours":
        return f"{value:.2f} h"
    return str(value)


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
                         else f"{head}: {_shown(figure.value, figure.unit)}")
            width = max((len(key) for key, _ in figure.by), default=0)
            lines.extend(f"        {key:<{width}}  {_shown(value, figure.unit)}"
                         for key, value in figure.by)
        lines.append("")
    lines.append("Definitions")
    lines.extend(f"  [{n}] {figure.name}: {figure.definition}"
                 for n, figure in enumerate(notes, 1))
    return "\n".join(lines) + "\n"


def as_json(report: Report) -> str:
    return json.dumps(report.as_json(), indent=1, ensure_ascii=True) + "\n"


CSV_COLUMNS = ("figure", "key", "value", "unit", "title", "definition")


def as_csv(report: Report) -> str:
    """One row per figure (``key`` empty) and one per item of its breakdown; values as
    numbers (shares from 0 to 1, times in hours), empty where there is none."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for figure in report.figures:
        rows = [("", figure.value), *figure.by]
        for key, value in rows:
            writer.writerow((figure.name, key, "" if value is None else value, figure.unit,
                             figure.title, figure.definition))
    return out.getvalue()


RENDER = {"text": as_text, "json": as_json, "csv": as_csv}
