"""The console's JSON API (``Authorization: Bearer <token>``): the HTML console's operations,
for hotlines that script. Errors are JSON: 400 malformed, 401 no valid token, 403 not allowed,
404 not found, 409 the case is not in a state for this, 422 invalid (with ``fields``); the
domain's refusals are mapped by ``gateway.console.refusals``."""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from gateway.console import assess as actions
from gateway.console import routing_changes
from gateway.console.accounts import Staff
from gateway.console.base import CONSOLE, Console, json_error, staff_of
from gateway.console.refusals import json_refusal
from gateway.store.audit import AuditEntry, record
from gateway.store.case_view import FLAGS, get_case, get_referral, queue_cases
from gateway.store.errors import GatewayError, Invalid
from gateway.store.lifecycle import Actor
from gateway.store.outcomes import OutcomeReport, Recorder, record_outcome
from outbound.outbox import retry_failed


def _case_id(request: web.Request) -> uuid.UUID:
    try:
        return uuid.UUID(request.match_info["case_id"])
    except ValueError:
        raise web.HTTPNotFound(reason="no such case") from None


def _referral_id(request: web.Request) -> uuid.UUID:
    """The referral the path names; 404 (as JSON, by the middleware) when it names none."""
    try:
        return uuid.UUID(request.match_info["referral_id"])
    except ValueError:
        raise web.HTTPNotFound(reason="no such referral") from None


async def _body(request: web.Request) -> Any:
    if request.content_type != "application/json":
        raise web.HTTPBadRequest(reason="send JSON (Content-Type: application/json)")
    try:
        return json.loads(await request.read())
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise web.HTTPBadRequest(reason="the body is not valid JSON") from None


async def me(request: web.Request) -> web.Response:
    staff = staff_of(request)
    return web.json_response({"name": staff.name, "role": staff.role})


async def cases_list(request: web.Request) -> web.Response:
    console = request.app[CONSOLE]
    status = request.query.get("status") or None
    flag = request.query.get("flag") or None
    if flag is not None and flag not in FLAGS:
        return json_error(422, "unknown flag", {"flag": "one of " + ", ".join(FLAGS)})
    try:
        limit = int(request.query.get("limit", "500"))
    except ValueError:
        return json_error(422, "invalid limit", {"limit": "a number from 1 to 1000"})
    if not 1 <= limit <= 1000:
        return json_error(422, "invalid limit", {"limit": "a number from 1 to 1000"})
    try:  # the next page: the cases after the last one of the page before
        after = uuid.UUID(request.query["after"]) if request.query.get("after") else None
    except ValueError:
        return json_error(422, "invalid after", {"after": "a case id"})
    async with console.engine.connect() as conn:
        found, truncated = await queue_cases(conn, status=status, flag=flag, limit=limit,
                                             after=after)
    staff = staff_of(request)
    await console.backend.transaction(lambda conn: record(
        conn, [AuditEntry(staff.name, "cases.listed", None,
                          {"status": status, "flag": flag, "count": len(found)})],
        at=console.now()))
    response = web.json_response(found)
    if truncated:
        response.headers["X-More-Cases"] = "true"
    return response


async def case_detail(request: web.Request) -> web.Response:
    console = request.app[CONSOLE]
    case_id = _case_id(request)
    async with console.engine.connect() as conn:
        case = await get_case(conn, case_id)
    if case is None:
        return json_error(404, "no such case")
    staff = staff_of(request)
    await console.backend.transaction(lambda conn: record(
        conn, [AuditEntry(staff.name, "case.viewed", case_id)], at=console.now()))
    return web.json_response(case)


async def _answer(request: web.Request, case_id: uuid.UUID, outcome: actions.Outcome
                  ) -> web.Response:
    console = request.app[CONSOLE]
    console.on_decided()  # routing looks at the case now rather than at its next poll
    async with console.engine.connect() as conn:
        case = await get_case(conn, case_id)
    return web.json_response({"case": case, "assessment": case["assessment"] if case else None,
                              "decision": case["decision"] if case else None,
                              "status": outcome.status})


Action = Callable[[Console, Staff, uuid.UUID, dict[str, Any]], Awaitable[actions.Outcome]]


def case_action(action: Action, *, body: bool = True) -> Callable[[web.Request],
                                                                   Awaitable[web.Response]]:
    """A handler for ``POST /api/v1/cases/{id}/...``: the JSON body (an object; optional when
    ``body`` is False), the action, then the case as it is now, or the action's error."""

    async def handler(request: web.Request) -> web.Response:
        console = request.app[CONSOLE]
        case_id = _case_id(request)
        given = await _body(request) if body or request.can_read_body else {}
        if not isinstance(given, dict):
            return json_error(422, "invalid body", {"body": "a JSON object"})
        try:
            outcome = await action(console, staff_of(request), case_id, given)
        except GatewayError as exc:
            return json_refusal(exc)
        return await _answer(request, case_id, outcome)

    return handler


async def _assess(console: Console, staff: Staff, case_id: uuid.UUID,
                  body: dict[str, Any]) -> actions.Outcome:
    return await actions.assess(console.backend, staff, case_id,
                                actions.Assessment.from_json(body, require=console.require),
                                four_eyes=console.four_eyes, now=console.now())


async def _approve(console: Console, staff: Staff, case_id: uuid.UUID,
                   body: dict[str, Any]) -> actions.Outcome:
    """``{"assessment": "<id>"}`` pins the verdict the approver reviewed."""
    seen = body.get("assessment")
    try:
        pinned = uuid.UUID(seen) if isinstance(seen, str) else None
    except ValueError:
        pinned = None
    if seen is not None and pinned is None:
        raise Invalid("invalid assessment", {"assessment": "an assessment id"})
    return await actions.approve(console.backend, staff, case_id, now=console.now(),
                                 assessment_id=pinned)


