"""The HTML console: login, the queue, the case page and the forms that act on a case.

The case page never links to, embeds or previews the reported URL: it shows it defanged, as
text, with a button that copies it for the analyst's isolated assessment environment.
"""

from __future__ import annotations

import hmac
import math
import re
import uuid
from typing import Any
from urllib.parse import urlencode

import structlog
from aiohttp import web
from sqlalchemy import select

from gateway.console import assess as actions
from gateway.console import routing_changes, securitykeys
from gateway.console.accounts import change_password, check_password
from gateway.console.base import (
    CONSOLE,
    LOGIN_COOKIE,
    SESSION_COOKIE,
    session_of,
    staff_of,
)
from gateway.console.devices import COOKIE as DEVICE_COOKIE
from gateway.console.keystore import REQUIRED
from gateway.console.logins import login
from gateway.console.refusals import fields, http_status
from gateway.console.signin import logged_in, login_form
from gateway.store import classification
from gateway.store.audit import AuditEntry, record
from gateway.store.case_view import FLAGS, get_case, queue_cases
from gateway.store.errors import GatewayError, Invalid, NotFound
from gateway.store.outcome_codes import NOT_ACTIONABLE_REASONS
from gateway.store.outcomes import OutcomeReport, Recorder, record_outcome
from gateway.store.tables import referrals
from gateway.store.text import defang

log = structlog.get_logger("gateway.console")

#: Cases on a page of the queue (then "next": the cost of a page is the cost of its cases).
QUEUE_PAGE = 50
QUEUE_STATUSES = ("awaiting_assessment", "locate_failed", "assessed", "new", "closed_legal",
                  "held", "referred", "awaiting_outcome", "acknowledged", "moved", "removed",
                  "content_unavailable", "not_actionable", "overdue")


async def login_page(request: web.Request) -> web.Response:
    return login_form(request.app[CONSOLE])


async def login_submit(request: web.Request) -> web.StreamResponse:
    console = request.app[CONSOLE]
    form = await request.post()
    sent, expected = form.get("login_token"), request.cookies.get(LOGIN_COOKIE)
    if not isinstance(sent, str) or not expected or not hmac.compare_digest(sent, expected):
        return login_form(console, error="The form is out of date: try again.", status=403)
    name, password, code = (str(form.get(k, "")) for k in ("name", "password", "code"))
    # "Log in with a security key": the password here, the key on the next page.
    with_key = form.get("factor") == "key"
    result = await login(console.backend, console.guard, name.strip().lower(), password,
                         None if with_key else code.strip(), source=console.source(request),
                         now=console.now(), policy=console.policy,
                         peer=console.client(request), device=request.cookies.get(DEVICE_COOKIE),
                         refuse_code=console.security_keys.refuse_code())
    if result.retry_after > 0:
        seconds = math.ceil(result.retry_after)
        log.debug("console.login_throttled", throttle=result.throttled, seconds=seconds)
        # Only the address's wait is told; an account's wait answers as "Login failed".
        response = login_form(console, status=429, error=(
            f"Too many failed logins from your address: try again in {seconds} s."))
        response.headers["Retry-After"] = str(seconds)
        return response
    if with_key:
        return await securitykeys.key_step(request, result.staff, name.strip().lower())
    staff = result.staff
    if staff is None:
        # A refusal (a key is required) answers as any failure: it follows a right password
        # whatever the code. With keys required, every failure says how those roles log in.
        log.info("console.login_failed")
        error = "Login failed."
        if console.security_keys.required:
            error += " " + REQUIRED
        return login_form(console, error=error, status=401)
    return await logged_in(request, staff, factor="totp")


async def logout(request: web.Request) -> web.StreamResponse:
    console = request.app[CONSOLE]
    staff = staff_of(request)
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie:
        await console.sessions.end(cookie)
    await console.backend.transaction(lambda conn: record(
        conn, [AuditEntry(staff.name, "user.logout")], at=console.now()))
    response = web.Response(status=303, headers={"Location": "/login"})
    response.del_cookie(SESSION_COOKIE, path="/")
    return response


async def password_page(request: web.Request) -> web.Response:
    console = request.app[CONSOLE]
    return console.render("password.html", staff=staff_of(request),
                          csrf=session_of(request).csrf_token, error=None)


async def password_submit(request: web.Request) -> web.StreamResponse:
    console = request.app[CONSOLE]
    staff = staff_of(request)
    form = await request.post()
    current = str(form.get("current", ""))
    new, again = str(form.get("password", "")), str(form.get("again", ""))
    error = None
    if not await check_password(console.backend, staff, current, gate=console.hashing,
                                passwords=console.guard.passwords):
        error = "The current password is not right."
    elif new != again:
        error = "The two passwords differ."
    else:
        try:
            await change_password(console.backend, staff, new, now=console.now(),
                                  gate=console.hashing, passwords=console.guard.passwords)
        except Invalid as exc:
            error = str(exc)
    if error is not None:
        return console.render("password.html", code=422, staff=staff,
                              csrf=session_of(request).csrf_token, error=error)
    # Every session of this user ended with the change: this browser gets a fresh one.
    session_id = await console.sessions.start(staff.id, now=console.now(),
                                              factor=session_of(request).factor)
    response = web.Response(status=303, headers={"Location": "/"})
    console.set_session_cookie(response, session_id,
                               max_age=int(console.sessions.absolute.total_seconds()))
    return response


