"""``db upgrade`` seals a database the last release without sealing wrote (the fixture
``tests/fixtures/presealing.db``, made by ``make_presealing.py`` at 4282d13), in place and
resumably; the keyring's check value stops a wrong keyring."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import shutil
import sqlite3
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, inspect, select

from gateway.database import load_sealer, open_database
from gateway.store import sealing_state
from gateway.store.audit import verify as verify_audit
from gateway.store.engine import IMMEDIATE
from gateway.store.resealing import LOOKUPS, Stopped, sealed_tables
from gateway.store.sealed import CLEAR, SEALED, open_value, sealer_of
from gateway.store.sealing import WrongKeyring, create_keyring
from gateway.store.tables import audit_log, case_reports, cases
from gateway.store.times import utc
from gateway.store.upgrade import upgrade_database
from tests.gateway.test_cli import write_config

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "presealing.db"
#: Every distinctive string the fixture's reports carry (hosts, URLs, subjects, senders, texts).
CANARY = "zebracanary"

pytestmark = pytest.mark.startup  # migrations and VACUUM: start-up work, not serving


def presealed(tmp_path: Path) -> Path:
    copy = tmp_path / "var" / "gateway.db"
    copy.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(FIXTURE, copy)
    return copy


def config_for(tmp_path: Path, database: Path) -> Path:
    return write_config(tmp_path, f'[database]\nurl = "sqlite+aiosqlite:///{database}"\n'
                                  f'[data]\nkeyring = "{tmp_path}/keys/data-keys.json"\n')


async def read_clear(database: Path) -> dict[tuple[str, str, str], Any]:
    """Every sealed, lookup and lookup-source column of every row, as the older release
    stored it."""
    from gateway.store.engine import DatabaseSettings, open_engine

    engine = await open_engine(DatabaseSettings(f"sqlite+aiosqlite:///{database}", 5, 5, 1))
    values: dict[tuple[str, str, str], Any] = {}
    try:
        async with engine.connect() as conn:
            # Tables added since that release are not there (nothing of theirs to seal).
            present = set(await conn.run_sync(lambda sync: inspect(sync).get_table_names()))
            for table in sealed_tables(with_trail=False):
                if table.name not in present:
                    continue
                names = list(dict.fromkeys([*SEALED[table.name], *LOOKUPS.get(table.name, {}),
                                            *(n for lookup in LOOKUPS.get(table.name, {})
                                              .values() for n in lookup.needs)]))
                (primary,) = table.primary_key.columns
                for row in await conn.execute(select(primary, *(table.c[n] for n in names))):
                    for name in names:
                        value = row._mapping[name]
                        if SEALED[table.name].get(name) == "json" and isinstance(value, str):
                            value = json.loads(value)  # the older schema's JSON column
                        values[(table.name, name, str(row[0]))] = value
    finally:
        await engine.dispose()
    return values


def new_lookup(sealer: Any, table: str, record: str, before: dict[tuple[str, str, str], Any]
               ) -> str | None:
    """The lookup column as the sealing gateway computes it for the same row: the duplicate
    key from channel, Message-ID and body hash, the case key from the canonical URL."""
    def old(name: str) -> Any:
        return before[(table, name, record)]

    if table == "submissions":
        if old("dedup_key") is None:
            return None
        source = f"{old('channel')}\0{old('message_id') or ''}\0{old('body_sha256')}"
        assert hashlib.sha256(source.encode()).hexdigest() == old("dedup_key")
        return str(sealer.lookup_key("submission", source.encode()))
    if old("url_key").startswith("no_url:"):
        return str(old("url_key"))
    assert hashlib.sha256(old("canonical_url").encode()).hexdigest() == old("url_key")
    return str(sealer.lookup_key("case", old("canonical_url")))


async def assert_sealed_as_before(config: Any, before: dict[tuple[str, str, str], Any]) -> None:
    """Each value opens to what the older release stored; lookups are keyed hashes of what
    the sealing gateway hashes; the trail still verifies (re-chained if this build seals it)."""
    engine = await open_database(config)
    try:
        sealer = sealer_of(engine)
        async with engine.connect() as conn:
            older = set(await conn.run_sync(lambda sync: inspect(sync).get_table_names()))
            for table in sealed_tables(with_trail=False):
                if table.name not in older:
                    continue  # a table a later release added: nothing of it to seal
                names = [*SEALED[table.name], *LOOKUPS.get(table.name, {})]
                (primary,) = table.primary_key.columns
                for row in await conn.execute(select(primary, *(table.c[n] for n in names))):
                    for name in names:
                        stored = row._mapping[name]
                        if name in LOOKUPS.get(table.name, {}):
                            assert stored == new_lookup(sealer, table.name, str(row[0]),
                                                        before), (table.name, name)
                        else:
                            opened = open_value(sealer, table.c[name], row[0], stored)
                            assert opened == before[(table.name, name, str(row[0]))], \
                                (table.name, name, row[0])
            checked, broken, _ = await verify_audit(conn)
            assert broken is None and checked == 28  # the 27 of the fixture and audit.resealed
    finally:
        await engine.dispose()


def assert_no_canary(folder: Path) -> None:
    for path in folder.glob("gateway.db*"):
        data = path.read_bytes()
        for form in (CANARY.encode(), CANARY.encode("utf-16-le"), CANARY.upper().encode()):
            assert form not in data, path


def test_the_fixture_is_an_older_release_in_clear() -> None:
    """The fixture is at revision 0010 and carries the canaries in clear."""
    assert CANARY.encode() in FIXTURE.read_bytes()
    with sqlite3.connect(f"file:{FIXTURE}?mode=ro", uri=True) as db:
        assert db.execute("SELECT version_num FROM alembic_version").fetchone() == ("0010",)


def test_db_upgrade_seals_an_older_database_in_place(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """db upgrade migrates, seals every value (no canary left in the file), keeps every value
    and the audit chain, and a second run has nothing to do."""
    from gateway import config as config_module
    from gateway.cli import main

    database = presealed(tmp_path)
    before = asyncio.run(read_clear(database))
    old_end = last_entry(database)
    path = config_for(tmp_path, database)
    assert main(["--config", str(path), "db", "upgrade", "--batch-size", "4"]) == 0
    out = capsys.readouterr()
    assert "database at revision" in out.out and "(was 0010)" in out.out
    # The hash an operator noted of the older release's trail, tied to the new chain.
    new_hash = dict(trail_rows(database))[27][2]
    assert (f"the chain before sealing ended at entry 27 with hash {old_end[1]}; that entry's "
            f"hash is now {new_hash}") in out.out
    assert "sealed rows: cases 25, submissions 25" in out.out
    assert "VACUUM" in out.out
    assert "submissions: 25/25 done" in out.err  # plain progress lines: not a terminal
    assert_no_canary(database.parent)
    config = config_module.load(path)
    asyncio.run(assert_sealed_as_before(config, before))
    assert main(["--config", str(path), "db", "upgrade"]) == 0
    assert "sealed rows" not in capsys.readouterr().out
    assert main(["--config", str(path), "audit", "verify"]) == 0
    assert "28 entries, chain intact" in capsys.readouterr().out
    async def resealed_entry() -> Any:
        engine = await open_database(config)
        try:
            async with engine.connect() as conn:
                row = (await conn.execute(select(audit_log).where(audit_log.c.seq == 28))).one()
                return row.action, open_value(sealer_of(conn), audit_log.c.details, 28,
                                              row.details)
        finally:
            await engine.dispose()

    assert asyncio.run(resealed_entry()) == ("audit.resealed", {
        "old_last_seq": 27, "old_last_hash": old_end[1], "new_hash": new_hash})


def last_entry(database: Path) -> tuple[int, str]:
    with contextlib.closing(sqlite3.connect(database)) as db:
        seq, digest = db.execute("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1"
                                 ).fetchone()
    return seq, digest


def trail_rows(database: Path) -> list[tuple[int, tuple[bytes, str, str]]]:
    """The trail as stored: details in the form migration 0020 gives a value in clear (the
    older release's JSON text, ``sealed.CLEAR`` before it), whichever schema the file has."""
    with contextlib.closing(sqlite3.connect(database)) as db:
        return [(seq, (details if isinstance(details, bytes) else clear_form_of(details),
                       prev, digest)) for seq, details, prev, digest in db.execute(
            "SELECT seq, details, prev_hash, hash FROM audit_log ORDER BY seq")]


def clear_form_of(text: str) -> bytes:
    return CLEAR + text.encode()


@pytest.mark.parametrize("alteration", ["details", "deleted", "rehashed"])
def test_db_upgrade_does_not_launder_a_trail_altered_before_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], alteration: str
) -> None:
    """An entry of the older release's trail altered before the upgrade (details changed,
    deleted, or changed with its SHA-256 recomputed) stops the trail's sealing there: db
    upgrade seals the other tables, exits 1 naming the entry and saying the trail was altered
    before the upgrade (the next run says it again), leaves that entry and the later ones as they
    were, and audit verify names it."""
    from gateway.cli import main

    database = presealed(tmp_path)
    with contextlib.closing(sqlite3.connect(database)) as db, db:
        if alteration == "deleted":
            db.execute("DELETE FROM audit_log WHERE seq = 3")
        else:
            db.execute("UPDATE audit_log SET details = ? WHERE seq = 3",
                       (json.dumps({"forged": True}),))
        if alteration == "rehashed":  # as the older release hashed it, with the forged details
            at, actor, action, case_id, prev = db.execute(
                "SELECT at, actor, action, case_id, prev_hash FROM audit_log WHERE seq = 3"
            ).fetchone()
            moment = datetime.fromisoformat(at).replace(tzinfo=UTC)
            case = None if case_id is None else str(uuid.UUID(hex=case_id))
            content = [3, moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ"), actor, action, case,
                       {"forged": True}, prev]
            db.execute("UPDATE audit_log SET hash = ? WHERE seq = 3", (hashlib.sha256(
                json.dumps(content, sort_keys=True, separators=(",", ":"),
                           ensure_ascii=False).encode()).hexdigest(),))
    expected = {"details": "entry 3: hash does not match its content",
                "deleted": "entry 3: entry 3 is missing",
                "rehashed": "entry 4: prev_hash does not match entry 3"}[alteration]
    first = int(expected.split()[1].rstrip(":"))
    untouched = [row for row in trail_rows(database) if row[0] >= first]
    path = config_for(tmp_path, database)
    assert main(["--config", str(path), "db", "upgrade"]) == 1
    out = capsys.readouterr()
    assert "sealed rows: cases 25, submissions 25" in out.out
    assert f"audit trail {expected}: the trail was altered before the upgrade" in out.err
    assert [row for row in trail_rows(database) if row[0] >= first] == untouched
    assert main(["--config", str(path), "audit", "verify"]) == 1
    assert f"audit verify: entry {first}:" in capsys.readouterr().err
    assert main(["--config", str(path), "db", "upgrade"]) == 0  # said again, not failed again
    assert f"audit trail {expected}" in capsys.readouterr().err


