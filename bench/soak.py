"""Soak: a real ``serve`` under mixed work for a bounded time, sampled at intervals; fails when
anything grows without bound.

One ``hotline-gateway serve`` in a temporary folder (SQLite file, WAL, JSON logs to a file, a
GnuPG home with our signing key and the police's key, referrals written by the ``file``
transport), a DNS server in this process that puts every reported host in Belgium (BELNET's
193.190.198.1: the builtin geolocation tables say BE, the police destination), and, for
``--minutes`` (default 30):

  * SMTP reports at ``--smtp-rate`` a second (default 4) (one connection per message, each a new
    Message-ID; one URL in ten repeats an earlier one, so cases gather reports),
  * report forms posted over HTTP at ``--http-rate`` a second (default 2),
  * an analyst (API token) assessing what awaits assessment, seven in ten illegal (each a
    referral: encrypted, signed, written out by the outbox), the rest legal.

Every ``--interval`` seconds (default: the run in 20 samples, at least 5 s, at most 60 s) it
records the serving process's resident memory (VmRSS) and peak (VmHWM), its open files
(/proc/PID/fd), its threads, its CPU seconds, and from ``/metrics``: the pipeline's backlogs
(normalise, locate), the outbox's pending referrals, the cases awaiting assessment, and the
commit latency of the interval (mean and 95th percentile, from the histogram's deltas).

The curves are printed as a table. A series grows without bound when its least-squares slope
over the second half of the run, carried over that half, exceeds its allowance (``LIMITS``:
e.g. memory 8 MiB and 5% of its level; open files 8); the run fails (exit 1) then, or when a
report or assessment was refused, serve did not exit 0 on SIGTERM, or an acknowledged
reference is missing from the database at the end. ``--minutes 5`` is a meaningful short run.

    .venv/bin/python bench/soak.py [--minutes N] [--interval S] [--smtp-rate R] [--http-rate R]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parents[1]))

import aiohttp  # noqa: E402
import aiosmtplib  # noqa: E402
import harness  # noqa: E402
import refer  # noqa: E402

from tests.dns_server import DnsServer, Zone  # noqa: E402

HOSTS = 200
BELNET = "193.190.198.1"
ILLEGAL = {"verdict": "illegal", "classification": "baseline", "age_group": "pre_pubescent",
           "media": "images", "site_type": "image_host"}
LEGAL = {"verdict": "legal", "classification": "not_illegal", "reason": "adult_pornography"}
#: What a series may grow by over the second half of the run (its fitted slope times that
#: half's length) before it counts as growing without bound: an absolute allowance and a
#: share of the series' mean over that half, whichever is larger.
LIMITS: dict[str, tuple[float, float]] = {
    "rss_mib": (8.0, 0.05),
    "fds": (8.0, 0.0),
    "threads": (4.0, 0.0),
    "normalise": (50.0, 0.5),
    "locate": (50.0, 0.5),
    "outbox": (50.0, 0.5),
    "awaiting": (100.0, 0.5),
    "commit_ms": (25.0, 0.5),
}
COLUMNS = ("min", "rss_mib", "hwm_mib", "fds", "threads", "cpu_s", "smtp", "http", "assessed",
           "normalise", "locate", "outbox", "awaiting", "referrals", "commit_ms", "commit_p95")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def config_text(folder: Path, keys: refer.Keys, nameserver: str, admin_port: int) -> str:
    return f"""\
# Written by bench/soak.py.
[gateway]
data_dir = "var"
log_level = "info"
log_format = "json"

[database]
url = "sqlite+aiosqlite:///var/gateway.db"

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
listen = ["127.0.0.1:{admin_port}"]

[locate]
nameservers = ["{nameserver}"]

[gpg]
home = "{keys.hotline_home}"
signing_key = "{keys.signer}"

[outbound]
transport = "file"
file_dir = "{folder / 'outbox'}"

