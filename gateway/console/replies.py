"""Destinations' replies that need an analyst (``gateway.store.replies``), in the console and
the API: why each was not trusted (or not all recorded), when it came, the referral it named;
an analyst marks one handled once dealt with (audited).

What staff see of a reply is what reading it found, never the message itself, its sender's
address or its document: a reply that is not trusted is not shown as if it said anything.
"""

from __future__ import annotations

import uuid

from aiohttp import web

from gateway.console.base import CONSOLE, json_error, session_of, staff_of
from gateway.console.refusals import http_status, json_refusal
from gateway.store.errors import GatewayError
from gateway.store.replies import STATUSES, list_replies, mark_handled

#: What each reason means, for the analyst (``outbound.replies`` and the reply stage).
REASONS = {
    "too_large": "larger than a reply may be",
    "not_encrypted": "not PGP/MIME encrypted to the hotline",
    "undecryptable": "could not be decrypted with the hotline's key",
    "unsigned": "encrypted, but not signed: anyone could have sent it",
    "bad_signature": "its signature does not hold",
    "unpinned_signer": "signed by a key no destination is pinned to",
    "signer_not_destination": "signed by another destination's key than the referral's",
    "no_referral_named": "names no referral this gateway sent",
    "signed_before_referral": "signed before the referral it names was sent: a copy of an "
                              "older reply?",
    "replayed": "a copy of a reply already read (the same signed content): it may have been "
                "re-sent to claim another referral",
    "bad_document": "acknowledged, but its outcome document is not valid: record the outcome "
                    "by hand",
    "outcome_refused": "trusted, but the referral cannot take the outcome it gives",
    "unreadable_record": "the stored message cannot be read",
}


def _reply_id(request: web.Request) -> uuid.UUID | None:
    try:
        return uuid.UUID(request.match_info["reply_id"])
    except ValueError:
        return None


async def replies_api(request: web.Request) -> web.Response:
    """``GET /api/v1/replies?status=needs_attention`` (any status; none: all), newest first."""
    console = request.app[CONSOLE]
    status = request.query.get("status") or None
    if status is not None and status not in STATUSES:
        return json_error(422, "unknown status", {"status": "one of " + ", ".join(STATUSES)})
    async with console.engine.connect() as conn:
        found = await list_replies(conn, status=status)
    return web.json_response(found)


async def handled_api(request: web.Request) -> web.Response:
    """``POST /api/v1/replies/{id}/handled`` with ``{"note": "..."}`` (optional)."""
    console = request.app[CONSOLE]
    staff = staff_of(request)
    reply_id = _reply_id(request)
    if reply_id is None:
        return json_error(404, "no such reply")
    note = None
    if request.can_read_body:
        try:
            body = await request.json()
        except ValueError:
            return json_error(400, "the body is not valid JSON")
        note = body.get("note") if isinstance(body, dict) else None
    try:
        await mark_handled(console.backend, reply_id, user_id=staff.id, name=staff.name,
                           note=note, now=console.now())
    except GatewayError as exc:
        return json_refusal(exc)
    return web.json_response({"id": str(reply_id), "status": "handled"})


async def _page(request: web.Request, *, status: int = 200, error: str | None = None
                ) -> web.Response:
    console = request.app[CONSOLE]
    shown = request.query.get("status", "needs_attention")
    if shown not in STATUSES:
        shown = "needs_attention"
    async with console.engine.connect() as conn:
        found = await list_replies(conn, status=shown)
    return console.render("replies.html", code=status, staff=staff_of(request),
                          csrf=session_of(request).csrf_token, replies=found, status=shown,
                          statuses=STATUSES, reasons=REASONS, error=error)


async def replies_page(request: web.Request) -> web.Response:
    return await _page(request)


async def handled_submit(request: web.Request) -> web.StreamResponse:
    console = request.app[CONSOLE]
    staff = staff_of(request)
    reply_id = _reply_id(request)
    if reply_id is None:
        raise web.HTTPNotFound(reason="No such reply.")
    form = await request.post()
    note = str(form.get("note", "")).strip() or None
    try:
        await mark_handled(console.backend, reply_id, user_id=staff.id, name=staff.name,
                           note=note, now=console.now())
    except GatewayError as exc:
        return await _page(request, status=http_status(exc), error=str(exc))
    raise web.HTTPSeeOther("/replies")


def add_routes(app: web.Application) -> None:
    app.router.add_get("/replies", replies_page)
    app.router.add_post("/replies/{reply_id}/handled", handled_submit)
    app.router.add_get("/api/v1/replies", replies_api)
    app.router.add_post("/api/v1/replies/{reply_id}/handled", handled_api)
