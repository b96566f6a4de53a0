"""Security keys (WebAuthn) in the console, without a browser: a software authenticator of
this file (a P-256 key, "none" attestation, a signature counter it can be told to set) talks
to a running gateway's console over HTTP, as a browser's script would.

The console must be reached by a name for WebAuthn (an RP id is never an IP address), so the
client goes to http://localhost:PORT."""

from __future__ import annotations

import base64
import hashlib
import html
import json
import re
import struct
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import cbor2
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import event, select, update
from sqlalchemy.engine import Engine

from gateway import config as config_module
from gateway.app import Gateway
from gateway.console import keystore, people
from gateway.console.accounts import NewUser, Staff, create_token
from gateway.console.accounts import utcnow as now
from gateway.store.tables import audit_log, staff_security_keys, staff_sessions, users
from tests.console_client import StaffClient, code, hidden, ready_user
from tests.gateway.conftest import Start
from tests.trail import opened


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class SoftKey:
    """A security key in software: registers one credential, signs assertions with a counter
    (``counter`` can be set back, as a clone of the key would)."""

    def __init__(self) -> None:
        self.private = ec.generate_private_key(ec.SECP256R1())
        self.credential_id = hashlib.sha256(str(id(self)).encode()).digest()[:16]
        self.counter = 0

    def _client_data(self, kind: str, challenge: str, origin: str) -> bytes:
        return json.dumps({"type": kind, "challenge": challenge, "origin": origin,
                           "crossOrigin": False}).encode()

    def create(self, options: dict[str, Any], origin: str) -> str:
        numbers = self.private.public_key().public_numbers()
        cose = cbor2.dumps({1: 2, 3: -7, -1: 1, -2: numbers.x.to_bytes(32, "big"),
                            -3: numbers.y.to_bytes(32, "big")})
        auth_data = (hashlib.sha256(options["rp"]["id"].encode()).digest()
                     + bytes([0x01 | 0x04 | 0x40]) + struct.pack(">I", self.counter)
                     + bytes(16) + struct.pack(">H", len(self.credential_id))
                     + self.credential_id + cose)
        client_data = self._client_data("webauthn.create", options["challenge"], origin)
        attestation = cbor2.dumps({"fmt": "none", "attStmt": {}, "authData": auth_data})
        return json.dumps({
            "id": b64(self.credential_id), "rawId": b64(self.credential_id),
            "type": "public-key", "clientExtensionResults": {},
            "response": {"clientDataJSON": b64(client_data),
                         "attestationObject": b64(attestation), "transports": ["usb"]}})

    def get(self, options: dict[str, Any], origin: str) -> str:
        self.counter += 1
        auth_data = (hashlib.sha256(options["rpId"].encode()).digest() + bytes([0x01])
                     + struct.pack(">I", self.counter))
        client_data = self._client_data("webauthn.get", options["challenge"], origin)
        signature = self.private.sign(auth_data + hashlib.sha256(client_data).digest(),
                                      ec.ECDSA(hashes.SHA256()))
        return json.dumps({
            "id": b64(self.credential_id), "rawId": b64(self.credential_id),
            "type": "public-key", "clientExtensionResults": {},
            "response": {"clientDataJSON": b64(client_data), "authenticatorData": b64(auth_data),
                         "signature": b64(signature)}})


def options_of(page: str) -> dict[str, Any]:
    found = re.search(r'data-options="([^"]+)"', page)
    assert found, "no WebAuthn options on the page"
    parsed: dict[str, Any] = json.loads(html.unescape(found.group(1)))
    return parsed


def origin_of(gw: Gateway) -> str:
    return f"http://localhost:{gw.console.addresses[0][1]}"


@pytest.fixture
async def named() -> AsyncIterator[Callable[[Gateway], StaffClient]]:
    """Staff clients that reach the console at http://localhost:PORT."""
    made: list[StaffClient] = []

    def make(gw: Gateway) -> StaffClient:
        made.append(StaffClient(origin_of(gw)))
        return made[-1]

    yield make
    for made_client in made:
        await made_client.close()


