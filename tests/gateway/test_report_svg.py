"""The report page's pieces that take outside text: the SVG writer (labels are country
codes, networks' names from the ASN database, channels) and the period's form fields."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from datetime import date

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.console.report_page import BadPeriod, as_csv, parse_period
from gateway.console.svg import Series, bars, columns, nice_top
from gateway.store.text import visible
from tests.budget import examples

TODAY = date(2026, 11, 2)
texts = st.text(st.characters(blacklist_categories=("Cs", "Cn", "Co")), max_size=30)


@settings(max_examples=examples(100))
@given(items=st.lists(st.tuples(texts, st.integers(0, 10**6)), max_size=20), title=texts)
def test_bars_are_well_formed_svg_whatever_the_labels(
        items: list[tuple[str, int]], title: str) -> None:
    """Any label or title gives well-formed SVG (as the console shows it: controls made
    visible) whose texts are the labels, one bar per item, none wider than the plot."""
    svg = ET.fromstring(visible(str(bars("c", title, "d", [(k, float(v)) for k, v in items]))))
    assert svg.findtext("title") == visible(title)
    rects = svg.findall("rect")
    assert [r.get("data-label") for r in rects] == [visible(k) for k, _ in items]
    assert all(0 <= float(r.get("width", "-1")) <= 720 for r in rects)


@settings(max_examples=examples(60))
@given(labels=st.lists(texts, min_size=1, max_size=40, unique=True),
       counts=st.lists(st.integers(0, 1000), min_size=40, max_size=40),
       names=st.lists(texts, min_size=1, max_size=4))
def test_columns_stack_the_series_within_the_plot(
        labels: list[str], counts: list[int], names: list[str]) -> None:
    """Stacked columns stay within the plot, one rectangle per value above zero."""
    series = [Series(name, [float(counts[(i + n) % 40]) for i in range(len(labels))])
              for n, name in enumerate(names)]
    svg = ET.fromstring(visible(str(columns("c", "t", "d", labels, series))))
    rects = [r for r in svg.findall("rect") if r.get("data-value") is not None]
    assert len(rects) == sum(1 for s in series for v in s.values if v)
    assert all(12 - 0.1 <= float(r.get("y", "-1")) <= 220 for r in rects)


@pytest.mark.parametrize(("largest", "top"), [(0, 1), (1, 1), (3, 5), (7, 10), (11, 20),
                                              (120, 200), (0.4, 0.5)])
def test_the_axis_top_is_a_round_number_above_the_largest(largest: float, top: float) -> None:
    """The axis's top is 1, 2 or 5 times a power of ten, at or above the largest value."""
    assert nice_top(largest) == pytest.approx(top)


@settings(max_examples=examples(200))
@given(first=st.one_of(texts, st.dates().map(str)), last=st.one_of(texts, st.dates().map(str)))
def test_any_form_value_gives_a_period_or_names_the_field(first: str, last: str) -> None:
    """Whatever the form sends, the answer is a period of ISO dates or a refusal naming
    ``from`` or ``to``, never another error."""
    try:
        period = parse_period({"from": first, "to": last}, TODAY)
    except BadPeriod as exc:
        assert exc.field in ("from", "to") and str(exc).startswith(f"{exc.field}: ")
        assert len(str(exc)) < 200
        return
    assert period.first <= period.last
    if first.strip():
        assert period.first == date.fromisoformat(first.strip())


@given(st.text(alphabet=st.sampled_from("=+-@\t\r'AS 1,\"x"), max_size=12))
@settings(max_examples=examples(200))
def test_no_breakdown_key_reaches_a_spreadsheet_as_a_formula(key: str) -> None:
    """A network's name is the registry's: in the CSV it never starts like a formula, and it
    reads back as written but for the apostrophe in front."""
    from datetime import UTC, datetime

    from gateway.store.figures import Figure, Period, Report

    figure = Figure("hosting.by_network", "hosting", "Hosting networks", "cases", "d", 2,
                    by=((key, 2),))
    report = Report(Period(date(2026, 1, 1), date(2026, 3, 31)), "BE",
                    datetime(2026, 4, 1, tzinfo=UTC), 10, (figure,))
    import csv
    import io

    rows = list(csv.reader(io.StringIO(as_csv(report), newline="")))
    written = rows[2][1]
    assert not written.startswith(("=", "+", "-", "@", "\t", "\r"))
    assert written in (key, "'" + key)
    assert (written == key) == (not key.startswith(("=", "+", "-", "@", "\t", "\r")))
