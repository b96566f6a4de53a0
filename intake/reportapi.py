"""The report API: ``POST /api/v1/reports`` (JSON in, ``201`` with the reference once it is
committed) and its OpenAPI document, which says every answer this handler gives."""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from typing import Any

import structlog
from aiohttp import web

from gateway.store.space import NoSpace
from gateway.store.writer import CommitLate
from intake import i18n
from intake.idempotency import IDEMPOTENCY_KEY, MAX_KEY, valid_idempotency_key
from intake.openapi import EMAIL_PATTERN, openapi_document
from intake.webintake import INTAKE, read_limited, store
from intake.webreport import MAX_URL, Invalid, validate

log = structlog.get_logger("intake.web")

_API_EMAIL = re.compile(EMAIL_PATTERN)
REPORT_MEMBERS = frozenset({"urls", "description", "seen_where", "reporter", "language"})


def api_error(status: int, message: str, fields: dict[str, str] | None = None) -> web.Response:
    body: dict[str, Any] = {"error": message}
    if fields:
        body["fields"] = fields
    return web.json_response(body, status=status)


async def api_report(request: web.Request) -> web.Response:
    intake = request.app[INTAKE]
    if not intake.limiter.allow(intake.client(request)):
        response = api_error(429, "too many reports from this client: slow down")
        response.headers["Retry-After"] = "60"
        return response
    if request.content_type != "application/json":
        return api_error(415, "send JSON (Content-Type: application/json)")
    key = request.headers.get(IDEMPOTENCY_KEY)
    if key is not None and not valid_idempotency_key(key):
        return api_error(400, f"{IDEMPOTENCY_KEY} is 1 to {MAX_KEY} visible ASCII characters",
                          {IDEMPOTENCY_KEY: "not_a_key"})
    body = await read_limited(request, intake.max_body_bytes)
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return api_error(400, "the body is not valid JSON")
    if not isinstance(document, dict):
        return api_error(400, "the body is a JSON object")
    problems = {name: "unknown_field" for name in sorted(set(document) - REPORT_MEMBERS)}
    reporter = document.get("reporter")
    if reporter is not None and not (isinstance(reporter, dict)
                                     and set(reporter) <= {"email", "consent"}):
        problems["reporter"] = "not_an_object"
    email = reporter.get("email") if isinstance(reporter, dict) else None
    # By the API, giving an address is consent to be contacted unless it says otherwise.
    consent = reporter.get("consent", True) if isinstance(reporter, dict) else False
    if not isinstance(consent, bool):
        problems["consent"] = "not_boolean"
    if isinstance(email, str) and _API_EMAIL.fullmatch(email) is None:
        problems["email"] = "not_email"  # as the document's pattern says, blank included
    given = document.get("language")
    language = given if isinstance(given, str) and given in i18n.LANGUAGES else "en"
    if given is not None and language != given:  # null is "not said", as for the texts
        problems["language"] = "not_a_language"
    urls = document.get("urls")
    if isinstance(urls, list):  # the schema's maxLength counts the spaces validation strips
        problems.update({f"urls[{index}]": "too_long" for index, url in enumerate(urls)
                         if isinstance(url, str) and len(url) > MAX_URL})
    try:
        report = validate(urls, document.get("description"), document.get("seen_where"),
                          email, consent=consent is True, language=language, blank_urls=False)
    except Invalid as exc:
        problems = {**exc.fields, **problems}
    if problems:
        return api_error(422, "invalid report", problems)
    raw = report.to_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    if key is None:
        # Without a key every POST is a report of its own, even one whose body another
        # client also sent: a message id of its own keeps the writer from folding them.
        message_id = f"api-post:{secrets.token_hex(16)}"
    else:
        claim = intake.keys.claim(key, digest)
        if claim == "reused":
            return api_error(422, f"this {IDEMPOTENCY_KEY} was used for another report",
                              {IDEMPOTENCY_KEY: "key_reused"})
        message_id = f"api:{key}"  # a retry of the same body gets the first reference
    try:
        receipt = await store(intake, request, raw, digest, "api", message_id)
    except Exception as exc:
        if key is not None and claim == "new":
            intake.keys.release(key, digest)
        if not isinstance(exc, CommitLate | NoSpace):  # those the writer has said
            log.error("web.store_failed", error_type=type(exc).__name__)
        response = api_error(503, "the report could not be stored; try again later")
        response.headers["Retry-After"] = "60"
        return response
    if key is not None:
        intake.keys.stored(key, digest)
    return web.json_response({"reference": receipt.reference}, status=201)


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi_document())
