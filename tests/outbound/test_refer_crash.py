"""The daemon killed in the middle of a delivery: after a restart the referral is delivered,
and the duplicate, if any, carries the same Message-ID."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sqlite3
from email import message_from_bytes, policy
from pathlib import Path

import aiohttp
import pytest

from gateway.cli import main
from tests.console_client import ILLEGAL_DETAILS
from tests.daemon import Daemon, daemon_config, ensure_keyring
from tests.dns_server import DnsServer
from tests.outbound.conftest import HOTLINE_PASSPHRASE, Keys
from tests.outbound.mta import Behaviour, FakeMta
from tests.smtp_client import deliver, report


def config_text(tmp_path: Path, keys: Keys, mta: FakeMta, dns: DnsServer,
                mmdb: dict[str, Path]) -> str:
    (tmp_path / "passphrase").write_text(HOTLINE_PASSPHRASE)
    # A short lease: the restarted daemon takes the dead one's delivery within seconds.
    return daemon_config(grace="2s", gateway='stage_lease = "3s"\n',
                         nameserver=dns.nameserver, locate=(
        f'geoip_db = "{mmdb["country"]}"\nasn_db = "{mmdb["asn"]}"\n'), extra=f"""
[gpg]
home = "{keys.hotline_home}"
signing_key = "{keys.hotline}"
passphrase_file = "passphrase"
[outbound]
transport = "smtp"
smtp_host = "127.0.0.1"
smtp_port = {mta.port}
tls = "starttls"
tls_ca_file = "{mta.ca_file}"
timeout = "1s"
retry_after = "200ms"
retry_max = "1s"
[routing.destinations.police]
email = "cp@police.test"
key = "{keys.recipient}"
""")


async def wait_for_case(port: int, token: str, status: str) -> str:
    async with aiohttp.ClientSession() as http, asyncio.timeout(30):
        while True:
            async with http.get(f"http://127.0.0.1:{port}/api/v1/cases?status={status}",
                                headers={"Authorization": f"Bearer {token}"}) as r:
                found = await r.json()
            if found:
                return str(found[0]["id"])
            await asyncio.sleep(0.1)


async def test_killed_mid_delivery_delivers_after_restart_with_the_same_message_id(
    tmp_path: Path, keys: Keys, mta: FakeMta, dns: DnsServer, mmdb: dict[str, Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """SIGKILL while the upstream holds the message unacknowledged; after the restart the same
    message goes again, once the dead worker's lease has run out, and is recorded as sent."""
    config = tmp_path / "config.toml"
    config.write_text(config_text(tmp_path, keys, mta, dns, mmdb))
    ensure_keyring(config)
    run = ["--config", str(config)]
    assert await asyncio.to_thread(main, [*run, "db", "upgrade"]) == 0
    await asyncio.to_thread(main, [*run, "users", "add", "ana", "--role", "analyst"])
    with contextlib.closing(sqlite3.connect(tmp_path / "var" / "gateway.db")) as db, db:
        db.execute("UPDATE users SET must_change_password = 0")  # as after a first login
    capsys.readouterr()
    assert await asyncio.to_thread(main, [*run, "tokens", "create", "ana"]) == 0
    token = capsys.readouterr().out.strip()

    mta.behaviour = Behaviour("keep-and-hang", times=1)
    daemon = Daemon(config, tmp_path)
    try:
        await daemon.start()
        code, _ = await deliver(daemon.smtp_port, report("crash", body="http://be.test/crash"))
        assert code == 250
        case_id = await wait_for_case(daemon.console_port, token, "awaiting_assessment")
        async with aiohttp.ClientSession() as http, http.post(
                f"http://127.0.0.1:{daemon.console_port}/api/v1/cases/{case_id}/assessment",
                json={"verdict": "illegal", "classification": "baseline", **ILLEGAL_DETAILS},
                headers={"Authorization": f"Bearer {token}"}) as r:
            assert r.status == 200
        await mta.wait_for(1)  # on the upstream's disk, but not acknowledged
        daemon.send_signal(signal.SIGKILL)
        await daemon.wait()

        await daemon.start()
        received = await mta.wait_for(2, timeout=60)  # once the dead worker's lease ran out
        first, second = (message_from_bytes(r.data, policy=policy.default) for r in received)
        assert first["Message-ID"] == second["Message-ID"]
        assert received[0].data == received[1].data  # the very same message
        await daemon.wait_for_log("outbox.sent")
        daemon.send_signal(signal.SIGTERM)
        assert await daemon.wait() == 0
    finally:
        await daemon.close()
    with contextlib.closing(sqlite3.connect(tmp_path / "var" / "gateway.db")) as db:
        rows = db.execute("SELECT status FROM referrals").fetchall()
        attempts = db.execute("SELECT outcome FROM outbox_attempts").fetchall()
    assert rows == [("sent",)] and attempts == [("sent",)]
