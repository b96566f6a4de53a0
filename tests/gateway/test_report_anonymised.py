"""The report survives anonymising: a history of known shape (tests/report_history.py) gives
the expected figures, and after the retention purge anonymises every closed case the report of
each period comes out byte for byte the same in text, JSON and CSV, on SQLite and PostgreSQL;
no value in the database, each sealed one opened with the data keys, then holds a URL, host or
reporter address of those cases (as each did before), and on SQLite neither does the file, its
WAL or its shared memory, in UTF-8 or UTF-16."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.config import RetentionConfig
from gateway.report import as_csv, as_json, as_text
from gateway.retention import purge
from gateway.store.audit import verify
from gateway.store.backend import WriteBackend
from gateway.store.figures import Period
from gateway.store.report import build_report
from gateway.store.tables import cases
from tests.gateway.test_report import PERIODS, expected, from_json
from tests.opened import leaks, opened_database
from tests.report_history import HOME, NOW, UNFILED, Spec, build, specs, unfiled_reporter

#: Cases closed this long are anonymised: every closed case of the history is (checked below).
AFTER_DAYS = 14
#: Raw messages and contacts are kept longer than cases: only anonymising takes them here.
POLICY = RetentionConfig(anonymise_after_days=AFTER_DAYS, raw_message_days=3650,
                         reporter_contact_days=3650)
#: The outcomes that close a case (``moved`` re-routes it: it stays open).
CLOSING = ("removed", "content_unavailable", "not_actionable")
ENCODINGS = ("utf-8", "utf-16-le", "utf-16-be")


def closed(s: Spec) -> bool:
    """Whether the case ends closed: as legal (unless reassessed illegal), or by an outcome."""
    return s.reassessed is None if s.route == "legal" else s.closed in CLOSING


def closed_at(s: Spec) -> datetime:
    """When a closed case reached its state: routed an hour after a legal verdict, or its
    closing outcome."""
    if s.route == "legal":
        assert s.assessed is not None
        return s.assessed + timedelta(hours=1)
    assert s.closed_at is not None
    return s.closed_at


def named(history: list[Spec]) -> dict[str, str]:
    """Every URL, host and reporter address the cases' rows hold, by a name for each."""
    found: dict[str, str] = {}
    for s in history:
        case = f"q{s.quarter}-{s.index}"
        if s.url is not None and s.host is not None:
            found.update({f"{case} url": s.url, f"{case} host": s.host})
        found.update({f"{case} reporter {n}": a for n, a in enumerate(s.reporters)})
    return found


async def reports(engine: AsyncEngine) -> list[tuple[str, str, str]]:
    """The report of each period as text, JSON and CSV."""
    made = []
    for first, last in PERIODS:
        async with engine.connect() as conn:
            report = await build_report(conn, Period(first, last), home_country=HOME, now=NOW)
        made.append((as_text(report), as_json(report), as_csv(report)))
    return made


def files_holding(database: Path, secrets: dict[str, str]) -> list[str]:
    """``file: name (encoding)`` for each secret found in the SQLite file, its WAL or its
    shared memory, as bytes in UTF-8 or UTF-16 (either byte order)."""
    found = []
    for path in (database, database.with_name(database.name + "-wal"),
                 database.with_name(database.name + "-shm")):
        data = path.read_bytes() if path.exists() else b""
        found += [f"{path.name}: {name} ({encoding})" for name, secret in secrets.items()
                  for encoding in ENCODINGS if secret.encode(encoding) in data]
    return found


def names(found: list[str]) -> set[str]:
    """The secrets' names in ``leaks``'s ``table: name`` lines."""
    return {line.split(": ", 1)[1] for line in found}


async def test_the_figures_stay_the_same_and_the_places_and_reporters_go(
    engine: AsyncEngine, backend: WriteBackend
) -> None:
    """Anonymising every closed case of the history changes no figure of any period in any
    format, and leaves none of those cases' URLs, hosts or reporter addresses anywhere in the
    database, opened or not; the open cases and the unread reports keep theirs."""
    history = specs()
    made = await build(backend, history)
    gone = [s for s in history if closed(s)]
    kept = [s for s in history if not closed(s)]
    # Every route and outcome on either side, and every closed case due at the purge's now.
    assert {s.route for s in gone} >= {"legal", "refer", "iccam"}
    assert {s.closed for s in gone} == {None, *CLOSING}
    assert {s.route for s in kept} >= {"legal", "unassessed", "refer", "hold"}
    assert max(closed_at(s) for s in gone) < NOW - timedelta(days=AFTER_DAYS)
    secrets, others = named(gone), named(kept)
    unread = {f"unfiled {n}": unfiled_reporter(n) for n in range(len(UNFILED))}
    assert any(s.url is None for s in gone) and len(secrets) > 2 * len(gone)

    before = await reports(engine)
    for (first, last), (_, json_text, _) in zip(PERIODS, before, strict=True):
        assert from_json(json_text) == expected(history, first, last), (first, last)
    # The scan can fail: before the purge, every one is found where the store keeps it.
    assert names(leaks(await opened_database(engine), secrets)) == set(secrets)

    purged = await purge(backend, POLICY, now=NOW)

    assert purged.anonymised_cases == len(gone)
    async with engine.connect() as conn:
        marked = set((await conn.execute(
            select(cases.c.id).where(cases.c.anonymised_at.is_not(None)))).scalars())
        held, broken, _ = await verify(conn)
    assert marked == {made[s.quarter, s.index] for s in gone}
    assert broken is None and held > 0
    after = await reports(engine)
    for (first, last), was, now in zip(PERIODS, before, after, strict=True):
        for fmt, old, new in zip(("text", "json", "csv"), was, now, strict=True):
            assert new == old, (first, last, fmt)
    rows = await opened_database(engine)
    assert leaks(rows, secrets) == []
    # What is not due keeps its URLs, hosts and addresses: an open case's, an unread report's.
    assert names(leaks(rows, {**others, **unread})) == set(others) | set(unread)
    if engine.dialect.name == "sqlite":
        assert engine.url.database is not None
        database = Path(engine.url.database)
        # The byte scan finds what is there in clear (a network's name), and nothing of a
        # URL, host or address, gone or kept: they are sealed at rest.
        assert files_holding(database, {"org": "Rostelecom"})
        assert files_holding(database, {**secrets, **others, **unread}) == []

