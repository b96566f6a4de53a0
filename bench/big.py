"""Years of data: the gateway on a database of many cases (default 1 million), on SQLite and on
PostgreSQL, against the same gateway on an empty database.

The database is generated directly (not through intake) by ``report_year.py``'s generator in
its ``steady`` form: a year of cases in the states the code produces, as a running gateway
keeps them (every case located, no lookup to retry before a month, no key missing, no
deadlines configured), ending 16 days before now. Its sealed values are sealed with a keyring
made once (``--dir``/data-keys.json), so that the console opens them as it opens real ones.
It is made at migration 0026 and then migrated to the head, timed (the backfill of the
markers the stages' polls read, and the indexes: ``gateway.store.due``). The SQLite file and
the PostgreSQL database are kept between runs (``--dir``; ``--postgres`` names a database the
bench may empty) and made again only when missing or at another revision.

For each database, one ``hotline-gateway serve`` (the shipped defaults, as
bench/http_intake.py configures it, with ``[locate] recheck_every = "400d"``: nothing is due a
re-check, so what is measured is the cost of looking, not of re-checking a year of referrals):

- idle: the server's CPU seconds over ``--idle`` seconds without load (the stages' polls);
- intake: report forms posted by bench/http_intake.py's load process (``--connections``,
  ``--warmup``, ``--seconds``; ``--rounds`` alternate the empty and the big database, each
  waited on until what it took is filed): rate and the server's CPU time per report, and the
  medians' ratio of the big database's rate to the empty one's (the goal: at least 0.9);
- the console (big database only): the queue's first page and a deeper page, and case pages
  of cases in several states, ``--requests`` each, p50/p95 in ms (goal: p95 under 100 ms),
  with the server's CPU time per request; then ``/metrics`` (fresh, and again within its
  cache) and ``stats`` (``collect_stats`` in this process; goal: under 1 s each).

With ``--plans``, the stages' poll queries and the queue's listing are timed on the big
database and their plans printed (EXPLAIN QUERY PLAN; EXPLAIN ANALYZE on PostgreSQL),
beside the conditions migration 0026 polled with (before the markers). Run from the project
root on an idle machine; ``uptime`` is printed before and after:

    .venv/bin/python bench/big.py --dir DIR [--cases N] [--postgres URL] [--no-sqlite]
        [--plans] [--seconds S] [--idle S] [--requests N]

Exit status 0 when every request was answered as expected; the goals are reported, not
enforced.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

# The generator and the intake load are beside this file: the script's folder is on sys.path.
import harness
import http_intake
from report_year import COLUMNS, DUMMY, History, Rows, fill_postgres, fill_sqlite
from sqlalchemy import Select, and_, exists, func, insert, or_, select, update

from gateway.stats import collect_stats
from gateway.store import due, leases, migrate, sealing_state
from gateway.store.engine import DatabaseSettings, open_engine
from gateway.store.sealed import seal_values
from gateway.store.sealing import Sealer, create_keyring, load_keyring
from gateway.store.tables import (
    assessments,
    cases,
    hosting_evidence,
    metadata,
    referrals,
    routing_decisions,
    staff_sessions,
    submissions,
)

GOAL_RATIO, GOAL_PAGE_MS, GOAL_COUNTS_S = 0.9, 100.0, 1.0
#: The generator's version: a database kept from another is made again.
GENERATOR = 3
#: This run's mark in the form ids it posts.
RUN = secrets.token_hex(4)
#: The generator's tables and columns, with the URLs a case holds (sealed, as intake seals them).
BIG_COLUMNS = {**COLUMNS, "cases": (*COLUMNS["cases"], "url", "canonical_url")}
#: A plausible value for each sealed column the generator fills with a dummy.
PLAUSIBLE: dict[tuple[str, str], Any] = {
    ("users", "totp_secret"): "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP",
    ("hosting_evidence", "host"): "gallery.example.test",
    ("hosting_evidence", "ips"): ["192.0.2.10", "192.0.2.11"],
    ("hosting_evidence", "records"): {"A": [["192.0.2.10", 300], ["192.0.2.11", 300]]},
    ("hosting_evidence", "addresses"): [
        {"ip": ip, "country": "NL", "asn": 60781, "org": "LeaseWeb", "source": "geoip",
         "cdn": None} for ip in ("192.0.2.10", "192.0.2.11")],
    ("hosting_evidence", "databases"): {"country": {"name": "builtin", "built": "2026-11-01"},
                                        "asn": {"name": "builtin", "built": "2026-11-01"}},
    ("routing_decisions", "facts"): {"verdict": "illegal", "country": "NL",
                                     "country_source": "geoip", "hosting_status": "located"},
    ("routing_decisions", "explanation"): "hosted in NL, a member hotline: referred there",
}
GATEWAY_CONFIG = http_intake.GATEWAY_CONFIG.replace(
    "# Written by bench/http_intake.py", "# Written by bench/big.py, after bench/http_intake.py"
) + """
[locate]
recheck_every = "400d"
"""


class SteadyYear(History):
    """The steady year, its sealed values sealed under ``sealer`` and its URL cases' URLs."""

    def __init__(self, cases_count: int, sealer: Sealer, now: datetime) -> None:
        super().__init__(cases_count, 18, start=now - timedelta(days=365), now=now,
                         steady=True)
        self.sealer = sealer

    def chunks(self) -> Any:
        for chunk in super().chunks():
            yield self.sealed(chunk)

    def sealed(self, chunk: Rows) -> Rows:
        done = Rows()
        for name, rows in chunk.tables.items():
            table, columns = metadata.tables[name], BIG_COLUMNS[name]
            for row in rows:
                values = dict(zip(COLUMNS[name], row, strict=True))
                for (where, column), value in PLAUSIBLE.items():
                    if where == name and values.get(column) == DUMMY:
                        values[column] = value
                if name == "cases":
                    link = f"https://h{values['url_key']}.example.test/albums/index.html" \
                        if values["kind"] == "url" else None
                    values["url"] = values["canonical_url"] = link
                values = seal_values(self.sealer, table, values["id"], values)
                done.add(name, tuple(values.get(column) for column in columns))
        return done