async def register(client: StaffClient, key: SoftKey, name: str = "blue key", *,
                   password: str) -> tuple[int, str]:
    _, page = await client.get("/account/keys")
    credential = key.create(options_of(page), client.base)
    async with client.http.post(client.base + "/account/keys", data={
            "csrf": hidden(page, "csrf"), "name": name, "credential": credential,
            "password": password}) as response:
        return response.status, await response.text()


async def key_login(client: StaffClient, user: NewUser, key: SoftKey, *,
                    password: str | None = None, offered: bool = True) -> tuple[int, str]:
    """Name and password with "Log in with a security key", then the key's answer (sent
    even where the page does not offer the key (``offered``), as a browser would not)."""
    _, page = await client.get("/login")
    async with client.http.post(client.base + "/login", data={
            "login_token": hidden(page, "login_token"), "name": user.name,
            "password": password if password is not None else user.password,
            "factor": "key"}) as response:
        assert response.status == 200
        page = await response.text()
    options = options_of(page)
    assert (b64(key.credential_id) in [c["id"] for c in options["allowCredentials"]]) \
        == offered
    credential = key.get(options, client.base)
    async with client.http.post(client.base + "/login/key",
                                data={"credential": credential}) as response:
        return response.status, await response.text()


async def audit(gw: Gateway) -> list[tuple[str, str, dict[str, Any]]]:
    async with gw.engine.connect() as conn:
        rows = opened(conn, await conn.execute(select(
            audit_log.c.seq, audit_log.c.actor, audit_log.c.action, audit_log.c.details)
            .order_by(audit_log.c.seq)))
    return [(r.actor, r.action, r.details) for r in rows]


async def factors(gw: Gateway, name: str) -> list[str | None]:
    async with gw.engine.connect() as conn:
        return list((await conn.execute(
            select(staff_sessions.c.factor).join(users, users.c.id == staff_sessions.c.user_id)
            .where(users.c.name == name))).scalars())


async def test_a_key_is_registered_and_logs_in_with_the_password(
    start: Start, named: Callable[[Gateway], StaffClient]
) -> None:
    gw = await start()
    backend = gw.console.context.backend
    user = await ready_user(backend, "ana")
    key = SoftKey()
    first = named(gw)
    assert (await first.login(user))[0] == 200
    status, page = await register(first, key, password=user.password)
    assert status == 200 and "The key “blue key” is registered." in page
    assert "blue key" in page and 'class="remove-key"' in page
    assert [u.keys for u in await people.list_users(backend)] == [1]

    second = named(gw)
    status, page = await key_login(second, user, key)
    assert status == 200 and "Cases: awaiting assessment" in page
    assert sorted(await factors(gw, "ana"), key=str) == ["key", "totp"]
    entries = await audit(gw)
    assert ("ana", "user.security_key_added", {"user": "ana", "key": "blue key"}) in entries
    login = [d for actor, action, d in entries if action == "user.login" and
             d.get("factor") == "security key"]
    assert len(login) == 1 and login[0]["key"] == "blue key" and login[0]["user"] == "ana"
    # Nothing of the credential is in the trail.
    assert b64(key.credential_id) not in json.dumps([d for _, _, d in entries])
    async with gw.engine.connect() as conn:
        stored = (await conn.execute(select(staff_security_keys))).one()
    assert stored.sign_count == 1 and stored.last_used_at is not None
    # The TOTP login goes on working beside it.
    assert (await named(gw).login(user, totp=code(user.totp_secret, 1)))[0] == 200


async def test_the_key_step_tells_nothing_about_the_password(
    start: Start, named: Callable[[Gateway], StaffClient]
) -> None:
    """A wrong password, an unknown name and a right password all lead to a key page alike;
    only the key's answer decides, and after a wrong password even the right key fails."""
    gw = await start()
    user = await ready_user(gw.console.context.backend, "ana")
    key = SoftKey()
    client = named(gw)
    await client.login(user)
    await register(client, key, password=user.password)
    pages = []
    for name, password in (("ana", user.password), ("ana", "wrong password"),
                           ("nobody", "wrong password")):
        _, page = await client.get("/login")
        async with client.http.post(client.base + "/login", data={
                "login_token": hidden(page, "login_token"), "name": name,
                "password": password, "factor": "key"}) as response:
            assert response.status == 200
            pages.append(await response.text())
    shapes = [re.sub(r'data-options="[^"]+"', "", page) for page in pages]
    assert shapes[0] == shapes[1] == shapes[2]
    assert [len(options_of(page)["allowCredentials"]) for page in pages] == [1, 1, 1]

    status, page = await key_login(named(gw), user, key, password="wrong password")
    assert status == 401 and "Login failed." in page
    failed = [d for _, action, d in await audit(gw) if action == "user.login_failed"]
    assert [d["reason"] for d in failed] == ["password", "unknown user", "password",
                                             "password step failed"]


