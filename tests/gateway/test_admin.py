"""The admin listener: health, readiness and Prometheus metrics, scraped and parsed."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from gateway.app import Gateway
from tests.conftest import Start
from tests.smtp_client import deliver, report


def admin_url(gw: Gateway, path: str) -> str:
    host, port = gw.admin.addresses[0]
    return f"http://{host}:{port}{path}"


async def get(gw: Gateway, path: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as http, http.get(admin_url(gw, path)) as response:
        return response.status, await response.text()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


async def test_healthz_and_readyz(start: Start) -> None:
    """Alive always; not ready while no signing key is configured, and it says why."""
    gw = await start()
    assert (await get(gw, "/healthz"))[0] == 200
    async with asyncio.timeout(10):
        while not gw.admin.context.keys():
            await asyncio.sleep(0.05)
    status, body = await get(gw, "/readyz")
    assert status == 503
    assert '"database": "writable"' in body and '"listeners": "up"' in body
    assert "unusable: gpg.signing_key" in body and '"outbox": "moving"' in body


async def test_metrics_count_intake_and_show_the_pipeline(start: Start) -> None:
    """Reports by channel and outcome, commit latency, cases by state, backlogs."""
    gw = await start()
    port = gw.smtp.addresses[0][1]
    for n in range(3):
        assert (await deliver(port, report(f"m{n}", body="http://example.com/m")))[0] == 250
    assert (await deliver(port, report("m0", body="http://example.com/m")))[0] == 250  # again
    async with asyncio.timeout(20):
        while True:
            status, text = await get(gw, "/metrics")
            found = samples(text)
            if found.get(("hotline_cases", (("state", "new"),))) == 1 or found.get(
                    ("hotline_cases", (("state", "awaiting_assessment"),))) == 1:
                break
            await asyncio.sleep(0.1)
    assert status == 200
    key: Any = ("hotline_intake_reports_total", (("channel", "smtp"), ("outcome", "accepted")))
    assert found[key] == 3
    assert found[("hotline_intake_reports_total",
                  (("channel", "smtp"), ("outcome", "duplicate")))] == 1
    assert found[("hotline_commit_seconds_count", ())] == 4
    assert ("hotline_outbox_pending", ()) in found
    assert ("hotline_pipeline_backlog", (("stage", "normalise"),)) in found
    assert found[("hotline_key_days_until_expiry", (("key", "gpg.signing_key"),))] == -1
    assert ("hotline_locate_failures_total", ()) in found