[routing.destinations.police]
email = "cp@police.test"
key = "{keys.recipient}"
"""


@dataclass
class Counts:
    smtp: int = 0
    http: int = 0
    assessed: int = 0
    refused: dict[str, int] = field(default_factory=dict)
    references: set[str] = field(default_factory=set)

    def refuse(self, what: str) -> None:
        self.refused[what] = self.refused.get(what, 0) + 1


def url(n: int, rnd: random.Random) -> str:
    m = rnd.randrange(n) if n and rnd.random() < 0.1 else n  # one in ten: a URL seen before
    return f"http://h{m % HOSTS}.soak.test/p/{m}"


async def smtp_one(port: int, n: int, link: str, counts: Counts) -> None:
    message = (f"From: reporter@example.test\r\nTo: report@hotline.test\r\n"
               f"Subject: soak {n}\r\nMessage-ID: <soak.{n}@example.test>\r\n\r\n"
               f"I saw this: {link}\r\n").encode()
    try:
        async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False,
                                   timeout=60) as client:
            await client.mail("reporter@example.test")
            await client.rcpt("report@hotline.test")
            reply = await client.data(message)
    except aiosmtplib.SMTPException as exc:
        counts.refuse(f"smtp: {type(exc).__name__} {str(exc)[:60]}")
        return
    counts.references.add(reply.message.rpartition(" ")[2])
    counts.smtp += 1


async def http_one(session: aiohttp.ClientSession, port: int, n: int, link: str,
                   counts: Counts) -> None:
    form = {"form_id": f"soak-{n}", "lang": "en", "urls": link, "seen_where": "a forum",
            "description": "Found while searching.", "website": ""}
    async with session.post(f"http://127.0.0.1:{port}/report", data=form,
                            allow_redirects=False,
                            headers={"X-Forwarded-For": f"198.18.{n % 250}.{n % 199 + 1}"}
                            ) as r:
        await r.read()
        location = r.headers.get("Location", "")
        if r.status != 303 or "ref=" not in location:
            counts.refuse(f"http: {r.status}")
            return
        counts.references.add(parse_qs(urlsplit(location).query)["ref"][0])
    counts.http += 1


async def paced(rate: float, stop: asyncio.Event, one: Any) -> None:
    """``one(n)`` started ``rate`` times a second until ``stop``; at most 64 in flight."""
    if rate <= 0:
        return
    gate = asyncio.Semaphore(64)
    tasks: set[asyncio.Task[None]] = set()
    start = time.monotonic()
    for n in itertools.count():
        delay = start + n / rate - time.monotonic()
        if delay > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
        if stop.is_set():
            break
        await gate.acquire()

        async def run(n: int = n) -> None:
            try:
                await one(n)
            finally:
                gate.release()

        task = asyncio.create_task(run())
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    await asyncio.gather(*tasks, return_exceptions=True)


async def assessor(session: aiohttp.ClientSession, port: int, token: str, stop: asyncio.Event,
                   counts: Counts) -> None:
    rnd = random.Random(3)
    headers = {"Authorization": f"Bearer {token}"}
    base = f"http://127.0.0.1:{port}/api/v1"
    while not stop.is_set():
        async with session.get(f"{base}/cases?status=awaiting_assessment",
                               headers=headers) as r:
            waiting = await r.json() if r.status == 200 else []
        for case in waiting[:100]:
            body = ILLEGAL if rnd.random() < 0.7 else LEGAL
            async with session.post(f"{base}/cases/{case['id']}/assessment", json=body,
                                    headers=headers) as r:
                await r.read()
                if r.status == 200:
                    counts.assessed += 1
                else:  # nobody else assesses: every refusal is a failure
                    counts.refuse(f"assessment: {r.status} {(await r.text())[:80]}")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 1.0)


def parse_metrics(text: str) -> dict[str, float]:
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            with contextlib.suppress(ValueError):
                values[name] = float(value)
    return values


def histogram_p95(now: dict[str, float], before: dict[str, float]) -> float | None:
    """The 95th percentile of the commit latency in the interval, from bucket deltas (the
    upper bound of the bucket it falls in), in ms."""
    buckets = sorted((float(k.split('le="')[1].rstrip('"}')), v - before.get(k, 0.0))
                     for k, v in now.items() if k.startswith("hotline_commit_seconds_bucket")
                     and 'le="+Inf"' not in k)
    total = now.get('hotline_commit_seconds_bucket{le="+Inf"}', 0.0) - before.get(
        'hotline_commit_seconds_bucket{le="+Inf"}', 0.0)
    if total <= 0:
        return None
    for bound, count in buckets:
        if count >= 0.95 * total:
            return bound * 1000
    return float("inf")


def proc(pid: int) -> dict[str, float]:
    status = {line.split(":")[0]: line.split()[1]
              for line in Path(f"/proc/{pid}/status").read_text().splitlines()
              if line.startswith(("VmRSS", "VmHWM", "Threads"))}
    return {"rss_mib": int(status["VmRSS"]) / 1024, "hwm_mib": int(status["VmHWM"]) / 1024,
            "threads": int(status["Threads"]), "fds": len(os.listdir(f"/proc/{pid}/fd")),
            "cpu_s": harness.cpu_seconds(pid)}


def slope(xs: list[float], ys: list[float]) -> float:
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    var = sum((x - mx) ** 2 for x in xs)
    return 0.0 if var == 0 else sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var


def unbounded(rows: list[dict[str, float]]) -> list[str]:
    """The series whose fitted growth over the second half exceeds its allowance."""
    half = [r for r in rows if r["min"] >= rows[-1]["min"] / 2]
    if len(half) < 3:
        return ["too few samples in the second half to judge (use a longer run)"]
    span = half[-1]["min"] - half[0]["min"]
    found = []
    for name, (absolute, share) in LIMITS.items():
        points = [(r["min"], r[name]) for r in half if r.get(name) is not None]
        if len(points) < 3:
            continue
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        growth = slope(xs, ys) * span
        allowed = max(absolute, share * sum(ys) / len(ys))
        if growth > allowed:
            found.append(f"{name} grows {growth:.1f} over the second half ({span:.1f} min), "
                         f"allowed {allowed:.1f}")
    return found


def cli(config: Path, *args: str) -> str:
    done = subprocess.run([*harness.gateway_command(), "--config", str(config), *args],
                          capture_output=True, text=True, cwd=config.parent, check=True)
    return done.stdout


async def soak(args: argparse.Namespace) -> int:
    folder = Path(tempfile.mkdtemp(prefix="soak-", dir=args.tmpdir))
    keys = await asyncio.to_thread(refer.make_keys, folder / "gpg")
    zone = Zone()
    for n in range(HOSTS):
        zone.add(f"h{n}.soak.test", "A", BELNET)
    interval = args.interval or min(60.0, max(5.0, args.minutes * 60 / 20))
    admin_port = free_port()
    async with DnsServer(zone) as dns:
        config = folder / "config.toml"
        config.write_text(config_text(folder, keys, dns.nameserver, admin_port))
        harness.make_keyring(config)
        await asyncio.to_thread(cli, config, "db", "upgrade")
        await asyncio.to_thread(cli, config, "users", "add", "ana", "--role", "analyst")
        with contextlib.closing(sqlite3.connect(folder / "var" / "gateway.db")) as db, db:
            db.execute("UPDATE users SET must_change_password = 0")
        token = (await asyncio.to_thread(cli, config, "tokens", "create", "ana")).strip()
        log_file = folder / "gateway.log"
        with log_file.open("wb") as out, (folder / "gateway.stderr").open("wb") as err:
            process = await asyncio.create_subprocess_exec(
                *harness.gateway_command(), "--config", str(config), "serve",
                stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=err, cwd=folder)
        try:
            while (smtp_port := harness.ready_port(log_file, "smtp")) is None:
                if process.returncode is not None:
                    raise RuntimeError((folder / "gateway.stderr").read_text()[-2000:])
                await asyncio.sleep(0.1)
            http_port = harness.ready_port(log_file, "http")
            console_port = harness.ready_port(log_file, "console")
            assert http_port is not None and console_port is not None
            code = await run(args, interval, process.pid, smtp_port, http_port, console_port,
                             admin_port, token, folder)
        finally:
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
            status = await asyncio.wait_for(process.wait(), 120)
    for home in (keys.hotline_home, keys.partner_home):
        refer.stop_agent(home)
    if status != 0:
        print(f"FAIL serve exited {status} on SIGTERM")
        code = 1
    print(f"folder: {folder}")
    return code


async def run(args: argparse.Namespace, interval: float, pid: int, smtp_port: int,
              http_port: int, console_port: int, admin_port: int, token: str,
              folder: Path) -> int:
    counts = Counts()
    stop = asyncio.Event()
    rnd = random.Random(1)
    rows: list[dict[str, float]] = []
    smtp_n, http_n = itertools.count(), itertools.count(10**9)
    async with aiohttp.ClientSession() as session:

        async def smtp(_: int) -> None:
            n = next(smtp_n)
            await smtp_one(smtp_port, n, url(n, rnd), counts)

        async def http(_: int) -> None:
            n = next(http_n)
            await http_one(session, http_port, n, url(n - 10**9, rnd), counts)

        load = [asyncio.create_task(paced(args.smtp_rate, stop, smtp)),
                asyncio.create_task(paced(args.http_rate, stop, http)),
                asyncio.create_task(assessor(session, console_port, token, stop, counts))]
        started = time.monotonic()
        before: dict[str, float] = {}
        print("  ".join(f"{c:>9}" for c in COLUMNS), flush=True)
        while True:
            elapsed = time.monotonic() - started
            async with session.get(f"http://127.0.0.1:{admin_port}/metrics") as r:
                metrics = parse_metrics(await r.text())
            row: dict[str, Any] = {"min": elapsed / 60, **proc(pid), "smtp": counts.smtp,
                                   "http": counts.http, "assessed": counts.assessed}
            row["normalise"] = metrics.get('hotline_pipeline_backlog{stage="normalise"}', 0)
            row["locate"] = metrics.get('hotline_pipeline_backlog{stage="locate"}', 0)
            row["outbox"] = metrics.get("hotline_outbox_pending", 0)
            row["awaiting"] = metrics.get('hotline_cases{state="awaiting_assessment"}', 0)
            row["referrals"] = sum(v for k, v in metrics.items()
                                   if k.startswith("hotline_referrals{"))
            count = metrics.get("hotline_commit_seconds_count", 0) - before.get(
                "hotline_commit_seconds_count", 0)
            total = metrics.get("hotline_commit_seconds_sum", 0) - before.get(
                "hotline_commit_seconds_sum", 0)
            row["commit_ms"] = total / count * 1000 if count else None
            row["commit_p95"] = histogram_p95(metrics, before)
            before = metrics
            if not rows:  # the first sample is the idle start: no commit latency of the load
                row |= {"commit_ms": None, "commit_p95": None}
            rows.append(row)
            print("  ".join(f"{row[c]:>9.1f}" if isinstance(row[c], float) else
                            f"{'-' if row[c] is None else row[c]:>9}" for c in COLUMNS),
                  flush=True)
            if elapsed >= args.minutes * 60:
                break
            await asyncio.sleep(min(interval, args.minutes * 60 - elapsed + 0.01))
        stop.set()
        await asyncio.gather(*load)
    failures = unbounded(rows)
    failures += [f"{n} x {what}" for what, n in sorted(counts.refused.items())]
    with contextlib.closing(sqlite3.connect(folder / "var" / "gateway.db")) as db:
        stored = {r for (r,) in db.execute("SELECT reference FROM submissions")}
    missing = counts.references - stored
    if missing:
        failures.append(f"{len(missing)} acknowledged references missing, e.g. "
                        f"{sorted(missing)[:3]}")
    print(json.dumps({"smtp": counts.smtp, "http": counts.http, "assessed": counts.assessed,
                      "rows_in_submissions": len(stored), "interval_s": interval}))
    for failure in failures:
        print(f"FAIL {failure}")
    print("ok: nothing grows without bound" if not failures else "")
    return 1 if failures else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--interval", type=float, default=None)
    parser.add_argument("--smtp-rate", type=float, default=4.0)
    parser.add_argument("--http-rate", type=float, default=2.0)
    parser.add_argument("--tmpdir", default=None)
    args = parser.parse_args()
    return asyncio.run(soak(args))


if __name__ == "__main__":
    sys.exit(main())
