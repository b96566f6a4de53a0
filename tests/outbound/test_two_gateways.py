"""Two gateways close the loop: hotline BE and hotline NL, each a real ``serve`` process with
its own gpg home and keys, pinning the other's key in ``[routing.hotlines]``. Their outboxes
hand mail to a relay on 127.0.0.1 (aiosmtpd) that passes what is for the other hotline on to
that hotline's own SMTP listener and keeps what is for the police. A URL hosted in NL is
reported to BE and referred to NL; NL files it with BE's reference, acknowledges it by itself,
refers it to its police; an NL analyst records the removal; BE shows both, with their times.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
from collections.abc import AsyncIterator
from contextlib import closing
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import aiosmtplib
import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session

from gateway.cli import main
from tests.cluster import until
from tests.console_client import ILLEGAL_DETAILS
from tests.daemon import Daemon, ensure_keyring
from tests.dns_server import DnsServer
from tests.outbound.conftest import add_subkey, make_key, new_home, run_gpg, stop_agent
from tests.smtp_client import deliver, report

BE_INTAKE, BE_REPLIES = "report@hotline-be.test", "replies@hotline-be.test"
NL_INTAKE, NL_REPLIES = "report@hotline-nl.test", "replies@hotline-nl.test"


@dataclass
class Relay:
    """An upstream MTA both gateways send through: mail for a hotline's domain goes on to that
    hotline's SMTP listener (its answer is the relay's), the rest is kept here."""

    ports: dict[str, int] = field(default_factory=dict)
    kept: list[tuple[list[str], bytes]] = field(default_factory=list)
    passed: list[tuple[list[str], bytes]] = field(default_factory=list)
    port: int = 0
    _server: asyncio.AbstractServer | None = None

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.content
        data = content if isinstance(content, bytes) else str(content).encode()
        domain = envelope.rcpt_tos[0].rpartition("@")[2]
        if domain not in self.ports:
            self.kept.append((list(envelope.rcpt_tos), data))
            return "250 2.0.0 kept"
        try:
            await aiosmtplib.send(data, sender=str(envelope.mail_from),
                                  recipients=list(envelope.rcpt_tos), hostname="127.0.0.1",
                                  port=self.ports[domain], start_tls=False, timeout=10)
        except aiosmtplib.SMTPResponseException as exc:
            return f"{exc.code} {exc.message}"
        except (aiosmtplib.SMTPException, OSError):
            return "451 4.4.1 next hop down"
        self.passed.append((list(envelope.rcpt_tos), data))
        return "250 2.0.0 passed on"

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: SMTP(self, hostname="relay.test"),
                                                "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


@dataclass
class Hotline:
    country: str
    folder: Path
    key: str
    config: Path | None = None
    daemon: Daemon | None = None
    token: str = ""

    @property
    def api(self) -> str:
        assert self.daemon is not None
        return f"http://127.0.0.1:{self.daemon.console_port}/api/v1"


def hotline_keys(tmp_path: Path) -> tuple[Hotline, Hotline, str]:
    """BE and NL, each a gpg home with its own secret key and the other's public key; NL's
    home also holds its police's public key (the third fingerprint)."""
    be_home = new_home(tmp_path / "be" / "gnupg")
    nl_home = new_home(tmp_path / "nl" / "gnupg")
    be = make_key(be_home, "Hotline BE <referrals@hotline-be.test>")
    add_subkey(be_home, be)
    nl = make_key(nl_home, "Hotline NL <referrals@hotline-nl.test>")
    add_subkey(nl_home, nl)
    police = make_key(nl_home, "Politie <cp@police-nl.test>")
    add_subkey(nl_home, police)
    run_gpg(be_home, "--armor", "--output", str(tmp_path / "be.asc"), "--export", be)
    run_gpg(nl_home, "--armor", "--output", str(tmp_path / "nl.asc"), "--export", nl)
    run_gpg(nl_home, "--import", str(tmp_path / "be.asc"))
    run_gpg(be_home, "--import", str(tmp_path / "nl.asc"))
    return Hotline("BE", tmp_path / "be", be), Hotline("NL", tmp_path / "nl", nl), police


