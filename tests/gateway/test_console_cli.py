"""`users add`, `tokens create` and `audit verify` from the command line."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pyotp
import pytest
from sqlalchemy import create_engine, text

from gateway.cli import main
from tests.daemon import ensure_keyring
from tests.dns_server import free_udp_port


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(f'[locate]\nnameservers = ["127.0.0.1:{free_udp_port()}"]\n')
    ensure_keyring(path)
    assert main(["--config", str(path), "db", "upgrade"]) == 0
    return path


def run(config: Path, *argv: str) -> int:
    return main(["--config", str(config), *argv])


def test_users_add_prints_a_one_time_password_and_a_totp_secret(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(config, "users", "add", "ana", "--role", "analyst") == 0
    out = capsys.readouterr().out
    secret = re.search(r"TOTP secret:\s+([A-Z2-7]+)", out)
    uri = re.search(r"(otpauth://totp/\S+)", out)
    assert secret and uri and re.search(r"password:\s+\S{12,}", out)
    assert pyotp.parse_uri(uri.group(1)).secret == secret.group(1)
    assert "issuer=hotline-gateway" in uri.group(1)
    assert run(config, "users", "add", "ana", "--role", "analyst") == 2
    assert "exists already" in capsys.readouterr().err
    assert run(config, "users", "add", "Not A Name", "--role", "analyst") == 2
    with pytest.raises(SystemExit):
        run(config, "users", "add", "bob", "--role", "king")


def test_tokens_create_prints_the_token_alone_and_keeps_only_its_hash(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run(config, "users", "add", "ana", "--role", "analyst")
    capsys.readouterr()
    assert run(config, "tokens", "create", "ana") == 0
    token = capsys.readouterr().out
    assert re.fullmatch(r"hgt_[A-Za-z0-9_-]{40,}\n", token)
    database = create_engine(f"sqlite:///{config.parent / 'var' / 'gateway.db'}")
    with database.connect() as conn:
        stored = conn.execute(text("SELECT token_sha256 FROM api_tokens")).scalar()
    database.dispose()
    assert stored is not None and token.strip() not in stored and len(stored) == 64
    assert run(config, "tokens", "create", "nobody") == 2
    capsys.readouterr()
    assert run(config, "tokens", "revoke", "ana", "--all") == 0
    assert "1 token(s) of ana revoked" in capsys.readouterr().out


def test_tokens_are_named_listed_and_revoked_one_by_one(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`tokens create --name --expires --survive-password-change`, `tokens list [NAME]`
    (never the token), `tokens revoke NAME TOKEN_NAME`; a revoke names a token or --all."""
    run(config, "users", "add", "ana", "--role", "analyst")
    run(config, "users", "add", "bob", "--role", "analyst")
    capsys.readouterr()
    assert run(config, "tokens", "create", "ana", "--name", "laptop", "--expires", "90d") == 0
    assert run(config, "tokens", "create", "ana", "--name", "ci",
               "--survive-password-change") == 0
    assert run(config, "tokens", "create", "bob") == 0
    tokens = capsys.readouterr().out.split()
    assert run(config, "tokens", "list") == 0
    listed = capsys.readouterr().out
    assert not any(token in listed for token in tokens)
    lines = [line.split() for line in listed.splitlines()]
    assert lines[0][:3] == ["USER", "TOKEN", "STATE"]
    assert [line[:3] for line in lines[1:]] == [
        ["ana", "laptop", "active"], ["ana", "ci", "active"], ["bob", "token-1", "active"]]
    assert lines[1][-2:] == ["ends", "it"] and lines[2][-1] == "survives"
    assert lines[1][5] != "-" and lines[2][5] == "-"  # an expiry only where one was given
    assert run(config, "tokens", "revoke", "ana", "laptop") == 0
    assert "1 token(s) of ana revoked" in capsys.readouterr().out
    assert run(config, "tokens", "list", "ana") == 0
    assert [line.split()[:3] for line in capsys.readouterr().out.splitlines()[1:]] == [
        ["ana", "laptop", "revoked"], ["ana", "ci", "active"]]
    assert run(config, "tokens", "revoke", "ana", "laptop") == 2
    assert "no live token named 'laptop'" in capsys.readouterr().err
    assert run(config, "tokens", "create", "ana", "--name", "ci") == 2
    assert run(config, "tokens", "create", "ana", "--expires", "soon") == 2
    assert "--expires" in capsys.readouterr().err
    assert run(config, "tokens", "list", "nobody") == 2
    with pytest.raises(SystemExit):
        run(config, "tokens", "revoke", "ana")  # which one: a name or --all


