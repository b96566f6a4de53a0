"""Recording outcomes as staff do: the API (``POST /api/v1/referrals/{id}/outcome``), the case
page's form, the queue's filters and ``cases show``, against a running gateway."""

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

from gateway import config as config_module
from gateway.app import Gateway
from gateway.cli import main
from gateway.console.accounts import create_token, utcnow
from gateway.database import open_database
from gateway.store.outcomes import Recorder, record_outcome_in
from tests.console_client import StaffClient, base, file_case, ready_user
from tests.gateway.conftest import Start
from tests.gateway.test_cli import write_config
from tests.referred import refer


async def api(gw: Gateway, method: str, path: str, token: str, body: Any = None,
              raw: bytes | None = None) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"}
    kwargs: dict[str, Any] = {"headers": headers}
    if raw is not None:
        kwargs["data"] = raw
        headers["Content-Type"] = "application/json"
    elif body is not None:
        kwargs["json"] = body
    async with aiohttp.ClientSession() as http, http.request(
            method, base(gw) + path, **kwargs) as response:
        return response.status, await response.json()


async def referred_case(gw: Gateway, tag: str) -> tuple[str, str]:
    """A case filed by e-mail, assessed illegal and referred (delivered): its id and its
    referral's."""
    case_id = await file_case(gw, f"Please look at http://nl.test/{tag}", tag)
    _, (referral_id,) = await gw.console.context.backend.transaction(partial(
        refer, at=utcnow() - timedelta(hours=1), case_id=uuid.UUID(case_id)))
    return case_id, str(referral_id)


async def test_outcomes_through_the_api(start: Start) -> None:
    """Acknowledged, then removed with the time it went down: each answer is the referral
    with its history and its case's state; the case shows the outcomes and milestones."""
    gw = await start()
    backend = gw.console.context.backend
    await ready_user(backend, "ana")
    token = await create_token(backend, "ana", now=utcnow())
    case_id, referral_id = await referred_case(gw, "api-outcome")
    path = f"/api/v1/referrals/{referral_id}/outcome"
    status, answer = await api(gw, "POST", path, token, {"outcome": "acknowledged"})
    assert status == 200, answer
    assert (answer["outcome"], answer["case_status"]) == ("acknowledged", "acknowledged")
    down = (utcnow() - timedelta(minutes=30)).replace(microsecond=0)
    status, answer = await api(gw, "POST", path, token, {
        "outcome": "removed", "occurred_at": down.isoformat().replace("+00:00", "Z"),
        "note": "the host took it down"})
    assert status == 200, answer
    assert answer["case_status"] == "removed"
    assert [(o["outcome"], o["recorded_by"], o["source"]) for o in answer["outcomes"]] == [
        ("acknowledged", "ana", "analyst"), ("removed", "ana", "analyst")]
    status, shown = await api(gw, "GET", f"/api/v1/referrals/{referral_id}", token)
    assert status == 200 and shown["outcomes"] == answer["outcomes"]
    status, case = await api(gw, "GET", f"/api/v1/cases/{case_id}", token)
    assert status == 200 and case["status"] == "removed"
    assert case["milestones"]["removed"] == down.isoformat().replace("+00:00", "Z")
    assert case["milestones"]["located"] is not None
    assert case["referrals"][0]["outcomes"][1]["note"] == "the host took it down"


@pytest.mark.parametrize(("body", "field"), [
    ({"outcome": "gone"}, "outcome"),
    ({}, "outcome"),
    ({"outcome": "not_actionable"}, "reason"),
    ({"outcome": "not_actionable", "reason": "boring"}, "reason"),
    ({"outcome": "removed", "reason": "not_found"}, "reason"),
    ({"outcome": "removed", "occurred_at": "yesterday"}, "occurred_at"),
    ({"outcome": "removed", "occurred_at": "2026-12-01T10:00:00"}, "occurred_at"),
    ({"outcome": "removed", "occurred_at": 1764583200}, "occurred_at"),
    ({"outcome": "removed", "occurred_at": "2999-01-01T00:00:00Z"}, "occurred_at"),
    ({"outcome": "removed", "note": 7}, "note"),
    ({"outcome": "removed", "note": "nul\x00"}, "note"),
    ({"outcome": "removed", "by": "someone else"}, "by"),
    ([], "body"),
])
async def test_a_bad_outcome_is_422_naming_the_field(
    start: Start, body: Any, field: str
) -> None:
    gw = await start()
    backend = gw.console.context.backend
    await ready_user(backend, "ana")
    token = await create_token(backend, "ana", now=utcnow())
    case_id, referral_id = await referred_case(gw, "bad-outcome")
    status, answer = await api(gw, "POST", f"/api/v1/referrals/{referral_id}/outcome", token,
                               raw=json.dumps(body).encode())
    assert status == 422, answer
    assert field in answer["fields"], answer
    status, case = await api(gw, "GET", f"/api/v1/cases/{case_id}", token)
    assert case["status"] == "referred" and case["referrals"][0]["outcomes"] == []


