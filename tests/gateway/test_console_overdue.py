"""Overdue referrals as staff see them: the API's and the queue's ``overdue`` filter, the case
page's deadlines, ``/metrics``, and ``cases list --overdue``, against a running gateway whose
follow-up stage computes the deadlines."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from sqlalchemy import update

from gateway import config as config_module
from gateway.app import Gateway
from gateway.cli import main
from gateway.console.accounts import create_token, utcnow
from gateway.database import open_database
from gateway.store.tables import referrals
from tests.console_client import StaffClient, ready_user
from tests.gateway.conftest import Start
from tests.gateway.test_cli import write_config
from tests.gateway.test_console_outcomes import api, referred_case
from tests.referred import refer

#: Half an hour to acknowledge, no reminders: the supervisor is told at the deadline (no gpg).
NL = {"email": "referrals@hotline-nl.test", "key": "A" * 40, "acknowledge_within": "30m"}


async def _flagged(gw: Gateway, token: str, case_id: str) -> dict[str, Any]:
    """The case once the follow-up stage has flagged its referral for a supervisor."""
    async with asyncio.timeout(20):
        while True:
            gw.follow_up.wake()
            status, case = await api(gw, "GET", f"/api/v1/cases/{case_id}", token)
            assert status == 200
            if case["referrals"][0]["deadlines"]["supervisor_flagged"]:
                return case
            await asyncio.sleep(0.05)


async def test_overdue_in_the_api_the_queue_the_case_page_and_metrics(
    start: Start, client: Callable[[Gateway], StaffClient]
) -> None:
    """A referral sent an hour ago with half an hour to be acknowledged is overdue (and its
    supervisor flagged); one sent now is not: the filter, the flag, the page and the gauge."""
    gw = await start(routing={"hotlines": {"NL": NL}})
    backend = gw.console.context.backend
    user = await ready_user(backend, "ana")
    token = await create_token(backend, "ana", now=utcnow())
    late, _ = await referred_case(gw, "late")
    fresh, _ = await referred_case(gw, "fresh")
    await backend.transaction(lambda conn: conn.execute(
        update(referrals).where(referrals.c.case_id == uuid.UUID(fresh))
        .values(sent_at=utcnow())))
    case = await _flagged(gw, token, late)
    assert case["overdue"] is True
    assert {"overdue", "supervisor_flagged"} <= set(case["flags"])
    (referral,) = case["referrals"]
    assert referral["overdue"] is True
    assert referral["deadlines"]["overdue"] == ["acknowledge"]
    assert referral["deadlines"]["supervisor_flagged"]["chase"] == "acknowledge"
    status, found = await api(gw, "GET", "/api/v1/cases?status=overdue", token)
    assert status == 200 and [c["id"] for c in found] == [late]
    status, found = await api(gw, "GET", "/api/v1/cases?status=referred&flag=overdue", token)
    assert status == 200 and [c["id"] for c in found] == [late]
    status, other = await api(gw, "GET", f"/api/v1/cases/{fresh}", token)
    assert other["overdue"] is False and "supervisor_flagged" not in other["flags"]
    assert other["referrals"][0]["deadlines"]["acknowledge_by"] is not None
    status, shown = await api(gw, "GET", f"/api/v1/referrals/{referral['id']}", token)
    assert status == 200 and shown["overdue"] is True

    browser = client(gw)
    await browser.login(user)
    status, page = await browser.get("/?status=overdue")
    assert status == 200 and "Cases: overdue" in page
    assert late in page and fresh not in page and "flag-overdue" in page
    status, page = await browser.get(f"/cases/{late}")
    assert status == 200 and "Acknowledge by" in page and "flag-overdue" in page
    assert "supervisor-flag" in page

    (host, port), *_ = gw.admin.addresses
    async with aiohttp.ClientSession() as http, http.get(
            f"http://{host}:{port}/metrics") as response:
        text = await response.text()
    assert "hotline_cases_overdue 1.0" in text.splitlines()
    assert "hotline_supervisor_flags_total 1.0" in text.splitlines()
    assert "hotline_cases_supervisor_flagged 1.0" in text.splitlines()


async def test_cases_list_overdue(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``cases list --overdue`` lists the cases past a stored deadline; ``cases show`` prints
    the deadlines."""
    path = write_config(tmp_path)
    assert await asyncio.to_thread(main, ["--config", str(path), "db", "upgrade"]) == 0
    engine = await open_database(config_module.load(path))
    at = datetime.now(UTC) - timedelta(days=1)

    def work(conn: Any) -> tuple[uuid.UUID, uuid.UUID]:
        late, (late_referral,) = refer(conn, at=at)
        waiting, (waiting_referral,) = refer(conn, at=at)
        for referral_id, due in ((late_referral, at + timedelta(hours=1)),
                                 (waiting_referral, at + timedelta(days=2))):
            conn.execute(update(referrals).where(referrals.c.id == referral_id)
                         .values(acknowledge_by=due))
        return late, waiting

    try:
        async with engine.begin() as conn:
            late, _ = await conn.run_sync(partial(work))
    finally:
        await engine.dispose()
    capsys.readouterr()
    assert await asyncio.to_thread(main, ["--config", str(path), "cases", "list", "--overdue",
                                          "--json"]) == 0
    assert [c["id"] for c in json.loads(capsys.readouterr().out)] == [str(late)]
    assert await asyncio.to_thread(main, ["--config", str(path), "cases", "show",
                                          str(late)]) == 0
    assert "  acknowledge by: " in capsys.readouterr().out