def test_audit_verify_passes_then_fails_once_an_entry_is_altered(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("ana", "bob", "sue"):
        run(config, "users", "add", name, "--role", "analyst")
        run(config, "tokens", "create", name)
    capsys.readouterr()
    assert run(config, "audit", "verify") == 0
    assert re.search(r"6 entries, chain intact; last hash [0-9a-f]{64}", capsys.readouterr().out)
    database = create_engine(f"sqlite:///{config.parent / 'var' / 'gateway.db'}")
    with database.begin() as conn:
        conn.execute(text("UPDATE audit_log SET actor = 'mallory' WHERE seq = 3"))
    database.dispose()
    assert run(config, "audit", "verify") == 1
    assert "entry 3: hash does not match its content" in capsys.readouterr().err


async def test_setup_demo_makes_one_console_account(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "config.toml"
    path.write_text("")
    assert await asyncio.to_thread(main, ["--config", str(path), "setup-demo"]) == 0
    out = capsys.readouterr().out
    assert "created  console account 'analyst'" in out and "TOTP secret" in out
    assert await asyncio.to_thread(main, ["--config", str(path), "setup-demo"]) == 0
    assert "exists   staff accounts" in capsys.readouterr().out


def audit_actions(config: Path) -> list[tuple[str, str]]:
    database = create_engine(f"sqlite:///{config.parent / 'var' / 'gateway.db'}")
    with database.connect() as conn:
        rows = conn.execute(text("SELECT actor, action FROM audit_log ORDER BY seq")).all()
    database.dispose()
    return [(actor, action) for actor, action in rows]


def test_users_are_managed_from_the_command_line_and_every_action_audited(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`users list` shows state and last login; disable, enable, unlock, reset-totp,
    reset-password, role, logout and remove each work and leave an audit entry."""
    run(config, "users", "add", "ana", "--role", "analyst")
    run(config, "users", "add", "root", "--role", "admin")
    old_secret = re.search(r"TOTP secret:\s+(\S+)", capsys.readouterr().out)
    assert old_secret is not None
    assert run(config, "users", "list") == 0
    lines = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert lines[0] == ["NAME", "ROLE", "STATE", "LAST", "LOGIN", "CREATED", "KEYS"]
    assert [line[:4] for line in lines[1:]] == [["ana", "analyst", "new", "-"],
                                                ["root", "admin", "new", "-"]]
    for argv in (["disable", "ana"], ["enable", "ana"], ["unlock", "ana"],
                 ["reset-totp", "root"], ["reset-password", "ana"], ["role", "ana", "supervisor"],
                 ["logout", "ana"], ["remove", "ana"]):
        assert run(config, "users", *argv) == 0, argv
    out = capsys.readouterr().out
    new_secret = re.search(r"TOTP secret:\s+(\S+)", out)
    assert new_secret is not None and new_secret.group(1) != old_secret.group(1)
    assert re.search(r"password:\s+\S{12,}", out) and "0 session(s) of ana ended" in out
    assert audit_actions(config)[-8:] == [("system:cli", action) for action in (
        "user.disabled", "user.enabled", "user.unlocked", "user.totp_reset",
        "user.password_reset", "user.role_changed", "user.logged_out", "user.removed")]
    assert run(config, "users", "list") == 0
    assert "ana" not in capsys.readouterr().out
    assert run(config, "users", "disable", "ana") == 2
    assert "no user named 'ana'" in capsys.readouterr().err


def test_the_last_admin_is_neither_removed_nor_demoted(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With one enabled admin, demoting or removing them is refused; with a second, allowed."""
    run(config, "users", "add", "root", "--role", "admin")
    run(config, "users", "add", "sue", "--role", "supervisor")
    capsys.readouterr()
    assert run(config, "users", "role", "root", "supervisor") == 2
    assert "last admin" in capsys.readouterr().err
    assert run(config, "users", "remove", "root") == 2
    assert run(config, "users", "role", "sue", "admin") == 0
    assert run(config, "users", "disable", "sue") == 0
    assert run(config, "users", "remove", "root") == 2  # a disabled admin does not count
    assert run(config, "users", "enable", "sue") == 0
    assert run(config, "users", "role", "root", "analyst") == 0
    assert run(config, "users", "remove", "sue") == 2
    assert run(config, "users", "remove", "root") == 0


def test_no_staff_account_can_pass_for_the_command_line_in_the_trail(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The CLI acts as ``system:cli``, a name no account can take; an account named ``cli``
    stays a person of its own in the trail."""
    assert run(config, "users", "add", "system:cli", "--role", "admin") == 2
    assert "a user name is" in capsys.readouterr().err
    assert run(config, "users", "add", "cli", "--role", "admin") == 0
    assert run(config, "tokens", "create", "cli") == 0
    assert audit_actions(config)[-2:] == [("system:cli", "user.added"),
                                          ("system:cli", "token.created")]


def test_users_add_and_reset_totp_keep_the_secret_sealed(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The secrets `users add` and `users reset-totp` print are nowhere in the database's
    files: the column holds them sealed."""
    assert run(config, "users", "add", "ana", "--role", "analyst") == 0
    assert run(config, "users", "reset-totp", "ana") == 0
    secrets = re.findall(r"TOTP secret:\s+([A-Z2-7]{16,})", capsys.readouterr().out)
    assert len(secrets) == 2 and secrets[0] != secrets[1]
    path = config.parent / "var" / "gateway.db"
    database = create_engine(f"sqlite:///{path}")
    with database.connect() as conn:
        stored = conn.execute(text("SELECT totp_secret FROM users")).scalar_one()
    database.dispose()
    assert type(stored) is bytes and stored.startswith(b"\x01")
    disk = b"".join(p.read_bytes() for p in path.parent.glob("gateway.db*"))
    for secret in secrets:
        assert secret.encode() not in disk and secret.encode("utf-16-le") not in disk