async def queue(request: web.Request) -> web.Response:
    """A page of the queue, oldest first: ``QUEUE_PAGE`` cases, after the case ``after`` (the
    last of the page before), so that a page costs the same however long the queue."""
    console = request.app[CONSOLE]
    status = request.query.get("status", "awaiting_assessment")
    if status not in QUEUE_STATUSES:
        status = "awaiting_assessment"
    flag = request.query.get("flag", "")
    try:
        after = uuid.UUID(request.query["after"]) if request.query.get("after") else None
    except ValueError:
        after = None
    async with console.engine.connect() as conn:
        found, more = await queue_cases(conn, status=status, after=after,
                                        flag=flag if flag in FLAGS else None, limit=QUEUE_PAGE)
    shown = [_display(c) for c in found]
    following = None
    if more and shown:
        following = "/?" + urlencode({"status": status, "flag": flag, "after": shown[-1]["id"]})
    return console.render(
        "queue.html", staff=staff_of(request), csrf=session_of(request).csrf_token,
        cases=shown, status=status, flag=flag, statuses=QUEUE_STATUSES, flags=FLAGS,
        truncated=more, paged=after is not None, following=following,
        first="/?" + urlencode({"status": status, "flag": flag}),
    )


def _display(case: dict[str, Any]) -> dict[str, Any]:
    """The case with its URLs defanged for display; the raw URL only for the copy button."""
    return {**case,
            "url_defanged": defang(case["url"]) if case["url"] else None,
            "canonical_defanged": defang(case["canonical_url"]) if case["canonical_url"]
            else None}


def _case_id(request: web.Request) -> uuid.UUID:
    try:
        return uuid.UUID(request.match_info["case_id"])
    except ValueError:
        raise web.HTTPNotFound(reason="No such case.") from None


async def _case_page(request: web.Request, *, status: int = 200, error: str | None = None,
                     fields: dict[str, str] | None = None) -> web.Response:
    console = request.app[CONSOLE]
    case_id = _case_id(request)
    staff = staff_of(request)
    async with console.engine.connect() as conn:
        case = await get_case(conn, case_id)
    if case is None:
        raise web.HTTPNotFound(reason="No such case.")
    if status == 200:
        await console.backend.transaction(lambda conn: record(
            conn, [AuditEntry(staff.name, "case.viewed", case_id)], at=console.now()))
    assessment = case["assessment"] or {}
    return console.render(
        "case.html", code=status, staff=staff, csrf=session_of(request).csrf_token,
        case=_display(case), error=error, fields=fields or {},
        classifications=actions.CLASSIFICATIONS, four_eyes=console.four_eyes,
        codes=classification.CODES, content_flags=classification.CONTENT_FLAGS,
        require=console.require, details=classification.labels(assessment),
        can_assess=case["status"] in actions.ASSESSABLE,
        can_approve=(assessment.get("status") == "pending_approval"
                     and assessment.get("by") != staff.name),
        can_reopen=staff.supervises and case["status"] in actions.REOPENABLE,
        can_relocate=actions.may_relocate(staff, case["status"]),
        can_set_country=(case["status"] in routing_changes.COUNTRY_SETTABLE
                         and assessment.get("status") == "final"),
        reasons=NOT_ACTIONABLE_REASONS,
    )


async def case_page(request: web.Request) -> web.Response:
    return await _case_page(request)


async def _act(request: web.Request, action: Any) -> web.StreamResponse:
    """Run an action; on success back to the case page (303), else the page with the error."""
    try:
        await action
    except NotFound:
        raise web.HTTPNotFound(reason="No such case.") from None
    except GatewayError as exc:
        return await _case_page(request, status=http_status(exc), error=str(exc),
                                fields=fields(exc))
    request.app[CONSOLE].on_decided()
    raise web.HTTPSeeOther(f"/cases/{_case_id(request)}")


async def assess_submit(request: web.Request) -> web.StreamResponse:
    console = request.app[CONSOLE]
    form = await request.post()
    body: dict[str, object] = {
        key: str(form.get(key, "")).strip()
        for key in ("verdict", "classification", "hosting_country", "note", *classification.CODES)}
    body["hosting_country"] = str(body["hosting_country"]).upper()
    body["content_flags"] = [str(flag) for flag in form.getall("content_flags", [])]
    try:
        given = actions.Assessment.from_json(body, require=console.require)
    except Invalid as exc:
        return await _case_page(request, status=http_status(exc), error=str(exc),
                                fields=fields(exc))
    return await _act(request, actions.assess(
        console.backend, staff_of(request), _case_id(request), given,
        four_eyes=console.four_eyes, now=console.now()))


