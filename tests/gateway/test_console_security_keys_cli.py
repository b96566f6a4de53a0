"""`users list` counts each user's security keys; `users remove-keys` removes them (a lost key),
audited with the keys' names."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import create_engine, insert, select

from gateway.store.tables import staff_security_keys, users
from tests.gateway.test_console_cli import audit_actions, config, run

__all__ = ["config"]


def test_users_remove_keys_from_the_command_line(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(config, "users", "add", "sam", "--role", "supervisor") == 0
    database = create_engine(f"sqlite:///{config.parent / 'var' / 'gateway.db'}")
    with database.begin() as conn:
        sam = conn.execute(select(users.c.id).where(users.c.name == "sam")).scalar_one()
        for n in (1, 2):
            conn.execute(insert(staff_security_keys).values(
                id=uuid.uuid4(), user_id=sam, credential_id=bytes([n]) * 16, public_key=b"pk",
                sign_count=0, name=f"key {n}", created_at=datetime.now(UTC)))
    capsys.readouterr()
    assert run(config, "users", "list") == 0
    lines = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert lines[0][-1] == "KEYS" and lines[1][0] == "sam" and lines[1][-1] == "2"
    assert run(config, "users", "remove-keys", "sam") == 0
    assert "2 security key(s) of sam removed" in capsys.readouterr().out
    with database.connect() as conn:
        assert conn.execute(select(staff_security_keys)).all() == []
    database.dispose()
    assert audit_actions(config)[-1] == ("system:cli", "user.security_keys_removed")
    assert run(config, "users", "remove-keys", "nobody") == 2
