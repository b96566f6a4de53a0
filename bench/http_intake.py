"""HTTP intake throughput: the gateway's report form against a bare aiohttp handler.

Measures durable form posts per second (``POST /report``, an urlencoded form) accepted by

  A. a bare aiohttp app (this file with ``--bare``): ``POST /report`` reads the body, parses
     the form as the gateway does (UTF-8, ``parse_qsl``, at most 50 fields), checks the
     honeypot is empty and a URL was given, and answers ``303`` to ``/receipt?ref=...`` with
     a made-up reference; it stores nothing, renders nothing and logs nothing, and
  B. ``hotline-gateway serve`` with a fresh SQLite database on disk in a temporary folder
     (WAL, ``synchronous=FULL``, JSON logs at level info written to a file), whose form
     answers ``303`` to the receipt only after the report is committed by the durable writer.

The load comes from a separate process (this file with ``--load PORT``): aiohttp's client with
32 keep-alive connections, each worker posting a realistic form (two URLs, "where seen", a
~300-character description, an e-mail address with consent, the empty honeypot) one after
another, not following redirects, and checking that every answer is ``303`` with a
``Location: /receipt?ref=...`` header. Every ``form_id`` is unique across the run, so the
gateway's duplicate detection never fires. The gateway is configured as it would be behind a
reverse proxy on the same host (``trusted_proxies = ["127.0.0.1/32"]``) and each worker sends
its own ``X-Forwarded-For`` address (198.18.0.0/15, the benchmarking range), so the
per-client rate limit (``reports_per_minute = 10000``) applies per worker and never refuses a
post; the bare app gets the same header and ignores it. Sides alternate A B A B ... with a
fresh server per side per round, started before the timing begins; each run has a warm-up that
is not counted. For the gateway the benchmark also reports peak RSS (VmHWM), checks that the
database holds one row per 303 the client received, that it exits 0 on SIGTERM, and that its
log holds nothing above info but the start-up alert that no signing key is configured.

Run from the project root with the project's virtualenv, on an otherwise idle machine:

    .venv/bin/python bench/http_intake.py [--rounds N] [--seconds S]

Each line gives the rate in the measured window, the latency of one post (request sent to the
whole answer read), the server's CPU time per accepted post, the CPU seconds the client and
everything else on the machine used meanwhile (a large "other" means a disturbed run), and the
server's peak RSS. Client and server share the machine's cores, as they would in any
single-host test. Exit status 0 when every answer was the expected one and every check passed
(whatever the ratio: the goal, gateway >= 0.6 x bare, is reported, not enforced).
"""

from __future__ import annotations

import asyncio
import json
import signal
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

# What the intake benchmarks share is in harness.py beside this file: the script's folder
# is on sys.path when it runs as a script.
import harness
from harness import HOST, STALL_TIMEOUT, LoadStats, SideResult, Window

MAX_BODY_BYTES = 65536  # the gateway's default http.max_body_bytes
GOAL = 0.6  # gateway posts/s over the bare handler's
RECEIPT = "/receipt?ref="
# Logged above info at start-up by a gateway whose config pins no keys, as this one: not a
# problem of intake under load.
EXPECTED_ALERTS = {"keys.not_configured"}

GATEWAY_CONFIG = """\
# Written by bench/http_intake.py: the shipped defaults, on port 0 and in a temporary folder,
# with the per-client rate limit raised and the load generator's host as a trusted proxy.
[gateway]
data_dir = "var"
log_level = "info"
log_format = "json"

[database]
url = "sqlite+aiosqlite:///var/gateway.db"

[smtp]
listen = ["127.0.0.1:0"]
recipients = ["report@hotline.test"]

[console]
listen = ["127.0.0.1:0"]

[http]
listen = ["127.0.0.1:0"]
trusted_proxies = ["127.0.0.1/32"]
reports_per_minute = 10000
max_body_bytes = 65536

[admin]
listen = ["127.0.0.1:0"]
"""


