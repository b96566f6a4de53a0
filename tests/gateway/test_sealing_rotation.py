"""``data-keys create``, ``rotate`` and ``status``: a new keyring is the owner's only and never
replaces one; a rotation re-seals every value under the new key, on SQLite and PostgreSQL and
while the daemon takes reports, and retires the old key only when nothing uses it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
import stat
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway import config as config_module
from gateway.database import open_database
from gateway.store.resealing import Stopped, count_by_key, seal_pass, sealed_tables
from gateway.store.rotation import add_key, reseal
from gateway.store.sealed import open_value, seal_values, sealer_of
from gateway.store.sealing import load_keyring
from gateway.store.tables import users
from gateway.store.upgrade import upgrade_database
from tests.conftest import ConfigFactory
from tests.daemon import Daemon, daemon_config
from tests.smtp_client import deliver, report


def test_data_keys_create_makes_a_private_keyring_and_never_replaces_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """data-keys create writes a 0600 keyring (its folder made 0700) and refuses to replace
    an existing one, which stays as it was."""
    from gateway.cli import main

    path = tmp_path / "etc" / "data-keys.json"
    assert main(["data-keys", "create", "--keyring", str(path)]) == 0
    keyring = load_keyring(path)
    assert f"{path}: new keyring, data key {keyring.current.name}, mode 0600" in \
        capsys.readouterr().out
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    before = path.read_bytes()
    assert main(["data-keys", "create", "--keyring", str(path)]) == 2
    assert "a keyring exists there already; it is kept" in capsys.readouterr().err
    assert path.read_bytes() == before


async def add_users(engine: AsyncEngine, count: int) -> dict[uuid.UUID, str]:
    """``count`` staff rows with sealed TOTP secrets: id -> secret."""
    sealer = sealer_of(engine)
    secrets = {uuid.uuid4(): f"SECRET{n:04d}ABCDEFGHIJ" for n in range(count)}
    rows = [seal_values(sealer, users, user, {
        "id": user, "name": f"user{n}", "role": "analyst", "password_hash": "x",
        "totp_secret": secret, "created_at": datetime.now(UTC)})
        for n, (user, secret) in enumerate(secrets.items())]
    async with engine.begin() as conn:
        await conn.execute(insert(users), rows)
    return secrets


async def assert_secrets(engine: AsyncEngine, secrets: dict[uuid.UUID, str]) -> None:
    sealer = sealer_of(engine)
    async with engine.connect() as conn:
        rows = (await conn.execute(select(users.c.id, users.c.totp_secret))).all()
    assert {row.id: open_value(sealer, users.c.totp_secret, row.id, row.totp_secret)
            for row in rows} == secrets


@pytest.mark.startup  # a command's work (Alembic reads its scripts), not the daemon's
async def test_rotation_reseals_everything_and_retires_the_old_key(
    engine: AsyncEngine, make_config: ConfigFactory
) -> None:
    """After a rotation (stopped once part-way, then resumed) every value is under the new
    key and opens as before, the old key is retired but kept, the file stays 0600, and the
    database's check value names both keys (SQLite and PostgreSQL)."""
    path = make_config().data.keyring
    assert path is not None
    await upgrade_database(engine, sealer_of(engine))  # marks the new database sealed
    secrets = await add_users(engine, 23)
    old = sealer_of(engine).keyring.current.name
    assert (await count_by_key(engine, sealer_of(engine)))["users"] == {old: 23}
    sealer = await add_key(engine, path)
    new = sealer.keyring.current.name
    # One batch for each (empty) table before users, then two of users.
    before_users = [t.name for t in sealed_tables(with_trail=False)].index("users")
    with pytest.raises(Stopped):
        await seal_pass(engine, sealer, run=f"rotate-{new}", batch=5,
                        stop_after=before_users + 2)
    assert (await count_by_key(engine, sealer))["users"] == {old: 13, new: 10}
    done = await reseal(engine, path, batch=5)
    assert done.retired == [old] and not done.left and not done.broken
    assert done.counts["users"] == {new: 23}
    await assert_secrets(engine, secrets)
    keyring = load_keyring(path)
    assert {k.name: k.state for k in keyring.data_keys} == {old: "retired", new: "current"}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.stat().st_uid == os.geteuid()
    async with engine.connect() as conn:
        check = json.loads((await conn.exec_driver_sql(
            "SELECT value FROM sealing_state WHERE name = 'check'")).scalar_one())
    assert set(check["data"]) == {old, new}


async def test_a_rotation_needs_a_sealed_database(
    engine: AsyncEngine, make_config: ConfigFactory
) -> None:
    """A database db upgrade has not sealed yet is refused a rotation, and no key is added."""
    from gateway.store.errors import Conflict

    path = make_config().data.keyring
    assert path is not None
    before = path.read_bytes()
    with pytest.raises(Conflict, match="run `db upgrade`"):
        await add_key(engine, path)
    assert path.read_bytes() == before


@pytest.fixture
async def daemon(tmp_path: Path) -> AsyncIterator[Daemon]:
    config = tmp_path / "config.toml"
    # Filing reports into cases runs elsewhere: this test is about what intake seals.
    config.write_text(daemon_config(extra='[intake]\nnormalise = "separate"\n'))
    d = Daemon(config, tmp_path)
    yield d
    await d.close()