async def test_a_cloned_key_and_a_removed_key_are_refused(
    start: Start, named: Callable[[Gateway], StaffClient]
) -> None:
    gw = await start()
    backend = gw.console.context.backend
    user = await ready_user(backend, "ana")
    key = SoftKey()
    client = named(gw)
    await client.login(user)
    await register(client, key, password=user.password)
    key.counter = 5
    assert (await key_login(named(gw), user, key))[0] == 200  # counter 6
    for counter in (5, 2):  # the same counter again, and a lower one: a clone
        key.counter = counter
        status, page = await key_login(named(gw), user, key)
        assert status == 401 and "Login failed." in page
    reasons = [d["reason"] for _, action, d in await audit(gw) if action == "user.login_failed"]
    assert reasons == ["sign count", "sign count"]
    key.counter = 10
    assert (await key_login(named(gw), user, key))[0] == 200

    _, page = await client.get("/account/keys")
    key_id = re.search(r'action="/account/keys/([0-9a-f-]+)/remove"', page)
    assert key_id is not None
    remove = f"/account/keys/{key_id.group(1)}/remove"
    # The current password is asked first (a session left open is not enough).
    for password in ({}, {"password": "wrong password"}):
        status, page = await client.post_from("/account/keys", remove, password)
        assert status == 422 and "Your current password is not right." in page
    elsewhere = named(gw)
    assert (await key_login(elsewhere, user, key))[0] == 200  # counter 11
    status, page = await client.post_from("/account/keys", remove,
                                          {"password": user.password})
    assert status == 200 and "The key “blue key” is removed;" in page and "no-keys" in page
    # The user's other sessions ended with it; this one goes on.
    assert "login_token" in (await elsewhere.get("/"))[1]
    assert (await client.get("/account/keys"))[0] == 200
    status, page = await key_login(named(gw), user, key, offered=False)
    assert status == 401 and "Login failed." in page
    entries = await audit(gw)
    assert ("ana", "user.security_key_removed", {"user": "ana", "key": "blue key"}) in entries
    assert entries[-1][1:] == ("user.login_failed", entries[-1][2])
    assert entries[-1][2]["reason"] == "not a key of this user"


async def test_the_counter_only_grows_in_the_store(start: Start) -> None:
    """``keystore.advance``, the one statement that decides: a counter equal to or below the
    stored one is refused, even for two uses racing with the same stored value."""
    gw = await start()
    backend = gw.console.context.backend
    await ready_user(backend, "ana")
    async with gw.engine.connect() as conn:
        user_id = (await conn.execute(select(users.c.id))).scalar_one()
    await keystore.add_key(backend, Staff(user_id, "ana", "analyst"), "k", credential_id=b"c1",
                           public_key=b"pk", sign_count=5, now=now())
    stored = await backend.transaction(lambda conn: keystore.stored_key(conn, user_id, b"c1"))
    assert stored is not None and stored.sign_count == 5
    for count in (5, 4, 0):
        assert not await backend.transaction(
            lambda conn, n=count: keystore.advance(conn, stored, n, now()))
    assert await backend.transaction(lambda conn: keystore.advance(conn, stored, 6, now()))
    # The same stored value again (a second login racing with the first): refused.
    assert not await backend.transaction(lambda conn: keystore.advance(conn, stored, 7, now()))


