"""A login attack for the tests: posting logins to the console from local addresses (127.0.0.N),
as fast as answers come and never waiting as told; in the test's own loop, or as a script of
its own (``python -m tests.login_attack URL NAME ADDRESS…``, which says ``refused ADDRESS``
once each address got its first 429, stops when its stdin closes and prints what it was
answered as JSON)."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp

from gateway.app import Gateway
from tests.console_client import base, hidden


@dataclass
class Tally:
    """What the attackers were answered, and an event once they got ``enough`` answers."""

    enough: int
    answers: list[tuple[str, int, int | None]] = field(default_factory=list)
    started: asyncio.Event = field(default_factory=asyncio.Event)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    def add(self, address: str, status: int, retry_after: int | None) -> None:
        self.answers.append((address, status, retry_after))
        if len(self.answers) >= self.enough:
            self.started.set()

    def statuses(self, address: str | None = None) -> list[int]:
        return [s for a, s, _ in self.answers if address in (None, a)]


async def attack(gw: Gateway | str, address: str, form: Callable[[int], dict[str, str]],
                 tally: Tally, *, limit: int, headers: dict[str, str] | None = None) -> None:
    """Post logins from ``address`` as fast as answers come, never waiting as told, until
    ``tally.stop`` or ``limit`` attempts."""
    url = gw if isinstance(gw, str) else base(gw)
    connector = aiohttp.TCPConnector(local_addr=(address, 0))
    async with aiohttp.ClientSession(connector=connector,
                                     cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        async with http.get(url + "/login") as response:
            token = hidden(await response.text(), "login_token")
        for n in range(limit):
            if tally.stop.is_set():
                return
            async with http.post(url + "/login", data={"login_token": token, **form(n)},
                                 headers=headers or {}, allow_redirects=False) as response:
                page = await response.text()
                if 'name="login_token"' in page:  # each answer sets a new one
                    token = hidden(page, "login_token")
                retry = response.headers.get("Retry-After")
                tally.add(address, response.status, int(retry) if retry else None)



async def _script(url: str, name: str, sources: list[str], limit: int) -> None:
    tally = Tally(enough=1)
    announced: set[str] = set()
    done = asyncio.create_task(asyncio.to_thread(sys.stdin.read))
    done.add_done_callback(lambda _: tally.stop.set())

    async def watch() -> None:
        while not tally.stop.is_set():
            for address in sources:
                if address not in announced and 429 in tally.statuses(address):
                    announced.add(address)
                    print("refused", address, flush=True)
            await asyncio.sleep(0.05)

    watcher = asyncio.create_task(watch())
    await asyncio.gather(*(attack(
        url, address, lambda n: {"name": name, "password": f"guess {n}", "code": "123456"},
        tally, limit=limit) for address in sources))
    tally.stop.set()
    await watcher
    print(json.dumps(tally.answers), flush=True)
    await done


if __name__ == "__main__":
    asyncio.run(_script(sys.argv[1], sys.argv[2], sys.argv[3:], limit=20_000))