@pytest.mark.startup
async def test_rotation_under_load_leaves_nothing_under_the_old_key(
    daemon: Daemon, tmp_path: Path
) -> None:
    """Reports arrive by SMTP throughout a rotation run against the serving daemon: the
    daemon reads the new keyring, every report is stored, and at the end no value is under
    the old key, which is retired."""
    await daemon.start()
    config = config_module.load(daemon.config_path)
    old = load_keyring(tmp_path / "var" / "data-keys.json").current.name
    accepted: list[int] = []
    stop = asyncio.Event()

    async def send() -> None:
        n = 0
        while not stop.is_set():
            code, _ = await deliver(daemon.smtp_port, report(f"load-{n}"))
            assert code == 250
            accepted.append(n)
            n += 1
            await asyncio.sleep(0.02)

    sender = asyncio.create_task(send())
    try:
        while len(accepted) < 20:
            await asyncio.sleep(0.05)
        rotate = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway.cli", "--config", str(daemon.config_path),
            "data-keys", "rotate", "--batch-size", "4", "--settle", "5",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(rotate.communicate(), 180)
        during = len(accepted)
        while len(accepted) < during + 10:  # and a few after
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await sender
    assert rotate.returncode == 0, err.decode()
    keyring = load_keyring(tmp_path / "var" / "data-keys.json")
    new = keyring.current.name
    assert new != old
    assert f"data key {old} retired" in out.decode()
    assert {k.name: k.state for k in keyring.data_keys} == {old: "retired", new: "current"}
    await daemon.wait_for_log("keyring.reloaded")
    with contextlib.closing(sqlite3.connect(tmp_path / "var" / "gateway.db")) as db:
        stored = db.execute("SELECT count(*) FROM submissions").fetchone()[0]
    assert stored == len(accepted)
    engine = await open_database(config)
    try:
        counts = await count_by_key(engine, sealer_of(engine))
    finally:
        await engine.dispose()
    assert all(old not in per_key for per_key in counts.values()), counts
    assert counts["submissions"].get(new, 0) > 0


async def test_the_keyring_watch_reloads_the_sealer_every_holder_has(
    make_config: ConfigFactory
) -> None:
    """A changed keyring file is given to the engine's sealer in place (so a writer thread
    holding it seals under the new key); one that lost a key is refused and changes
    nothing."""
    from gateway.keyring_watch import KeyringWatch
    from gateway.store.sealing import SealContext, add_data_key, create_keyring

    config = make_config()
    path = config.data.keyring
    assert path is not None
    engine = await open_database(config)
    try:
        held = sealer_of(engine)  # as a backend's thread would hold it
        watch = KeyringWatch(path, engine)
        await watch.check()  # the first look reads the file as it is
        old = held.keyring.current.name
        assert not await watch.check()  # unchanged: nothing to read
        new = await asyncio.to_thread(add_data_key, path)
        assert await watch.check()
        assert sealer_of(engine) is held and held.keyring.current.name == new.name
        context = SealContext("users", "totp_secret", uuid.uuid4())
        assert held.key_of(held.seal(context, b"x")) == new.name
        path.unlink()
        await asyncio.to_thread(create_keyring, path)  # another keyring: lacks both keys
        assert not await watch.check()
        assert {k.name for k in held.keyring.data_keys} == {old, new.name}
    finally:
        await engine.dispose()


def test_progress_is_a_bar_on_a_terminal_and_lines_otherwise() -> None:
    """On a terminal the bar is redrawn in place; elsewhere a line at most every second, and
    one at the end."""
    import io

    from gateway.progress import Progress

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    bar = Progress(terminal)
    bar.start("submissions", 4)
    bar.advance(2)
    bar.finish()
    assert terminal.getvalue() == (
        "\rsubmissions          [" + "#" * 15 + "." * 15 + "] 2/4"
        "\rsubmissions          [" + "#" * 15 + "." * 15 + "] 2/4\n")
    now = [0.0]
    log = io.StringIO()
    lines = Progress(log, clock=lambda: now[0])
    lines.start("cases", 10)
    for _ in range(5):
        lines.advance(1)
        now[0] += 0.3
    lines.finish()
    assert log.getvalue().splitlines() == ["cases: 1/10 ...", "cases: 5/10 ...",
                                           "cases: 5/10 done"]


def test_data_keys_status_says_what_each_key_protects(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """data-keys status lists each key, its state, and the values of each table under it."""
    from gateway.cli import main
    from tests.gateway.test_cli import write_config

    path = write_config(tmp_path)
    assert main(["--config", str(path), "db", "upgrade"]) == 0
    config = config_module.load(path)

    async def fill() -> None:
        engine = await open_database(config)
        try:
            await add_users(engine, 3)
        finally:
            await engine.dispose()

    asyncio.run(fill())
    capsys.readouterr()
    assert main(["--config", str(path), "data-keys", "status"]) == 0
    out = capsys.readouterr().out
    assert config.data.keyring is not None
    key = load_keyring(config.data.keyring).current.name
    assert f"keyring {config.data.keyring}" in out
    assert f"data key {key}  current " in out and "protects 3 values: users 3" in out
    assert "lookup key 1  current" in out
