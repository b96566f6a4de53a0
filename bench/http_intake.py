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

import argparse
import asyncio
import json
import os
import shutil
import signal
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

HERE = Path(__file__).resolve()
HOST = "127.0.0.1"
MAX_BODY_BYTES = 65536  # the gateway's default http.max_body_bytes
GOAL = 0.6  # gateway posts/s over the bare handler's
START_TIMEOUT = 60.0  # seconds a server may take to start listening
STOP_TIMEOUT = 30.0  # seconds a server may take to exit after SIGTERM
STALL_TIMEOUT = 60.0  # seconds past the end of the window before the client gives up
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
    server = site._server
    assert server is not None
    port = next(iter(getattr(server, "sockets", ()))).getsockname()[1]
    print(json.dumps({"port": port}), flush=True)
    await stop.wait()
    await runner.cleanup()


# --- the load generator -------------------------------------------------------------------


@dataclass
class LoadResult:
    """What one load run saw; sent from the load process to the benchmark as JSON."""

    connections: int
    body_bytes: int
    window_seconds: float
    accepted: int = 0  # 303s to the receipt, over the whole run (warm-up, tail included)
    in_window: int = 0  # of those, the ones that arrived inside the measured window
    latency_p50_ms: float = 0.0  # request sent to whole answer read, in the window
    latency_p99_ms: float = 0.0
    client_cpu_seconds: float = 0.0  # the load process's CPU time, start-up included
    errors: dict[str, int] = field(default_factory=dict)  # "what" -> count

    @property
    def rate(self) -> float:
        return self.in_window / self.window_seconds

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())


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


@dataclass
class _Window:
    """The measured interval, in loop time, starting a warm-up after the load starts."""

    start: float = 0.0
    end: float = 0.0


class _LoadStats:
    def __init__(self) -> None:
        self.accepted = 0
        self.in_window = 0
        self.latencies: list[float] = []
        self.errors: Counter[str] = Counter()


async def _worker(
    number: int, session: Any, url: str, forms: _Forms, window: _Window, stats: _LoadStats,
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
            done = loop.time()
            stats.accepted += 1
            if window.start <= done < window.end:
                stats.in_window += 1
                stats.latencies.append(done - began)


def _percentile(sorted_values: list[float], fraction: float) -> float:
    if not sorted_values:
        return 0.0
    return sorted_values[min(len(sorted_values) - 1, int(fraction * len(sorted_values)))]


async def _run_load(
    port: int, *, connections: int, warmup: float, seconds: float, tag: str
) -> LoadResult:
    """Post with ``connections`` workers for ``warmup + seconds``; count the last ``seconds``."""
    import aiohttp

    loop = asyncio.get_running_loop()
    forms = _Forms(tag)
    stats = _LoadStats()
    url = f"http://{HOST}:{port}/report"
    connector = aiohttp.TCPConnector(limit=connections, limit_per_host=connections,
                                     keepalive_timeout=STALL_TIMEOUT)
    async with aiohttp.ClientSession(
        connector=connector, cookie_jar=aiohttp.DummyCookieJar(),
        timeout=aiohttp.ClientTimeout(total=STALL_TIMEOUT),
    ) as session:
        start = loop.time() + warmup
        window = _Window(start, start + seconds)
        tasks = [asyncio.create_task(_worker(n, session, url, forms, window, stats))
                 for n in range(connections)]
        done, pending = await asyncio.wait(tasks, timeout=warmup + seconds + STALL_TIMEOUT)
        for task in pending:
            task.cancel()
            stats.errors[f"client: worker still busy {STALL_TIMEOUT:.0f} s after the window"] += 1
        for task in done:
            if task.exception() is not None:
                stats.errors[f"client: {task.exception()!r}"] += 1
    latencies = sorted(stats.latencies)
    return LoadResult(
        connections=connections,
        body_bytes=len(forms.build(connections, 1)),
        window_seconds=seconds,
        accepted=stats.accepted,
        in_window=stats.in_window,
        latency_p50_ms=_percentile(latencies, 0.50) * 1000,
        latency_p99_ms=_percentile(latencies, 0.99) * 1000,
        client_cpu_seconds=time.process_time(),
        errors=dict(stats.errors),
    )


# --- servers as child processes -----------------------------------------------------------


@dataclass
class Server:
    """A server child process and the port it listens on."""

    process: asyncio.subprocess.Process
    port: int

    @property
    def pid(self) -> int:
        return self.process.pid

    async def stop(self) -> int:
        """SIGTERM, then wait; the exit status (SIGKILL after STOP_TIMEOUT, reported as such)."""
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(self.process.wait(), STOP_TIMEOUT)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()
            return -int(signal.SIGKILL)


async def start_bare() -> Server:
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(HERE), "--bare", stdout=asyncio.subprocess.PIPE
    )
    assert process.stdout is not None
    try:
        line = await asyncio.wait_for(process.stdout.readline(), START_TIMEOUT)
        port = int(json.loads(line)["port"])
    except (TimeoutError, ValueError, KeyError) as exc:
        process.kill()
        await process.wait()
        raise RuntimeError(f"the bare handler did not start: {exc!r}") from exc
    return Server(process, port)


