"""The console's JSON API (``Authorization: Bearer <token>``): the HTML console's operations,
for hotlines that script. Errors are JSON: 400 malformed, 401 no valid token, 403 not allowed,
404 not found, 409 the case is not in a state for this, 422 invalid (with ``fields``)."""

from __future__ import annotations

import json
import uuid
from typing import Any

from aiohttp import web

from gateway.console import assess as actions
from gateway.console.web import CONSOLE, json_error, staff_of
from gateway.store.audit import AuditEntry, record
from gateway.store.case_view import FLAGS, get_case, list_cases
from routing.stage import relocate


def _case_id(request: web.Request) -> uuid.UUID:
    try:
        return uuid.UUID(request.match_info["case_id"])
    except ValueError:
        raise web.HTTPNotFound(reason="no such case") from None


async def _body(request: web.Request) -> Any:
    if request.content_type != "application/json":
        raise web.HTTPBadRequest(reason="send JSON (Content-Type: application/json)")
    try:
        return json.loads(await request.read())
    except (ValueError, UnicodeDecodeError):
        raise web.HTTPBadRequest(reason="the body is not valid JSON") from None


def _error(exc: actions.ActionError) -> web.Response:
    return json_error(exc.status, str(exc), exc.field_errors)


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
    async with console.engine.connect() as conn:
        found = await list_cases(conn, status=status, limit=limit)
    if flag is not None:
        found = [c for c in found if flag in c["flags"]]
    return web.json_response(found)


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
    async with console.engine.connect() as conn:
        case = await get_case(conn, case_id)
    return web.json_response({"case": case, "assessment": case["assessment"] if case else None,
                              "decision": case["decision"] if case else None,
                              "status": outcome.status})


async def assessment(request: web.Request) -> web.Response:
    console = request.app[CONSOLE]
    case_id = _case_id(request)
    try:
        given = actions.Assessment.from_json(await _body(request))
        outcome = await actions.assess(console.backend, staff_of(request), case_id, given,
                                       four_eyes=console.four_eyes, now=console.now())
    except actions.ActionError as exc:
        return _error(exc)
    return await _answer(request, case_id, outcome)


async def approval(request: web.Request) -> web.Response:
    console = request.app[CONSOLE]
    case_id = _case_id(request)
    try:
        outcome = await actions.approve(console.backend, staff_of(request), case_id,
                                        now=console.now())
    except actions.ActionError as exc:
        return _error(exc)
    return await _answer(request, case_id, outcome)


async def reopening(request: web.Request) -> web.Response:
    console = request.app[CONSOLE]
    case_id = _case_id(request)
    body = await _body(request) if request.can_read_body else {}
    reason = body.get("reason") if isinstance(body, dict) else None
    if reason is not None and not isinstance(reason, str):
        return json_error(422, "invalid reason", {"reason": "text"})
    try:
        outcome = await actions.reopen(console.backend, staff_of(request), case_id,
                                       reason=reason, now=console.now())
    except actions.ActionError as exc:
        return _error(exc)
    return await _answer(request, case_id, outcome)


async def assignment(request: web.Request) -> web.Response:
    console = request.app[CONSOLE]
    case_id = _case_id(request)
    body = await _body(request)
    analyst = body.get("analyst") if isinstance(body, dict) else 0
    if analyst is not None and not isinstance(analyst, str):
        return json_error(422, "invalid assignment", {"analyst": "a user name, or null"})
    try:
        outcome = await actions.reassign(console.backend, staff_of(request), case_id, analyst,
                                         now=console.now())
    except actions.ActionError as exc:
        return _error(exc)
    return await _answer(request, case_id, outcome)


async def relocation(request: web.Request) -> web.Response:
    console = request.app[CONSOLE]
    case_id = _case_id(request)
    staff = staff_of(request)
    try:
        hosting = await relocate(console.backend, console.locator, case_id)
    except LookupError:
        return json_error(404, "no such case")
    except ValueError as exc:
        return json_error(409, str(exc))
    await console.backend.transaction(lambda conn: record(
        conn, [AuditEntry(staff.name, "case.relocated", case_id,
                          {"status": hosting.status, "country": hosting.country})],
        at=console.now()))
    async with console.engine.connect() as conn:
        case = await get_case(conn, case_id)
    return web.json_response({"hosting": case["hosting"] if case else None})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/v1/me", me)
    app.router.add_get("/api/v1/cases", cases_list)
    app.router.add_get("/api/v1/cases/{case_id}", case_detail)
    app.router.add_post("/api/v1/cases/{case_id}/assessment", assessment)
    app.router.add_post("/api/v1/cases/{case_id}/approval", approval)
    app.router.add_post("/api/v1/cases/{case_id}/reopening", reopening)
    app.router.add_post("/api/v1/cases/{case_id}/assignment", assignment)
    app.router.add_post("/api/v1/cases/{case_id}/relocation", relocation)