async def test_refusals_404_409_and_400(start: Start) -> None:
    """An unknown referral is 404; an outcome the referral cannot take now is 409 and changes
    nothing; a body that is not JSON is 400."""
    gw = await start()
    backend = gw.console.context.backend
    await ready_user(backend, "ana")
    token = await create_token(backend, "ana", now=utcnow())
    case_id, referral_id = await referred_case(gw, "refused-outcome")
    for unknown in (str(uuid.uuid4()), "not-a-uuid"):
        status, _ = await api(gw, "POST", f"/api/v1/referrals/{unknown}/outcome", token,
                              {"outcome": "removed"})
        assert status == 404
    path = f"/api/v1/referrals/{referral_id}/outcome"
    assert (await api(gw, "POST", path, token, raw=b"{nope"))[0] == 400
    assert (await api(gw, "POST", path, token, {"outcome": "content_unavailable"}))[0] == 200
    status, answer = await api(gw, "POST", path, token, {"outcome": "acknowledged"})
    assert status == 409 and "content_unavailable" in answer["error"]
    status, case = await api(gw, "GET", f"/api/v1/cases/{case_id}", token)
    assert case["status"] == "content_unavailable"
    assert [o["outcome"] for o in case["referrals"][0]["outcomes"]] == ["content_unavailable"]


async def test_every_referral_endpoint_answers_a_bad_id_alike(start: Start) -> None:
    """The referral, its retry and its outcome read the id the same way: a malformed or
    unknown one is a JSON 404 saying so (one parser, ``_referral_id``)."""
    gw = await start()
    backend = gw.console.context.backend
    await ready_user(backend, "sue", "supervisor")
    token = await create_token(backend, "sue", now=utcnow())
    for unknown in ("not-a-uuid", "123", str(uuid.uuid4())):
        for method, path, body in (
                ("GET", f"/api/v1/referrals/{unknown}", None),
                ("POST", f"/api/v1/referrals/{unknown}/retry", None),
                ("POST", f"/api/v1/referrals/{unknown}/outcome", {"outcome": "removed"})):
            status, answer = await api(gw, method, path, token, body)
            assert (status, answer) == (404, {"error": "no such referral"}), (method, path)


async def test_the_queue_filters_awaiting_outcome_and_moved(
    start: Start, client: Callable[[Gateway], StaffClient]
) -> None:
    """``status=awaiting_outcome`` lists referred and acknowledged cases, ``status=moved`` the
    moved ones, in the API and the console's queue."""
    gw = await start()
    backend = gw.console.context.backend
    user = await ready_user(backend, "ana")
    token = await create_token(backend, "ana", now=utcnow())
    waiting, _ = await referred_case(gw, "waiting")
    acked, acked_referral = await referred_case(gw, "acked")
    moved, moved_referral = await referred_case(gw, "moved")
    for referral_id, outcome in ((acked_referral, "acknowledged"), (moved_referral, "moved")):
        status, _ = await api(gw, "POST", f"/api/v1/referrals/{referral_id}/outcome", token,
                              {"outcome": outcome})
        assert status == 200
    status, found = await api(gw, "GET", "/api/v1/cases?status=awaiting_outcome", token)
    assert status == 200
    assert sorted(c["id"] for c in found) == sorted([waiting, acked])
    status, found = await api(gw, "GET", "/api/v1/cases?status=moved", token)
    assert [c["id"] for c in found] == [moved]
    browser = client(gw)
    await browser.login(user)
    status, page = await browser.get("/?status=awaiting_outcome")
    assert status == 200 and "Cases: awaiting outcome" in page
    assert waiting in page and acked in page and moved not in page
    assert 'class="status status-acknowledged"' in page
    status, page = await browser.get("/?status=moved")
    assert moved in page and waiting not in page


