"""What the public listener's handlers share: the intake's collaborators, the per-client rate
limit, and the durable way in (read the body within its limit, store, await the commit)."""

from __future__ import annotations

import ipaddress
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import jinja2
from aiohttp import web

from gateway.store.writer import NewSubmission, Receipt, Submitter
from intake import i18n
from intake.idempotency import KeyMemory
from intake.listeners import client_address
from intake.ratelimit import RateLimiter


@dataclass
class Intake:
    """What the public handlers use, built by the composition root."""

    writer: Submitter
    limiter: RateLimiter
    trusted_proxies: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network]
    keep_peer_ip: bool
    tls: bool
    max_body_bytes: int
    templates: jinja2.Environment
    static: dict[str, bytes]
    wkd: dict[str, bytes]  # WKD hash -> binary key, for the intake addresses
    public_origin: str | None = None
    keys: KeyMemory = field(default_factory=KeyMemory)

    def client(self, request: web.Request) -> str:
        """The client's address; X-Forwarded-For only when the peer is a trusted proxy."""
        return client_address(request.remote, request.headers.getall("X-Forwarded-For", []),
                              self.trusted_proxies)

    def render(self, name: str, language: str, code: int = 200, **context: Any) -> web.Response:
        # Fields without an error (or a value) read as empty in the templates.
        for key in ("errors", "values"):
            if key in context:
                context[key] = defaultdict(str, context[key])
        # The language links stay on the page they are on (a receipt keeps its reference);
        # anywhere else they lead to the form.
        reference = context.get("reference")

        def switch_to(code: str) -> str:
            if reference:
                return f"/receipt?ref={reference}&lang={code}"
            return f"/?lang={code}"

        body = self.templates.get_template(name).render(
            lang=language, t=i18n.TEXTS[language], languages=i18n.NAMES,
            switch_to=switch_to, **context)
        return web.Response(text=body, status=code, content_type="text/html", charset="utf-8")


INTAKE = web.AppKey("intake", Intake)


async def read_limited(request: web.Request, limit: int) -> bytes:
    """The body, refusing (413) one that grows past ``limit`` without a Content-Length."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(16 * 1024):
        size += len(chunk)
        if size > limit:
            raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=size)
        chunks.append(chunk)
    return b"".join(chunks)


async def store(intake: Intake, request: web.Request, raw: bytes, digest: str, channel: str,
                 message_id: str) -> Receipt:
    return await intake.writer.submit(NewSubmission(
        channel=channel, received_at=datetime.now(UTC), raw=raw, body_sha256=digest,
        peer_ip=intake.client(request) if intake.keep_peer_ip else None,
        message_id=message_id))