def gateway_command() -> list[str]:
    """The installed ``hotline-gateway`` of the running interpreter's environment."""
    beside = Path(sys.executable).parent / "hotline-gateway"
    found = str(beside) if beside.exists() else shutil.which("hotline-gateway")
    if found is None:
        raise RuntimeError("hotline-gateway is not installed: run `make` or `pip install -e .`")
    return [found]


def _ready_port(log_file: Path) -> int | None:
    """The public HTTP port from the gateway's "gateway.ready" log line, once it is there."""
    with log_file.open("rb") as fh:
        for raw in fh:
            try:
                entry = json.loads(raw)
            except ValueError:
                continue
            if isinstance(entry, dict) and entry.get("event") == "gateway.ready":
                return int(str(entry["http"][0]).rpartition(":")[2])
    return None


async def start_gateway(workdir: Path, normalise: str = "serve") -> Server:
    config = workdir / "config.toml"
    config.write_text(GATEWAY_CONFIG + f'\n[intake]\nnormalise = "{normalise}"\n')
    log_file, err_file = workdir / "gateway.log", workdir / "gateway.stderr"
    with log_file.open("wb") as out, err_file.open("wb") as err:
        process = await asyncio.create_subprocess_exec(
            *gateway_command(), "--config", str(config), "serve",
            stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=err, cwd=workdir,
        )
    deadline = time.monotonic() + START_TIMEOUT
    while (port := _ready_port(log_file)) is None:
        if process.returncode is not None or time.monotonic() > deadline:
            if process.returncode is None:
                process.kill()
            status = await process.wait()
            tail = err_file.read_text(errors="replace")[-2000:] or log_file.read_text()[-2000:]
            raise RuntimeError(f"the gateway did not become ready (exit {status}):\n{tail}")
        await asyncio.sleep(0.05)
    return Server(process, port)


def _proc_status(pid: int, key: str) -> int:
    """A ``kB`` value such as VmHWM from /proc/PID/status (0 if not available)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (its threads included) from /proc/PID/stat."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _machine_busy_seconds() -> float:
    """CPU seconds all cores have spent busy since boot (idle and iowait excluded)."""
    ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(ticks[:8]) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


# --- one side of one round ----------------------------------------------------------------


@dataclass
class SideResult:
    side: str
    round: int
    load: LoadResult
    server_cpu_seconds: float
    other_cpu_seconds: float  # the machine's busy time minus server and client: noise
    peak_rss_kib: int
    exit_status: int
    rows: int | None = None  # gateway only: rows in `submissions` after it stopped
    log_lines: int = 0
    log_warnings: int = 0
    kept: str | None = None  # the gateway's folder, with --keep
    problems: list[str] = field(default_factory=list)


async def run_load(port: int, *, args: argparse.Namespace, tag: str) -> LoadResult:
    """The load generator, in a process of its own."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(HERE), "--load", str(port),
        "--connections", str(args.connections), "--warmup", str(args.warmup),
        "--seconds", str(args.seconds), "--tag", tag,
        stdout=asyncio.subprocess.PIPE,
    )
    limit = args.warmup + args.seconds + STALL_TIMEOUT + START_TIMEOUT
    try:
        out, _ = await asyncio.wait_for(process.communicate(), limit)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise RuntimeError(f"the load generator did not finish in {limit:.0f} s") from None
    if process.returncode != 0:
        raise RuntimeError(f"the load generator failed (exit {process.returncode})")
    return LoadResult(**json.loads(out.splitlines()[-1]))


