"""A staff member's browser, without the browser: an HTTP client that keeps cookies, reads the
CSRF token from the page it posts from, and logs in with password and TOTP."""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

import aiohttp
import pyotp
from sqlalchemy import update

from gateway.app import Gateway
from gateway.console.accounts import NewUser, add_user, utcnow
from gateway.store.backend import WriteBackend
from gateway.store.case_view import list_cases
from gateway.store.tables import users
from tests.passwords import CHEAP
from tests.smtp_client import deliver, report

#: What a verdict carries under the default ``[assessment] require``, for tests whose
#: subject is something else.
ILLEGAL_DETAILS = {"age_group": "pre_pubescent", "media": "images", "site_type": "image_host"}
LEGAL_DETAILS = {"reason": "adult_pornography"}


def base(gw: Gateway) -> str:
    """The console's address."""
    host, port = gw.console.addresses[0]
    return f"http://{host}:{port}"


async def file_case(gw: Gateway, body: str, tag: str) -> str:
    """Report ``body`` by e-mail; the id of the case whose URL holds ``tag``, once it waits
    for assessment (normalised and located)."""
    sent, _ = await deliver(gw.smtp.addresses[0][1], report(tag, body=body))
    assert sent == 250
    async with asyncio.timeout(20):
        while True:
            async with gw.engine.connect() as conn:
                waiting = await list_cases(conn, status="awaiting_assessment")
            for case in waiting:
                if tag in (case["canonical_url"] or ""):
                    return str(case["id"])
            await asyncio.sleep(0.05)


def hidden(page: str, name: str) -> str:
    found = re.search(rf'name="{name}" value="([^"]+)"', page)
    assert found, f"no {name} field on the page"
    return found.group(1)


def code(secret: str, steps_ahead: int = 0) -> str:
    """The TOTP code of now (or of a following step: a second login in the same 30 s needs
    a code not used yet, and the gateway accepts one step of clock drift)."""
    return pyotp.TOTP(secret).at(time.time() + 30 * steps_ahead)


async def ready_user(backend: WriteBackend, name: str, role: str = "analyst") -> NewUser:
    """An account whose one-time password is already its password (no change forced), hashed
    as the tests' consoles hash (tests/passwords.py)."""
    new = await add_user(backend, name, role, now=utcnow(), passwords=CHEAP)
    await backend.transaction(lambda conn: conn.execute(
        update(users).where(users.c.name == name).values(must_change_password=False)))
    return new


class StaffClient:
    def __init__(self, base: str) -> None:
        self.base = base
        self.http = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))

    async def close(self) -> None:
        await self.http.close()

    async def get(self, path: str, **kwargs: Any) -> tuple[int, str]:
        async with self.http.get(self.base + path, **kwargs) as response:
            return response.status, await response.text()

    async def login(self, user: NewUser, *, password: str | None = None,
                    totp: str | None = None) -> tuple[int, str]:
        _, page = await self.get("/login")
        form = {"login_token": hidden(page, "login_token"), "name": user.name,
                "password": password if password is not None else user.password,
                "code": totp if totp is not None else code(user.totp_secret)}
        async with self.http.post(self.base + "/login", data=form) as response:
            return response.status, await response.text()

    async def post_from(self, page_path: str, action: str, data: dict[str, str] | None = None,
                        *, csrf: bool = True) -> tuple[int, str]:
        """Post a form found on ``page_path`` (as a browser would, CSRF token included)."""
        _, page = await self.get(page_path)
        form = dict(data or {})
        if csrf:
            form["csrf"] = hidden(page, "csrf")
        async with self.http.post(self.base + action, data=form) as response:
            return response.status, await response.text()
