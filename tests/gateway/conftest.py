"""Fixtures for the console's tests: a gateway whose cases get located against the test DNS
server and databases, started on demand with per-test settings."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.app import Gateway
from tests.conftest import ConfigFactory, serving
from tests.dns_server import DnsServer

Start = Callable[..., Awaitable[Gateway]]


@pytest.fixture
async def start(
    make_config: ConfigFactory, dns: DnsServer, mmdb: dict[str, Path]
) -> AsyncIterator[Start]:
    """Starts the gateway (console on port 0, located against the test DNS server)."""
    stack: list[Any] = []

    async def go(**sections: dict[str, Any]) -> Gateway:
        locate = {"nameservers": [dns.nameserver], "geoip_db": str(mmdb["country"]),
                  "asn_db": str(mmdb["asn"]), **sections.pop("locate", {})}
        config = make_config(locate=locate, **sections)
        context = serving(config)
        gw = await context.__aenter__()
        stack.append(context)
        return gw

    yield go
    for context in reversed(stack):
        await context.__aexit__(None, None, None)
