"""The report for a year of 1 million cases: how long ``build_report`` takes, section by
section, on SQLite (a real file) and on PostgreSQL, with the query plans of its slow queries.

The year (2026) is generated deterministically (seeded) by bulk inserts of rows in states the
code produces: each case with its report(s) (a tenth reported twice; 3 % without a URL), its
hosting lookup (country, ASN, organisation; some CDN-fronted, some unresolvable, a few failed
then found), and, as far as it got, its verdict with the classification codes, its routing
decision (refer or hold), its referral and the outcomes (acknowledged, removed, not actionable)
with the milestones of ``gateway.store.lifecycle`` set as the transitions set them; plus
reports never filed. Sealed columns hold NULL where they may, else a short dummy value: the
figures never read them (``gateway.store.report``), so nothing here needs a key.

Then, after ``ANALYZE``, it runs the report for the year as the CLI does (one connection,
``build_report``) ``--rounds`` times, prints the best and median seconds of the whole report
and of each section, then every statement over ``--slow`` seconds with its plan (EXPLAIN QUERY
PLAN on SQLite; EXPLAIN (ANALYZE, BUFFERS) on PostgreSQL). Run from the project root, on an
idle machine:

    .venv/bin/python bench/report.py [--cases N] [--rounds R] [--keep DIR]
        [--postgres postgresql+asyncpg://postgres@127.0.0.1:5432/bench]

``--postgres`` names a database the bench may empty (its tables are dropped and migrated
afresh). Exit status 0 when the report was made; the goal (under 5 s) is reported, not
enforced.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from gateway.report import as_html
from gateway.store import migrate
from gateway.store.engine import DatabaseSettings, open_engine
from gateway.store.figures import Period
from gateway.store.report import (
    _assessment,
    _latest_verdict,
    _reports,
    build_report,
    received_counts,
)
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
YEAR = 2026
START = datetime(YEAR, 1, 1, tzinfo=UTC)
NOW = datetime(YEAR + 1, 1, 15, 12, tzinfo=UTC)
PERIOD = Period(date(YEAR, 1, 1), date(YEAR, 12, 31))
HOME = "BE"
#: A value for sealed columns that may not be NULL (the figures never read one).
DUMMY = b"\x01bench"
CHUNK = 50_000

CHANNELS = (("web", 55), ("smtp", 30), ("api", 10), ("partner", 5))
#: Hosting country, AS number, organisation, destination of the referral, routing rule.
HOSTING = (
    ("BE", 5432, "Proximus", "police", "refer-home"),
    ("NL", 60781, "LeaseWeb", "hotline:NL", "refer-hotline"),
    ("US", 13335, "Cloudflare", "hotline:US", "refer-hotline"),
    ("DE", 24940, "Hetzner", "hotline:DE", "refer-hotline"),
    ("FR", 16276, "OVH", "hotline:FR", "refer-hotline"),
    ("RU", 9123, "TimeWeb", "police_international", "refer-no-hotline"),
    ("SC", 57172, "Global Layer", "police_international", "refer-no-hotline"),
    ("UA", 15497, "Colocall", "iccam:UA", "refer-iccam"),
)
HOSTING_WEIGHTS = (8, 30, 22, 12, 10, 8, 6, 4)
AGE_GROUPS = ("infant", "pre_pubescent", "pubescent", "unknown")
GENDERS = ("female", "male", "both", "unknown")
MEDIA = ("images", "video", "both", "other")
SITE_TYPES = ("image_host", "file_host", "forum", "social_network", "website")
REASONS = ("adult", "not_csam", "unavailable", "duplicate", "other")


def ts(moment: datetime) -> str:
    """How SQLAlchemy stores a DateTime on SQLite (a sortable string, UTC)."""
    return moment.strftime("%Y-%m-%d %H:%M:%S.%f")


@dataclass
class Rows:
    """One chunk of generated rows, by table, as tuples in ``COLUMNS`` order."""

    tables: dict[str, list[tuple[Any, ...]]] = field(default_factory=dict)

    def add(self, table: str, row: tuple[Any, ...]) -> None:
        self.tables.setdefault(table, []).append(row)

    def in_order(self) -> Iterator[tuple[str, list[tuple[Any, ...]]]]:
        """Each table's rows, a table after those its foreign keys name, and within a table
        by id: in time order, as the gateway inserts them."""
        return ((table, sorted(self.tables[table], key=lambda row: row[0]))
                for table in COLUMNS if table in self.tables)


COLUMNS = {
    "users": ("id", "name", "role", "password_hash", "totp_secret", "must_change_password",
              "failed_logins", "disabled", "created_at"),
    "submissions": ("id", "reference", "channel", "status", "received_at", "rcpt_tos",
                    "body_sha256", "raw_size", "parsed_at", "url_count"),
    "cases": ("id", "kind", "status", "url_key", "report_count", "first_reported",
              "last_reported", "reappeared", "created_at", "status_changed_at",
              "locate_attempts", "hold_reason", "located_at", "assessed_at", "approved_at",
              "referred_at", "acknowledged_at", "removed_at"),
    "case_reports": ("id", "case_id", "submission_id", "reported_at"),
    "hosting_evidence": ("id", "case_id", "checked_at", "trigger", "host", "resolver",
                         "outcome", "status", "country", "asn", "org", "cdn", "source", "ips",
                         "records", "addresses", "databases"),
    "assessments": ("id", "case_id", "user_id", "verdict", "classification",
                    "hosting_country", "created_at", "status", "age_group", "gender", "media",
                    "site_type", "computer_generated", "self_generated", "commercial",
                    "reason"),
    "routing_decisions": ("id", "case_id", "created_at", "rule", "outcome", "destination",
                          "facts", "explanation", "superseded"),
    "referrals": ("id", "case_id", "decision_id", "reference", "destination", "email",
                  "status", "created_at", "sent_at", "outcome", "outcome_at",
                  "acknowledge_by", "remove_by"),
    "referral_outcomes": ("id", "referral_id", "case_id", "outcome", "reason_code",
                          "occurred_at", "recorded_at", "source", "destination"),
}
#: Columns that hold a UUID, a timestamp or a boolean (converted per database).
UUIDS = {"id", "case_id", "submission_id", "user_id", "decision_id", "referral_id"}
BOOLS = {"must_change_password", "disabled", "reappeared", "cdn", "computer_generated",
         "self_generated", "commercial", "superseded"}


class History:
    """The generated year: ``chunks()`` yields the rows, ``CHUNK`` cases at a time."""

    def __init__(self, cases: int, seed: int) -> None:
        self.cases = cases
        self.random = random.Random(seed)
        self.bits = random.Random(seed + 1)  # the ids' random bits
        self.analyst = uuid.UUID(int=1)
        self.counter = 0

    def uid(self, at: datetime) -> uuid.UUID:
        """The id the gateway gives a row made at ``at``: a UUIDv7 of that moment
        (``gateway.store.ids``), so that ids sort in time order as the gateway's do (its
        indexes' locality depends on it); the random bits seeded."""
        self.counter += 1
        millis = int(at.timestamp() * 1000)
        return uuid.UUID(int=millis << 80 | 0x7 << 76 | self.bits.getrandbits(12) << 64
                         | 0b10 << 62 | self.bits.getrandbits(62))

    def chunks(self) -> Iterator[Rows]:
        rows = Rows()
        rows.add("users", (self.analyst, "analyst", "analyst", "x", DUMMY, False, 0, False,
                           START))
        span = (NOW - timedelta(days=16) - START).total_seconds()
        # Cases come in time order, as they are filed: each chunk is a few weeks.
        moments = sorted(random.Random(self.bits.random()).random() for _ in range(self.cases))
        for n, moment in enumerate(moments):
            self.case(rows, n, START + timedelta(seconds=moment * span))
            if len(rows.tables["cases"]) >= CHUNK:
                yield rows
                rows = Rows()
        # Reports never filed: a few still waiting to be read, some that could not be read.
        for n in range(self.cases // 100):
            at = START + timedelta(seconds=self.random.random() * span)
            status = "received" if n % 5 == 0 else "parse_failed"
            rows.add("submissions", (self.uid(at), f"U-{n:09d}", "smtp", status, at, "[]",
                                     "0" * 64, 1000, None, None))
        yield rows

    def submission(self, rows: Rows, case_id: uuid.UUID, at: datetime, urls: int) -> None:
        r = self.random
        sid = self.uid(at)
        channel = r.choices([c for c, _ in CHANNELS], [w for _, w in CHANNELS])[0]
        rows.add("submissions", (sid, f"R-{self.counter:010d}", channel, "parsed", at, "[]",
                                 f"{self.counter:064x}", 2000 + self.counter % 3000,
                                 at + timedelta(seconds=2), urls))
        rows.add("case_reports", (self.uid(at), case_id, sid, at))

    def case(self, rows: Rows, n: int, reported: datetime) -> None:
        r = self.random
        cid = self.uid(reported)
        no_url = r.random() < 0.03
        self.submission(rows, cid, reported, 0 if no_url else 1)
        last = reported
        again = not no_url and r.random() < 0.1
        if again:
            last = reported + timedelta(hours=r.expovariate(1 / 200))
            self.submission(rows, cid, last, 1)
        m: dict[str, datetime | None] = dict.fromkeys(
            ("located", "assessed", "approved", "referred", "acknowledged", "removed"))
        status, hold = "awaiting_assessment", None
        fate = r.random()
        at = reported
        if not no_url:
            if fate < 0.02:
                status = "new"
            elif fate < 0.03:
                status = "locate_failed"
                rows.add("hosting_evidence", self.evidence(cid, at + timedelta(minutes=1),
                                                           failed=True))
            else:
                if r.random() < 0.03:  # a failed lookup, then one that answered
                    rows.add("hosting_evidence", self.evidence(
                        cid, at + timedelta(seconds=30), failed=True))
                at += timedelta(minutes=2 + r.random() * 10)
                m["located"] = at
                evidence = self.evidence(cid, at)
                rows.add("hosting_evidence", evidence)
        if status == "awaiting_assessment" and fate >= 0.08:
            at += timedelta(hours=r.expovariate(1 / 20))
            m["assessed"] = m["approved"] = at
            illegal = r.random() < 0.55 and not no_url
            if not illegal:
                status = "closed_legal"
                rows.add("assessments", (
                    self.uid(at), cid, self.analyst, "legal", "not_illegal", None, at, "final",
                    None, None, None, None, None, None, None, r.choice(REASONS)))
            else:
                host = r.choices(HOSTING, HOSTING_WEIGHTS)[0]
                named = host[0] if r.random() < 0.1 else None
                rows.add("assessments", (
                    self.uid(at), cid, self.analyst, "illegal",
                    "baseline" if r.random() < 0.8 else "national", named, at, "final",
                    r.choice(AGE_GROUPS), r.choice(GENDERS), r.choice(MEDIA),
                    r.choice(SITE_TYPES), r.random() < 0.05, r.random() < 0.2,
                    r.random() < 0.1, None))
                status, hold = self.route(rows, cid, at, host, m)
        rows.add("cases", (
            cid, "no_url" if no_url else "url", status,
            f"k{n:010d}", 2 if again else 1, reported, last, False, reported,
            max(v for v in (reported, *m.values()) if v is not None), 0, hold,
            m["located"], m["assessed"], m["approved"], m["referred"], m["acknowledged"],
            m["removed"]))

    def evidence(self, cid: uuid.UUID, at: datetime, *, failed: bool = False
                 ) -> tuple[Any, ...]:
        r = self.random
        if failed:
            return (self.uid(at), cid, at, "auto", DUMMY, "system", "failed", "failed", None,
                    None, None, False, None, DUMMY, DUMMY, DUMMY, DUMMY)
        kind = r.random()
        if kind < 0.04:
            return (self.uid(at), cid, at, "auto", DUMMY, "system", "nxdomain", "unresolvable",
                    None, None, None, False, None, DUMMY, DUMMY, DUMMY, DUMMY)
        host = r.choices(HOSTING, HOSTING_WEIGHTS)[0]
        cdn = kind < 0.12
        return (self.uid(at), cid, at, "auto", DUMMY, "system", "answer",
                "cdn" if cdn else "located", None if cdn else host[0],
                13335 if cdn else host[1], "Cloudflare" if cdn else host[2], cdn, "geoip",
                DUMMY, DUMMY, DUMMY, DUMMY)

    def route(self, rows: Rows, cid: uuid.UUID, at: datetime, host: tuple[str, ...],
              m: dict[str, datetime | None]) -> tuple[str, str | None]:
        r = self.random
        decided = at + timedelta(seconds=5)
        decision = self.uid(decided)
        if r.random() < 0.04:
            rule = r.choice(("hold-unknown-hosting", "hold-no-key"))
            rows.add("routing_decisions", (decision, cid, decided, rule, "hold", None,
                                           DUMMY, DUMMY, False))
            return "held", rule
        country, _, _, destination, rule = host
        iccam = destination.startswith("iccam")
        rows.add("routing_decisions", (decision, cid, decided, rule,
                                       "iccam" if iccam else "refer", destination, DUMMY,
                                       DUMMY, False))
        made = decided + (timedelta(hours=r.expovariate(1 / 6)) if iccam
                          else timedelta(seconds=1))
        m["referred"] = made
        referral = self.uid(made)
        sent = None if iccam else made + timedelta(seconds=3)
        delivery = "iccam" if iccam else ("failed" if r.random() < 0.005 else "sent")
        acknowledge_by, remove_by = made + timedelta(days=2), made + timedelta(days=7)
        outcome = outcome_at = None
        status = "referred"
        fate = r.random()
        if delivery != "failed" and fate < 0.85:
            acked = made + timedelta(hours=r.expovariate(1 / 10))
            m["acknowledged"] = acked
            self.outcome(rows, referral, cid, "acknowledged", None, acked, destination)
            outcome, outcome_at, status = "acknowledged", acked, "acknowledged"
            if fate < 0.7:
                gone = made + timedelta(hours=r.expovariate(1 / 60))
                if gone < NOW:
                    m["removed"] = gone
                    self.outcome(rows, referral, cid, "removed", None, gone, destination)
                    outcome, outcome_at, status = "removed", gone, "removed"
            elif fate < 0.75:
                said = acked + timedelta(hours=1)
                self.outcome(rows, referral, cid, "not_actionable", "no_jurisdiction", said,
                             destination)
                outcome, outcome_at, status = "not_actionable", said, "not_actionable"
        rows.add("referrals", (referral, cid, decision, f"BE-{self.counter:010d}", destination,
                               None if iccam else f"{country.lower()}@example.org", delivery,
                               made, sent, outcome, outcome_at, acknowledge_by, remove_by))
        return status, None

    def outcome(self, rows: Rows, referral: uuid.UUID, cid: uuid.UUID, outcome: str,
                reason: str | None, at: datetime, destination: str) -> None:
        rows.add("referral_outcomes", (self.uid(at), referral, cid, outcome, reason, at,
                                       at + timedelta(minutes=5), "reply", destination))


def sqlite_value(column: str, value: Any) -> Any:
    if value is None:
        return None
    if column in UUIDS:
        return value.hex
    if isinstance(value, datetime):
        return ts(value)
    if column in BOOLS:
        return int(value)
    return value


def fill_sqlite(path: str, history: History) -> int:
    """Bulk inserts in one transaction (no fsync per chunk): the bench's own, not the
    gateway's writer, which is not what is measured here."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA synchronous=OFF")
    db.execute("PRAGMA foreign_keys=OFF")
    db.execute("BEGIN")
    count = 0
    for chunk in history.chunks():
        for table, rows in chunk.in_order():
            columns = COLUMNS[table]
            db.executemany(
                f"INSERT INTO {table} ({', '.join(columns)}) VALUES "
                f"({', '.join('?' * len(columns))})",
                [tuple(sqlite_value(c, v) for c, v in zip(columns, row, strict=True))
                 for row in rows])
            count += len(rows)
    db.execute("COMMIT")
    db.execute("ANALYZE")
    db.close()
    return count


async def fill_postgres(engine: AsyncEngine, history: History) -> int:
    """COPY, chunk by chunk, through asyncpg."""
    count = 0
    async with engine.connect() as conn:
        raw = await conn.get_raw_connection()
        driver = raw.driver_connection
        assert driver is not None
        for chunk in history.chunks():
            for table, rows in chunk.in_order():
                await driver.copy_records_to_table(table, records=rows,
                                                   columns=list(COLUMNS[table]))
                count += len(rows)
        await conn.commit()
        await conn.execute(text("ANALYZE"))
        await conn.commit()
    return count


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


async def shared(conn: AsyncConnection, done: dict[str, Any]) -> None:
    """The passes several sections share (``build_report`` makes them first)."""
    done["received"] = await received_counts(conn, PERIOD)
    done["made"] = await referrals_made(conn, PERIOD)
    done["removed"] = await removals(conn, PERIOD)


SECTIONS: tuple[tuple[str, Section], ...] = (
    ("shared passes", shared),
    ("reports", lambda conn, done: _reports(conn, PERIOD, done["received"])),
    ("assessment+hosting",
     lambda conn, done: _assessment(conn, PERIOD, home_country=HOME, top=10)),
    ("forwarding", lambda conn, done: forwarding(conn, PERIOD, done["made"])),
    ("times", lambda conn, done: times(conn, PERIOD, now=NOW, removed=done["removed"])),
    ("destinations", lambda conn, done: destinations(conn, PERIOD, done["made"])),
    ("series", lambda conn, done: series(conn, PERIOD, _latest_verdict(PERIOD),
                                         done["received"], done["removed"])),
)


async def measure(engine: AsyncEngine, rounds: int, slow: float, dialect: str,
                  page: bool = False) -> None:
    recorder = Recorder(engine)
    whole: list[float] = []
    cpu: list[float] = []
    pages: list[float] = []
    parts: dict[str, list[float]] = {name: [] for name, _ in SECTIONS}
    async with engine.connect() as conn:
        await build_report(conn, PERIOD, home_country=HOME, now=NOW)  # warm the cache
        for _ in range(rounds):
            began, used = time.perf_counter(), time.process_time()
            report = await build_report(conn, PERIOD, home_country=HOME, now=NOW)
            whole.append(time.perf_counter() - began)
            cpu.append(time.process_time() - used)
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
        await migrate.upgrade(engine, args.revision)
        if reuse:
            async with engine.begin() as conn:
                await conn.exec_driver_sql("ANALYZE")
            print(f"{dialect}: the kept year reused, migrated to "
                  f"{await migrate.current(engine)}")
            await measure(engine, args.rounds, args.slow, dialect, args.page)
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
        await measure(engine, args.rounds, args.slow, dialect, args.page)
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
