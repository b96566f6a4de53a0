"""Scale-out: one, two and three ``serve`` instances on one PostgreSQL, and one on SQLite.

Two phases per side, in one run (sides alternate per round, so they share the machine's
noise):

1. **Intake** (the edge role, ``parts = ["smtp", "http", "admin"]``): the same load by SMTP
   (``bench/smtp_intake.py``'s client, ``--smtp`` connections) and by the web form
   (``bench/http_intake.py``'s client, ``--http`` connections), spread round-robin over the
   instances, from a process of its own, for a warm-up and a measured window. Figures:
   acknowledged reports per second, the acknowledgement's latency (p50, p90, p99: MAIL FROM
   sent to the 250 after DATA; form posted to the 303), and the CPU time of all the side's
   gateways per acknowledged report (user + system, from /proc). Every acknowledgement is
   checked against the database afterwards (one row each, nothing lost).
2. **Filing** (the inside role, ``parts = ["stages", "console", "admin"]``; PostgreSQL sides
   only): the intake instances stop and as many instances with the stages start; the backlog
   is held for them (claimed by nobody that runs) until all of them are up, then handed to
   them at once, and they read, parse and file it into cases. Every report names the same
   few URLs (a link that everybody reports), so each filing updates the same case rows: the
   worst case for the case upsert and the audit trail's chain. Figures: reports filed per
   second until the backlog is empty, CPU per report, and what the transactions waited for,
   sampled from ``pg_locks`` every 20 ms (the share of samples in which some backend waited
   for the audit chain's advisory lock, for a row/transaction lock, for anything else).

Locating never starts (the resolver is a closed port and the cases wait for it): the filing
figures are the normaliser's, where the case upsert and the audit appends are.

    HOTLINE_TEST_PG_URL=postgresql+asyncpg://postgres@127.0.0.1:5432/test \\
        .venv/bin/python bench/scaleout.py [--rounds 2] [--seconds 10]

The PostgreSQL server is shared: each side makes a database of its own and drops it.
Exit status 0 when every acknowledged report was stored once and no side failed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import harness
import http_intake
import smtp_intake
from harness import HOST, STALL_TIMEOUT, Window

from gateway.store.audit import LOCK_KEY as AUDIT_LOCK

SIDES = ["sqlite x1", "pg x1", "pg x2", "pg x3"]

CONFIG = """\
[gateway]
data_dir = "{folder}/var"
log_level = "info"
log_format = "json"
min_free_bytes = 0
parts = {parts}

[database]
url = "{url}"
pool_size = 5

[data]
keyring = "{keyring}"

[smtp]
listen = ["127.0.0.1:0"]
recipients = ["report@hotline.test"]
max_connections_per_source = 1000
messages_per_minute_per_source = 100000

[http]
listen = ["127.0.0.1:0"]
trusted_proxies = ["127.0.0.1/32"]
reports_per_minute = 10000

[console]
listen = ["127.0.0.1:0"]

[admin]
listen = ["127.0.0.1:0"]

