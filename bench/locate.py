"""Locating throughput: hosts located per second, beside dnspython's raw query rate.

A DNS server (``tests/dns_server.py``, asyncio, UDP) runs in a process of its own with a zone
of ``--hosts`` names, each with one A and one AAAA record. Against it, in this process, with
``--concurrency`` lookups in flight at a time:

  raw     dnspython's asyncio resolver, no cache: an A and an AAAA query per host, nothing
          else (the baseline: what the library alone does against this server);
  cold    the gateway's ``Locator``: the same two queries per host, CNAME handling, evidence
          records, geolocation of each address in the builtin database, the verdict;
  cached  the same ``Locator`` again over the same hosts: every answer from its cache;
  stage   the whole locate stage on a fresh SQLite file (WAL, synchronous=FULL): claim the
          cases, locate them (cold cache), store the evidence and move each case on.

Sides alternate raw, cold, cached, stage in every round; each line is the median over rounds.
The DNS server is Python too and may be the limit of raw and cold alike: its CPU share is
printed, as is the CPU everything else on the machine used (a large "other" means a disturbed
run). Run from the project root with the project's virtualenv:

    .venv/bin/python bench/locate.py [--hosts N] [--rounds N] [--concurrency N]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parents[1]))

import dns.asyncresolver  # noqa: E402
import dns.nameserver  # noqa: E402
import dns.resolver  # noqa: E402

from gateway import config as config_module  # noqa: E402
from gateway.database import open_database  # noqa: E402
from gateway.store import migrate  # noqa: E402
from gateway.store.backend import open_write_backend  # noqa: E402
from gateway.store.case_urls import seal_case_urls  # noqa: E402
from gateway.store.ids import uuid7  # noqa: E402
from gateway.store.sealing import Keyring, Sealer  # noqa: E402
from gateway.store.tables import cases  # noqa: E402
from routing.geo import open_geolocator  # noqa: E402
from routing.locate import Locator, Overrides  # noqa: E402
from routing.resolve import HostResolver  # noqa: E402
from routing.stage import LocateStage  # noqa: E402


def host(n: int) -> str:
    return f"h{n}.bench.test"


# --- the DNS server process ----------------------------------------------------------------


async def serve_dns(count: int) -> None:
    from tests.dns_server import DnsServer, Zone

    zone = Zone()
    for n in range(count):
        zone.add(host(n), "A", f"145.{100 + n // 65000}.{n // 250 % 256}.{n % 250 + 1}")
        zone.add(host(n), "AAAA", f"2001:610::{n:x}")
    async with DnsServer(zone) as server:
        print(server.address[1], flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


# --- measurements --------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float:
    ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(ticks[:8]) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


async def in_parallel(items: list[str], concurrency: int,
                      work: Callable[[str], Awaitable[object]]) -> None:
    queue = iter(items)

    async def worker() -> None:
        for item in queue:
            await work(item)

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def raw_side(port: int, hosts: list[str], concurrency: int) -> None:
    resolver = dns.asyncresolver.Resolver(configure=False)
    resolver.nameservers = [dns.nameserver.Do53Nameserver("127.0.0.1", port)]
    resolver.lifetime = 5.0

    async def both(name: str) -> None:
        a = await resolver.resolve(name, "A", search=False)
        aaaa = await resolver.resolve(name, "AAAA", search=False)
        assert a.rrset is not None and aaaa.rrset is not None

    await in_parallel(hosts, concurrency, both)


def make_locator(port: int) -> Locator:
    return Locator(HostResolver([("127.0.0.1", port)], timeout=5.0),
                   open_geolocator("builtin", "builtin"), overrides=Overrides([]),
                   cdn_asns=[13335])


async def locator_side(locator: Locator, hosts: list[str], concurrency: int) -> None:
    async def one(name: str) -> None:
        hosting = await locator.locate(name)
        assert hosting.status == "located" and hosting.country == "NL", hosting

    await in_parallel(hosts, concurrency, one)


async def stage_side(port: int, hosts: list[str], concurrency: int) -> float:
    """The stage's own time, without setting up its database."""
    with tempfile.TemporaryDirectory() as folder:
        config = config_module.parse(
            {"database": {"url": "sqlite+aiosqlite:///bench.db"}}, base=Path(folder))
        moment = datetime(2026, 11, 1, tzinfo=UTC)
        sealer = Sealer(Keyring.generate(moment))  # the stage opens the URLs it locates
        engine = await open_database(config, sealer=sealer)
        await migrate.upgrade(engine)
        backend = await open_write_backend(engine)
        rows = [{"id": (case_id := uuid7()), "kind": "url", "status": "new",
                 "url_key": uuid.uuid4().hex,
                 **seal_case_urls(sealer, case_id, url=f"http://{h}/",
                                  canonical_url=f"http://{h}/"), "report_count": 1,
                 "first_reported": moment + timedelta(microseconds=n),
                 "last_reported": moment, "created_at": moment, "status_changed_at": moment}
                for n, h in enumerate(hosts)]
        await backend.transaction(lambda conn: conn.execute(cases.insert(), rows))
        stage = LocateStage(backend, make_locator(port), worker="bench",
                            concurrency=concurrency)
        started = time.perf_counter()
        filed = await stage.run_once()
        elapsed = time.perf_counter() - started
        assert filed == len(hosts), filed
        await backend.close()
        await engine.dispose()
        return elapsed


