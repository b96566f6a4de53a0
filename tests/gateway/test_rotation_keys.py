"""A rotation meets keys other processes hold: a value under a key its keyring lacks is left as
it is (never sealed a second time), a stage that meets one reads its keyring again or puts the
record off (never marks it damaged), two rotations never run at once, and a rotation waits
until every running gateway seals under the new key (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import shutil
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine
from structlog.testing import capture_logs

from gateway.keyring_watch import KeyringWatch
from gateway.store import key_holders
from gateway.store.backend import open_write_backend
from gateway.store.key_holders import (
    RotationBusy,
    holders,
    rotation_lock,
    wait_for_key,
)
from gateway.store.resealing import _reseal, count_by_key, seal_pass
from gateway.store.rotation import Laggards, add_key, reseal
from gateway.store.sealed import clear_form, open_value, seal_value, sealer_of
from gateway.store.sealing import Sealer, add_data_key, load_keyring
from gateway.store.tables import cases, submissions, users
from gateway.store.upgrade import upgrade_database
from intake.normalise import NormaliseStage
from routing.stage import LocateStage
from tests.conftest import ConfigFactory
from tests.gateway.test_sealing_rotation import add_users
from tests.routing.test_stage import add_cases

URL = "http://zebra-quagga.example/x"


def elsewhere(path: Path, tmp_path: Path) -> Sealer:
    """The sealer of a process holding a key ``path`` lacks: a copy of the keyring with one
    more data key (as another host's rotation would have made it)."""
    copy = tmp_path / "elsewhere.json"
    shutil.copy(path, copy)
    copy.chmod(0o600)
    add_data_key(copy)
    return Sealer(load_keyring(copy))


def keyring_of(make_config: ConfigFactory) -> Path:
    path = make_config().data.keyring
    assert path is not None
    return path


# --- 1. a rotation never seals a sealed value again ------------------------------------------


def test_a_value_under_a_key_the_pass_lacks_is_left_as_it_is(tmp_path: Path) -> None:
    """A well-formed sealed value (text or bytes) under a key the pass's keyring lacks is
    ``unknown`` and unchanged; text claiming the sealed form that is not one is broken; only
    the upgrade pass seals values in clear."""
    from gateway.store.sealing import create_keyring

    path = tmp_path / "k.json"
    create_keyring(path)
    runner = Sealer(load_keyring(path))
    daemon = elsewhere(path, tmp_path)
    record = uuid.uuid4()
    url = seal_value(daemon, cases.c.canonical_url, record, URL)
    raw = seal_value(daemon, submissions.c.raw, record, b"From: x\r\n\r\n" + URL.encode())
    assert _reseal(runner, cases, "canonical_url", "text", record, url) == ("unknown", url)
    assert _reseal(runner, submissions, "raw", "bytes", record, raw) == ("unknown", raw)
    assert open_value(daemon, cases.c.canonical_url, record, url) == URL
    for damaged in (b"hgs:not base64!", b"\x02" + url[1:], url[:20], URL.encode()):
        assert _reseal(runner, cases, "canonical_url", "text", record, damaged) == (
            "broken", damaged)
    clear = clear_form("text", URL)
    assert _reseal(runner, cases, "canonical_url", "text", record, clear,
                   seal_clear=False) == ("clear", clear)
    outcome, sealed = _reseal(runner, cases, "canonical_url", "text", record, clear)
    assert outcome == "seal" and open_value(runner, cases.c.canonical_url, record, sealed) == URL


@pytest.mark.startup  # db upgrade and the keyring file: a command's work
async def test_a_rotation_leaves_values_under_a_newer_key_and_status_names_them(
    engine: AsyncEngine, make_config: ConfigFactory, tmp_path: Path,
    capsys: pytest.CaptureFixture[str]
) -> None:
    """A value a process sealed under a key the rotating keyring lacks stays exactly as it
    was through a rotation, which reports it and does not count it as clear; the key that
    value is under is reported as one the keyring lacks."""
    from gateway.data_keys_cli import _keys_line

    path = keyring_of(make_config)
    await upgrade_database(engine, sealer_of(engine))
    secrets = await add_users(engine, 3)
    newer = elsewhere(path, tmp_path)
    target = next(iter(secrets))
    stored = seal_value(newer, users.c.totp_secret, target, secrets[target])
    async with engine.begin() as conn:
        await conn.execute(update(users).where(users.c.id == target)
                           .values(totp_secret=stored))
    sealer = await add_key(engine, path)
    done = await reseal(engine, path, batch=2)
    async with engine.connect() as conn:
        after = (await conn.execute(select(users.c.totp_secret)
                                    .where(users.c.id == target))).scalar_one()
    assert after == stored
    assert open_value(newer, users.c.totp_secret, target, after) == secrets[target]
    lacking = newer.keyring.current.name
    assert done.unknown == {lacking: 1} and done.clear == 0
    assert done.counts["users"] == {sealer.keyring.current.name: 2, lacking: 1}
    lines = _keys_line(sealer.keyring, done.counts)
    assert f"data key {lacking}  under a key this keyring lacks: 1 values: users 1" in \
        "\n".join(lines)
    assert not any(line.startswith("in clear") for line in lines)
    # The old key still protects nothing: it is retired; the unknown one is not touched.
    assert len(done.retired) == 1 and not done.left


@pytest.mark.startup  # db upgrade and the keyring file: a command's work
async def test_a_rotation_seals_nothing_in_clear_and_upgrade_still_does(
    engine: AsyncEngine, make_config: ConfigFactory
) -> None:
    """A value in clear met by a rotation is counted and left (``db upgrade`` seals it); the
    upgrade pass seals it."""
    await upgrade_database(engine, sealer_of(engine))
    await add_users(engine, 1)
    async with engine.begin() as conn:
        await conn.execute(update(users).values(totp_secret=clear_form("text", "PLAINSECRET")))
    report = await seal_pass(engine, sealer_of(engine), run="rotate-x", seal_clear=False)
    assert report.clear == {"users": 1} and report.total_changed == 0
    report = await seal_pass(engine, sealer_of(engine), run="upgrade-x")
    assert report.changed == {"users": 1}
    counts = await count_by_key(engine, sealer_of(engine))
    assert counts["users"] == {sealer_of(engine).keyring.current.name: 1}


# --- 1b. one rotation at a time --------------------------------------------------------------


async def test_two_rotations_never_run_at_once(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The second claimant of the rotation lock is refused, told who holds it; released, or
    its lease run out, it can be taken."""
    async with rotation_lock(engine, "host-a pid 1"):
        with pytest.raises(RotationBusy, match="another rotation is running: host-a pid 1"):
            async with rotation_lock(engine, "host-b pid 2"):
                pass
    async with rotation_lock(engine, "host-b pid 2"):
        pass
    monkeypatch.setattr(key_holders, "LEASE", timedelta(seconds=-1))  # a holder that died
    async with rotation_lock(engine, "host-c pid 3"), rotation_lock(engine, "host-d pid 4"):
        pass


def test_the_cli_says_who_holds_the_rotation_lock(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``data-keys rotate`` while another holds the lock exits 1 naming the holder, and adds
    no key."""
    from gateway import config as config_module
    from gateway.cli import main
    from gateway.database import open_database
    from tests.gateway.test_cli import write_config

    config_path = write_config(tmp_path)
    assert main(["--config", str(config_path), "db", "upgrade"]) == 0
    config = config_module.load(config_path)
    assert config.data.keyring is not None
    before = config.data.keyring.read_bytes()

    async def hold() -> None:
        engine = await open_database(config)
        try:
            async with engine.connect() as conn:
                conn = await conn.execution_options(sqlite_immediate=True)
                async with conn.begin():
                    await conn.run_sync(key_holders._claim, "ops-host pid 4242",
                                        datetime.now(UTC))
        finally:
            await engine.dispose()

    asyncio.run(hold())
    capsys.readouterr()
    assert main(["--config", str(config_path), "data-keys", "rotate", "--settle", "0"]) == 1
    assert "another rotation is running: ops-host pid 4242" in capsys.readouterr().err
    assert config.data.keyring.read_bytes() == before


# --- 3. a rotation waits for every running gateway -------------------------------------------


@pytest.mark.startup  # db upgrade and the keyring file: a command's work
async def test_a_rotation_waits_for_every_running_gateway_to_hold_the_new_key(
    engine: AsyncEngine, make_config: ConfigFactory
) -> None:
    """The keyring watch says which key its process seals under; a rotation waits for every
    fresh one to name the new key, and gives up naming the laggards (re-sealing nothing); a
    heartbeat gone stale (a process that died) is not waited for."""
    path = keyring_of(make_config)
    await upgrade_database(engine, sealer_of(engine))
    await add_users(engine, 2)
    old = sealer_of(engine).keyring.current.name
    watch = KeyringWatch(path, engine, process="serve")
    await watch.check()
    await watch.beat()
    await key_holders.heartbeat(engine, "normalise", old)  # another process, not reloaded
    assert sorted((h.process, h.key) for h in await holders(engine)) == [
        ("normalise", old), ("serve", old)]
    sealer = await add_key(engine, path)
    new = sealer.keyring.current.name
    assert await watch.check()  # serve reads the new keyring, and says so at once
    assert [(h.process, h.key) for h in await wait_for_key(engine, new, 0.3)] == [
        ("normalise", old)]
    with pytest.raises(Laggards, match=f"normalise .* seals under {old}"):
        await reseal(engine, path, settle=0.3)
    assert (await count_by_key(engine, sealer))["users"] == {old: 2}
    await key_holders.heartbeat(engine, "normalise", new)
    assert await wait_for_key(engine, new, 0.3) == []
    done = await reseal(engine, path, settle=1.0)
    assert done.retired == [old]
    # A heartbeat older than FRESH is of a process gone: not waited for.
    await key_holders.heartbeat(engine, "normalise", old)
    async with engine.begin() as conn:
        await conn.execute(update(key_holders.sealing_state)
                           .where(key_holders.sealing_state.c.name.startswith(
                               "holder:normalise"))
                           .values(updated_at=datetime.now(UTC) - timedelta(minutes=5)))
    assert await wait_for_key(engine, new, 0.1) == []
    await watch.stop()


# --- 2. a stage meets a key it lacks ---------------------------------------------------------


async def _store_under(engine: AsyncEngine, sealer: Sealer, raw: bytes) -> uuid.UUID:
    """A submission as intake stores it, its message sealed by ``sealer``."""
    from gateway.store.references import ReferenceAllocator
    from gateway.store.writer import NewSubmission, SubmissionWriter

    backend = await open_write_backend(engine)
    writer = SubmissionWriter(backend, ReferenceAllocator("CF"))
    import hashlib

    task = asyncio.create_task(writer.run())
    try:
        receipt = await writer.submit(NewSubmission(
            channel="smtp", received_at=datetime.now(UTC), raw=raw,
            body_sha256=hashlib.sha256(raw).hexdigest(), mail_from="a@b.example",
            rcpt_tos=("report@hotline.test",), helo="h.example", peer_ip="192.0.2.1",
            message_id=None))
    finally:
        await writer.stop()
        await task
        await backend.close()
    async with engine.begin() as conn:
        sid = (await conn.execute(select(submissions.c.id).where(
            submissions.c.reference == receipt.reference))).scalar_one()
        await conn.execute(update(submissions).where(submissions.c.id == sid).values(
            raw=seal_value(sealer, submissions.c.raw, sid, raw)))
    return sid


RAW = b"From: a@b.example\r\nSubject: s\r\n\r\n" + URL.encode() + b"\r\n"


async def test_normalise_reads_its_keyring_again_for_a_key_it_lacks(
    engine: AsyncEngine, make_config: ConfigFactory
) -> None:
    """A message sealed by a process that already read a rotated keyring is parsed by a
    normaliser that had not: it reads the file at once and goes on."""
    path = keyring_of(make_config)
    await asyncio.to_thread(add_data_key, path)
    sid = await _store_under(engine, Sealer(await asyncio.to_thread(load_keyring, path)), RAW)
    backend = await open_write_backend(engine)
    try:
        stage = NormaliseStage(backend, None, worker="w1", legal_window=timedelta(days=180))
        assert await stage.run_once() == 1
    finally:
        await backend.close()
    async with engine.connect() as conn:
        status = (await conn.execute(select(submissions.c.status)
                                     .where(submissions.c.id == sid))).scalar_one()
    assert status == "parsed" and stage.key_waits.count == 0


async def test_normalise_puts_off_a_message_under_a_key_nowhere_here(
    engine: AsyncEngine, make_config: ConfigFactory, tmp_path: Path
) -> None:
    """A message under a key the keyring file lacks too is put off, not failed: it stays
    ``received``, free again after a while, with a warning naming the record and key (no
    value), and is parsed once the keyring has the key."""
    path = keyring_of(make_config)
    newer = await asyncio.to_thread(elsewhere, path, tmp_path)
    sid = await _store_under(engine, newer, RAW)
    now = [datetime.now(UTC)]
    backend = await open_write_backend(engine)
    try:
        stage = NormaliseStage(backend, None, worker="w1", legal_window=timedelta(days=180),
                               clock=lambda: now[0])
        with capture_logs() as logs:
            assert await stage.run_once() == 1
            assert await stage.run_once() == 0  # put off: not taken again at once
        async with engine.connect() as conn:
            row = (await conn.execute(select(submissions).where(
                submissions.c.id == sid))).one()
        assert row.status == "received" and row.claimed_by is None
        assert row.parse_error is None and row.flags is None
        [warning] = [e for e in logs if e["event"] == "normalise.key_unknown"]
        assert warning["record"] == str(sid) and warning["key"] == newer.keyring.current.name
        assert "zebra" not in repr(logs)
        assert stage.key_waits.count == 1 and stage.failed == 0
        # Still missing ten minutes on: an alert.
        now[0] += timedelta(minutes=11)
        with capture_logs() as logs:
            assert await stage.run_once() == 1
        assert [e["event"] for e in logs if e["log_level"] == "error"] == [
            "normalise.key_missing"]
        # The keyring file gets the key (the rotation's keyring put in place): parsed.
        await asyncio.to_thread(shutil.copy, tmp_path / "elsewhere.json", path)
        now[0] += timedelta(minutes=1)
        assert await stage.run_once() == 1
    finally:
        await backend.close()
    async with engine.connect() as conn:
        status = (await conn.execute(select(submissions.c.status)
                                     .where(submissions.c.id == sid))).scalar_one()
    assert status == "parsed"


async def test_locate_puts_off_a_case_under_a_key_it_lacks_and_fails_a_damaged_one(
    engine: AsyncEngine, make_config: ConfigFactory, tmp_path: Path
) -> None:
    """A case URL under a key nowhere in this process's keyring is put off (still ``new``,
    no attempt counted); one altered is failed as damaged, as before."""
    path = keyring_of(make_config)
    newer = await asyncio.to_thread(elsewhere, path, tmp_path)
    backend = await open_write_backend(engine)
    try:
        waiting, damaged = await add_cases(backend, [URL, "http://other.example/y"])

        def reseal_urls(conn: Any) -> None:
            copied = conn.execute(select(cases.c.canonical_url).where(
                cases.c.id == waiting)).scalar_one()  # under a key held: fails its tag there
            conn.execute(update(cases).where(cases.c.id == waiting).values(
                canonical_url=seal_value(newer, cases.c.canonical_url, waiting, URL)))
            conn.execute(update(cases).where(cases.c.id == damaged).values(
                canonical_url=copied))

        await backend.transaction(reseal_urls)

        class NoLookups:
            async def locate(self, host: str, *, fresh: bool = False) -> Any:
                raise AssertionError("no case here is looked up")

        stage = LocateStage(backend, NoLookups(), worker="w1")  # type: ignore[arg-type]
        with capture_logs() as logs:
            await stage.run_once()
        async with engine.connect() as conn:
            rows = {r.id: r for r in (await conn.execute(select(cases))).all()}
        assert rows[waiting].status == "new" and rows[waiting].locate_attempts == 0
        assert rows[waiting].claimed_by is None and rows[waiting].locate_error is None
        assert rows[damaged].status == "locate_failed"
        assert stage.key_waits.count == 1
        assert [e["record"] for e in logs if e["event"] == "locate.key_unknown"] == [
            str(waiting)]
        assert "zebra" not in repr([e for e in logs if e["event"] == "locate.key_unknown"])
    finally:
        await backend.close()
