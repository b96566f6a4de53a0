"""Instances started together on a new database: one applies the migrations (and writes the
keyring's check value, and marks the database sealed) while the others wait, then find
nothing left to do. PostgreSQL serialises them with an advisory lock, SQLite with its write
lock (``BEGIN IMMEDIATE``)."""

from __future__ import annotations

import asyncio
import logging
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from sqlalchemy import make_url, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.database import open_database
from gateway.store import migrate
from gateway.store.sealed import sealer_of
from gateway.store.tables import sealing_state
from gateway.store.upgrade import upgrade_database
from tests.conftest import BACKENDS, PG_URL, ConfigFactory, PgSchema
from tests.daemon import ensure_keyring

pytestmark = pytest.mark.startup  # migrations read their scripts from disk


@pytest.fixture(params=BACKENDS)
async def engines(request: pytest.FixtureRequest,
                  make_config: ConfigFactory) -> AsyncIterator[list[AsyncEngine]]:
    """Three engines (as three instances would open) on one new, empty database."""
    schema = PgSchema(PG_URL) if request.param == "postgresql" else None
    connect: dict[str, Any] = {}
    if schema is not None:
        await schema.create()
        connect = schema.connect_args
    config = make_config(database={"url": PG_URL} if schema else {})
    opened = [await open_database(config, **connect) for _ in range(3)]
    try:
        yield opened
    finally:
        for engine in opened:
            await engine.dispose()
        if schema is not None:
            await schema.drop()


async def test_three_instances_upgrading_together_migrate_once(
    engines: list[AsyncEngine], caplog: pytest.LogCaptureFixture,
) -> None:
    """All three succeed, and each migration ran once: the later instances waited, then
    found the database at head (on PostgreSQL, before they even looked at its revision)."""
    with caplog.at_level(logging.INFO, logger="alembic.runtime.migration"):
        done = await asyncio.gather(*(upgrade_database(engine, sealer_of(engine))
                                      for engine in engines))
    head = migrate.head()
    ran = [record.getMessage() for record in caplog.records
           if record.getMessage().startswith("Running upgrade")]
    assert len(ran) == len(set(ran)) and any(f"-> {head}," in message for message in ran)
    assert all(upgraded.after == head for upgraded in done)
    if engines[0].dialect.name == "postgresql":
        assert sorted(str(upgraded.before) for upgraded in done) == sorted(["None", head, head])
    async with engines[0].connect() as conn:
        versions = (await conn.execute(text("SELECT version_num FROM alembic_version"))).all()
        names = (await conn.execute(select(sealing_state.c.name))).scalars().all()
    assert [row[0] for row in versions] == [head]
    assert sorted(names) == ["check", "sealed"]


@pytest.mark.skipif(not PG_URL, reason="HOTLINE_TEST_PG_URL is not set")
async def test_three_db_upgrade_processes_on_a_new_postgresql_database(tmp_path: Path) -> None:
    """Three ``db upgrade`` processes started together on a new PostgreSQL database: all
    exit 0, one migrated it from nothing, the two others found it at head."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    server = make_url(PG_URL).set(drivername="postgresql")
    admin = await asyncpg.connect(server.render_as_string(False))
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        url = make_url(PG_URL).set(database=name).render_as_string(False)
        config = tmp_path / "config.toml"
        config.write_text(f'[database]\nurl = "{url}"\n')
        ensure_keyring(config)
        processes = [await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway.cli", "--config", str(config), "db", "upgrade",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
            for _ in range(3)]
        outputs = [(await process.communicate())[0].decode() for process in processes]
        assert [process.returncode for process in processes] == [0, 0, 0], outputs
        head = migrate.head()
        firsts = [next(line for line in out.splitlines() if line.startswith("database at"))
                  for out in outputs]
        assert sorted(firsts) == sorted([f"database at revision {head} (was None)",
                                         f"database at revision {head}",
                                         f"database at revision {head}"]), outputs
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