async def test_an_analyst_records_an_outcome_on_the_case_page(
    start: Start, client: Callable[[Gateway], StaffClient]
) -> None:
    """The form (with its CSRF token) records the outcome and shows it in the referral's
    timeline; without the token it is refused; a bad value is shown on the page."""
    gw = await start()
    user = await ready_user(gw.console.context.backend, "ana")
    case_id, referral_id = await referred_case(gw, "page-outcome")
    browser = client(gw)
    await browser.login(user)
    page_path = f"/cases/{case_id}"
    action = f"/cases/{case_id}/referrals/{referral_id}/outcome"
    _, page = await browser.get(page_path)
    assert f'action="{action}"' in page and "Record outcome" in page
    # The outcome form's reasons ("code: meaning") include the assessment's.
    assert '<option value="adult_pornography">adult pornography: ' in page
    status, _ = await browser.post_from(page_path, action, {"outcome": "acknowledged"},
                                        csrf=False)
    assert status == 403
    status, page = await browser.post_from(page_path, action, {"outcome": "not_actionable"})
    assert status == 422 and "not_actionable needs a reason" in page
    when = (utcnow() - timedelta(minutes=10)).strftime("%Y-%m-%dT%H:%M")
    status, page = await browser.post_from(page_path, action, {
        "outcome": "not_actionable", "reason": "no_jurisdiction", "occurred_at": when,
        "note": "not ours, they say"})
    assert status == 200, page  # after the redirect, the case page
    assert "not actionable" in page and "(no jurisdiction)" in page
    assert f"{when}:00Z · <strong>not actionable</strong>" in page
    assert "by ana" in page and "not ours, they say" in page
    assert f'action="{action}"' not in page  # closed: no more outcomes
    other_case, _ = await referred_case(gw, "page-other")
    status, _ = await browser.post_from(
        page_path, f"/cases/{other_case}/referrals/{referral_id}/outcome",
        {"outcome": "removed"})
    assert status == 404  # the referral is not that case's


