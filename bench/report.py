"""The report for a year of 1 million cases: how long ``build_report`` takes, section by
section, on SQLite (a real file) and on PostgreSQL, with the query plans of its slow queries.

The year (2026) is generated (``report_year.py``) deterministically (seeded) by bulk inserts
of rows in states the code produces, in time order with UUIDv7 ids of their moments as the
gateway makes them: each case with its report(s) (a tenth reported twice; 3 % without a URL), its
hosting lookup (country, ASN, organisation; some CDN-fronted, some unresolvable, a few failed
then found), and, as far as it got, its verdict with the classification codes, its routing
decision (refer or hold), its referral and the outcomes (acknowledged, removed, not actionable)
with the milestones of ``gateway.store.lifecycle`` set as the transitions set them; plus
reports never filed. Sealed columns hold NULL where they may, else a short dummy value: the
figures never read them (``gateway.store.report``), so nothing here needs a key.

The bulk load bypasses the writes that keep what the report pre-counts, so the bench then
counts it as migrations 0027 and 0029 do (``report_facts.rebuild``: the reports' filed
codes, the verdicts' day counts; ``report_facts.referral_times``: each referral's times to
its acknowledgement and removal), and prints how long that took; a kept year migrated to a newer
revision prints how long the migration took. Then, after ``ANALYZE`` (``VACUUM ANALYZE``
on PostgreSQL, as autovacuum would after a bulk load), it runs the report for the year as
the CLI does (one connection, ``build_report``) ``--rounds`` times, prints the best and
median seconds of the whole report (and this process's CPU time, which another's load on
the machine does not inflate), with ``--page`` of the console's page (the report rendered
as HTML with its charts), and of each section, then every statement over ``--slow``
seconds with its plan (EXPLAIN QUERY PLAN on SQLite; EXPLAIN (ANALYZE, BUFFERS) on
PostgreSQL). Run from the project root, on an idle machine:

    .venv/bin/python bench/report.py [--cases N] [--rounds R] [--page] [--keep DIR]
        [--reuse] [--postgres postgresql+asyncpg://postgres@127.0.0.1:5432/bench]

``--postgres`` names a database the bench may empty (its tables are dropped and migrated
afresh). Exit status 0 when the report was made; the goal (under 5 s) is reported, not
enforced.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The generated year is in report_year.py beside this file: the script's folder is on
# sys.path when it runs as a script.
from report_year import HOME, NOW, PERIOD, History, fill_postgres, fill_sqlite
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from gateway.report import as_html
from gateway.store import migrate
from gateway.store.engine import DatabaseSettings, open_engine
from gateway.store.report import (
    _assessment,
    _reports,
    build_report,
    received_counts,
    verdicts_counted,
)
from gateway.store.report_facts import rebuild, referral_times
from gateway.store.report_referrals import (
    destinations,
    forwarding,
    referrals_made,
    removals,
    times,
)
from gateway.store.report_series import series
from gateway.store.report_sql import report_settings

GOAL_SECONDS = 5.0  # the issue: a year of 1 million cases


@dataclass
class Statement:
    sql: str
    parameters: Any
    seconds: float
    section: str


class Recorder:
    """Every statement the report runs, with its time and section (an engine event)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.statements: list[Statement] = []
        self.section = ""
        self.on = False
        self._began = 0.0
        event.listen(engine.sync_engine, "before_cursor_execute", self._before)
        event.listen(engine.sync_engine, "after_cursor_execute", self._after)

    def _before(self, *args: Any) -> None:
        self._began = time.perf_counter()

    def _after(self, conn: Any, cursor: Any, statement: str, parameters: Any,
               context: Any, executemany: bool) -> None:
        if self.on:
            self.statements.append(Statement(statement, parameters,
                                             time.perf_counter() - self._began, self.section))


Section = Callable[[AsyncConnection, dict[str, Any]], Awaitable[Any]]


async def _now(value: Any) -> Any:
    """A section computed without the database, as the others are awaited."""
    return value


async def shared(conn: AsyncConnection, done: dict[str, Any]) -> None:
    """The passes several sections share (``build_report`` makes them first)."""
    done["received"] = await received_counts(conn, PERIOD)
    done["made"] = await referrals_made(conn, PERIOD)
    done["removed"] = await removals(conn, PERIOD)
    done["verdicts"] = await verdicts_counted(conn, PERIOD)


SECTIONS: tuple[tuple[str, Section], ...] = (
    ("shared passes", shared),
    ("reports", lambda conn, done: _reports(conn, PERIOD, done["received"])),
    ("assessment+hosting",
     lambda conn, done: _assessment(conn, PERIOD, done["verdicts"], home_country=HOME,
                                    top=10)),
    ("forwarding", lambda conn, done: forwarding(conn, PERIOD, done["made"])),
    ("times", lambda conn, done: times(conn, PERIOD, now=NOW, removed=done["removed"])),
    ("destinations", lambda conn, done: destinations(conn, PERIOD, done["made"])),
    ("series", lambda conn, done: _now(series(PERIOD, done["verdicts"].by_day,
                                              done["received"], done["removed"]))),
)