[locate]
nameservers = ["127.0.0.1:9"]
timeout = "500ms"
retry_after = "1h"
"""
EDGE = '["smtp", "http", "admin"]'
INSIDE = '["stages", "console", "admin"]'


# --- the load process ---------------------------------------------------------------------


def _stats(stats: harness.LoadStats) -> dict[str, Any]:
    latencies = sorted(stats.latencies)
    return {"accepted": stats.accepted, "in_window": stats.in_window,
            **{f"p{int(q * 100)}_ms": harness.percentile(latencies, q) * 1000
               for q in (0.5, 0.9, 0.99)},
            "errors": dict(stats.errors)}


async def _run_load(spec: dict[str, Any]) -> dict[str, Any]:
    import aiohttp

    loop = asyncio.get_running_loop()
    smtp_stats, http_stats = smtp_intake._LoadStats(), harness.LoadStats()
    messages, forms = smtp_intake._Messages(spec["tag"]), http_intake._Forms(spec["tag"])
    smtp_ports, http_ports = spec["smtp"], spec["http"]
    opened = await asyncio.gather(*(smtp_intake._open(smtp_ports[n % len(smtp_ports)])
                                    for n in range(spec["smtp_connections"])),
                                  return_exceptions=True)
    start = loop.time() + spec["warmup"]
    window = Window(start, start + spec["seconds"])
    tasks = []
    for number, conn in enumerate(opened):
        if isinstance(conn, BaseException):
            smtp_stats.error("connect", repr(conn))
            continue
        tasks.append(asyncio.create_task(smtp_intake._connection(
            number, conn[0], conn[1], messages, window, smtp_stats)))
    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=STALL_TIMEOUT)
    async with aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar(),
                                     timeout=aiohttp.ClientTimeout(total=STALL_TIMEOUT)) as http:
        for number in range(spec["http_connections"]):
            url = f"http://{HOST}:{http_ports[number % len(http_ports)]}/report"
            tasks.append(asyncio.create_task(http_intake._worker(
                number, http, url, forms, window, http_stats)))
        await asyncio.wait(tasks, timeout=spec["warmup"] + spec["seconds"] + STALL_TIMEOUT)
    return {"smtp": _stats(smtp_stats), "http": _stats(http_stats),
            "client_cpu_seconds": time.process_time()}


# --- sides --------------------------------------------------------------------------------


@dataclass
class Side:
    name: str
    round: int
    seconds: float
    acked: int = 0
    stored: int = 0
    smtp: dict[str, Any] = field(default_factory=dict)
    http: dict[str, Any] = field(default_factory=dict)
    intake_cpu: float = 0.0
    other_cpu: float = 0.0
    filed: int = 0
    filing_seconds: float = 0.0
    filing_cpu: float = 0.0
    waits: dict[str, float] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return (self.smtp.get("in_window", 0) + self.http.get("in_window", 0)) / self.seconds


def _asyncpg_dsn(url: str, database: str | None = None) -> str:
    from sqlalchemy import make_url

    parsed = make_url(url).set(drivername="postgresql")
    return (parsed.set(database=database) if database else parsed).render_as_string(False)


async def _start(folder: Path, text: str) -> harness.Server:
    """One instance; its SMTP port as the server's, its HTTP port read beside."""
    await asyncio.to_thread(folder.mkdir, parents=True, exist_ok=True)
    listener = "smtp" if '"smtp"' in text else "console"
    return await harness.start_gateway(folder, text, listener)


async def _start_all(folders: list[Path], texts: list[str]) -> list[harness.Server]:
    # The first migrates a new database; the others then find it at head.
    first = await _start(folders[0], texts[0])
    rest = await asyncio.gather(*(_start(f, t) for f, t in zip(folders[1:], texts[1:],
                                                                  strict=True)))
    return [first, *rest]


def _cpu(servers: list[harness.Server]) -> float:
    return sum(harness.cpu_seconds(s.pid) for s in servers)


async def _stop(servers: list[harness.Server], side: Side) -> None:
    for status in await asyncio.gather(*(s.stop() for s in servers)):
        if status != 0:
            side.problems.append(f"a gateway exited {status}")


async def _sample_waits(dsn: str, stop: asyncio.Event) -> dict[str, float]:
    """Shares of 20 ms samples in which a backend waited: audit lock, row locks, other."""
    import asyncpg

    conn = await asyncpg.connect(dsn)
    seen: Counter[str] = Counter()
    samples = 0
    try:
        while not stop.is_set():
            rows = await conn.fetch(
                "SELECT locktype, (classid::bigint << 32) | objid::bigint AS key FROM pg_locks "
                "WHERE NOT granted AND database = (SELECT oid FROM pg_database "
                "WHERE datname = current_database())")
            samples += 1
            kinds = set()
            for row in rows:
                if row["locktype"] == "advisory":
                    kinds.add("audit" if row["key"] == AUDIT_LOCK else "advisory")
                elif row["locktype"] in ("transactionid", "tuple", "relation"):
                    kinds.add("rows")
                else:
                    kinds.add(row["locktype"])
            seen.update(kinds)
            await asyncio.sleep(0.02)
    finally:
        await conn.close()
    return {kind: n / samples for kind, n in seen.items()} if samples else {}


