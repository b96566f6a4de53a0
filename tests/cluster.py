"""Several gateways on one database, in this process: the same SQLite file, or one fresh
PostgreSQL schema with an engine per instance (as separate hosts would have)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.app import Gateway, running
from gateway.database import open_database
from tests.conftest import PG_URL, ConfigFactory, PgSchema, copy_migrated_sqlite
from tests.dns_server import DnsServer

StartOne = Callable[..., Awaitable[Gateway]]


@contextlib.asynccontextmanager
async def cluster(backend: str, make_config: ConfigFactory, dns: DnsServer,
                  mmdb: dict[str, Path]) -> AsyncIterator[StartOne]:
    """A function that starts one more gateway on the shared database, with per-instance
    sections and the daily jobs' timing (``periodic``); all stopped at the end."""
    schema = PgSchema(PG_URL) if backend == "postgresql" else None
    if schema is not None:
        await schema.create()
    opened: list[Any] = []

    async def go(periodic: dict[str, Any] | None = None, **sections: Any) -> Gateway:
        locate = {"nameservers": [dns.nameserver], "geoip_db": str(mmdb["country"]),
                  "asn_db": str(mmdb["asn"]), "timeout": "10s"}
        database = {"url": PG_URL} if schema is not None else {}
        config = make_config(locate=locate, database=database, **sections)
        engine: AsyncEngine | None = None
        if schema is not None:
            engine = await open_database(config, **schema.connect_args)
            opened.append(engine)
        else:
            await asyncio.to_thread(copy_migrated_sqlite, config)
        # Not watched for blocking calls (start-up reads files, and the watch is the whole
        # process's): a test watches its serving phase once every instance is up.
        context = running(config, engine=engine, periodic=periodic)
        gw = await context.__aenter__()
        opened.append(context)
        return gw

    try:
        yield go
    finally:
        for item in reversed(opened):
            if isinstance(item, AsyncEngine):
                await item.dispose()
            else:
                await item.__aexit__(None, None, None)
        if schema is not None:
            await schema.drop()


async def until(what: str, check: Callable[[], Awaitable[Any]], timeout: float = 60) -> Any:
    """Poll ``check`` until it answers something true (the timeout only ends a hung test)."""
    try:
        async with asyncio.timeout(timeout):
            while not (found := await check()):
                await asyncio.sleep(0.05)
            return found
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None