@dataclass
class Database:
    """One database of the bench: its URL, and for PostgreSQL the empty one beside it."""

    dialect: str
    url: str
    empty_url: str
    folder: Path


def settings(url: str) -> DatabaseSettings:
    return DatabaseSettings(url=url, busy_timeout=30.0, statement_timeout=3600.0, pool_size=2)


def keyring(folder: Path) -> Sealer:
    path = folder / "data-keys.json"
    if not path.exists():
        create_keyring(path)
    return Sealer(load_keyring(path))


def remove(url: str) -> None:
    """The SQLite file ``url`` names, and its WAL, removed."""
    path = Path(url.removeprefix("sqlite+aiosqlite:///"))
    for name in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        name.unlink(missing_ok=True)


async def pg_recreate(url: str) -> None:
    """Drop and create the database ``url`` names (connected to ``postgres`` beside it)."""
    import asyncpg

    base, _, name = url.replace("postgresql+asyncpg://", "postgresql://").rpartition("/")
    conn = await asyncpg.connect(base + "/postgres")
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


async def prepare(db: Database, cases_count: int, sealer: Sealer) -> dict[str, Any]:
    """The big database, made unless kept at the head revision; what its making took."""
    meta_file = db.folder / f"big-{cases_count}-{db.dialect}.json"
    if meta_file.exists():
        meta: dict[str, Any] = json.loads(meta_file.read_text())
        engine = await open_engine(settings(db.url))
        try:
            current = await migrate.current(engine)
        except Exception:
            current = None
        finally:
            await engine.dispose()
        if current == migrate.head() and meta.get("url") == db.url \
                and meta.get("generator") == GENERATOR:
            return meta
    if db.dialect == "sqlite":
        await asyncio.to_thread(remove, db.url)
    else:
        await pg_recreate(db.url)
    engine = await open_engine(settings(db.url))
    try:
        await migrate.upgrade(engine, "0026")
        began, cpu = time.perf_counter(), time.process_time()
        history = SteadyYear(cases_count, sealer, datetime.now(UTC).replace(microsecond=0))
        if db.dialect == "sqlite":
            rows = await asyncio.to_thread(fill_sqlite, db.url.removeprefix(
                "sqlite+aiosqlite:///"), history, BIG_COLUMNS)
        else:
            rows = await fill_postgres(engine, history, BIG_COLUMNS)
        generated = time.perf_counter() - began
        began = time.perf_counter()
        await migrate.upgrade(engine)
        migrated = time.perf_counter() - began
        async with engine.begin() as conn:
            # As the follow-up stage's first pass leaves the referrals with no deadlines
            # configured (the backfill marks every open one for that first look).
            await conn.execute(update(referrals).where(referrals.c.follow_up_at.is_not(None))
                               .values(follow_up_at=None))
        async with engine.begin() as conn:
            await conn.exec_driver_sql("ANALYZE")
        # As a gateway that made it would have it: the keyring's check value written, and
        # marked sealed (or the first start would look for values in clear in every row).
        await sealing_state.verify_keyring(engine, sealer)
        async with engine.begin() as conn:
            await conn.run_sync(lambda sync: sealing_state.write(
                sync, sealing_state.SEALED, datetime.now(UTC).isoformat()))
    finally:
        await engine.dispose()
    meta = {"url": db.url, "cases": cases_count, "rows": rows, "generator": GENERATOR,
            "generated_s": round(generated, 1), "generate_cpu_s": round(time.process_time()
                                                                       - cpu, 1),
            "migration_0027_s": round(migrated, 1), "made": datetime.now(UTC).isoformat()}
    meta_file.write_text(json.dumps(meta))
    return meta


