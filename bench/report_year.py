"""The generated year of bench/report.py: a year (2026) of cases in states the code produces,
made deterministically (seeded) and inserted in bulk, ``CHUNK`` cases at a time, on SQLite
(one transaction) or PostgreSQL (COPY). See bench/report.py for what it holds."""

from __future__ import annotations

import random
import sqlite3
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.store.figures import Period

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
              "referred_at", "acknowledged_at", "removed_at", "locate_after"),
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
    """The generated year: ``chunks()`` yields the rows, ``CHUNK`` cases at a time. ``start``
    and ``now``: the year's first moment and the moment it is seen from (its last cases were
    reported 16 days before). ``steady``: as a gateway keeps it running, with no work waiting
    for a stage (every case located, no lookup to retry before a month; bench/big.py)."""

    def __init__(self, cases: int, seed: int, *, start: datetime = START,
                 now: datetime = NOW, steady: bool = False) -> None:
        self.cases = cases
        self.random = random.Random(seed)
        self.bits = random.Random(seed + 1)  # the ids' random bits
        self.analyst = uuid.UUID(int=1)
        self.counter = 0
        self.start, self.now, self.steady = start, now, steady

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
                           self.start))
        span = (self.now - timedelta(days=16) - self.start).total_seconds()
        # Cases come in time order, as they are filed: each chunk is a few weeks.
        moments = sorted(random.Random(self.bits.random()).random() for _ in range(self.cases))
        for n, moment in enumerate(moments):
            self.case(rows, n, self.start + timedelta(seconds=moment * span))
            if len(rows.tables["cases"]) >= CHUNK:
                yield rows
                rows = Rows()
        # Reports never filed: a few still waiting to be read, some that could not be read.
        for n in range(self.cases // 100):
            at = self.start + timedelta(seconds=self.random.random() * span)
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
            if fate < 0.02 and not self.steady:
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
                if self.steady:  # routed: closed, nothing sent (routing.protocol)
                    decided = at + timedelta(seconds=5)
                    rows.add("routing_decisions", (self.uid(decided), cid, decided,
                                                   "protocol-3-legal", "close", None, DUMMY,
                                                   DUMMY, False))
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
        # A lookup that failed for good is tried again after a while (routing.stage).
        retry = self.now + timedelta(days=30) if status == "locate_failed" else None
        rows.add("cases", (
            cid, "no_url" if no_url else "url", status,
            f"k{n:010d}", 2 if again else 1, reported, last, False, reported,
            max(v for v in (reported, *m.values()) if v is not None), 0, hold,
            m["located"], m["assessed"], m["approved"], m["referred"], m["acknowledged"],
            m["removed"], retry))

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
            if self.steady:  # a key that cannot be used is mended, not kept for years
                rule = "hold-unknown-hosting"
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
        if self.steady:  # no deadlines configured (bench/big.py's gateway has none)
            acknowledge_by = remove_by = None
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
                if gone < self.now:
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


def fill_sqlite(path: str, history: History,
                columns_of: dict[str, tuple[str, ...]] = COLUMNS) -> int:
    """Bulk inserts in one transaction (no fsync per chunk): the bench's own, not the
    gateway's writer, which is not what is measured here. ``columns_of``: each table's
    columns, in the order of its rows' values."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA synchronous=OFF")
    db.execute("PRAGMA foreign_keys=OFF")
    db.execute("BEGIN")
    count = 0
    for chunk in history.chunks():
        for table, rows in chunk.in_order():
            columns = columns_of[table]
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


async def fill_postgres(engine: AsyncEngine, history: History,
                        columns_of: dict[str, tuple[str, ...]] = COLUMNS) -> int:
    """COPY, chunk by chunk, through asyncpg."""
    count = 0
    async with engine.connect() as conn:
        raw = await conn.get_raw_connection()
        driver = raw.driver_connection
        assert driver is not None
        for chunk in history.chunks():
            for table, rows in chunk.in_order():
                await driver.copy_records_to_table(table, records=rows,
                                                   columns=list(columns_of[table]))
                count += len(rows)
        await conn.commit()
        await conn.execute(text("ANALYZE"))
        await conn.commit()
    return count