async def test_cases_show_prints_outcomes_and_milestones(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``cases show --json`` carries the outcome history and the milestones; the text form
    prints them; ``cases list --status awaiting_outcome`` lists the waiting."""
    path = write_config(tmp_path)
    assert await asyncio.to_thread(main, ["--config", str(path), "db", "upgrade"]) == 0
    engine = await open_database(config_module.load(path))
    at = datetime.now(UTC) - timedelta(days=1)

    def work(conn: Any) -> tuple[uuid.UUID, uuid.UUID]:
        case_id, (referral_id,) = refer(conn, at=at)
        waiting, _ = refer(conn, at=at)
        record_outcome_in(conn, referral_id, "removed", reason=None,
                          occurred_at=at + timedelta(hours=5), note=None, now=at + 6 * (
                              timedelta(hours=1)), who=Recorder.reply("hotline:NL", "A" * 40))
        return case_id, waiting

    try:
        async with engine.begin() as conn:
            case_id, waiting = await conn.run_sync(work)
    finally:
        await engine.dispose()
    capsys.readouterr()
    assert await asyncio.to_thread(main, ["--config", str(path), "cases", "show",
                                          str(case_id), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["status"] == "removed"
    (outcome,) = shown["referrals"][0]["outcomes"]
    assert (outcome["source"], outcome["destination"], outcome["signer_fingerprint"]) == (
        "reply", "hotline:NL", "A" * 40)
    assert shown["milestones"]["removed"] == outcome["occurred_at"]
    assert await asyncio.to_thread(main, ["--config", str(path), "cases", "show",
                                          str(case_id)]) == 0
    text = capsys.readouterr().out
    assert "outcome: removed at" in text and "by reply:hotline:NL" in text
    assert "milestones: first_reported=" in text and " removed=" in text
    assert await asyncio.to_thread(main, ["--config", str(path), "cases", "list", "--status",
                                          "awaiting_outcome", "--json"]) == 0
    assert [c["id"] for c in json.loads(capsys.readouterr().out)] == [str(waiting)]


async def test_a_supervisor_reopens_a_case_closed_by_an_outcome(
    start: Start, client: Callable[[Gateway], StaffClient]
) -> None:
    """Not actionable, the case is reopened through the API by a supervisor (an analyst is
    refused, 403), with the reason in its history and the referral's outcome kept; content
    unavailable, the case page offers a supervisor the Reopen button, which works."""
    gw = await start()
    backend = gw.console.context.backend
    await ready_user(backend, "ana")
    sue_user = await ready_user(backend, "sue", "supervisor")
    ana = await create_token(backend, "ana", now=utcnow())
    sue = await create_token(backend, "sue", now=utcnow())
    case_id, referral_id = await referred_case(gw, "reopen-api")
    status, answer = await api(gw, "POST", f"/api/v1/referrals/{referral_id}/outcome", ana,
                               {"outcome": "not_actionable", "reason": "not_found"})
    assert status == 200 and answer["case_status"] == "not_actionable", answer
    path = f"/api/v1/cases/{case_id}/reopening"
    assert (await api(gw, "POST", path, ana, {"reason": "try again"}))[0] == 403
    status, body = await api(gw, "POST", path, sue, {"reason": "they found the wrong page"})
    assert status == 200 and body["status"] == "awaiting_assessment", body
    case = body["case"]
    assert case["referrals"][0]["outcome"] == "not_actionable"
    assert not case["referrals"][0]["live"]
    (reopened,) = [h for h in case["history"] if h["action"] == "case.reopened"]
    assert (reopened["actor"], reopened["details"]["from"], reopened["details"]["reason"]) == (
        "sue", "not_actionable", "they found the wrong page")
    assert (await api(gw, "POST", path, sue, {}))[0] == 409  # in the queue already
    other, other_referral = await referred_case(gw, "reopen-page")
    status, _ = await api(gw, "POST", f"/api/v1/referrals/{other_referral}/outcome", ana,
                          {"outcome": "content_unavailable"})
    assert status == 200
    browser = client(gw)
    await browser.login(sue_user)
    page_path = f"/cases/{other}"
    _, page = await browser.get(page_path)
    assert f'action="/cases/{other}/reopen"' in page
    status, page = await browser.post_from(page_path, f"/cases/{other}/reopen",
                                           {"reason": "reported again by the police"})
    assert status == 200, page
    status, shown = await api(gw, "GET", f"/api/v1/cases/{other}", sue)
    assert shown["status"] == "awaiting_assessment"


async def test_cases_reopen_from_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``cases reopen ID --reason`` sends a removed case back to the queue, audited as the
    operator with the reason; a case that cannot be reopened is refused (exit 1), a reason
    that is blank or too long is a usage error (exit 2)."""
    path = write_config(tmp_path)
    assert await asyncio.to_thread(main, ["--config", str(path), "db", "upgrade"]) == 0
    engine = await open_database(config_module.load(path))
    at = datetime.now(UTC) - timedelta(days=1)

    def work(conn: Any) -> uuid.UUID:
        case_id, (referral_id,) = refer(conn, at=at)
        record_outcome_in(conn, referral_id, "removed", reason=None, occurred_at=None,
                          now=at + timedelta(hours=1), who=Recorder.reply("hotline:NL", "A" * 40))
        return case_id

    try:
        async with engine.begin() as conn:
            case_id = await conn.run_sync(work)
    finally:
        await engine.dispose()
    capsys.readouterr()
    command = ["--config", str(path), "cases", "reopen", str(case_id)]
    for bad in ("  ", "x" * 501):
        assert await asyncio.to_thread(main, [*command, "--reason", bad]) == 2
        assert "--reason" in capsys.readouterr().err
    assert await asyncio.to_thread(main, [*command, "--reason", "the content is back",
                                          "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["status"] == "awaiting_assessment"
    (reopened,) = [h for h in shown["history"] if h["action"] == "case.reopened"]
    assert (reopened["actor"], reopened["details"]["from"], reopened["details"]["reason"]) == (
        "system:cli", "removed", "the content is back")
    assert await asyncio.to_thread(main, [*command, "--reason", "again"]) == 1
    assert "cannot reopen" in capsys.readouterr().err