async def empty(db: Database) -> None:
    """No database for the baseline: the gateway makes it, as at an install."""
    if db.dialect == "sqlite":
        await asyncio.to_thread(remove, db.empty_url)
    else:
        await pg_recreate(db.empty_url)


# --- the gateway and its load -------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def start(url: str, keys: Path, workdir: Path, admin: int) -> harness.Server:
    await asyncio.to_thread(workdir.mkdir, parents=True, exist_ok=True)
    config = GATEWAY_CONFIG.replace('url = "sqlite+aiosqlite:///var/gateway.db"',
                                    f'url = "{url}"')
    config = config.replace('[admin]\nlisten = ["127.0.0.1:0"]',
                            f'[admin]\nlisten = ["127.0.0.1:{admin}"]')
    config += f'\n[data]\nkeyring = "{keys}"\n'
    return await harness.start_gateway(workdir, config, "http")


def console_port(workdir: Path) -> int:
    """The console's port, from the gateway's ``gateway.ready`` log line."""
    for line in (workdir / "gateway.log").read_text().splitlines():
        entry = json.loads(line)
        if entry.get("event") == "gateway.ready":
            return int(str(entry["console"][0]).rpartition(":")[2])
    raise RuntimeError("no gateway.ready line")


async def drained(url: str, most: float = 300.0) -> float:
    """Wait until the reports taken are filed (nothing left to normalise or locate): the
    pages are measured on a gateway at rest. How long it took."""
    engine = await open_engine(settings(url))
    began = time.perf_counter()
    try:
        while time.perf_counter() - began < most:
            async with engine.connect() as conn:
                left = (await conn.execute(
                    select(func.count()).select_from(submissions)
                    .where(submissions.c.status == "received"))).scalar_one()
                left += (await conn.execute(select(func.count()).select_from(cases)
                                            .where(cases.c.status == "new"))).scalar_one()
            if not left:
                break
            await asyncio.sleep(1.0)
    finally:
        await engine.dispose()
    return time.perf_counter() - began


@dataclass
class Intake:
    rate: float
    cpu_ms_per_report: float
    idle_cpu_s: float
    other_cpu_s: float
    errors: int


