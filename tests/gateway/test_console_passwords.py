"""Password hashing: what ships is argon2id at RFC 9106's low-memory parameters, and staff log
in with it; the test suite's cheap hashing is refused on a console beyond loopback."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import argon2
import pytest
from sqlalchemy import select, update

from gateway import config as config_module
from gateway.app import Gateway
from gateway.console.accounts import NewUser, add_user, utcnow
from gateway.store.tables import users
from tests.console_client import StaffClient, base
from tests.gateway.conftest import Start

#: RFC 9106, section 4, second recommended option: argon2id, 64 MiB, 3 passes, 4 lanes, a
#: 128-bit salt and a 256-bit tag.
SHIPPED = argon2.Parameters(type=argon2.Type.ID, version=19, salt_len=16, hash_len=32,
                            time_cost=3, memory_cost=65536, parallelism=4)


async def test_the_shipped_hashing_is_argon2id_at_64_mib_and_staff_log_in_with_it(
    start: Start
) -> None:
    """A config that names no hashing hashes with argon2id at 64 MiB and 3 passes: an
    account made so, and the hash unknown names are checked against, carry exactly these
    parameters, and its user logs in over HTTP with password and code."""
    assert config_module.parse({}, base=Path("/srv")).console.password_hashing == "argon2id"
    gw = await start(console={"password_hashing": "argon2id"})
    passwords = gw.console.context.guard.passwords
    assert passwords.parameters == SHIPPED
    backend = gw.console.context.backend
    made = await add_user(backend, "ana", "analyst", now=utcnow(), passwords=passwords)
    await add_user(backend, "bob", "analyst", now=utcnow())  # no hashing named
    async with gw.engine.connect() as conn:
        stored = dict((await conn.execute(select(users.c.name, users.c.password_hash))).all())
    assert argon2.extract_parameters(stored["ana"]) == SHIPPED
    assert argon2.extract_parameters(stored["bob"]) == SHIPPED
    assert argon2.extract_parameters(passwords.dummy_hash) == SHIPPED
    status, page = await logs_in(gw, made)
    assert status == 200 and "Cases: awaiting assessment" in page


async def logs_in(gw: Gateway, user: NewUser) -> tuple[int, str]:
    """``user`` (no password change due) logs in over HTTP with password and code."""
    await gw.console.context.backend.transaction(lambda conn: conn.execute(
        update(users).where(users.c.name == user.name).values(must_change_password=False)))
    client = StaffClient(base(gw))
    try:
        return await client.login(user)
    finally:
        await client.close()


async def test_a_weaker_hash_is_made_again_with_the_shipped_hashing_at_login(
    start: Start
) -> None:
    """An account hashed with the test suite's setting, on a console switched back to what
    ships, is hashed again with the shipped parameters when its user logs in; the password
    still works afterwards."""
    from tests.passwords import CHEAP

    gw = await start(console={"password_hashing": "argon2id"})
    backend = gw.console.context.backend
    made = await add_user(backend, "cy", "analyst", now=utcnow(), passwords=CHEAP)

    async def stored() -> str:
        async with gw.engine.connect() as conn:
            return str((await conn.execute(select(users.c.password_hash)
                                           .where(users.c.name == "cy"))).scalar_one())

    assert argon2.extract_parameters(await stored()) == argon2.profiles.CHEAPEST
    status, page = await logs_in(gw, made)
    assert status == 200 and "Cases: awaiting assessment" in page
    rehashed = await stored()
    assert argon2.extract_parameters(rehashed) == SHIPPED
    assert argon2.PasswordHasher().verify(rehashed, made.password)


@pytest.mark.parametrize("console", [
    {"password_hashing": "insecure-for-tests", "listen": ["0.0.0.0:8081"]},
    {"password_hashing": "insecure-for-tests", "listen": ["127.0.0.1:8081", "[::]:8081"]},
    # Behind a reverse proxy: on loopback, but reached by staff at its public origin.
    {"password_hashing": "insecure-for-tests", "listen": ["127.0.0.1:8081"],
     "public_origin": "https://console.hotline.example"},
])
def test_the_tests_hashing_beyond_loopback_is_a_config_error(console: dict[str, Any]) -> None:
    with pytest.raises(config_module.ConfigError) as info:
        config_module.parse({"console": console}, base=Path("/srv"))
    assert "password_hashing" in str(info.value)


def test_the_tests_hashing_on_loopback_is_cheapest_argon2id() -> None:
    from gateway.console.passwords import passwords_for

    config = config_module.parse({"console": {"password_hashing": "insecure-for-tests",
                                              "listen": ["127.0.0.1:8081", "[::1]:8081"]}},
                                 base=Path("/srv"))
    cheap = passwords_for(config.console.password_hashing)
    assert cheap.parameters == argon2.profiles.CHEAPEST
    made = cheap.hash("correct horse battery")
    assert cheap.verify(made, "correct horse battery")
    assert not cheap.verify(made, "correct horse battery!")