async def _count(dsn: str | None, sqlite: Path | None, what: str) -> int:
    if sqlite is not None:
        import sqlite3

        conn = sqlite3.connect(f"file:{sqlite}?mode=ro", uri=True)
        try:
            return int(conn.execute(f"SELECT count(*) FROM submissions{what}").fetchone()[0])
        finally:
            conn.close()
    import asyncpg

    assert dsn is not None
    pg = await asyncpg.connect(dsn)
    try:
        return int(await pg.fetchval(f"SELECT count(*) FROM submissions{what}"))
    finally:
        await pg.close()


async def run_side(name: str, round_no: int, args: argparse.Namespace, work: Path) -> Side:
    side = Side(name, round_no, args.seconds)
    backend, _, count = name.partition(" x")
    instances = int(count)
    folder = work / f"r{round_no}-{backend}{instances}"
    keyring = folder / "data-keys.json"
    database = f"scaleout_{uuid.uuid4().hex[:10]}"
    dsn = None
    sqlite = None
    if backend == "pg":
        import asyncpg

        admin = await asyncpg.connect(_asyncpg_dsn(args.pg_url))
        await admin.execute(f'CREATE DATABASE "{database}"')
        await admin.close()
        dsn = _asyncpg_dsn(args.pg_url, database)
        url = dsn.replace("postgresql://", "postgresql+asyncpg://", 1)
    else:
        sqlite = folder / "gateway.db"
        url = f"sqlite+aiosqlite:///{sqlite}"
    try:
        folders = [folder / f"edge{n}" for n in range(instances)]
        texts = [CONFIG.format(folder=f, parts=EDGE, url=url, keyring=keyring)
                 for f in folders]
        servers = await _start_all(folders, texts)
        http_ports = [harness.ready_port(f / "gateway.log", "http") for f in folders]
        spec = {"smtp": [s.port for s in servers], "http": http_ports,
                "smtp_connections": args.smtp, "http_connections": args.http,
                "warmup": args.warmup, "seconds": args.seconds,
                "tag": f"{database}.{round_no}"}
        cpu_before, busy_before = _cpu(servers), harness.machine_busy_seconds()
        process = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "--load", json.dumps(spec),
            stdout=asyncio.subprocess.PIPE)
        out, _ = await process.communicate()
        side.intake_cpu = _cpu(servers) - cpu_before
        result = json.loads(out.splitlines()[-1])
        side.other_cpu = max(0.0, harness.machine_busy_seconds() - busy_before
                             - side.intake_cpu - result["client_cpu_seconds"])
        side.smtp, side.http = result["smtp"], result["http"]
        side.acked = side.smtp["accepted"] + side.http["accepted"]
        for channel in ("smtp", "http"):
            for what, n in result[channel]["errors"].items():
                side.problems.append(f"{channel}: {n} x {what}")
        await _stop(servers, side)
        side.stored = await _count(dsn, sqlite, "")
        if side.stored < side.acked:
            side.problems.append(f"{side.acked} acknowledged, {side.stored} stored")
        if dsn is not None and not args.no_filing:
            await _filing(side, folder, url, keyring, dsn, instances)
    finally:
        if dsn is not None:
            import asyncpg

            admin = await asyncpg.connect(_asyncpg_dsn(args.pg_url))
            await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
            await admin.close()
    return side


async def _execute(dsn: str, statement: str) -> None:
    import asyncpg

    pg = await asyncpg.connect(dsn)
    try:
        await pg.execute(statement)
    finally:
        await pg.close()


async def _filing(side: Side, folder: Path, url: str, keyring: Path, dsn: str,
                  instances: int) -> None:
    folders = [folder / f"inside{n}" for n in range(instances)]
    texts = [CONFIG.format(folder=f, parts=INSIDE, url=url, keyring=keyring) for f in folders]
    import asyncpg

    # The backlog held as if claimed until all are up, so that they start on it together.
    await _execute(dsn, "UPDATE submissions SET claimed_by = 'bench',"
                        " claimed_until = now() + interval '1 day'")
    servers = await _start_all(folders, texts)
    stop = asyncio.Event()
    sampler = asyncio.create_task(_sample_waits(dsn, stop))
    cpu_before = _cpu(servers)
    started = time.monotonic()
    await _execute(dsn, "UPDATE submissions SET claimed_by = NULL, claimed_until = NULL")
    pg = await asyncpg.connect(dsn)
    try:
        while True:  # the other processes do the work: looked at every 0.1 s
            if not await pg.fetchval("SELECT count(*) FROM submissions WHERE parsed_at IS NULL"):
                break
            await asyncio.sleep(0.1)
    finally:
        await pg.close()
    side.filing_seconds = time.monotonic() - started
    side.filing_cpu = _cpu(servers) - cpu_before
    side.filed = side.stored
    stop.set()
    side.waits = await sampler
    await _stop(servers, side)