async def test_keys_required_for_supervisors(
    start: Start, named: Callable[[Gateway], StaffClient]
) -> None:
    """With require_security_key: a supervisor without a key logs in by code only to register
    one (every other page leads to the keys page), is then logged out, and from then on a
    right password and code are refused with a clear message while the key logs in; an
    analyst logs in by code as before. An admin removes the supervisor's keys (lost), and
    the code lets them in again to register a new one."""
    gw = await start(console={"require_security_key": True})
    backend = gw.console.context.backend
    sam = await ready_user(backend, "sam", "supervisor")
    ana = await ready_user(backend, "ana", "analyst")
    root = await ready_user(backend, "root", "admin")
    admin = named(gw)
    await admin.login(root)  # no key yet: this session may only register one

    status, page = await named(gw).login(ana)
    assert status == 200 and "Cases: awaiting assessment" in page

    sam_client = named(gw)
    status, page = await sam_client.login(sam)
    assert status == 200 and 'id="enrolling"' in page
    for path in ("/", "/users"):
        status, page = await sam_client.get(path)
        assert 'id="enrolling"' in page
    key = SoftKey()
    status, page = await register(sam_client, key, password=sam.password)
    assert status == 200 and "Log in" in page and "login_token" in page  # logged out
    assert (await sam_client.get("/"))[1].count("login_token") == 1

    # A right password and code are refused, answered as any failure (with the hint).
    status, page = await named(gw).login(sam, totp=code(sam.totp_secret, 1))
    assert status == 401 and "Login failed." in page
    assert "Supervisors and admins with a security key log in with it" in page
    status, page = await key_login(named(gw), sam, key)
    assert status == 200 and "Cases: awaiting assessment" in page
    refused = [d for _, action, d in await audit(gw) if action == "user.login_refused"]
    assert [(d["user"], d["reason"]) for d in refused] == [("sam", "security key required")]

    # The admin's own session is for registering a key only.
    status, page = await admin.get("/users")
    assert 'id="enrolling"' in page
    root_key = SoftKey()
    await register(admin, root_key, "root key", password=root.password)
    assert (await key_login(admin, root, root_key))[0] == 200
    status, page = await admin.get("/users")
    assert status == 200 and 'id="user-sam"' in page
    assert re.search(r'id="user-sam">.*?<td class="num keys">1</td>', page, re.S)
    status, page = await admin.post_from("/users", "/users/sam/remove-keys")
    assert status == 200 and "1 security key(s) of sam removed" in page
    assert (await key_login(named(gw), sam, key, offered=False))[0] == 401
    async with gw.engine.begin() as conn:  # a code of a later step, without waiting for it
        await conn.execute(update(users).where(users.c.name == "sam")
                           .values(totp_last_step=None))
    status, page = await named(gw).login(sam)
    assert status == 200 and 'id="enrolling"' in page
    removed = [d for actor, action, d in await audit(gw)
               if action == "user.security_keys_removed"]
    assert removed == [{"user": "sam", "keys_removed": 1, "keys": ["blue key"],
                        "sessions_ended": 1}]


async def test_the_api_counts_and_removes_a_users_keys(start: Start) -> None:
    gw = await start()
    backend = gw.console.context.backend
    await ready_user(backend, "root", "admin")
    await ready_user(backend, "ana")
    async with gw.engine.connect() as conn:
        ana_id = (await conn.execute(select(users.c.id).where(users.c.name == "ana"))
                  ).scalar_one()
    await keystore.add_key(backend, Staff(ana_id, "ana", "analyst"), "spare",
                           credential_id=b"c" * 16, public_key=b"pk", sign_count=0, now=now())
    token = await create_token(backend, "root", now=now())
    headers = {"Authorization": f"Bearer {token}"}
    base = f"http://127.0.0.1:{gw.console.addresses[0][1]}"
    async with aiohttp.ClientSession() as http:
        async with http.get(base + "/api/v1/users", headers=headers) as response:
            listed = {u["name"]: u["security_keys"] for u in await response.json()}
        assert listed == {"ana": 1, "root": 0}
        async with http.post(base + "/api/v1/users/ana/remove-keys", headers=headers) as response:
            assert response.status == 200
            assert (await response.json())["done"] == \
                "1 security key(s) of ana removed; their sessions ended."
    assert [u.keys for u in await people.list_users(backend)] == [0, 0]


