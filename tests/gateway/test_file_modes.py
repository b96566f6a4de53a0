"""Files that hold reports, reporters or keys are the owner's only (0600) whatever the umask:
the database with its WAL and SHM, backups, the file outbox, the keyring, the gpg home."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import stat
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import text

from gateway.backup import backup
from gateway.cli import main
from gateway.config import DatabaseConfig
from gateway.store import migrate
from gateway.store.engine import open_engine
from gateway.store.sealing import add_data_key, create_keyring, load_keyring
from outbound.gpg import Gpg
from outbound.transports import FileTransport
from tests.gateway.test_cli import write_config

DEMO_KEYS = Path(__file__).resolve().parents[2] / "demo" / "keys"


@pytest.fixture(params=[0o022, 0o002], ids=["umask022", "umask002"])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    """The process umask a shell would give, restored after the test."""
    before = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(before)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_a_new_sqlite_database_and_its_wal_and_shm_are_0600(
    tmp_path: Path, umask: int
) -> None:
    """The database file the engine creates, and the -wal/-shm SQLite makes beside it."""
    database = tmp_path / "var" / "gateway.db"
    engine = await open_engine(DatabaseConfig(url=f"sqlite+aiosqlite:///{database}"))
    try:
        await migrate.upgrade(engine)
        async with engine.begin() as conn:
            await conn.execute(text("SELECT count(*) FROM submissions"))
        files = [database, database.with_name("gateway.db-wal"),
                 database.with_name("gateway.db-shm")]
        assert all(f.exists() for f in files)
        assert {f.name: mode(f) for f in files} == {f.name: 0o600 for f in files}
    finally:
        await engine.dispose()


async def test_a_database_left_open_to_others_is_made_private(tmp_path: Path) -> None:
    """A database an earlier release made 0644 (and its WAL) is 0600 once the engine opens."""
    database = tmp_path / "gateway.db"
    before = os.umask(0o022)
    try:
        with contextlib.closing(sqlite3.connect(database)) as conn:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("CREATE TABLE t (x)")
            conn.commit()
            wal = database.with_name("gateway.db-wal")
            assert mode(database) == 0o644 and mode(wal) == 0o644
            engine = await open_engine(DatabaseConfig(url=f"sqlite+aiosqlite:///{database}"))
            await engine.dispose()
            assert mode(database) == 0o600 and mode(wal) == 0o600
    finally:
        os.umask(before)


async def test_backups_are_0600(tmp_path: Path, umask: int) -> None:
    """``backup`` writes its copy for the owner only."""
    database = tmp_path / "gateway.db"
    url = f"sqlite+aiosqlite:///{database}"
    engine = await open_engine(DatabaseConfig(url=url))
    try:
        await migrate.upgrade(engine)
    finally:
        await engine.dispose()
    target = tmp_path / "copy.db"
    assert await asyncio.to_thread(backup, url, target) == 0
    assert mode(target) == 0o600
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("copy")] == ["copy.db"]


async def test_the_file_outbox_writes_0600(tmp_path: Path, umask: int) -> None:
    """Each .eml file the file transport leaves is the owner's only."""
    transport = FileTransport(tmp_path / "outbox")
    await transport.send(mail_from="a@hotline.test", rcpt_to="b@police.test",
                         message=b"-----BEGIN PGP MESSAGE-----\r\n", name="CF-2026-000001")
    written = tmp_path / "outbox" / "CF-2026-000001.eml"
    assert mode(written) == 0o600


async def test_the_gpg_home_holds_no_file_others_may_read(tmp_path: Path, umask: int) -> None:
    """gpg writes its public keyring by the umask; the gateway takes the extra bits off."""
    home = tmp_path / "gnupg"
    executor = ThreadPoolExecutor(max_workers=1)
    try:
        gpg = Gpg(home, executor=executor)
        assert await gpg.import_keys((DEMO_KEYS / "recipients-public.asc").read_bytes())
    finally:
        executor.shutdown(wait=True)
    assert mode(home) == 0o700
    files = {p.name: mode(p) for p in home.iterdir() if p.is_file()}
    assert "pubring.kbx" in files
    assert {name: m & 0o077 for name, m in files.items()} == dict.fromkeys(files, 0)


def test_keyrings_are_0600_when_made_and_rotated(tmp_path: Path, umask: int) -> None:
    """A new keyring and one rewritten by a rotation are 0600, and load."""
    path = tmp_path / "data-keys.json"
    create_keyring(path)
    assert mode(path) == 0o600
    add_data_key(path)
    assert mode(path) == 0o600
    assert len(load_keyring(path).data_keys) == 2


def test_setup_demo_makes_a_private_keyring_and_database(
    tmp_path: Path, umask: int, capsys: pytest.CaptureFixture[str]
) -> None:
    """setup-demo creates the data keys (0600) once, beside a 0600 database."""
    path = write_config(tmp_path, '[outbound]\ntransport = "file"\n', keyring=False)
    assert main(["--config", str(path), "setup-demo"]) == 0
    first = capsys.readouterr().out
    keyring = tmp_path / "var" / "data-keys.json"
    assert f"created  data keys: {keyring}" in first
    assert mode(keyring) == 0o600 and mode(tmp_path / "var" / "gateway.db") == 0o600
    made = load_keyring(keyring)
    assert main(["--config", str(path), "setup-demo"]) == 0
    assert f"exists   data keys: {keyring}" in capsys.readouterr().out
    assert load_keyring(keyring).current == made.current
