"""The console's tests use the ``start`` fixture of tests/conftest.py, and ``client`` for
staff sessions against a running gateway's console (closed after the test)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest

from gateway.app import Gateway
from tests.conftest import Start
from tests.console_client import StaffClient, base

__all__ = ["Start"]


@pytest.fixture
async def client() -> AsyncIterator[Callable[[Gateway], StaffClient]]:
    made: list[StaffClient] = []

    def make(gw: Gateway) -> StaffClient:
        made.append(StaffClient(base(gw)))
        return made[-1]

    yield make
    for c in made:
        await c.close()
