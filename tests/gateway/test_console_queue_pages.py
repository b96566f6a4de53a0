"""The console's queue comes in pages: the oldest first, a page at a time, each page after the
last case of the one before (by first report, then id), so that a page costs the same however
long the queue is; the API pages the same way."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from sqlalchemy import insert
from sqlalchemy.engine import Connection

from gateway.app import Gateway
from gateway.console.accounts import create_token, utcnow
from gateway.console.pages import QUEUE_PAGE
from gateway.store.ids import uuid7
from gateway.store.sealed import sealer_of
from gateway.store.tables import cases
from tests.console_client import StaffClient, ready_user
from tests.gateway.conftest import Start
from tests.gateway.test_console import api
from tests.sealed_cases import case_row

T0 = datetime(2026, 11, 1, 9, tzinfo=UTC)
COUNT = 2 * QUEUE_PAGE + 7


def waiting(conn: Connection) -> list[str]:
    """``COUNT`` cases waiting for assessment, every third sharing its first report's time
    with the one before: their ids in the queue's order."""
    made = []
    for n in range(COUNT):
        case_id = uuid7()
        at = T0 + timedelta(minutes=n - n // 3)
        conn.execute(insert(cases).values(case_row(
            sealer_of(conn), id=case_id, kind="url", status="awaiting_assessment",
            url=f"http://pages.test/{n}", canonical_url=f"http://pages.test/{n}",
            report_count=1, first_reported=at, last_reported=at, created_at=at,
            status_changed_at=at)))
        made.append((at, case_id))
    return [str(case_id) for _, case_id in sorted(made)]


async def test_the_queue_pages_through_every_case_once(
    start: Start, client: Callable[[Gateway], StaffClient]
) -> None:
    """Each page shows ``QUEUE_PAGE`` cases and links to the next, which starts after its
    last; the last page has no link; together they are every case once, in order. The API's
    ``after`` gives the same pages."""
    gw = await start()
    backend = gw.console.context.backend
    order = await backend.transaction(waiting)
    user = await ready_user(backend, "ana")
    browser = client(gw)
    await browser.login(user)
    seen: list[str] = []
    path: str | None = "/?status=awaiting_assessment"
    pages = 0
    while path is not None:
        status, page = await browser.get(path)
        assert status == 200
        shown = re.findall(r'href="/cases/([0-9a-f-]{36})"', page)
        assert len(shown) == (QUEUE_PAGE if pages < 2 else COUNT - 2 * QUEUE_PAGE)
        seen += shown
        pages += 1
        found = re.search(r'id="next-page" href="([^"]+)"', page)
        path = found.group(1).replace("&amp;", "&") if found else None
    assert pages == 3 and seen == order
    token = await create_token(backend, "ana", now=utcnow())
    status, listed = await api(gw, "GET", "/api/v1/cases?status=awaiting_assessment&limit=5"
                                          f"&after={order[QUEUE_PAGE - 1]}", token)
    assert status == 200
    assert [c["id"] for c in listed] == order[QUEUE_PAGE:QUEUE_PAGE + 5]