# --- the bare handler (side A) ------------------------------------------------------------


def _parse_form(body: bytes) -> dict[str, str]:
    """As ``intake.web._parse_form``: UTF-8, blank values kept, at most 50 fields."""
    return dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True,
                          strict_parsing=False, max_num_fields=50))


async def _run_bare() -> None:
    from aiohttp import web

    counter = 0

    async def report(request: web.Request) -> web.Response:
        nonlocal counter
        try:
            fields = _parse_form(await request.read())
        except ValueError:
            raise web.HTTPBadRequest(reason="Malformed form") from None
        if fields.get("website") or not fields.get("urls", "").strip():
            raise web.HTTPBadRequest(reason="Rejected")
        counter += 1
        language = fields.get("lang") or "en"
        return web.Response(status=303, headers={
            "Location": f"{RECEIPT}BARE-2026-{counter:06d}&lang={language}"})

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    app = web.Application(client_max_size=MAX_BODY_BYTES)
    app.router.add_post("/report", report)
    # As the gateway's listener: no access log, signals left to us.
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, HOST, 0)
    await site.start()
    port = runner.addresses[0][1]
    print(json.dumps({"port": port}), flush=True)
    await stop.wait()
    await runner.cleanup()



# --- the load generator -------------------------------------------------------------------


@dataclass(kw_only=True)
class LoadResult(harness.LoadResult):
    """What one load run saw: ``accepted`` counts 303s to the receipt, the latency runs from
    request sent to whole answer read."""

    body_bytes: int


DESCRIPTION = (
    "I was sent this link in a group chat by someone I do not know. The first page shows "
    "what look like very young children and the gallery asks for payment to see more. The "
    "second link was posted underneath as a download of the same pictures. I did not open "
    "the download. Please have someone look at it; I can answer questions by e-mail."
)


class _Forms:
    """Builds each urlencoded form from fixed fields and a unique ``form_id``."""

    def __init__(self, tag: str) -> None:
        self._tag = tag
        self._rest = "&" + urlencode({
            "lang": "en",
            "urls": "https://gallery.example.test/albums/4711/index.html\r\n"
                    "http://files.example.test/d/pack-4711.zip",
            "seen_where": "A link in a group chat",
            "description": DESCRIPTION,
            "email": "reporter@example.test",
            "consent": "yes",
            "website": "",
        })

    def build(self, worker: int, seq: int) -> bytes:
        return f"form_id={self._tag}.{worker}.{seq}{self._rest}".encode("ascii")


async def _worker(
    number: int, session: Any, url: str, forms: _Forms, window: Window, stats: LoadStats,
) -> None:
    """Post forms back to back until the window ends; check every answer."""
    import aiohttp

    loop = asyncio.get_running_loop()
    headers = {
        "Content-Type": "application/x-www-form-urlencoded",
        "Accept-Language": "en",
        "X-Forwarded-For": f"198.18.{number // 256}.{number % 256}",
    }
    seq = 0
    while (began := loop.time()) < window.end:
        seq += 1
        try:
            async with session.post(url, data=forms.build(number, seq), headers=headers,
                                    allow_redirects=False) as response:
                await response.read()
                status, location = response.status, response.headers.get("Location", "")
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            stats.errors[f"request: {type(exc).__name__}: {str(exc)[:120]}"] += 1
            await asyncio.sleep(0.01)
            continue
        if status != 303:
            stats.errors[f"status {status}"] += 1
        elif not location.startswith(RECEIPT) or len(location) <= len(RECEIPT):
            stats.errors[f"303 with Location {location[:80]!r}"] += 1
        else:
            stats.count(began, loop.time(), window)