async def measure(
    server: Server, *, args: argparse.Namespace, tag: str
) -> tuple[LoadResult, float, float, int]:
    """Run the load against ``server``.

    Returns the load result, the server's CPU seconds, the CPU seconds used by everything
    else on the machine meanwhile, and the server's peak RSS in KiB.
    """
    cpu_before, busy_before = _cpu_seconds(server.pid), _machine_busy_seconds()
    load = await run_load(server.port, args=args, tag=tag)
    cpu = _cpu_seconds(server.pid) - cpu_before
    other = _machine_busy_seconds() - busy_before - cpu - load.client_cpu_seconds
    return load, cpu, max(0.0, other), _proc_status(server.pid, "VmHWM")


def _check_load(result: SideResult) -> None:
    for what, count in sorted(result.load.errors.items()):
        result.problems.append(f"{count} x {what}")
    if result.exit_status != 0:
        result.problems.append(f"server exit status {result.exit_status}, expected 0")


async def run_bare_side(round_no: int, args: argparse.Namespace, run_id: str) -> SideResult:
    server = await start_bare()
    try:
        load, cpu, other, rss = await measure(server, args=args, tag=f"{run_id}.r{round_no}.b")
    finally:
        status = await server.stop()
    result = SideResult("bare", round_no, load, cpu, other, rss, status)
    _check_load(result)
    return result


def _count_rows(database: Path) -> tuple[int, int]:
    """(rows, distinct form ids) in the gateway's ``submissions`` table."""
    conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    try:
        rows, distinct = conn.execute(
            "SELECT count(*), count(DISTINCT message_id) FROM submissions"
        ).fetchone()
    finally:
        conn.close()
    return int(rows), int(distinct)


async def run_gateway_side(round_no: int, args: argparse.Namespace, run_id: str) -> SideResult:
    workdir = Path(tempfile.mkdtemp(prefix="http-intake-bench-", dir=args.tmpdir))
    try:
        server = await start_gateway(workdir, args.normalise)
        try:
            load, cpu, other, rss = await measure(
                server, args=args, tag=f"{run_id}.r{round_no}.g"
            )
        finally:
            status = await server.stop()
        result = SideResult("gateway", round_no, load, cpu, other, rss, status)
        _check_load(result)
        try:
            result.rows, distinct = _count_rows(workdir / "var" / "gateway.db")
        except sqlite3.Error as exc:
            result.problems.append(f"cannot count the rows: {exc}")
        else:
            if result.rows != load.accepted:
                result.problems.append(
                    f"{result.rows} rows in submissions but the client got {load.accepted} x 303"
                )
            if distinct != result.rows:
                result.problems.append(f"{result.rows} rows, {distinct} distinct form ids")
        with (workdir / "gateway.log").open("rb") as fh:
            for line in fh:
                result.log_lines += 1
                if b'"level": "info"' in line or b'"level": "debug"' in line:
                    continue
                try:
                    event = json.loads(line).get("event")
                except (ValueError, AttributeError):
                    event = None
                if event not in EXPECTED_ALERTS:
                    result.log_warnings += 1
        stderr = (workdir / "gateway.stderr").read_text(errors="replace").strip()
        if result.log_warnings:
            result.problems.append(f"{result.log_warnings} log lines above info in gateway.log")
        if stderr:
            result.problems.append(f"gateway stderr: {stderr[-500:]}")
        if args.keep:
            result.kept = str(workdir)
        return result
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


# --- report -------------------------------------------------------------------------------


def _mib(kib: int) -> str:
    return f"{kib / 1024:.1f} MiB"


def _cpu_ms(r: SideResult) -> float:
    return r.server_cpu_seconds / r.load.accepted * 1000 if r.load.accepted else 0.0