async def intake(server: harness.Server, args: argparse.Namespace, tag: str) -> Intake:
    await asyncio.sleep(args.settle)  # the start's first polls
    before = harness.cpu_seconds(server.pid)
    await asyncio.sleep(args.idle)
    idle = harness.cpu_seconds(server.pid) - before
    load, cpu, other, _ = await harness.measure(http_intake.BENCH, server, args=args, tag=tag)
    return Intake(load.rate, cpu / load.accepted * 1000 if load.accepted else 0.0, idle, other,
                  load.error_count)


async def session_cookie(url: str) -> str:
    """A console session of the generated analyst, made in the database (as a login does)."""
    cookie = secrets.token_urlsafe(32)
    engine = await open_engine(settings(url))
    now = datetime.now(UTC)
    try:
        async with engine.begin() as conn:
            await conn.execute(insert(staff_sessions).values(
                id_sha256=hashlib.sha256(cookie.encode()).hexdigest(), user_id=uuid.UUID(int=1),
                csrf_token=secrets.token_urlsafe(16), created_at=now, last_seen_at=now,
                factor="totp"))
    finally:
        await engine.dispose()
    return cookie


async def sample_cases(url: str) -> dict[str, list[str]]:
    """Case ids to open, by state: spread over the year (every n-th of the state)."""
    engine = await open_engine(settings(url))
    found: dict[str, list[str]] = {}
    try:
        async with engine.connect() as conn:
            for state in ("awaiting_assessment", "referred", "removed", "closed_legal"):
                ids = (await conn.execute(select(cases.c.id).where(cases.c.status == state)
                                          .order_by(cases.c.first_reported).limit(20000))
                       ).scalars().all()
                found[state] = [str(i) for i in ids[::max(1, len(ids) // 40)]]
    finally:
        await engine.dispose()
    return found


async def timed_gets(server: harness.Server, base: str, paths: list[str], cookie: str
                     ) -> tuple[list[float], float, list[str]]:
    """GET each path in turn; latencies (ms), the server's CPU ms per request, problems."""
    import aiohttp

    latencies, problems = [], []
    before = harness.cpu_seconds(server.pid)
    async with aiohttp.ClientSession() as client:
        for path in paths:
            began = time.perf_counter()
            async with client.get(base + path, allow_redirects=False,
                                  headers={"Cookie": f"hg_session={cookie}"}) as response:
                body = await response.read()
            latencies.append((time.perf_counter() - began) * 1000)
            if response.status != 200 or b"Something went wrong" in body:
                problems.append(f"{path}: {response.status}")
    cpu = (harness.cpu_seconds(server.pid) - before) * 1000 / max(1, len(paths))
    return latencies, cpu, problems


def p(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else 0.0


async def console(server: harness.Server, workdir: Path, db: Database, admin_port: int,
                  args: argparse.Namespace) -> list[str]:
    """The queue, case pages, /metrics and stats on the big database; problems found."""
    import aiohttp

    base = f"http://127.0.0.1:{console_port(workdir)}"
    cookie = await session_cookie(db.url)
    sample = await sample_cases(db.url)
    problems: list[str] = []
    deep = sample["awaiting_assessment"][len(sample["awaiting_assessment"]) // 2]
    pages = {
        "queue, first page": "/?status=awaiting_assessment",
        "queue, a page deep": f"/?status=awaiting_assessment&after={deep}",
        "queue, awaiting outcome": "/?status=awaiting_outcome",
    }
    for name, path in pages.items():
        await timed_gets(server, base, [path] * 3, cookie)  # warm
        latencies, cpu, bad = await timed_gets(server, base, [path] * args.requests, cookie)
        problems += bad
        print(f"  {name:26} p50 {p(latencies, .5):7.1f} ms  p95 {p(latencies, .95):7.1f} ms"
              f"  server CPU {cpu:6.1f} ms/request  "
              f"{'ok' if p(latencies, .95) < GOAL_PAGE_MS else 'OVER'} (goal p95 < 100 ms)")
    for state, ids in sample.items():
        paths = [f"/cases/{ids[n % len(ids)]}" for n in range(args.requests)] if ids else []
        if not paths:
            continue
        latencies, cpu, bad = await timed_gets(server, base, paths, cookie)
        problems += bad
        print(f"  case page, {state:15} p50 {p(latencies, .5):7.1f} ms  "
              f"p95 {p(latencies, .95):7.1f} ms  server CPU {cpu:6.1f} ms/request  "
              f"{'ok' if p(latencies, .95) < GOAL_PAGE_MS else 'OVER'}")
    admin = f"http://127.0.0.1:{admin_port}/metrics"
    async with aiohttp.ClientSession() as client:
        for what in ("fresh", "cached"):
            began, cpu = time.perf_counter(), harness.cpu_seconds(server.pid)
            async with client.get(admin, timeout=aiohttp.ClientTimeout(total=600)) as r:
                await r.read()
            seconds = time.perf_counter() - began
            cpu = harness.cpu_seconds(server.pid) - cpu
            if r.status != 200:
                problems.append(f"/metrics: {r.status}")
            print(f"  /metrics ({what}){'':11} {seconds:7.2f} s  server CPU {cpu:5.2f} s  "
                  f"{'ok' if seconds < GOAL_COUNTS_S else 'OVER'} (goal < 1 s)")
            if what == "fresh":
                await asyncio.sleep(0.5)
    engine = await open_engine(settings(db.url))
    try:
        began, cpu = time.perf_counter(), time.process_time()
        await collect_stats(engine)
        seconds = time.perf_counter() - began
        print(f"  stats (collect_stats){'':6} {seconds:7.2f} s  this process's CPU "
              f"{time.process_time() - cpu:5.2f} s  "
              f"{'ok' if seconds < GOAL_COUNTS_S else 'OVER'} (goal < 1 s)")
    finally:
        await engine.dispose()
    return problems


# --- the polls' queries and their plans ---------------------------------------------------


def polls(now: datetime) -> dict[str, Select[Any]]:
    """What each stage's poll selects (the claim's candidates), as the stages build it; and,
    marked "0026", the conditions polled before the markers."""
    from routing import decide, recheck
    from routing import stage as locate

    free = leases.free(cases, now)
    retry = timedelta(minutes=10)
    decided = exists().where(routing_decisions.c.case_id == cases.c.id,
                             routing_decisions.c.superseded.is_(False))
    final = exists().where(assessments.c.case_id == cases.c.id, assessments.c.status == "final")
    old_route = or_(and_(cases.c.status.in_(due.ROUTED_FROM), ~decided, final),
                    and_(cases.c.status == "held", cases.c.hold_reason == due.KEY_HOLD,
                         cases.c.status_changed_at < now - retry))
    latest = (select(func.max(hosting_evidence.c.checked_at))
              .where(hosting_evidence.c.case_id == cases.c.id).scalar_subquery())
    old_recheck = and_(cases.c.status.in_(due.WATCHED), cases.c.kind == "url",
                       or_(latest.is_(None), latest < now - timedelta(hours=12)))
    pick = select(cases.c.id)
    return {
        "route (routing.decide)": pick.where(*decide.due_now(now, retry), free)
        .order_by(cases.c.route_due_at).limit(8),
        "route, 0026": pick.where(old_route, free).order_by(cases.c.status_changed_at).limit(8),
        "recheck (12 h)": pick.where(recheck.due(now, timedelta(hours=12)), free)
        .order_by(cases.c.recheck_since).limit(16),
        "recheck, 0026": pick.where(old_recheck, free).order_by(cases.c.status_changed_at)
        .limit(16),
        "locate (routing.stage)": pick.where(*locate.due_now(now), free)
        .order_by(locate.DUE).limit(64),
        "locate, 0028": pick.where(
            cases.c.status.in_(locate.TO_LOCATE), cases.c.kind == "url",
            or_(cases.c.locate_after.is_(None), cases.c.locate_after <= now), free)
        .order_by(cases.c.first_reported).limit(64),
        "queue page (50)": select(cases).where(cases.c.status == "awaiting_assessment")
        .order_by(cases.c.first_reported, cases.c.id).limit(51),
    }


async def plans(db: Database) -> None:
    from outbound.follow_up import read_open
    from outbound.partner_outcomes import read_owed

    engine = await open_engine(settings(db.url))
    now = datetime.now(UTC)
    try:
        async with engine.connect() as conn:
            for name, query in polls(now).items():
                seconds = []
                for _ in range(3):
                    began = time.perf_counter()
                    await conn.execute(query)
                    seconds.append(time.perf_counter() - began)
                print(f"  poll {name:26} {min(seconds) * 1000:9.1f} ms (best of 3)")
                sql = str(query.compile(engine.sync_engine,
                                        compile_kwargs={"literal_binds": True}))
                explain = "EXPLAIN QUERY PLAN" if db.dialect == "sqlite" else "EXPLAIN ANALYZE"
                for row in await conn.exec_driver_sql(f"{explain} {sql}"):
                    print(f"      {row[-1]}")
            for name, read in (
                    ("follow-up (marked)", lambda c: read_open(c, ["police"], marked_by=now)),
                    ("follow-up, first pass", lambda c: read_open(c, ["police"])),
                    ("partner outcomes", read_owed)):
                began = time.perf_counter()
                await conn.run_sync(read)
                print(f"  poll {name:26} {(time.perf_counter() - began) * 1000:9.1f} ms")
    finally:
        await engine.dispose()


# --- the run ------------------------------------------------------------------------------


async def run_database(db: Database, args: argparse.Namespace, sealer: Sealer) -> list[str]:
    print(f"\n{db.dialect}: {args.cases} cases")
    meta = await prepare(db, args.cases, sealer)
    if args.prepare_only:
        print(f"  made: {meta}")
        return []
    print(f"  made: {meta['rows']} rows generated and inserted in {meta['generated_s']} s "
          f"(this process's CPU {meta['generate_cpu_s']} s); migrations to the head (report "
          f"counts, markers backfilled, indexes built) {meta['migration_0027_s']} s; "
          f"{meta['made']}")
    problems: list[str] = []
    rates: dict[str, list[Intake]] = {"empty": [], "big": []}
    scratch = Path(tempfile.mkdtemp(prefix="big-", dir=args.tmpdir))
    try:
        for round_no in range(1, args.rounds + 1):
            for side in ("empty", "big"):
                last = round_no == args.rounds
                problems += await one_side(db, side, round_no, last, scratch, args, rates)
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)
    empty_rate, big_rate = (statistics.median(r.rate for r in rates[side])
                            for side in ("empty", "big"))
    empty_cpu, big_cpu = (statistics.median(r.cpu_ms_per_report for r in rates[side])
                          for side in ("empty", "big"))
    ratio = big_rate / empty_rate if empty_rate else 0.0
    print(f"  intake, medians of {args.rounds} rounds: empty {empty_rate:.1f}, big "
          f"{big_rate:.1f} reports/s; ratio big/empty {ratio:.2f}  "
          f"{'ok' if ratio >= GOAL_RATIO else 'UNDER'} (goal >= {GOAL_RATIO}); server CPU "
          f"per report empty {empty_cpu:.2f} ms, big {big_cpu:.2f} ms: "
          f"{empty_cpu / big_cpu if big_cpu else 0:.2f} x as much work per report on empty")
    return problems


async def one_side(db: Database, side: str, round_no: int, last: bool, scratch: Path,
                   args: argparse.Namespace, rates: dict[str, list[Intake]]) -> list[str]:
    """One gateway on the empty (made afresh) or the big database: intake, and in the last
    round on the big one the console, the counts and the plans."""
    problems: list[str] = []
    if side == "empty":
        await empty(db)
    workdir = scratch / f"{side}-{round_no}"
    admin = free_port()
    server = await start(db.empty_url if side == "empty" else db.url,
                         db.folder / "data-keys.json", workdir, admin)
    try:
        # Form ids unique to this run: a form posted again is a duplicate (its reference
        # given back), which a kept database remembers from the runs before.
        result = await intake(server, args, f"big.{RUN}.{db.dialect}.{side}.{round_no}")
        print(f"  round {round_no}, {side:5} database: {result.rate:8.1f} reports/s  server CPU "
              f"{result.cpu_ms_per_report:5.2f} ms/report  idle {args.idle:.0f} s: server CPU "
              f"{result.idle_cpu_s:5.2f} s  other CPU {result.other_cpu_s:5.1f} s  "
              f"load {os.getloadavg()[0]:.1f}")
        rates[side].append(result)
        if result.errors:
            problems.append(f"{side}: {result.errors} load errors")
        # The reports taken are filed before anything else is measured or the next round
        # starts (a backlog left would be the next gateway's work).
        waited = await drained(db.empty_url if side == "empty" else db.url)
        print(f"  (filed {waited:.0f} s after the load)")
        if side == "big" and last and not args.no_console:
            problems += await console(server, workdir, db, admin, args)
        if side == "big" and last and args.plans:  # after the stages' first passes
            await plans(db)
    finally:
        status = await server.stop()
    if status != 0:
        problems.append(f"{side}: serve exited {status}")
    stderr = (workdir / "gateway.stderr").read_text(errors="replace").strip()
    if stderr:
        problems.append(f"{side}: stderr {stderr[-300:]}")
    return problems


async def run(args: argparse.Namespace, folder: Path) -> int:
    sealer = keyring(folder)
    print(f"load: {os.getloadavg()}  ({os.cpu_count()} CPUs)")
    databases = []
    if not args.no_sqlite:
        databases.append(Database("sqlite", f"sqlite+aiosqlite:///{folder}/big-{args.cases}.db",
                                  f"sqlite+aiosqlite:///{folder}/empty.db", folder))
    if args.postgres:
        databases.append(Database("postgresql", args.postgres, args.postgres + "_empty",
                                  folder))
    problems: list[str] = []
    for db in databases:
        problems += await run_database(db, args, sealer)
    print(f"\nload: {os.getloadavg()}")
    for problem in problems:
        print(f"PROBLEM {problem}")
    return 1 if problems else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", required=True,
                        help="where the SQLite file, the keyring and what each database's "
                             "making took are kept between runs")
    parser.add_argument("--cases", type=int, default=1_000_000)
    parser.add_argument("--postgres", metavar="URL",
                        help="also on this PostgreSQL database (dropped and made again when "
                             "not at the head; URL_empty beside it for the baseline)")
    parser.add_argument("--no-sqlite", action="store_true", help="PostgreSQL only")
    parser.add_argument("--plans", action="store_true",
                        help="time the polls' queries and print their plans")
    parser.add_argument("--no-console", action="store_true", help="intake only")
    parser.add_argument("--prepare-only", action="store_true",
                        help="make (or check) the big databases, measure nothing")
    parser.add_argument("--rounds", type=int, default=3,
                        help="intake rounds, each the empty then the big database")
    parser.add_argument("--seconds", type=float, default=20.0, help="intake window (s)")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--settle", type=float, default=10.0,
                        help="seconds after the start before anything is measured")
    parser.add_argument("--idle", type=float, default=15.0,
                        help="seconds without load over which the server's CPU is read")
    parser.add_argument("--requests", type=int, default=60, help="GETs per page measured")
    parser.add_argument("--tmpdir", default=None)
    parser.add_argument("--keep", action="store_true", help="keep the gateways' folders")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    started = time.perf_counter()
    folder = Path(args.dir).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    code = asyncio.run(run(args, folder))
    print(f"done in {time.perf_counter() - started:.0f} s")
    return code


if __name__ == "__main__":
    sys.exit(main())