async def _steps(gw: Gateway, client: StaffClient, name: str, password: str, key: SoftKey
                 ) -> list[list[tuple[str, str]]]:
    """A login with a key, step by step: the audit entries (actor, action) and the SQL
    statements each step made."""
    statements: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        words = statement.split()
        tables = [t for t in ("staff_security_keys", "staff_sessions", "audit_log", "users")
                  if t in words]
        if tables:  # what a login touches (nothing else runs in this test)
            statements.append(f"{words[0]} {tables[0]}")

    steps: list[list[tuple[str, str]]] = []
    seen = len(await audit(gw))
    _, page = await client.get("/login")
    event.listen(Engine, "before_cursor_execute", count)
    try:
        for step in ("password", "key"):
            statements.clear()
            if step == "password":
                async with client.http.post(client.base + "/login", data={
                        "login_token": hidden(page, "login_token"), "name": name,
                        "password": password, "factor": "key"}) as response:
                    assert response.status == 200
                    page = await response.text()
            else:
                credential = key.get(options_of(page), client.base)
                async with client.http.post(client.base + "/login/key",
                                            data={"credential": credential}) as response:
                    assert response.status == 401
            done = " | ".join(statements)
            entries = await audit(gw)
            steps.append([(actor, action) for actor, action, _ in entries[seen:]]
                         + [("sql", done)])
            seen = len(entries)
    finally:
        event.remove(Engine, "before_cursor_execute", count)
    return steps


async def test_a_right_and_a_wrong_password_do_the_same_work(
    start: Start, named: Callable[[Gateway], StaffClient]
) -> None:
    """Without the key, a login with a key does the same work whether the password was right
    or wrong: per step, the same lookups and writes (one audit entry each)."""
    gw = await start()
    user = await ready_user(gw.console.context.backend, "ana")
    client = named(gw)
    await client.login(user)
    await register(client, SoftKey(), password=user.password)
    right = await _steps(gw, named(gw), "ana", user.password, SoftKey())
    wrong = await _steps(gw, named(gw), "ana", "wrong password", SoftKey())
    assert [[a for a in step if a[0] != "sql"] for step in right] == [
        [("ana", "user.login_password_step")], [("ana", "user.login_failed")]]
    assert [[a for a in step if a[0] != "sql"] for step in wrong] == [
        [("ana", "user.login_failed")], [("ana", "user.login_failed")]]
    assert [step[-1] for step in right] == [step[-1] for step in wrong]
    reasons = [d.get("reason") for _, action, d in (await audit(gw))[-4:]]
    assert reasons == [None, "not a key of this user", "password", "password step failed"]


async def test_the_origin_is_never_taken_from_the_host_header(
    start: Start, named: Callable[[Gateway], StaffClient]
) -> None:
    """Without public_origin, keys work only at the console's own loopback address
    (http://localhost:PORT): a lookalike name sent as Host gets no key ceremony."""
    gw = await start()
    user = await ready_user(gw.console.context.backend, "ana")
    client = named(gw)
    await client.login(user)
    port = gw.console.addresses[0][1]
    for host in (f"evil.localhost:{port}", f"console.hotline.test:{port}", "localhost:1"):
        async with client.http.get(client.base + "/account/keys",
                                   headers={"Host": host}) as response:
            page = await response.text()
        assert "data-options" not in page and "public_origin" in page
    _, page = await client.get("/account/keys")
    assert options_of(page)["rp"]["id"] == "localhost"


@pytest.mark.parametrize("console", [
    {"rp_id": "hotline.test"},
    {"require_security_key": True, "listen": ["0.0.0.0:8081"]},
])
def test_keys_without_a_public_origin_are_a_config_error(console: dict[str, Any]) -> None:
    with pytest.raises(config_module.ConfigError) as info:
        config_module.parse({"console": console}, base=Path("/srv"))
    assert "public_origin" in str(info.value)


def test_keys_with_a_public_origin_or_on_loopback_are_fine() -> None:
    for console in ({"rp_id": "hotline.test", "public_origin": "https://console.hotline.test"},
                    {"require_security_key": True, "listen": ["127.0.0.1:8081", "[::1]:8081"]},
                    {"require_security_key": True, "listen": ["0.0.0.0:8081"],
                     "public_origin": "https://console.hotline.test"}):
        config_module.parse({"console": console}, base=Path("/srv"))