def print_side(r: SideResult) -> None:
    load = r.load
    line = (
        f"round {r.round}  {r.side:<7} {load.rate:8.1f} posts/s"
        f"  p50 {load.latency_p50_ms:6.1f} ms  p99 {load.latency_p99_ms:6.1f} ms"
        f"  server CPU {_cpu_ms(r):5.2f} ms/post"
        f"  client CPU {load.client_cpu_seconds:5.1f} s"
        f"  other CPU {r.other_cpu_seconds:5.1f} s"
        f"  VmHWM {_mib(r.peak_rss_kib)}"
        f"  303s {load.accepted}  errors {load.error_count}  exit {r.exit_status}"
    )
    print(line)
    if r.rows is not None:
        verdict = "ok" if r.rows == load.accepted else "MISMATCH"
        print(
            f"         rows check: {r.rows} rows in submissions, {load.accepted} x 303 received:"
            f" {verdict}; gateway.log {r.log_lines} lines, {r.log_warnings} unexpected above info"
        )
    if r.kept:
        print(f"         files kept in {r.kept}")
    for problem in r.problems:
        print(f"         PROBLEM: {problem}")
    sys.stdout.flush()


def print_summary(results: list[SideResult]) -> None:
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
    gateway = [r for r in results if r.side == "gateway"]
    print(f"  gateway peak RSS (VmHWM) {_mib(max(r.peak_rss_kib for r in gateway))}"
          f"   (rounds: " + ", ".join(_mib(r.peak_rss_kib) for r in gateway) + ")")
    rows_ok = all(r.rows == r.load.accepted for r in gateway)
    print(f"  rows == 303s in every gateway run: {'yes' if rows_ok else 'NO'}")
    print(f"  problems: {sum(len(r.problems) for r in results)}")


async def run_benchmark(args: argparse.Namespace) -> int:
    run_id = uuid.uuid4().hex[:12]
    probe = _Forms(run_id + ".r1.g").build(args.connections, 1)
    tmp = Path(args.tmpdir or tempfile.gettempdir())
    print(
        f"http intake benchmark {run_id}: {args.connections} connections, "
        f"~{len(probe)} B forms, {args.rounds} rounds x {args.seconds:g} s per side "
        f"(+{args.warmup:g} s warm-up), {os.cpu_count()} CPUs, python {sys.version.split()[0]}, "
        f"gateway database under {tmp}, normalise = {args.normalise}"
    )
    sys.stdout.flush()
    results: list[SideResult] = []
    for round_no in range(1, args.rounds + 1):
        for run_side in (run_bare_side, run_gateway_side):
            result = await run_side(round_no, args, run_id)
            print_side(result)
            results.append(result)
    print_summary(results)
    return 1 if any(r.problems for r in results) else 0


# --- command line -------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3, help="A/B rounds (default 3)")
    parser.add_argument("--seconds", type=float, default=10.0,
                        help="measured seconds per side per round (default 10)")
    parser.add_argument("--warmup", type=float, default=1.0,
                        help="seconds of load before the measurement starts (default 1)")
    parser.add_argument("--connections", type=int, default=32,
                        help="concurrent keep-alive connections (default 32)")
    parser.add_argument("--tmpdir", default=None,
                        help="where the gateway's temporary folders go (default: the system's)")
    parser.add_argument(
        "--normalise", choices=["serve", "separate"], default="serve",
        help="serve: the gateway also files reports into cases while it takes them in (the "
             "default install); separate: intake alone, as with a separate normalise process")
    parser.add_argument("--keep", action="store_true",
                        help="keep the gateway's temporary folders (database, log)")
    # Internal: the same file is the bare handler and the load generator.
    parser.add_argument("--bare", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--load", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--tag", default="bench", help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.bare:
        asyncio.run(_run_bare())
        return 0
    if args.load is not None:
        result = asyncio.run(_run_load(
            args.load, connections=args.connections, warmup=args.warmup,
            seconds=args.seconds, tag=args.tag,
        ))
        print(json.dumps(asdict(result)))
        return 0
    if args.rounds < 1 or args.seconds <= 0 or args.connections < 1:
        _parser().error("--rounds, --seconds and --connections must be positive")
    return asyncio.run(run_benchmark(args))


if __name__ == "__main__":
    sys.exit(main())