def test_a_half_sealed_database_is_not_served(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """After an upgrade stopped part-way, serve --no-migrate, normalise and purge exit 2 saying
    the database is not fully sealed yet, and change nothing; once db upgrade has finished
    they run."""
    from gateway import config as config_module
    from gateway.cli import main

    database = presealed(tmp_path)
    path = config_for(tmp_path, database)

    async def stop_part_way() -> None:
        engine = await open_database(config_module.load(path))
        try:
            with pytest.raises(Stopped):
                await upgrade_database(engine, sealer_of(engine), batch=5, stop_after=1)
        finally:
            await engine.dispose()

    asyncio.run(stop_part_way())
    before = database.read_bytes()
    for command in (["serve", "--no-migrate"], ["normalise", "--once"], ["purge"]):
        assert main(["--config", str(path), *command]) == 2, command
        assert ("the database is not fully sealed yet: run `hotline-gateway db upgrade`"
                in capsys.readouterr().err)
    assert database.read_bytes() == before
    assert main(["--config", str(path), "db", "upgrade"]) == 0
    assert main(["--config", str(path), "normalise", "--once"]) == 0


async def test_a_case_filed_again_while_half_sealed_is_merged_into_the_older(
    tmp_path: Path,
) -> None:
    """A report filed (by a build that served a half-sealed database) for a URL whose case was
    not re-keyed yet made a second case; the resumed upgrade merges it into the older case
    (its reports and count, the older first report) instead of failing on the unique key, and
    the trail names the merge."""
    from gateway import config as config_module
    from intake.cases import Filing, ReportedUrl

    database = presealed(tmp_path)
    with contextlib.closing(sqlite3.connect(database)) as db:
        url, canonical, older, count, first = db.execute(
            "SELECT url, canonical_url, id, report_count, first_reported FROM cases "
            "WHERE canonical_url IS NOT NULL ORDER BY id DESC LIMIT 1").fetchone()
        (submission,) = db.execute(
            "SELECT id FROM submissions WHERE id NOT IN (SELECT submission_id FROM "
            "case_reports WHERE case_id = ?) LIMIT 1", (older,)).fetchone()
    older_id, submission_id = uuid.UUID(hex=older), uuid.UUID(hex=submission)
    config = config_module.load(config_for(tmp_path, database))
    engine = await open_database(config)
    try:
        with pytest.raises(Stopped):
            await upgrade_database(engine, sealer_of(engine), batch=5, stop_after=1)
        now = datetime.now(UTC)

        def file_again(sync: Any) -> Any:
            filing = Filing(sync, now=now, legal_window=timedelta(days=30))
            filing.attach(submission_id, now, [ReportedUrl(url, url, canonical)])
            return filing.flush()

        async with engine.connect() as conn:
            conn = await conn.execution_options(**IMMEDIATE)
            async with conn.begin():
                filed = await conn.run_sync(file_again)
        (newer,) = filed[submission_id]
        assert newer != older_id  # a second case for the same URL
        done = await upgrade_database(engine, sealer_of(engine), batch=5)
        assert [(m.kept, m.removed, m.reports) for m in done.merged] == [(older_id, newer, 1)]
        async with engine.connect() as conn:
            assert (await conn.execute(select(func.count()).select_from(cases))).scalar() == 25
            row = (await conn.execute(select(cases).where(cases.c.id == older_id))).one()
            reported = (await conn.execute(select(case_reports.c.case_id).where(
                case_reports.c.submission_id == submission_id))).scalars().all()
            merged = (await conn.execute(select(audit_log).where(
                audit_log.c.action == "case.merged"))).one()
            checked, broken, _ = await verify_audit(conn)
            details = open_value(sealer_of(conn), audit_log.c.details, merged.seq,
                                 merged.details)
        assert row.report_count == count + 1
        assert utc(row.first_reported) == datetime.fromisoformat(first).replace(tzinfo=UTC)
        assert older_id in reported and newer not in reported
        assert (merged.case_id, details["merged"]) == (older_id, str(newer))
        assert broken is None and checked == 30  # 27, the filing, case.merged, resealed
    finally:
        await engine.dispose()


async def test_an_upgrade_stopped_part_way_resumes(tmp_path: Path) -> None:
    """A pass stopped after some batches leaves its cursors; the next run finishes from them
    and seals nothing twice."""
    from gateway import config as config_module

    database = presealed(tmp_path)
    before = await read_clear(database)
    config = config_module.load(config_for(tmp_path, database))
    engine = await open_database(config)
    try:
        with pytest.raises(Stopped):
            await upgrade_database(engine, sealer_of(engine), batch=3, stop_after=12)
        async with engine.connect() as conn:
            assert await conn.run_sync(sealing_state.read, sealing_state.SEALED) is None
            cases = json.loads(await conn.run_sync(sealing_state.read, "upgrade:cases"))
            submissions = json.loads(
                await conn.run_sync(sealing_state.read, "upgrade:submissions"))
        assert cases["done"] and cases["seen"] == 25
        assert not submissions["done"] and submissions["seen"] == 9
        done = await upgrade_database(engine, sealer_of(engine), batch=3)
        assert done.sealed is not None
        assert "cases" not in done.sealed.changed  # finished before the stop
        assert done.sealed.changed["submissions"] == 16
    finally:
        await engine.dispose()
    await assert_sealed_as_before(config, before)
    assert_no_canary(database.parent)


def test_an_upgrade_killed_part_way_resumes(tmp_path: Path) -> None:
    """db upgrade killed (SIGKILL) after its first batches completes when run again."""
    database = presealed(tmp_path)
    before = asyncio.run(read_clear(database))
    path = config_for(tmp_path, database)
    command = [sys.executable, "-m", "gateway.cli", "--config", str(path), "db", "upgrade",
               "--batch-size", "1"]
    with subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                          text=True) as process:
        assert process.stderr is not None
        for line in process.stderr:
            if line.startswith("cases: ") and not line.startswith("cases: 0/"):
                process.kill()  # after a batch committed, mid-table
                break
        process.wait(timeout=60)
    assert process.returncode == -9
    with sqlite3.connect(database) as db:
        names = dict(db.execute("SELECT name, value FROM sealing_state").fetchall())
    assert "sealed" not in names and "upgrade:cases" in names
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    from gateway import config as config_module

    asyncio.run(assert_sealed_as_before(config_module.load(path), before))
    assert_no_canary(database.parent)


