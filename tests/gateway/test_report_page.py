"""The report's console page: for supervisors only; a bad date refused naming the field; with
a history of known shape (tests/report_history.py), Debian's chromium shows exactly the
figures the specs imply, each with its definition in the legend, each chart as SVG with its
table, the downloads give the same figures, and nothing breaks the Content-Security-Policy."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import date

import pytest
from aiohttp.test_utils import TestServer
from playwright.async_api import Browser
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.compose import make_locator
from gateway.console.base import SESSION_COOKIE, Console
from gateway.console.web import build_app, make_console
from gateway.store.backend import WriteBackend
from gateway.store.figures import Period, shown
from gateway.store.report import build_report
from gateway.store.tables import users
from tests.browser import SHOTS, shot
from tests.conftest import ConfigFactory
from tests.console_client import StaffClient, ready_user
from tests.gateway.test_report import assert_anonymous, expected, from_csv, from_json
from tests.report_history import HOME, NOW, Spec, build, specs

Q2 = (date(2026, 4, 1), date(2026, 6, 30))


@dataclass
class Served:
    console: Console
    base: str
    history: list[Spec]


@pytest.fixture
async def served(engine: AsyncEngine, backend: WriteBackend, make_config: ConfigFactory
                 ) -> AsyncIterator[Served]:
    """The console (its whole application, on 127.0.0.1:0) over a database holding the
    history, its clock at the history's ``NOW``."""
    history = specs()
    await build(backend, history)
    config = make_config()
    locator = await make_locator(config)
    console = await asyncio.to_thread(  # it reads the templates
        make_console, config.console, backend, engine, locator, four_eyes=False,
        home_country=HOME, clock=lambda: NOW)
    server = TestServer(build_app(console), host="127.0.0.1", port=0)
    await server.start_server()
    try:
        yield Served(console, str(server.make_url("")).rstrip("/"), history)
    finally:
        await server.close()
        await locator.resolver.close()


async def session_of(served: Served, name: str, role: str) -> str:
    """A session cookie of a new ``role`` account."""
    await ready_user(served.console.backend, name, role)
    async with served.console.engine.connect() as conn:
        user_id = (await conn.execute(select(users.c.id).where(users.c.name == name))
                   ).scalar_one()
    return await served.console.sessions.start(user_id, now=NOW)


async def client_as(served: Served, name: str, role: str) -> StaffClient:
    client = StaffClient(served.base)
    client.http.cookie_jar.update_cookies({SESSION_COOKIE: await session_of(served, name,
                                                                              role)})
    return client


async def test_only_supervisors_see_the_report_and_bad_dates_name_the_field(
    served: Served
) -> None:
    """An analyst gets 403 on the page and the downloads; a supervisor's bad date or a
    period ending before it starts answers 422 naming the field, on the page and the
    downloads; a good period answers the figures."""
    analyst = await client_as(served, "ana2", "analyst")
    boss = await client_as(served, "sue2", "supervisor")
    try:
        for path in ("/report", "/report.json", "/report.csv",
                     "/report?from=2026-04-01&to=2026-06-30"):
            status, _ = await analyst.get(path)
            assert status == 403, path
        _, queue = await analyst.get("/")
        assert "nav-report" not in queue
        for query, field, said in (
                ("from=2026-13-01&to=2026-06-30", "from", "takes an ISO date"),
                ("from=2026-04-01&to=30/06/2026", "to", "takes an ISO date"),
                ("from=2026-04-01&to=2026-6-30", "to", "takes an ISO date"),
                ("from=2026-04-01&to=2026-03-31", "to", "is before from"),
                ("from=0001-01-01&to=2026-06-30", "to", "at most 3653 days"),
                ("from=2026-04-01&to=9999-12-31", "to", "past the last day")):
            for path in ("/report", "/report.json", "/report.csv"):
                status, body = await boss.get(f"{path}?{query}")
                assert status == 422, (path, query)
                assert f"{field}: " in body and said in body, (path, body[-400:])
            status, page = await boss.get(f"/report?{query}")
            assert f'id="report-{field}"' in page and 'aria-invalid="true"' in page
        status, body = await boss.get("/report.json?from=2026-04-01&to=2026-06-30")
        assert status == 200
        assert from_json(body) == expected(served.history, *Q2)
        status, page = await boss.get("/report")  # no dates: the quarter up to today
        assert status == 200 and 'value="2026-10-01"' in page and 'value="2026-11-02"' in page
    finally:
        await analyst.close()
        await boss.close()


