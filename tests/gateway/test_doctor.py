"""`doctor` checks an install end to end and names what is wrong."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from gateway.cli import main
from tests.daemon import Daemon, daemon_config, ensure_keyring
from tests.dns_server import DnsServer
from tests.outbound.mta import Behaviour, FakeMta


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def test_doctor_on_a_running_install(
    tmp_path: Path, dns: DnsServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """With the daemon up and a resolver that answers: config, database, DNS, the file outbox
    and the daemon pass; keys fail (no signing key is configured) and make the exit 1."""
    admin = free_port()
    dns.zone.add("example.com", "A", "93.184.215.14")
    config = tmp_path / "config.toml"
    text = daemon_config(nameserver=dns.nameserver, extra='[outbound]\ntransport = "file"\n')
    config.write_text(text.replace('[admin]\nlisten = ["127.0.0.1:0"]',
                                   f'[admin]\nlisten = ["127.0.0.1:{admin}"]'))
    ensure_keyring(config)
    daemon = Daemon(config, tmp_path)
    try:
        await daemon.start()
        code = await asyncio.to_thread(main, ["--config", str(config), "doctor"])
    finally:
        await daemon.close()
    out = capsys.readouterr().out
    assert code == 1
    lines = {line.split()[1]: line for line in out.splitlines()}
    for name in ("config", "database", "dns", "outbound"):
        assert lines[name].startswith("ok"), out
    assert lines["keys"].startswith("FAIL") and "gpg.signing_key not set" in lines["keys"]
    assert lines["daemon"].startswith("FAIL") and "keys: unusable" in lines["daemon"]


def test_doctor_says_when_the_daemon_and_the_relay_are_away(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "config.toml"
    config.write_text(daemon_config(extra=f"""
[outbound]
transport = "smtp"
smtp_host = "127.0.0.1"
smtp_port = {free_port()}
[admin]
listen = ["127.0.0.1:{free_port()}"]
""").replace('[admin]\nlisten = ["127.0.0.1:0"]\n', "", 1))
    ensure_keyring(config)
    assert main(["--config", str(config), "db", "upgrade"]) == 0
    assert main(["--config", str(config), "doctor"]) == 1
    out = capsys.readouterr().out
    lines = {line.split()[1]: line for line in out.splitlines()}
    assert lines["database"].startswith("ok")
    assert lines["outbound"].startswith("FAIL") and "starttls" in lines["outbound"]
    assert lines["daemon"].startswith("FAIL") and "is the daemon running?" in lines["daemon"]
    assert lines["dns"].startswith("FAIL")  # nothing answers at the test's resolver


async def test_doctor_greets_the_relay_as_referrals_do(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The way out is checked with the configured EHLO name, MAIL and RCPT, then RSET: a
    relay that refuses unqualified names (Postfix's reject_non_fqdn_helo_hostname) passes,
    and nothing is delivered."""
    mta = FakeMta(tmp_path, Behaviour(require_fqdn_helo=True))
    await mta.start()
    config = tmp_path / "config.toml"
    config.write_text(daemon_config(locate='timeout = "500ms"\n', extra=f"""
[outbound]
transport = "smtp"
smtp_host = "127.0.0.1"
smtp_port = {mta.port}
tls_ca_file = "{mta.ca_file}"
helo_name = "out.hotline.test"
[routing.destinations.police]
email = "cp@police.test"
key = "{'0' * 40}"
"""))
    ensure_keyring(config)
    try:
        assert await asyncio.to_thread(main, ["--config", str(config), "doctor"]) == 1
    finally:
        await mta.stop()
    out = capsys.readouterr().out
    lines = {line.split()[1]: line for line in out.splitlines()}
    assert lines["outbound"].startswith("ok"), out
    assert "as out.hotline.test" in lines["outbound"] and "<cp@police.test>" in lines["outbound"]
    assert mta.helos and set(mta.helos) == {"out.hotline.test"}
    assert mta.received == []
