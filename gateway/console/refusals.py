"""The console's one mapping from the domain's refusals (``gateway.store.errors``) to HTTP:
the pages and the JSON API both answer with ``http_status``; the API's body names the fields."""

from __future__ import annotations

from aiohttp import web

from gateway.console.base import json_error
from gateway.store.errors import (
    Conflict,
    Damaged,
    GatewayError,
    Invalid,
    NotAllowed,
    NotFound,
    Unavailable,
)

#: The first class that matches wins; a refusal of none of these is a plain 400.
STATUSES: tuple[tuple[type[GatewayError], int], ...] = (
    (NotFound, 404), (Conflict, 409), (NotAllowed, 403), (Invalid, 422), (Unavailable, 503),
    (Damaged, 500))


def http_status(exc: GatewayError) -> int:
    return next((status for cls, status in STATUSES if isinstance(exc, cls)), 400)


def fields(exc: GatewayError) -> dict[str, str]:
    """What an ``Invalid`` names, field by field (nothing for other refusals)."""
    return dict(exc.fields) if isinstance(exc, Invalid) else {}


def json_refusal(exc: GatewayError) -> web.Response:
    """The API's answer: ``{"error": ..., "fields": {...}}`` with the mapped status."""
    return json_error(http_status(exc), str(exc), fields(exc))