def server_cpu(pids: Sequence[int]) -> float:
    """The CPU time (user+sys, s) of these PostgreSQL server processes, from /proc (the
    server must run on this machine). A parallel query's workers are other processes, not
    counted: ``--pg-workers 0`` runs the report without them, so that this is the server's
    whole CPU time."""
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return float("nan")
        total += sum(int(f) for f in fields[11:13]) / os.sysconf("SC_CLK_TCK")
    return total


async def measure(engine: AsyncEngine, rounds: int, slow: float, dialect: str,
                  page: bool = False, workers: int | None = None) -> None:
    recorder = Recorder(engine)
    whole: list[float] = []
    cpu: list[float] = []
    server: list[float] = []
    pages: list[float] = []
    parts: dict[str, list[float]] = {name: [] for name, _ in SECTIONS}
    async with engine.connect() as conn:
        backend: list[int] = []
        if dialect == "postgresql":
            backend = [int((await conn.exec_driver_sql("SELECT pg_backend_pid()")).scalar_one())]
            if workers is not None:  # for the session, not only the report's transaction
                await conn.exec_driver_sql(f"SET max_parallel_workers_per_gather = {workers:d}")
            await conn.commit()
        await build_report(conn, PERIOD, home_country=HOME, now=NOW)  # warm the cache
        for _ in range(rounds):
            began, used, served = time.perf_counter(), time.process_time(), server_cpu(backend)
            report = await build_report(conn, PERIOD, home_country=HOME, now=NOW)
            whole.append(time.perf_counter() - began)
            cpu.append(time.process_time() - used)
            server.append(server_cpu(backend) - served)
            if page:  # the console's page: the same report, rendered with its charts
                html = await asyncio.to_thread(as_html, report)
                pages.append(time.perf_counter() - began)
            recorder.on = True
            recorder.statements.clear()
            done: dict[str, Any] = {}
            async with report_settings(conn):
                for name, section in SECTIONS:
                    recorder.section = name
                    began = time.perf_counter()
                    await section(conn, done)
                    parts[name].append(time.perf_counter() - began)
            recorder.on = False
        print(f"  report for {PERIOD.first}..{PERIOD.last}: best {min(whole):.2f} s, median "
              f"{statistics.median(whole):.2f} s over {rounds} round(s) "
              f"(goal < {GOAL_SECONDS:.0f} s: {'met' if min(whole) < GOAL_SECONDS else 'NOT met'})")
        # The machine may be shared: this process's CPU time (SQLite's work runs in it) does
        # not grow with another's load as the wall time does.
        print(f"  CPU time of this process (SQLite's work, and Python's): best {min(cpu):.2f} s; "
              f"load average {os.getloadavg()[0]:.2f}")
        if backend:
            print(f"  CPU time of the PostgreSQL backend serving the report (/proc/{backend[0]}"
                  f"/stat; parallel workers per gather: {'default' if workers is None else workers}"
                  f"): best {min(server):.2f} s; with this process's: best "
                  f"{min(c + s for c, s in zip(cpu, server, strict=True)):.2f} s")
        if pages:
            print(f"  the page (the report and its HTML with the charts, as the console's "
                  f"/report shows it; {len(html) // 1024} KiB): best {min(pages):.2f} s, "
                  f"median {statistics.median(pages):.2f} s")
        print(f"  figures: {report.figure('reports.received').value} reports received, "
              f"{report.figure('assessment.assessed').value} cases assessed, "
              f"{report.figure('forwarding.referrals').value} referrals, "
              f"{report.figure('times.removed').value} removed")
        for name, values in parts.items():
            print(f"    {name:<20} best {min(values):6.2f} s  median "
                  f"{statistics.median(values):6.2f} s")
        slowest = sorted(recorder.statements, key=lambda s: -s.seconds)
        print(f"  statements over {slow:.2f} s (last round), slowest first:")
        for statement in slowest:
            if statement.seconds < slow:
                break
            print(f"\n  [{statement.section}] {statement.seconds:.2f} s")
            print("    " + " ".join(statement.sql.split())[:600])
            for line in await plan(conn, statement, dialect):
                print(f"      {line}")


async def plan(conn: AsyncConnection, statement: Statement, dialect: str) -> list[str]:
    if dialect == "sqlite":
        rows = await conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement.sql,
                                          statement.parameters)
        return [f"{'  ' * depth(row, rows_seen)}{row[3]}"
                for rows_seen in [{}] for row in rows]
    rows = await conn.exec_driver_sql("EXPLAIN (ANALYZE, BUFFERS) " + statement.sql,
                                      statement.parameters)
    return [row[0] for row in rows]


def depth(row: Sequence[Any], seen: dict[int, int]) -> int:
    """An EXPLAIN QUERY PLAN row's depth in its tree (its parent's depth plus one)."""
    seen[row[0]] = seen.get(row[1], -1) + 1
    return seen[row[0]]


