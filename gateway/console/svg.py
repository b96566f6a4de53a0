"""A small SVG writer for the report's charts, drawn on the server: no script, no inline
style (only presentation attributes, which the console's Content-Security-Policy allows), a
``<title>`` and ``<desc>`` named by ``aria-labelledby``, and every text escaped.

Two kinds of chart are enough for the report: columns (stacked when there are several
series: reports per day by channel, the illegal share per week) and horizontal bars (hosting
countries, removal times). The numbers are in a table beside each chart; the chart is a
picture of that table.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

#: One colour per series (readable on white, told apart without red/green alone).
PALETTE = ("#2b6cb0", "#dd8452", "#55a868", "#8172b3", "#937860", "#da8bc3")
WIDTH, HEIGHT = 720, 260
LEFT, RIGHT, TOP, BOTTOM = 48, 12, 12, 40


@dataclass(frozen=True, slots=True)
class Series:
    name: str
    values: Sequence[float | None]


def _num(x: float) -> str:
    return f"{x:.1f}".rstrip("0").rstrip(".")


def _element(tag: str, text: str | None = None, **attrs: object) -> str:
    shown = "".join(f' {name.rstrip("_").replace("_", "-")}="{escape(str(value))}"'
                    for name, value in attrs.items() if value is not None)
    if text is None:
        return f"<{tag}{shown}/>"
    return f"<{tag}{shown}>{escape(text)}</{tag}>"


def _frame(chart_id: str, title: str, desc: str, height: int, body: list[str]) -> Markup:
    # Inline in HTML: the parser puts <svg> in the SVG namespace without an xmlns.
    head = (f'<svg id="{escape(chart_id)}" class="chart" '
            f'viewBox="0 0 {WIDTH} {height}" width="{WIDTH}" height="{height}" role="img" '
            'font-family="system-ui, sans-serif" '
            f'aria-labelledby="{escape(chart_id)}-title {escape(chart_id)}-desc">')
    parts = [head, _element("title", title, id=f"{chart_id}-title"),
             _element("desc", desc, id=f"{chart_id}-desc"), *body, "</svg>"]
    return Markup("".join(parts))  # noqa: S704 - every text and attribute above is escaped


def nice_top(largest: float) -> float:
    """The axis's top: 1, 2 or 5 times a power of ten, at or above ``largest``."""
    if largest <= 0:
        return 1
    power = 10.0 ** math.floor(math.log10(largest))
    return float(next(step * power for step in (1, 2, 5, 10) if step * power >= largest))


def columns(chart_id: str, title: str, desc: str, labels: Sequence[str],
            series: Sequence[Series], *, top: float | None = None,
            tick: Callable[[float], str] = _num) -> Markup:
    """Columns, one per label, the series stacked in each; a legend names the series.
    Every fifth label is written under its column where there are many."""
    totals = [sum(s.values[i] or 0 for s in series) for i in range(len(labels))]
    top = top if top is not None else nice_top(max(totals, default=0))
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    step = plot_w / max(len(labels), 1)
    body = [_element("line", x1=LEFT, y1=TOP + plot_h, x2=WIDTH - RIGHT, y2=TOP + plot_h,
                     stroke="#888")]
    # Gridlines at round values: quarters of 1 or 2 (times a power of ten), fifths of 5.
    lines = 5 if f"{top:e}".startswith("5") else 4
    for k in range(lines + 1):
        value = top * k / lines
        y = TOP + plot_h - plot_h * k / lines
        body.append(_element("line", x1=LEFT, y1=_num(y), x2=WIDTH - RIGHT, y2=_num(y),
                             stroke="#e4e4e4"))
        body.append(_element("text", tick(value), x=LEFT - 4, y=_num(y + 4),
                             text_anchor="end", font_size=10, fill="#444"))
    every = max(1, math.ceil(len(labels) * 72 / plot_w))  # a label needs ~70 px
    for i, label in enumerate(labels):
        x, base = LEFT + i * step, float(TOP + plot_h)
        for n, s in enumerate(series):
            value = s.values[i] or 0
            if value <= 0:
                continue
            h = plot_h * min(value, top) / top
            base -= h
            body.append(_element("rect", x=_num(x + step * 0.1), y=_num(base),
                                 width=_num(max(step * 0.8, 0.5)), height=_num(h),
                                 fill=PALETTE[n % len(PALETTE)],
                                 data_series=s.name, data_label=label, data_value=value))
        if i % every == 0:
            body.append(_element("text", label, x=_num(x + step / 2), y=TOP + plot_h + 14,
                                 text_anchor="middle", font_size=10, fill="#444"))
    if len(series) > 1:
        for n, s in enumerate(series):
            x = LEFT + n * 110
            body.append(_element("rect", x=x, y=HEIGHT - 14, width=10, height=10,
                                 fill=PALETTE[n % len(PALETTE)]))
            body.append(_element("text", s.name, x=x + 14, y=HEIGHT - 5, font_size=11,
                                 fill="#222"))
    return _frame(chart_id, title, desc, HEIGHT, body)


def bars(chart_id: str, title: str, desc: str, items: Sequence[tuple[str, float]]) -> Markup:
    """Horizontal bars, one per item, each with its label and its value."""
    row, label_w = 22, 120
    height = TOP + row * max(len(items), 1) + 8
    top = nice_top(max((v for _, v in items), default=0))
    plot_w = WIDTH - label_w - RIGHT - 48
    body = []
    for i, (label, value) in enumerate(items):
        y = TOP + i * row
        body.append(_element("text", label, x=label_w - 6, y=y + 15, text_anchor="end",
                             font_size=11, fill="#222"))
        w = plot_w * value / top if value > 0 else 0
        body.append(_element("rect", x=label_w, y=y + 3, width=_num(w), height=row - 6,
                             fill=PALETTE[0], data_label=label, data_value=value))
        body.append(_element("text", _num(value), x=_num(label_w + w + 4), y=y + 15,
                             font_size=11, fill="#222"))
    return _frame(chart_id, title, desc, height, body)
