"""Shared fixtures: real databases (SQLite files, and PostgreSQL when HOTLINE_TEST_PG_URL is
set), configs that listen on 127.0.0.1 port 0, and a running gateway."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import ssl
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import asyncpg
import pytest
import structlog
import trustme
from blockbuster import blockbuster_ctx
from sqlalchemy import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway import config as config_module
from gateway.config import Config, DatabaseConfig
from gateway.database import open_database
from gateway.store import migrate
from gateway.store.backend import WriteBackend, open_write_backend
from gateway.store.engine import open_engine
from gateway.store.private import create_private_file
from gateway.store.sealing import create_keyring
from tests.dns_server import DnsServer, Zone, free_udp_port
from tests.locating import build_mmdb, standard_zone

if TYPE_CHECKING:
    from gateway.app import Gateway

# The ``browser`` fixture (Debian's chromium through Playwright) for the page tests, and the
# hypothesis profile (tests/budget.py: ci, or deep with HYPOTHESIS_PROFILE=deep).
pytest_plugins = ["tests.browser", "tests.budget"]

PG_URL = os.environ.get("HOTLINE_TEST_PG_URL", "")

ConfigFactory = Callable[..., Config]


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


@pytest.fixture(autouse=True)
def _logging_reset() -> Iterator[None]:
    """A CLI command run in-process configures logging onto the test's captured stream, which
    closes with the test: put the defaults back so the next test's logs have somewhere to go."""
    yield
    structlog.reset_defaults()
    logging.getLogger().handlers.clear()


@pytest.fixture
def make_config(tmp_path: Path) -> ConfigFactory:
    """A config rooted in tmp_path, listening on port 0, with overrides by section."""

    def factory(**sections: dict[str, Any]) -> Config:
        base: dict[str, Any] = {
            "gateway": {"shutdown_grace": "2s"},
            "database": {"url": "sqlite+aiosqlite:///var/gateway.db"},
            # Every test client is 127.0.0.1, like a relay's: the per-source limits are set
            # where a test is about them.
            "smtp": {"listen": ["127.0.0.1:0"], "max_connections_per_source": 1000,
                     "messages_per_minute_per_source": 100_000},
            # Passwords hashed at argon2's cheapest (tests/passwords.py); the test of what
            # ships names "argon2id".
            "console": {"listen": ["127.0.0.1:0"], "password_hashing": "insecure-for-tests"},
            "http": {"listen": ["127.0.0.1:0"]},
            "admin": {"listen": ["127.0.0.1:0"]},
            # Nothing answers there: tests never ask a real resolver about reported hosts.
            "locate": {"nameservers": [f"127.0.0.1:{free_udp_port()}"], "timeout": "500ms"},
        }
        config = config_module.parse(_merge(base, sections), base=tmp_path)
        # Every test's database is sealed with a keyring of its own, made once per test.
        if config.data.keyring is not None and not config.data.keyring.exists():
            config.data.keyring.parent.mkdir(parents=True, exist_ok=True)
            create_keyring(config.data.keyring)
        return config

    return factory


class MigratedSqlite:
    """An empty SQLite database migrated to head, made once per pytest process (each xdist
    worker has its own) in the session's temporary folder: a test that would start from a
    new database gets a private copy of it instead of running every migration again, which
    is most of the cost of starting a gateway. Tests about migrating itself (``db upgrade``,
    ``running`` on an empty file, ``migrate.upgrade`` to an older revision) never get it."""

    path: Path | None = None  # set by the session fixture below


async def _migrate_new(database: Path) -> None:
    engine = await open_engine(DatabaseConfig(url=f"sqlite+aiosqlite:///{database}"))
    try:
        await migrate.upgrade(engine)
    finally:
        await engine.dispose()