async def _reopen(console: Console, staff: Staff, case_id: uuid.UUID,
                  body: dict[str, Any]) -> actions.Outcome:
    reason = actions.text_field(body.get("reason"), "reason", limit=500)
    return await actions.reopen(console.backend, staff, case_id, reason=reason,
                                now=console.now())


async def _assign(console: Console, staff: Staff, case_id: uuid.UUID,
                  body: dict[str, Any]) -> actions.Outcome:
    if "analyst" not in body:
        raise Invalid("invalid assignment", {"analyst": "a user name, or null"})
    analyst = actions.text_field(body["analyst"], "analyst", limit=64)
    return await actions.reassign(console.backend, staff, case_id, analyst, now=console.now())


async def _set_country(console: Console, staff: Staff, case_id: uuid.UUID,
                       body: dict[str, Any]) -> actions.Outcome:
    """``{"country": "NL"}``: release a case held for unknown hosting; it is routed again
    (with four-eyes, once someone else approves the change)."""
    return await routing_changes.set_hosting_country(console.backend, staff, case_id,
                                             body.get("country"), now=console.now(),
                                             four_eyes=console.four_eyes)


def _decide_change(approve: bool) -> Action:
    """``{"change": "<id>"}`` (optional) pins the routing change the deciding user saw."""

    async def action(console: Console, staff: Staff, case_id: uuid.UUID,
                     body: dict[str, Any]) -> actions.Outcome:
        seen = body.get("change")
        try:
            pinned = uuid.UUID(seen) if isinstance(seen, str) else None
        except ValueError:
            pinned = None
        if seen is not None and pinned is None:
            raise Invalid("invalid change", {"change": "a routing change id"})
        return await routing_changes.decide_routing_change(console.backend, staff, case_id,
                                                   approve=approve, now=console.now(),
                                                   change_id=pinned,
                                                   four_eyes=console.four_eyes)

    return action


async def _iccam(console: Console, staff: Staff, case_id: uuid.UUID,
                 body: dict[str, Any]) -> actions.Outcome:
    """``{"reference": "..."}``: the case was referred through ICCAM by hand."""
    return await actions.record_iccam(console.backend, staff, case_id, body.get("reference"),
                                      now=console.now())


async def relocation(request: web.Request) -> web.Response:
    console = request.app[CONSOLE]
    case_id = _case_id(request)
    staff = staff_of(request)
    try:
        await actions.relocate_case(console.backend, console.locator, staff, case_id)
    except GatewayError as exc:
        return json_refusal(exc)
    async with console.engine.connect() as conn:
        case = await get_case(conn, case_id)
    return web.json_response({"hosting": case["hosting"] if case else None})


async def referral(request: web.Request) -> web.Response:
    console = request.app[CONSOLE]
    referral_id = _referral_id(request)
    async with console.engine.connect() as conn:
        found = await get_referral(conn, referral_id)
    if found is None:
        return json_error(404, "no such referral")
    return web.json_response(found)


async def referral_retry(request: web.Request) -> web.Response:
    """Supervisors: queue a failed referral again once its cause is fixed."""
    console = request.app[CONSOLE]
    staff = staff_of(request)
    referral_id = _referral_id(request)
    try:
        await retry_failed(console.backend, referral_id, actor=Actor(staff.name, staff.role),
                           now=console.now())
    except GatewayError as exc:
        return json_refusal(exc)
    console.on_queued()
    async with console.engine.connect() as conn:
        found = await get_referral(conn, referral_id)
    return web.json_response(found)


async def referral_outcome(request: web.Request) -> web.Response:
    """``{"outcome": ..., "reason": ..., "occurred_at": ..., "note": ...}``: what became of
    the referral (``gateway.store.outcomes``); the referral as it is now, with its case's
    state."""
    console = request.app[CONSOLE]
    staff = staff_of(request)
    referral_id = _referral_id(request)
    try:
        given = OutcomeReport.from_json(await _body(request))
        await record_outcome(console.backend, referral_id, given.outcome, reason=given.reason,
                             occurred_at=given.occurred_at, note=given.note,
                             who=Recorder.analyst(staff.id, staff.name, staff.role),
                             now=console.now())
    except GatewayError as exc:
        return json_refusal(exc)
    async with console.engine.connect() as conn:
        found = await get_referral(conn, referral_id)
    return web.json_response(found)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/v1/me", me)
    app.router.add_get("/api/v1/cases", cases_list)
    app.router.add_get("/api/v1/cases/{case_id}", case_detail)
    app.router.add_post("/api/v1/cases/{case_id}/assessment", case_action(_assess))
    app.router.add_post("/api/v1/cases/{case_id}/approval", case_action(_approve, body=False))
    app.router.add_post("/api/v1/cases/{case_id}/reopening", case_action(_reopen, body=False))
    app.router.add_post("/api/v1/cases/{case_id}/assignment", case_action(_assign))
    app.router.add_post("/api/v1/cases/{case_id}/relocation", relocation)
    app.router.add_post("/api/v1/cases/{case_id}/hosting-country", case_action(_set_country))
    app.router.add_post("/api/v1/cases/{case_id}/routing-change/approval",
                        case_action(_decide_change(True), body=False))
    app.router.add_post("/api/v1/cases/{case_id}/routing-change/rejection",
                        case_action(_decide_change(False), body=False))
    app.router.add_post("/api/v1/cases/{case_id}/iccam", case_action(_iccam))
    app.router.add_get("/api/v1/referrals/{referral_id}", referral)
    app.router.add_post("/api/v1/referrals/{referral_id}/retry", referral_retry)
    app.router.add_post("/api/v1/referrals/{referral_id}/outcome", referral_outcome)