async def settle(engine: AsyncEngine, dialect: str) -> None:
    """Statistics for the planner; on PostgreSQL a VACUUM too, as autovacuum makes after a
    bulk load or a backfill: its index-only scans then skip the table's pages."""
    async with engine.connect() as conn:
        if dialect == "postgresql":
            conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
            await conn.exec_driver_sql("VACUUM ANALYZE")
        else:
            await conn.exec_driver_sql("ANALYZE")
            await conn.commit()


async def run_database(url: str, history: History, args: argparse.Namespace,
                       dialect: str, *, reuse: bool) -> None:
    # The gateway's engine, with a statement timeout long enough for the slowest query.
    engine = await open_engine(DatabaseSettings(url=url, busy_timeout=5.0,
                                                statement_timeout=600.0, pool_size=2))
    try:
        if dialect == "postgresql" and reuse:
            async with engine.connect() as conn:
                reuse = bool((await conn.execute(text(
                    "SELECT to_regclass('cases') IS NOT NULL AND EXISTS "
                    "(SELECT FROM pg_class WHERE relname = 'cases' AND reltuples > 0)"
                ))).scalar())
        if dialect == "postgresql" and not reuse:
            async with engine.begin() as conn:
                await conn.execute(text("DROP SCHEMA public CASCADE"))
                await conn.execute(text("CREATE SCHEMA public"))
        began = time.perf_counter()
        was = await migrate.current(engine) if reuse else None
        await migrate.upgrade(engine, args.revision)
        if reuse and was != await migrate.current(engine):
            print(f"{dialect}: migrated from {was} to {await migrate.current(engine)} in "
                  f"{time.perf_counter() - began:.1f} s (backfills included)")
        if reuse:
            await settle(engine, dialect)
            print(f"{dialect}: the kept year reused, migrated to "
                  f"{await migrate.current(engine)}")
            await measure(engine, args.rounds, args.slow, dialect, args.page, args.pg_workers)
            return
        began = time.perf_counter()
        if dialect == "sqlite":
            count = await asyncio.to_thread(
                fill_sqlite, url.removeprefix("sqlite+aiosqlite:///"), history)
        else:
            count = await fill_postgres(engine, history)
        print(f"{dialect}: {history.cases} cases, {count} rows generated and inserted in "
              f"{time.perf_counter() - began:.1f} s (migrations at "
              f"{await migrate.current(engine)})")
        began = time.perf_counter()
        async with engine.begin() as conn:  # what migrations 0027 and 0029 backfill
            states = await conn.run_sync(rebuild)
            await conn.run_sync(referral_times)
        print(f"{dialect}: the report's codes and verdicts counted ({states} case states) "
              f"in {time.perf_counter() - began:.1f} s")
        await settle(engine, dialect)
        await measure(engine, args.rounds, args.slow, dialect, args.page, args.pg_workers)
    finally:
        await engine.dispose()


async def run(args: argparse.Namespace, database: Path, reuse: bool) -> int:
    if not args.no_sqlite:
        await run_database(f"sqlite+aiosqlite:///{database}", History(args.cases, args.seed),
                           args, "sqlite", reuse=reuse)
    if args.postgres:
        print()
        await run_database(args.postgres, History(args.cases, args.seed), args, "postgresql",
                           reuse=args.reuse)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=1_000_000,
                        help="cases in the year (default 1000000)")
    parser.add_argument("--rounds", type=int, default=3, help="timed reports (default 3)")
    parser.add_argument("--slow", type=float, default=0.2,
                        help="show the plan of each statement slower than this (s)")
    parser.add_argument("--seed", type=int, default=18)
    parser.add_argument("--keep", metavar="DIR",
                        help="make the SQLite file in DIR and keep it (default: a temporary "
                             "folder, removed)")
    parser.add_argument("--reuse", action="store_true",
                        help="with --keep, or --postgres: measure the year kept there "
                             "(migrated to --revision) instead of generating it again")
    parser.add_argument("--postgres", metavar="URL",
                        help="also on this PostgreSQL database (emptied first)")
    parser.add_argument("--revision", default="head",
                        help="migrate to this revision (0023: without the report's indexes)")
    parser.add_argument("--no-sqlite", action="store_true", help="PostgreSQL only")
    parser.add_argument("--pg-workers", type=int, metavar="N",
                        help="PostgreSQL: max_parallel_workers_per_gather for the report "
                             "(0: the backend's CPU time is all the server's)")
    parser.add_argument("--page", action="store_true",
                        help="also time the console's page: the report rendered as HTML "
                             "with its charts (gateway.report.as_html, the page's body)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-report-") as scratch:
        folder = Path(args.keep or scratch)
        folder.mkdir(parents=True, exist_ok=True)
        database = folder / "report.db"
        reuse = args.reuse and database.exists()
        if not reuse:
            database.unlink(missing_ok=True)
        return asyncio.run(run(args, database, reuse))


if __name__ == "__main__":
    sys.exit(main())