async def _run_load(
    port: int, *, connections: int, warmup: float, seconds: float, tag: str
) -> LoadResult:
    """Post with ``connections`` workers for ``warmup + seconds``; count the last ``seconds``."""
    import aiohttp

    loop = asyncio.get_running_loop()
    forms = _Forms(tag)
    stats = LoadStats()
    url = f"http://{HOST}:{port}/report"
    connector = aiohttp.TCPConnector(limit=connections, limit_per_host=connections,
                                     keepalive_timeout=STALL_TIMEOUT)
    async with aiohttp.ClientSession(
        connector=connector, cookie_jar=aiohttp.DummyCookieJar(),
        timeout=aiohttp.ClientTimeout(total=STALL_TIMEOUT),
    ) as session:
        start = loop.time() + warmup
        window = Window(start, start + seconds)
        tasks = [asyncio.create_task(_worker(n, session, url, forms, window, stats))
                 for n in range(connections)]
        done, pending = await asyncio.wait(tasks, timeout=warmup + seconds + STALL_TIMEOUT)
        for task in pending:
            task.cancel()
            stats.errors[f"client: worker still busy {STALL_TIMEOUT:.0f} s after the window"] += 1
        for task in done:
            if task.exception() is not None:
                stats.errors[f"client: {task.exception()!r}"] += 1
    return harness.load_result(
        LoadResult, stats, connections=connections, seconds=seconds,
        body_bytes=len(forms.build(connections, 1)),
    )



# --- report -------------------------------------------------------------------------------


def _cpu_ms(r: SideResult) -> float:
    return r.server_cpu_seconds / r.load.accepted * 1000 if r.load.accepted else 0.0


def _figures(r: SideResult) -> str:
    load = r.load
    return (
        f"{load.rate:8.1f} posts/s"
        f"  p50 {load.latency_p50_ms:6.1f} ms  p99 {load.latency_p99_ms:6.1f} ms"
        f"  server CPU {_cpu_ms(r):5.2f} ms/post"
    )


def _summary(results: list[SideResult]) -> None:
    print()
    print(f"summary over {len(results) // 2} rounds (medians)")
    medians: dict[str, float] = {}
    for side in ("bare", "gateway"):
        runs = [r for r in results if r.side == side]
        rates = [r.load.rate for r in runs]
        medians[side] = statistics.median(rates)
        print(
            f"  {side:<7}  {medians[side]:8.1f} posts/s"
            f"  p50 {statistics.median(r.load.latency_p50_ms for r in runs):6.1f} ms"
            f"  p99 {statistics.median(r.load.latency_p99_ms for r in runs):6.1f} ms"
            f"  server CPU {statistics.median(_cpu_ms(r) for r in runs):5.2f} ms/post"
            f"  other CPU {statistics.median(r.other_cpu_seconds for r in runs):5.1f} s"
            f"   (rounds: " + ", ".join(f"{x:.1f}" for x in rates) + ")"
        )
    ratio = medians["gateway"] / medians["bare"] if medians["bare"] else 0.0
    print(f"  gateway/bare ratio {ratio:.3f}  (goal >= {GOAL}: "
          f"{'met' if ratio >= GOAL else 'NOT met'})")


# --- command line -------------------------------------------------------------------------


BENCH = harness.Bench(
    script=Path(__file__).resolve(),
    name="http",
    listener="http",
    gateway_config=GATEWAY_CONFIG,
    load_type=LoadResult,
    reference="bare",
    reference_flag="--bare",
    reference_what="the bare handler",
    reference_tag="b",
    gateway_tag="g",
    unit="forms",
    reply="303",
    ids="form ids",
    warnings="unexpected above info",
    figures=_figures,
    summary=_summary,
    run_reference=_run_bare,
    run_load=_run_load,
    sample_bytes=lambda run_id, connections: len(
        _Forms(run_id + ".r1.g").build(connections, 1)
    ),
    connections=32,
    connections_help="concurrent keep-alive connections (default 32)",
    expected_alerts=EXPECTED_ALERTS,
)


def main(argv: list[str] | None = None) -> int:
    return harness.main(BENCH, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