async def command_results(commands: list[list[str]]) -> list[tuple[int | None, str]]:
    """Each command's exit status and standard error, the commands run at once."""
    async def one(command: list[str]) -> tuple[int | None, str]:
        process = await asyncio.create_subprocess_exec(
            *command, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        try:
            async with asyncio.timeout(60):  # generous: only a bound against a hang
                _, err = await process.communicate()
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
        return process.returncode, err.decode()

    return list(await asyncio.gather(*(one(command) for command in commands)))


def test_a_wrong_keyring_stops_serve_and_every_command(tmp_path: Path) -> None:
    """serve (and any command) with a keyring that is not the database's exits 2 saying so;
    a missing keyring exits 2 naming its path; nothing is sealed with the wrong keys."""
    from gateway import config as config_module

    database = presealed(tmp_path)

    async def upgrade() -> None:
        engine = await open_database(config_module.load(config_for(tmp_path, database)))
        try:
            await upgrade_database(engine, sealer_of(engine))
        finally:
            await engine.dispose()

    asyncio.run(upgrade())
    missing, wrong = tmp_path / "keys" / "missing.json", tmp_path / "keys" / "other.json"
    create_keyring(wrong)  # another install's keyring

    def run(keyring: Path) -> list[str]:
        folder = tmp_path / keyring.stem
        folder.mkdir()
        path = write_config(folder, f'[database]\nurl = "sqlite+aiosqlite:///{database}"\n'
                                    f'[data]\nkeyring = "{keyring}"\n', keyring=False)
        return [sys.executable, "-m", "gateway.cli", "--config", str(path)]

    before = database.read_bytes()
    # The four at once: each stops before it writes anything, whatever the others do.
    with_wrong = run(wrong)
    commands = [[*run(missing), "serve"],
                *([*with_wrong, *command] for command in (["serve"], ["stats"], ["db", "upgrade"]))]
    (missing_status, missing_err), *answers = asyncio.run(command_results(commands))
    assert missing_status == 2
    assert f"{missing}: no keyring there" in missing_err
    for command, (status, err) in zip(commands[1:], answers, strict=True):
        assert status == 2, command
        assert "is not the keyring of this database" in err
        assert "which this keyring does not hold" in err
    assert database.read_bytes() == before


async def test_doctor_names_the_keyring_and_checks_it(tmp_path: Path) -> None:
    """doctor's data-keys line gives the keyring and its current key, ok for the right
    keyring and WRONG for another."""
    from gateway import config as config_module
    from gateway.doctor import Failed, _data_keys

    database = presealed(tmp_path)
    config = config_module.load(config_for(tmp_path, database))
    engine = await open_database(config)
    try:
        await upgrade_database(engine, sealer_of(engine))
    finally:
        await engine.dispose()
    sealer = await load_sealer(config)
    line = await _data_keys(config)
    assert line == (f"{config.data.keyring}: current key {sealer.keyring.current.name}, "
                    "check value ok")
    assert config.data.keyring is not None
    config.data.keyring.unlink()
    create_keyring(config.data.keyring)
    with pytest.raises(Failed, match=r"WRONG: .* is not the keyring of this database"):
        await _data_keys(config)
    with pytest.raises(WrongKeyring):
        await open_database(config)


async def test_doctor_reads_the_check_value_and_writes_nothing(tmp_path: Path) -> None:
    """doctor on a database that has no check value yet says so (run db upgrade) and writes
    nothing: still no check value, the file unchanged."""
    from gateway import config as config_module
    from gateway.doctor import Failed, _data_keys
    from gateway.store import migrate

    database = tmp_path / "var" / "gateway.db"
    database.parent.mkdir(parents=True)
    config = config_module.load(config_for(tmp_path, database))
    engine = await open_database(config, verify=False)
    try:
        await migrate.upgrade(engine)
    finally:
        await engine.dispose()
    before = database.read_bytes()
    with pytest.raises(Failed, match=r"the database has no check value yet: run `db upgrade`"):
        await _data_keys(config)
    assert database.read_bytes() == before
    with contextlib.closing(sqlite3.connect(database)) as db:
        assert db.execute("SELECT count(*) FROM sealing_state").fetchone() == (0,)


def test_the_sealed_database_reads_as_the_older_release_showed_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """After db upgrade, cases list and cases show (--json) print what the release before
    sealing printed of the same database (recorded by fixtures/read_presealing.py)."""
    from gateway.cli import main

    expected = json.loads((FIXTURE.parent / "presealing-reads.json").read_text())
    path = config_for(tmp_path, presealed(tmp_path))
    assert main(["--config", str(path), "db", "upgrade"]) == 0
    capsys.readouterr()
    assert main(["--config", str(path), "cases", "list", "--json"]) == 0
    listing = capsys.readouterr().out
    shown = {}
    for case_id in expected["show"]:
        assert main(["--config", str(path), "cases", "show", case_id, "--json"]) == 0
        shown[case_id] = capsys.readouterr().out
    assert "hgs:" not in listing and not any("hgs:" in text for text in shown.values())
    assert as_recorded(json.loads(listing), expected["list"]) == expected["list"]
    for case_id, text in shown.items():
        recorded = expected["show"][case_id]
        assert as_recorded(json.loads(text), recorded) == recorded, case_id


def as_recorded(shown: Any, recorded: Any) -> Any:
    """``shown`` without the fields added since the recording (a case's ``milestones``, say):
    more fields are welcome, the recorded ones keep their names and values."""
    if isinstance(shown, dict) and isinstance(recorded, dict):
        return {key: as_recorded(value, recorded[key]) for key, value in shown.items()
                if key in recorded}
    if isinstance(shown, list) and isinstance(recorded, list) and len(shown) == len(recorded):
        return [as_recorded(a, b) for a, b in zip(shown, recorded, strict=True)]
    return shown