@pytest.fixture(scope="session", autouse=True)
def _migrated_sqlite(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Made before any test's event loop and outside any watch for blocking calls, in a
    thread (with a loop of its own) so that this thread's event loop is left as it was."""
    made = tmp_path_factory.mktemp("migrated") / "gateway.db"
    with ThreadPoolExecutor(max_workers=1) as thread:
        thread.submit(asyncio.run, _migrate_new(made)).result()
    # Disposing of the engine checkpointed the WAL: the file alone is the database.
    assert not made.with_name("gateway.db-wal").exists()
    MigratedSqlite.path = made


def copy_migrated_sqlite(config: Config) -> None:
    """If ``config``'s database is a SQLite file that does not exist yet, make it a copy of
    the migrated template, private (0600) as the engine makes a new one (blocking: callers
    run it in a thread)."""
    url = make_url(config.database.url)
    if not url.drivername.startswith("sqlite") or not url.database:
        return
    database = Path(url.database)
    if database.exists():
        return
    template = MigratedSqlite.path
    assert template is not None, "the _migrated_sqlite fixture has not run"
    database.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
    create_private_file(database)
    with template.open("rb") as source, database.open("r+b") as target:
        shutil.copyfileobj(source, target)


class PgSchema:
    """A PostgreSQL schema of its own for one test, dropped afterwards."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.name = f"t_{uuid.uuid4().hex[:12]}"

    def _dsn(self) -> str:
        return make_url(self.url).set(drivername="postgresql").render_as_string(False)

    async def create(self) -> None:
        conn = await asyncpg.connect(self._dsn())
        try:
            await conn.execute(f'CREATE SCHEMA "{self.name}"')
        finally:
            await conn.close()

    async def drop(self) -> None:
        conn = await asyncpg.connect(self._dsn())
        try:
            await conn.execute(f'DROP SCHEMA "{self.name}" CASCADE')
        finally:
            await conn.close()

    @property
    def connect_args(self) -> dict[str, Any]:
        return {"server_settings": {"search_path": self.name}}


# What a schema is made of, as text: a test that altered it (a migration, a table of its own)
# leaves a different one, and its schema is dropped rather than handed on.
_SHAPE = """
SELECT string_agg(part, ',' ORDER BY part) FROM (
  SELECT 'c:' || table_name || '.' || column_name || ':' || data_type || ':' || is_nullable
         || ':' || coalesce(column_default, '') FROM information_schema.columns
   WHERE table_schema = $1
  UNION ALL SELECT 'i:' || indexname || ':' || indexdef FROM pg_indexes WHERE schemaname = $1
  UNION ALL SELECT 'k:' || conname || ':' || pg_get_constraintdef(oid) FROM pg_constraint
   WHERE connamespace = $1::regnamespace
  UNION ALL SELECT 'p:' || proname FROM pg_proc WHERE pronamespace = $1::regnamespace
  UNION ALL SELECT 'q:' || sequencename FROM pg_sequences WHERE schemaname = $1
  UNION ALL SELECT 't:' || tgname FROM pg_trigger t JOIN pg_class r ON r.oid = t.tgrelid
   WHERE r.relnamespace = $1::regnamespace AND NOT t.tgisinternal
  UNION ALL SELECT 'y:' || typname FROM pg_type WHERE typnamespace = $1::regnamespace
   AND typtype <> 'c' AND typname NOT LIKE '\\_%'
) AS parts(part)
"""


class MigratedPg:
    """PostgreSQL schemas migrated to head by this pytest process (each xdist worker has its
    own), handed from one test to the next: migrating a schema costs the server seconds of
    DDL (every table rewritten by the column changes of later migrations), emptying one
    costs it milliseconds. A schema is handed on only with the shape it had when migrated
    and every row deleted (migrations leave rows in alembic_version only); otherwise, and
    at the end of the session, it is dropped."""

    free: ClassVar[list[tuple[PgSchema, str]]] = []

    @staticmethod
    async def _shape(conn: asyncpg.Connection, schema: PgSchema) -> str:
        versions = await conn.fetch(f'SELECT version_num FROM "{schema.name}".alembic_version')
        return f"{await conn.fetchval(_SHAPE, schema.name)} {sorted(r[0] for r in versions)}"

    @classmethod
    async def shape(cls, schema: PgSchema) -> str:
        conn = await asyncpg.connect(schema._dsn())
        try:
            return await cls._shape(conn, schema)
        finally:
            await conn.close()

    @classmethod
    async def hand_back(cls, schema: PgSchema, shape: str) -> None:
        """Empty ``schema`` for the next test, or drop it if a test changed its shape."""
        conn = await asyncpg.connect(schema._dsn())
        try:
            same = await cls._shape(conn, schema) == shape
            if same:
                tables = [row[0] for row in await conn.fetch(
                    "SELECT tablename FROM pg_tables WHERE schemaname = $1"
                    " AND tablename <> 'alembic_version'", schema.name)]
                async with conn.transaction():
                    # Foreign keys are triggers: off for this session's deletes alone.
                    await conn.execute("SET LOCAL session_replication_role = replica")
                    for table in tables:
                        await conn.execute(f'DELETE FROM "{schema.name}"."{table}"')
        except asyncpg.PostgresError:  # a test dropped alembic_version, say
            same = False
        finally:
            await conn.close()
        if same:
            cls.free.append((schema, shape))
        else:
            await schema.drop()


@pytest.fixture(scope="session", autouse=True)
def _migrated_pg() -> Iterator[None]:
    """Drops the schemas left for reuse when the session ends."""
    yield

    async def drop_all() -> None:
        while MigratedPg.free:
            await MigratedPg.free.pop()[0].drop()

    if MigratedPg.free:
        with ThreadPoolExecutor(max_workers=1) as thread:
            thread.submit(asyncio.run, drop_all()).result()


BACKENDS = [
    "sqlite",
    pytest.param(
        "postgresql",
        marks=pytest.mark.skipif(not PG_URL, reason="HOTLINE_TEST_PG_URL is not set"),
    ),
]


@pytest.fixture(params=BACKENDS)
async def engine(
    request: pytest.FixtureRequest, make_config: ConfigFactory
) -> AsyncIterator[AsyncEngine]:
    """A migrated engine on a real database: a SQLite file, or a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        config = make_config()
        # As open_database, then a migration, leave it: at head, no check value written yet.
        await asyncio.to_thread(copy_migrated_sqlite, config)
        eng = await open_database(config, verify=False)
        await migrate.upgrade(eng)
        with no_blocking_calls(request):
            yield eng
        await eng.dispose()
        return
    if MigratedPg.free:
        schema, shape = MigratedPg.free.pop()
    else:
        schema = PgSchema(PG_URL)
        await schema.create()
        shape = ""
    # As on a new schema, where it finds nothing to check: no check value written yet.
    eng = await open_database(make_config(database={"url": PG_URL}), verify=not shape,
                              **schema.connect_args)
    try:
        await migrate.upgrade(eng)  # nothing to do for a schema handed on
        if not shape:
            shape = await MigratedPg.shape(schema)
        with no_blocking_calls(request):
            yield eng
    finally:
        await eng.dispose()
        if shape:
            await MigratedPg.hand_back(schema, shape)
        else:
            await schema.drop()


@pytest.fixture
async def backend(engine: AsyncEngine) -> AsyncIterator[WriteBackend]:
    """The write backend of ``engine`` (a test module needing other settings defines its own)."""
    opened = await open_write_backend(engine)
    yield opened
    await opened.close()


OUR_PACKAGES = ["gateway", "intake", "routing", "outbound"]


@contextlib.contextmanager
def no_blocking_calls(request: pytest.FixtureRequest | None = None) -> Iterator[None]:
    """Within this, a blocking call made by the gateway's own code on the loop fails the test.

    Start-up (migrations through Alembic, which reads its scripts from disk) happens before the
    daemon serves anything and is left outside, as are tests marked ``startup``. asyncpg looks
    for ~/.pgpass and client certificates once per new connection, which the pool amortises:
    allowed here.
    """
    if request is not None and request.node.get_closest_marker("startup"):
        yield
        return
    with blockbuster_ctx(OUR_PACKAGES) as watch:
        for function in watch.functions.values():
            function.can_block_in("asyncpg/connect_utils.py", "_parse_connect_dsn_and_args")
        yield


@contextlib.asynccontextmanager
async def serving(config: Config, **kwargs: Any) -> AsyncIterator[Gateway]:
    """``running`` with the serving phase (not start-up) watched for blocking calls."""
    from gateway.app import running  # the whole daemon: imported only by tests that run it

    if kwargs.get("engine") is None and kwargs.get("upgrade_db", True):
        await asyncio.to_thread(copy_migrated_sqlite, config)
    async with running(config, **kwargs) as gw:
        with no_blocking_calls():
            yield gw


@pytest.fixture
async def gateway(make_config: ConfigFactory) -> AsyncIterator[Gateway]:
    """The gateway with default test settings, running on port 0."""
    async with serving(make_config()) as gw:
        yield gw


@pytest.fixture(scope="session")
def mmdb(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Country and ASN databases with known answers: ``{"country": path, "asn": path}``."""
    folder = tmp_path_factory.mktemp("mmdb")
    return {
        "country": build_mmdb(folder / "country.mmdb", "Country"),
        "asn": build_mmdb(folder / "asn.mmdb", "ASN"),
    }


@pytest.fixture
def zone() -> Zone:
    return standard_zone()


@pytest.fixture
async def dns(zone: Zone) -> AsyncIterator[DnsServer]:
    """A DNS server on 127.0.0.1 (UDP and TCP, one port) answering from ``zone``."""
    async with DnsServer(zone) as server:
        yield server


Start = Callable[..., Awaitable["Gateway"]]


@pytest.fixture
async def start(
    make_config: ConfigFactory, dns: DnsServer, mmdb: dict[str, Path]
) -> AsyncIterator[Start]:
    """Starts gateways (console on port 0, cases located against the test DNS server and
    databases) with per-test settings; stops them at the end of the test."""
    stack: list[Any] = []

    async def go(**sections: dict[str, Any]) -> Gateway:
        # The test DNS server shares the event loop with the gateway, so a busy machine can
        # hold its answer back well past the half second that make_config allows a dead one.
        locate = {"nameservers": [dns.nameserver], "geoip_db": str(mmdb["country"]),
                  "asn_db": str(mmdb["asn"]), "timeout": "10s",
                  **sections.pop("locate", {})}
        config = make_config(locate=locate, **sections)
        context = serving(config)
        gw = await context.__aenter__()
        stack.append(context)
        return gw

    yield go
    for context in reversed(stack):
        await context.__aexit__(None, None, None)


async def start_public_tls(start: Start, folder: Path) -> tuple[Gateway, ssl.SSLContext]:
    """A gateway whose public listener serves TLS with a trustme certificate for 127.0.0.1,
    and a client context that trusts it."""
    ca = trustme.CA()
    pem = folder / "web.pem"
    ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(pem))
    gw = await start(http={"listen": ["127.0.0.1:0"], "tls_cert": str(pem),
                           "tls_key": str(pem)})
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return gw, context