async def approve_submit(request: web.Request) -> web.StreamResponse:
    console = request.app[CONSOLE]
    form = await request.post()
    try:
        seen = uuid.UUID(str(form.get("assessment", "")))
    except ValueError:
        return await _case_page(request, status=422, error="Reload the case and try again.")
    return await _act(request, actions.approve(
        console.backend, staff_of(request), _case_id(request), now=console.now(),
        assessment_id=seen))


async def reopen_submit(request: web.Request) -> web.StreamResponse:
    console = request.app[CONSOLE]
    try:
        reason = actions.text_field(str((await request.post()).get("reason", "")).strip(),
                                    "reason", limit=500)
    except Invalid as exc:
        return await _case_page(request, status=http_status(exc), error=str(exc),
                                fields=fields(exc))
    return await _act(request, actions.reopen(
        console.backend, staff_of(request), _case_id(request), reason=reason,
        now=console.now()))


async def reassign_submit(request: web.Request) -> web.StreamResponse:
    console = request.app[CONSOLE]
    try:
        analyst = actions.text_field(str((await request.post()).get("analyst", "")).strip()
                                     .lower(), "analyst", limit=64)
    except Invalid as exc:
        return await _case_page(request, status=http_status(exc), error=str(exc),
                                fields=fields(exc))
    return await _act(request, actions.reassign(
        console.backend, staff_of(request), _case_id(request), analyst, now=console.now()))


async def relocate_submit(request: web.Request) -> web.StreamResponse:
    console = request.app[CONSOLE]
    return await _act(request, actions.relocate_case(
        console.backend, console.locator, staff_of(request), _case_id(request)))


async def country_submit(request: web.Request) -> web.StreamResponse:
    console = request.app[CONSOLE]
    country = str((await request.post()).get("country", "")).strip().upper()
    return await _act(request, routing_changes.set_hosting_country(
        console.backend, staff_of(request), _case_id(request), country, now=console.now(),
        four_eyes=console.four_eyes))


#: What a ``datetime-local`` field sends: a time without its zone (the form says UTC).
_LOCAL_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?")


async def outcome_submit(request: web.Request) -> web.StreamResponse:
    """What became of one of the case's referrals (``gateway.store.outcomes``)."""
    console = request.app[CONSOLE]
    case_id = _case_id(request)
    try:
        referral_id = uuid.UUID(request.match_info["referral_id"])
    except ValueError:
        raise web.HTTPNotFound(reason="No such referral.") from None
    async with console.engine.connect() as conn:
        owner = (await conn.execute(select(referrals.c.case_id)
                                    .where(referrals.c.id == referral_id))).scalar()
    if owner != case_id:
        raise web.HTTPNotFound(reason="No such referral.")
    form = await request.post()
    body = {key: str(form.get(key, "")).strip()
            for key in ("outcome", "reason", "occurred_at", "note")}
    if _LOCAL_TIME.fullmatch(body["occurred_at"]):
        body["occurred_at"] += "+00:00"
    staff = staff_of(request)
    try:
        given = OutcomeReport.from_json(body)
    except Invalid as exc:
        return await _case_page(request, status=http_status(exc), error=str(exc),
                                fields=fields(exc))
    return await _act(request, record_outcome(
        console.backend, referral_id, given.outcome, reason=given.reason,
        occurred_at=given.occurred_at, note=given.note,
        who=Recorder.analyst(staff.id, staff.name, staff.role), now=console.now()))


async def _decide_routing_change(request: web.Request, *, approve: bool
                                 ) -> web.StreamResponse:
    """Approve or reject the pending routing change the form showed."""
    console = request.app[CONSOLE]
    try:
        seen = uuid.UUID(str((await request.post()).get("change", "")))
    except ValueError:
        return await _case_page(request, status=422, error="Reload the case and try again.")
    return await _act(request, routing_changes.decide_routing_change(
        console.backend, staff_of(request), _case_id(request), approve=approve,
        now=console.now(), change_id=seen, four_eyes=console.four_eyes))


async def routing_change_approve(request: web.Request) -> web.StreamResponse:
    return await _decide_routing_change(request, approve=True)


async def routing_change_reject(request: web.Request) -> web.StreamResponse:
    return await _decide_routing_change(request, approve=False)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/login", login_page)
    app.router.add_post("/login", login_submit)
    app.router.add_post("/logout", logout)
    app.router.add_get("/password", password_page)
    app.router.add_post("/password", password_submit)
    app.router.add_get("/", queue)
    app.router.add_get("/cases/{case_id}", case_page)
    app.router.add_post("/cases/{case_id}/assess", assess_submit)
    app.router.add_post("/cases/{case_id}/approve", approve_submit)
    app.router.add_post("/cases/{case_id}/reopen", reopen_submit)
    app.router.add_post("/cases/{case_id}/reassign", reassign_submit)
    app.router.add_post("/cases/{case_id}/relocate", relocate_submit)
    app.router.add_post("/cases/{case_id}/hosting-country", country_submit)
    app.router.add_post("/cases/{case_id}/routing-change/approve", routing_change_approve)
    app.router.add_post("/cases/{case_id}/routing-change/reject", routing_change_reject)
    app.router.add_post("/cases/{case_id}/referrals/{referral_id}/outcome", outcome_submit)