async def test_a_code_wait_holds_back_neither_a_key_nor_a_required_users_codes(
    start: Start, named: Callable[[Gateway], StaffClient]
) -> None:
    """Wrong codes made the account wait: its key logs in all the same. With keys required,
    a supervisor's codes are neither evaluated nor counted."""
    gw = await start(console={"require_security_key": True})
    backend = gw.console.context.backend
    sam = await ready_user(backend, "sam", "supervisor")
    client = named(gw)
    await client.login(sam)
    key = SoftKey()
    await register(client, key, password=sam.password)
    async with gw.engine.begin() as conn:
        await conn.execute(update(users).where(users.c.name == "sam").values(
            failed_logins=9, locked_until=now() + timedelta(minutes=10)))
    status, page = await key_login(named(gw), sam, key)
    assert status == 200 and "Cases: awaiting assessment" in page
    for _ in range(3):
        status, page = await named(gw).login(sam, totp="000000")
        assert status == 401 and "Login failed." in page
    async with gw.engine.connect() as conn:
        row = (await conn.execute(select(users).where(users.c.name == "sam"))).one()
    assert row.failed_logins == 0 and row.locked_until is None
    refused = [d["reason"] for _, action, d in await audit(gw)
               if action == "user.login_refused"]
    assert refused == ["security key required"] * 3


async def test_tokens_do_not_manage_users_when_keys_are_required(start: Start) -> None:
    """With require_security_key, an admin's token may read users but not reset codes or
    passwords or remove keys (it would undo what the key protects)."""
    gw = await start(console={"require_security_key": True})
    backend = gw.console.context.backend
    await ready_user(backend, "root", "admin")
    await ready_user(backend, "ana", "supervisor")
    token = await create_token(backend, "root", now=now())
    headers = {"Authorization": f"Bearer {token}"}
    base = f"http://127.0.0.1:{gw.console.addresses[0][1]}"
    before = len(await audit(gw))
    async with aiohttp.ClientSession() as http:
        async with http.get(base + "/api/v1/users", headers=headers) as response:
            assert response.status == 200
        for action in ("remove-keys", "reset-totp", "reset-password", "disable"):
            async with http.post(base + f"/api/v1/users/ana/{action}",
                                 headers=headers) as response:
                assert response.status == 403
                assert "require_security_key" in (await response.json())["error"]
    assert len(await audit(gw)) == before


async def test_registering_a_key_asks_for_the_password(
    start: Start, named: Callable[[Gateway], StaffClient]
) -> None:
    gw = await start()
    user = await ready_user(gw.console.context.backend, "ana")
    client = named(gw)
    await client.login(user)
    status, page = await register(client, SoftKey(), password="wrong password")
    assert status == 422 and "Your current password is not right." in page
    assert 'class="remove-key"' not in page
    status, page = await register(client, SoftKey(), password=user.password)
    assert status == 200 and "The key “blue key” is registered." in page


async def test_a_key_registered_twice_is_a_conflict(
    start: Start, named: Callable[[Gateway], StaffClient]
) -> None:
    gw = await start()
    user = await ready_user(gw.console.context.backend, "ana")
    client = named(gw)
    await client.login(user)
    key = SoftKey()
    assert (await register(client, key, password=user.password))[0] == 200
    status, page = await register(client, key, "again", password=user.password)
    assert status == 409 and "this key is registered already" in page


async def test_a_name_without_keys_is_offered_the_same_ids_after_a_restart(
    start: Start, named: Callable[[Gateway], StaffClient]
) -> None:
    """The stand-in ids of a name without keys come from a secret kept in the database: a
    restart (new ceremonies in memory) does not change them, as it does not change a real
    key's, so comparing the pages across a restart tells nothing."""
    gw = await start()
    security_keys = gw.console.context.security_keys

    async def offered(name: str) -> list[str]:
        client = named(gw)
        _, page = await client.get("/login")
        async with client.http.post(client.base + "/login", data={
                "login_token": hidden(page, "login_token"), "name": name,
                "password": "wrong password", "factor": "key"}) as response:
            page = await response.text()
        return [c["id"] for c in options_of(page)["allowCredentials"]]

    before = await offered("nobody")
    security_keys.ceremonies = keystore.Ceremonies()  # as after a restart
    assert await offered("nobody") == before
    assert await offered("somebody") != before