def write_config(hotline: Hotline, partner: Hotline, *, intake: str, replies: str,
                 partner_intake: str, partner_replies: str, relay: Relay, dns: DnsServer,
                 mmdb: dict[str, Path], police: str) -> Path:
    path = hotline.folder / "config.toml"
    listeners = "".join(f'[{s}]\nlisten = ["127.0.0.1:0"]\n'
                        for s in ("console", "http", "admin"))
    path.write_text(f"""
[gateway]
home_country = "{hotline.country}"
hotline_name = "Hotline {hotline.country}"
log_format = "json"
shutdown_grace = "3s"
{listeners}
[smtp]
listen = ["127.0.0.1:0"]
recipients = ["{intake}"]
max_connections_per_source = 1000
messages_per_minute_per_source = 100000
[locate]
nameservers = ["{dns.nameserver}"]
geoip_db = "{mmdb["country"]}"
asn_db = "{mmdb["asn"]}"
timeout = "2s"
[gpg]
home = "{hotline.folder / "gnupg"}"
signing_key = "{hotline.key}"
[outbound]
transport = "smtp"
smtp_host = "127.0.0.1"
smtp_port = {relay.port}
tls = "none"
from_address = "referrals@hotline-{hotline.country.lower()}.test"
reply_address = "{replies}"
retry_after = "200ms"
retry_max = "1s"
timeout = "5s"
[routing.destinations.police]
email = "cp@police-{hotline.country.lower()}.test"
key = "{police}"
[routing.hotlines.{partner.country}]
email = "{partner_intake}"
key = "{partner.key}"
reply_to = "{partner_replies}"
""")
    ensure_keyring(path)
    return path


def password_changed(database: Path) -> None:
    """As if ana had logged in and chosen a password (an API token needs that)."""
    with closing(sqlite3.connect(database)) as db, db:
        db.execute("UPDATE users SET must_change_password = 0")


def cli(config: Path, *argv: str) -> None:
    assert main(["--config", str(config), *argv]) == 0


async def api(hotline: Hotline, method: str, path: str, body: Any = None) -> Any:
    async with aiohttp.ClientSession() as http, http.request(
            method, hotline.api + path, json=body,
            headers={"Authorization": f"Bearer {hotline.token}"}) as response:
        answer = await response.json()
        assert response.status == 200, answer
        return answer


async def waiting_case(hotline: Hotline, tag: str) -> str | None:
    listed = await api(hotline, "GET", "/cases?status=awaiting_assessment")
    cases = listed["cases"] if isinstance(listed, dict) else listed
    for case in cases:
        if tag in (case.get("canonical_url") or case.get("url") or ""):
            return str(case["id"])
    return None


@pytest.fixture
async def relay() -> AsyncIterator[Relay]:
    started = Relay()
    await started.start()
    yield started
    await started.stop()