async def measure(server_pid: int, count: int,
                  run: Callable[[], Awaitable[float | None]]) -> dict[str, float]:
    server_before, busy_before = cpu_seconds(server_pid), machine_busy_seconds()
    own_before = time.process_time()
    started = time.perf_counter()
    timed = await run()
    elapsed = timed if timed is not None else time.perf_counter() - started
    server = cpu_seconds(server_pid) - server_before
    own = time.process_time() - own_before
    other = machine_busy_seconds() - busy_before - server - own
    return {"rate": count / elapsed, "server_cpu": server, "own_cpu": own,
            "other_cpu": max(0.0, other), "elapsed": elapsed}


async def main_async(args: argparse.Namespace, port: int, server_pid: int) -> None:
    hosts = [host(n) for n in range(args.hosts)]
    results: dict[str, list[dict[str, float]]] = {"raw": [], "cold": [], "cached": [],
                                                  "stage": []}
    # Warm-up, not counted: imports, the builtin database, the server's first answers.
    await raw_side(port, hosts[:200], args.concurrency)
    await locator_side(make_locator(port), hosts[:200], args.concurrency)
    for _round in range(args.rounds):
        locator = make_locator(port)
        sides: dict[str, Callable[[], Awaitable[float | None]]] = {
            "raw": partial(raw_side, port, hosts, args.concurrency),
            "cold": partial(locator_side, locator, hosts, args.concurrency),
            "cached": partial(locator_side, locator, hosts, args.concurrency),
            "stage": partial(stage_side, port, hosts, args.concurrency),
        }
        for side, run in sides.items():
            results[side].append(await measure(server_pid, len(hosts), run))
    print(f"{args.hosts} hosts (A + AAAA each), {args.concurrency} in flight, "
          f"{args.rounds} rounds; median per side")
    print(f"{'side':<8}{'hosts/s':>10}{'vs raw':>8}{'server cpu':>12}{'own cpu':>9}"
          f"{'other cpu':>11}")
    raw_rate = statistics.median(r["rate"] for r in results["raw"])
    for side, rounds in results.items():
        rate = statistics.median(r["rate"] for r in rounds)
        print(f"{side:<8}{rate:>10.0f}{rate / raw_rate:>7.2f}x"
              f"{statistics.median(r['server_cpu'] for r in rounds):>11.2f}s"
              f"{statistics.median(r['own_cpu'] for r in rounds):>8.2f}s"
              f"{statistics.median(r['other_cpu'] for r in rounds):>10.2f}s")
    print(f"raw dnspython: {raw_rate * 2:.0f} queries/s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hosts", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--serve-dns", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_dns:
        asyncio.run(serve_dns(args.serve_dns))
        return 0
    server = subprocess.Popen([sys.executable, str(HERE), "--serve-dns", str(args.hosts)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert server.stdout is not None and server.stdin is not None
    try:
        port = int(server.stdout.readline())
        asyncio.run(main_async(args, port, server.pid))
    finally:
        server.stdin.close()
        server.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())

