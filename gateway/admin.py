"""The admin listener (``[admin] listen``): ``/healthz``, ``/readyz`` and ``/metrics``.

``/healthz`` answers while the event loop runs. ``/readyz`` says whether the gateway can do
its work: the database takes a real write (a row of ``sealing_state`` named for this host,
rewritten: on a full or read-only disk the commit fails, where ``SELECT 1`` did not), intake
takes reports (the last batch committed, no report waits behind a stalled one, free space is
above the watermark), every pinned key is usable, the listeners are up, and the outbox is not
stuck; each check recovers by itself when its cause goes. ``/metrics`` is Prometheus text.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy import delete, insert
from sqlalchemy.engine import Connection

from gateway.config import AdminConfig
from gateway.metrics import Metrics
from gateway.stats import StatsCache
from gateway.store.backend import WriteBackend
from gateway.store.tables import sealing_state
from gateway.store.writer import SubmissionWriter
from intake.listeners import HttpListener
from outbound.gpg import KeyStatus


@dataclass
class Admin:
    stats: StatsCache
    backend: WriteBackend
    metrics: Metrics
    keys: Callable[[], Mapping[str, KeyStatus | None]]
    listeners: Callable[[], Sequence[tuple[str, Sequence[tuple[str, int]]]]]
    max_outbox_age: float
    counters: Callable[[], Mapping[str, float]]
    #: What this instance runs (``[gateway] parts``): without the stages it uses no key.
    parts: Sequence[str] = ("smtp", "http", "console", "admin", "stages")
    #: The intake's writer, where this instance takes reports.
    writer: SubmissionWriter | None = None


#: The row ``/readyz`` rewrites to prove the database takes writes (one per host).
PROBE = f"readyz:{socket.gethostname()}"[:64]


def _probe(conn: Connection) -> None:
    now = datetime.now(UTC)
    conn.execute(delete(sealing_state).where(sealing_state.c.name == PROBE))
    conn.execute(insert(sealing_state).values(name=PROBE, value=now.isoformat(),
                                              updated_at=now))


def _intake(writer: SubmissionWriter) -> str:
    refusal = writer.refusal()
    if refusal is not None:
        return f"refusing: {refusal}"
    if writer.stats.failing:
        return "failing: the last commit failed"
    if stuck := writer.stuck():
        return f"stuck: {stuck} reports wait behind a commit begun before the deadline"
    return "taking reports"


ADMIN = web.AppKey("admin", Admin)


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


async def readyz(request: web.Request) -> web.Response:
    admin = request.app[ADMIN]
    checks: dict[str, Any] = {}
    try:
        async with asyncio.timeout(5):
            await admin.backend.transaction(_probe)
        checks["database"] = "writable"
    except Exception as exc:
        checks["database"] = f"not writable: {type(exc).__name__}"
    if admin.writer is not None:
        checks["intake"] = _intake(admin.writer)
    keys = admin.keys()
    bad = [name for name, status in keys.items() if status is None or status.problems]
    checks["keys"] = "usable" if keys and not bad else (
        f"unusable: {', '.join(bad)}" if bad else "not checked yet")
    if "stages" not in admin.parts:  # the stages alone encrypt, sign and read replies
        checks["keys"] = "usable"
    down = [name for name, addresses in admin.listeners() if not addresses]
    checks["listeners"] = "up" if not down else f"down: {', '.join(down)}"
    try:
        stats = await admin.stats.fresh(max_age=10, wait=5)
        oldest = stats["outbox_oldest_pending_seconds"]
        checks["outbox"] = "moving" if oldest < admin.max_outbox_age else (
            f"stuck: oldest pending for {int(oldest)} s")
    except Exception as exc:
        checks["outbox"] = f"unknown: {type(exc).__name__}"
    ready = (checks["database"] == "writable" and checks["keys"] == "usable"
             and checks.get("intake", "taking reports") == "taking reports"
             and checks["listeners"] == "up" and checks["outbox"] == "moving")
    return web.json_response({"ready": ready, "checks": checks, "parts": list(admin.parts)},
                             status=200 if ready else 503)


async def metrics(request: web.Request) -> web.Response:
    admin = request.app[ADMIN]
    try:
        stats = dict(await admin.stats.fresh(max_age=5, wait=10))
    except TimeoutError:
        raise web.HTTPServiceUnavailable(reason="counts are slow to come: try again") from None
    stats["counters"] = dict(admin.counters())
    body = admin.metrics.render(stats, admin.keys())
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def build_app(admin: Admin) -> web.Application:
    app = web.Application()
    app[ADMIN] = admin
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    return app


class AdminServer(HttpListener):
    def __init__(self, config: AdminConfig, admin: Admin) -> None:
        super().__init__(build_app(admin), config.listen)
        self.context = admin