async def test_two_gateways_close_the_loop(
        tmp_path: Path, dns: DnsServer, mmdb: dict[str, Path], relay: Relay,
        capsys: pytest.CaptureFixture[str]) -> None:
    """BE reports and assesses a URL hosted in NL and refers it; NL files it with BE's
    reference, acknowledges by itself; NL's analyst records removal on NL's police referral;
    BE shows ``acknowledged`` then ``removed``, with the times."""
    be, nl, police = await asyncio.to_thread(hotline_keys, tmp_path)
    be.config = write_config(be, nl, intake=BE_INTAKE, replies=BE_REPLIES,
                             partner_intake=NL_INTAKE, partner_replies=NL_REPLIES, relay=relay,
                             dns=dns, mmdb=mmdb, police=nl.key)
    nl.config = write_config(nl, be, intake=NL_INTAKE, replies=NL_REPLIES,
                             partner_intake=BE_INTAKE, partner_replies=BE_REPLIES, relay=relay,
                             dns=dns, mmdb=mmdb, police=police)
    for hotline in (be, nl):
        assert hotline.config is not None
        await asyncio.to_thread(cli, hotline.config, "db", "upgrade")
        await asyncio.to_thread(cli, hotline.config, "users", "add", "ana", "--role", "analyst")
        await asyncio.to_thread(password_changed, hotline.folder / "var" / "gateway.db")
        capsys.readouterr()
        await asyncio.to_thread(cli, hotline.config, "tokens", "create", "ana")
        hotline.token = capsys.readouterr().out.split()[-1]
        hotline.daemon = Daemon(hotline.config, hotline.folder)
    assert be.daemon is not None and nl.daemon is not None
    try:
        await asyncio.gather(be.daemon.start(), nl.daemon.start())
        relay.ports = {"hotline-be.test": be.daemon.smtp_port,
                       "hotline-nl.test": nl.daemon.smtp_port}

        # BE: a report of a URL hosted in NL, assessed illegal: referred to hotline NL.
        code, _ = await deliver(be.daemon.smtp_port,
                                report("loop", body="See http://nl.test/loop-1"),
                                rcpt=BE_INTAKE)
        assert code == 250
        be_case = await until("BE's case", lambda: waiting_case(be, "loop-1"))
        await api(be, "POST", f"/cases/{be_case}/assessment",
                  {"verdict": "illegal", "classification": "baseline", **ILLEGAL_DETAILS})

        async def be_referral_sent() -> dict[str, Any] | None:
            case = await api(be, "GET", f"/cases/{be_case}")
            refs = [r for r in case["referrals"] if r["status"] == "sent"]
            return refs[0] if refs else None

        be_referral = await until("BE's referral to NL sent", be_referral_sent)
        assert be_referral["destination"] == "hotline:NL"

        # NL: filed with BE's reference as its provenance, and acknowledged by itself.
        nl_case = await until("NL's case", lambda: waiting_case(nl, "loop-1"))
        shown = await api(nl, "GET", f"/cases/{nl_case}")
        [provenance] = shown["partner_referrals"]
        assert (provenance["partner"], provenance["their_reference"]) == (
            "BE", be_referral["reference"])

        async def be_outcome(outcome: str) -> dict[str, Any] | None:
            case = await api(be, "GET", f"/cases/{be_case}")
            for referral in case["referrals"]:
                for told in referral.get("outcomes") or []:
                    if told["outcome"] == outcome:
                        return {"case": case, **told}
            return None

        acknowledged = await until("BE to show acknowledged", lambda: be_outcome("acknowledged"))
        assert acknowledged["case"]["status"] == "acknowledged"
        assert acknowledged["source"] in ("reply", "partner")
        assert acknowledged["occurred_at"]

        # NL's analyst assesses; NL refers to its police, then records the removal there.
        await api(nl, "POST", f"/cases/{nl_case}/assessment",
                  {"verdict": "illegal", "classification": "baseline", **ILLEGAL_DETAILS})

        async def nl_police_referral() -> dict[str, Any] | None:
            case = await api(nl, "GET", f"/cases/{nl_case}")
            refs = [r for r in case["referrals"]
                    if r["status"] == "sent" and r["destination"] == "police"]
            return refs[0] if refs else None

        nl_referral = await until("NL's referral to its police", nl_police_referral)
        assert any("cp@police-nl.test" in rcpts for rcpts, _ in relay.kept)
        down = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=1)
        await api(nl, "POST", f"/referrals/{nl_referral['id']}/outcome",
                  {"outcome": "removed", "occurred_at": down.isoformat()})

        removed = await until("BE to show removed", lambda: be_outcome("removed"))
        assert removed["case"]["status"] == "removed"
        assert datetime.fromisoformat(removed["occurred_at"].replace("Z", "+00:00")) == down
        assert datetime.fromisoformat(acknowledged["occurred_at"].replace("Z", "+00:00")) <= down
        # NL's case says what it told BE, and when.
        async def nl_told_all() -> list[dict[str, Any]] | None:
            case = await api(nl, "GET", f"/cases/{nl_case}")
            told = case["partner_referrals"][0]["told"]
            return told if [t["status"] for t in told] == ["sent", "sent"] else None

        told = await until("NL to show what it told BE", nl_told_all)
        assert [t["outcome"] for t in told] == ["acknowledged", "removed"]
        assert told[1]["occurred_at"] == removed["occurred_at"]
        # BE's referral named where to answer; NL's replies went there, in its thread.
        [(_, referral)] = [m for m in relay.passed if m[0] == [NL_INTAKE]]
        assert f"Reply-To: {BE_REPLIES}".encode() in referral
        answers = [data for rcpts, data in relay.passed if rcpts == [BE_REPLIES]]
        assert len(answers) == 2
        thread = re.search(rb"Message-ID: (<[^>]+>)", referral)
        assert thread and all(b"In-Reply-To: " + thread[1] in a for a in answers)
        logs = be.daemon.log() + nl.daemon.log()
        assert "nl.test/loop-1" not in logs
        assert not re.search(r'"level": "(error|critical)"', logs), logs
    finally:
        await asyncio.gather(be.daemon.close(), nl.daemon.close())
        await asyncio.to_thread(stop_agent, be.folder / "gnupg")
        await asyncio.to_thread(stop_agent, nl.folder / "gnupg")