async def test_the_page_shows_the_expected_figures_and_charts_in_chromium(
    served: Served, browser: Browser
) -> None:
    """Chromium shows each figure's value and breakdown as the specs imply, its definition
    in the legend, each chart as SVG with a title, a description and its table holding the
    chart's numbers; the downloads hold the same figures; no console error, no CSP
    violation, and nothing on the page names a URL, a host or a reporter."""
    engine = served.console.engine
    if engine.dialect.name != "sqlite":
        pytest.skip("the page reads what the report reads: one database is enough here")
    cookie = await session_of(served, "sue2", "supervisor")
    context = await browser.new_context()
    await context.add_cookies([{"name": SESSION_COOKIE, "value": cookie, "url": served.base}])
    page = await context.new_page()
    errors: list[str] = []
    page.on("console", lambda message: errors.append(message.text)
            if message.type in ("error", "warning") else None)
    page.on("pageerror", lambda exc: errors.append(str(exc)))

    await page.goto(served.base + "/")
    await page.click("#nav-report")
    await page.fill("#report-from", "2026-04-01")
    await page.fill("#report-to", "2026-06-30")
    await page.click("#report-form button[type=submit]")
    await page.wait_for_url(served.base + "/report?from=2026-04-01&to=2026-06-30")
    await shot(page, "report-1-q2")
    SHOTS.mkdir(parents=True, exist_ok=True)
    await page.locator("section.charts").screenshot(path=str(SHOTS / "report-2-charts.png"))
    want = expected(served.history, *Q2)
    async with engine.connect() as conn:
        report = await build_report(conn, Period(*Q2), home_country=HOME, now=NOW)
    assert {f.name for f in report.figures} == set(want)

    for figure in report.figures:
        value, by = want[figure.name]
        row = page.locator(f"#figure-{figure.name.replace('.', '-')}")
        assert await row.locator("td.value").inner_text() == shown(value, figure.unit), \
            figure.name
        if figure.section != "series":
            keys = await row.locator("table.by tr").evaluate_all(
                "rows => rows.map(r => [r.dataset.key, r.cells[0].textContent])")
            assert [k for k, _ in keys] == [k for k, _ in by], figure.name
            assert await row.locator("table.by td").all_inner_texts() == [
                shown(v, figure.unit) for _, v in by], figure.name
        term = page.locator(f"#def-{figure.name.replace('.', '-')}")
        assert figure.name in await term.inner_text()
        definition = await term.locator("xpath=following-sibling::dd[1]").inner_text()
        assert definition == figure.definition
    # A few figures named, with the numbers the specs imply (not only what the engine says).
    assert await page.locator("#figure-reports-received td.value").inner_text() == str(
        want["reports.received"][0])
    assert want["assessment.illegal"][0] > 0

    received_days, received_by = want["series.received_per_day"]
    countries = want["hosting.by_country"][1]
    removal = want["series.removal_times"][1]
    weeks = want["series.illegal_share_per_week"][1]
    for chart_id, rows in (("chart-received", 91), ("chart-illegal-share", len(weeks)),
                           ("chart-countries", len(countries)),
                           ("chart-removal", len(removal))):
        svg = page.locator(f"svg#{chart_id}")
        assert await svg.count() == 1, chart_id
        assert await svg.get_attribute("role") == "img"
        assert await svg.get_attribute("aria-labelledby") == \
            f"{chart_id}-title {chart_id}-desc"
        assert await svg.locator("title").text_content()
        assert await svg.locator("desc").text_content()
        assert await page.locator(f"#{chart_id}-table tbody tr").count() == rows, chart_id
        assert await page.locator(f"#{chart_id}-figure").locator(
            f"#{chart_id}-table").count() == 1  # the table beside its chart
    # The countries' table and bars: the specs' countries and counts, largest first.
    assert await page.locator("#chart-countries-table tbody th").all_inner_texts() == [
        k for k, _ in countries]
    assert await page.locator("#chart-countries-table tbody td").all_inner_texts() == [
        str(v) for _, v in countries]
    assert await page.locator("svg#chart-countries rect").evaluate_all(
        "bars => bars.map(b => [b.dataset.label, Number(b.dataset.value)])") == [
        [k, v] for k, v in countries]
    assert await page.locator("#chart-removal-table tbody td").all_inner_texts() == [
        str(v) for _, v in removal]
    assert sum(v for _, v in removal) == want["times.removed"][0] > 0
    assert await page.locator("#chart-illegal-share-table tbody td").all_inner_texts() == [
        shown(v, "share") for _, v in weeks]
    totals = await page.locator("#chart-received-table tbody td:last-child").all_inner_texts()
    assert sum(int(t) for t in totals) == received_days == want["reports.received"][0]
    first_day = {k.split("/")[1]: v for k, v in received_by if k.startswith("2026-04-01/")}
    cells = await page.locator("#chart-received-table tbody tr").first.locator(
        "td").all_inner_texts()
    assert cells[:-1] == [str(first_day[c]) for c in sorted(first_day)]

    query = "?from=2026-04-01&to=2026-06-30"
    json_answer = await context.request.get(served.base + "/report.json" + query)
    csv_answer = await context.request.get(served.base + "/report.csv" + query)
    assert from_json(await json_answer.text()) == want
    assert from_csv(await csv_answer.text()) == want
    assert "attachment" in csv_answer.headers["content-disposition"]
    assert_anonymous(await page.content())
    assert not errors, errors
    await context.close()