# --- report -------------------------------------------------------------------------------


def _line(s: Side) -> str:
    acked_in = s.smtp.get("in_window", 0) + s.http.get("in_window", 0)
    cpu_ms = s.intake_cpu / s.acked * 1000 if s.acked else 0.0
    text = (f"  {s.name:<10} intake {s.rate:7.1f} reports/s"
            f" (smtp p50/p90/p99 {s.smtp['p50_ms']:5.0f}/{s.smtp['p90_ms']:5.0f}/"
            f"{s.smtp['p99_ms']:5.0f} ms, form {s.http['p50_ms']:5.0f}/{s.http['p90_ms']:5.0f}/"
            f"{s.http['p99_ms']:5.0f} ms) cpu {cpu_ms:5.2f} ms/report"
            f" other {s.other_cpu:5.1f} s [{acked_in} in window, {s.stored} stored]")
    if s.filing_seconds:
        waits = ", ".join(f"{k} {v:.0%}" for k, v in sorted(s.waits.items())) or "none"
        text += (f"\n  {'':<10} filing {s.filed / s.filing_seconds:7.1f} reports/s,"
                 f" cpu {s.filing_cpu / s.filed * 1000:5.2f} ms/report, waits: {waits}")
    return text


def _summary(results: list[Side]) -> None:
    print("\nmedians over the rounds")
    base = None
    for name in SIDES:
        runs = [r for r in results if r.name == name]
        if not runs:
            continue
        rate = statistics.median(r.rate for r in runs)
        base = base or (rate if name == "pg x1" else None)
        cpu = statistics.median(r.intake_cpu / r.acked * 1000 for r in runs if r.acked)
        p99 = statistics.median(max(r.smtp["p99_ms"], r.http["p99_ms"]) for r in runs)
        text = f"  {name:<10} {rate:7.1f} reports/s  cpu {cpu:5.2f} ms/report  p99 {p99:5.0f} ms"
        filing = [r for r in runs if r.filing_seconds]
        if filing:
            rate = statistics.median(r.filed / r.filing_seconds for r in filing)
            cpu = statistics.median(r.filing_cpu / r.filed * 1000 for r in filing)
            text += f"  filing {rate:6.1f}/s cpu {cpu:5.2f} ms/report"
        print(text)


async def main_async(args: argparse.Namespace) -> int:
    results = []
    print(f"load: {args.smtp} SMTP connections + {args.http} form clients, warm-up "
          f"{args.warmup:g} s, window {args.seconds:g} s; {os.cpu_count()} CPUs; "
          f"load average {os.getloadavg()[0]:.2f}", flush=True)
    with tempfile.TemporaryDirectory(prefix="scaleout-") as work:
        for round_no in range(1, args.rounds + 1):
            order = SIDES[round_no - 1:] + SIDES[:round_no - 1]
            print(f"round {round_no}", flush=True)
            for name in order:
                side = await run_side(name, round_no, args, Path(work))
                results.append(side)
                print(_line(side), flush=True)
                for problem in side.problems[:5]:
                    print(f"    PROBLEM {problem}", flush=True)
    _summary(results)
    print(f"load average at the end {os.getloadavg()[0]:.2f}")
    return 1 if any(r.stored < r.acked or any("exited" in p for p in r.problems)
                    for r in results) else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--load", help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--smtp", type=int, default=12, help="SMTP connections (default 12)")
    parser.add_argument("--http", type=int, default=12, help="form clients (default 12)")
    parser.add_argument("--no-filing", action="store_true", help="intake only")
    parser.add_argument("--pg-url", default=os.environ.get("HOTLINE_TEST_PG_URL", ""))
    args = parser.parse_args(argv)
    if args.load:
        print(json.dumps(asyncio.run(_run_load(json.loads(args.load)))))
        return 0
    if not args.pg_url:
        parser.error("--pg-url or HOTLINE_TEST_PG_URL: the PostgreSQL server to use")
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
