"""The SMTP transport against a fake upstream MTA: how the gateway names itself in EHLO."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from gateway import config as config_module
from outbound.transports import OutboundSettings, Rejected, SmtpTransport
from tests.outbound.mta import Behaviour, FakeMta

MESSAGE = b"Subject: Referral CF-2026-000001\r\n\r\nciphertext\r\n"


def outbound(mta: FakeMta, tmp_path: Path, **sections: Any) -> OutboundSettings:
    """The [outbound] section as the gateway would load it, pointed at ``mta``."""
    out = {"transport": "smtp", "smtp_host": "127.0.0.1", "smtp_port": mta.port,
           "tls": "starttls", "tls_ca_file": str(mta.ca_file), "timeout": "5s",
           **sections.pop("outbound", {})}
    return config_module.parse({"outbound": out, **sections}, base=tmp_path).outbound.settings()


async def send(config: OutboundSettings) -> str:
    return await SmtpTransport(config).send(mail_from="referrals@hotline.test",
                                            rcpt_to="cp@police.test", message=MESSAGE,
                                            name="r1")


async def test_ehlo_gives_the_configured_helo_name(mta: FakeMta, tmp_path: Path) -> None:
    """A relay that refuses non-FQDN EHLO names (as Postfix can) takes the referral, greeted
    with ``outbound.helo_name`` before and after STARTTLS, not with the machine's name."""
    mta.behaviour = Behaviour(require_fqdn_helo=True)
    await send(outbound(mta, tmp_path, outbound={"helo_name": "out.hotline.test"}))
    assert [r.helo for r in mta.received] == ["out.hotline.test"]
    assert mta.helos == ["out.hotline.test", "out.hotline.test"]


async def test_helo_name_defaults_to_the_smtp_hostname(mta: FakeMta, tmp_path: Path) -> None:
    """Unset, the EHLO name is the hotline's public mail name, ``[smtp] hostname``."""
    mta.behaviour = Behaviour(require_fqdn_helo=True)
    await send(outbound(mta, tmp_path, smtp={"hostname": "report.hotline.be"}))
    assert [r.helo for r in mta.received] == ["report.hotline.be"]


async def test_a_relay_refusing_the_helo_name_rejects_the_referral(
    mta: FakeMta, tmp_path: Path
) -> None:
    """The relay's refusal (here of a name without a dot, made outside the config's checks)
    is a rejection with the relay's words, never a silent loss."""
    mta.behaviour = Behaviour(require_fqdn_helo=True)
    config = dataclasses.replace(outbound(mta, tmp_path), helo_name="gateway")
    with pytest.raises(Rejected, match=r"504 .*need fully-qualified hostname"):
        await send(config)
    assert mta.received == []


@pytest.mark.parametrize("name", ["localhost", "gateway", "192.0.2.1", "out.hotline.test.",
                                  "out hotline.test", "out.hotline.test\r\nRSET"])
def test_a_helo_name_that_is_not_fully_qualified_is_a_config_error(name: str) -> None:
    """The config refuses an EHLO name a strict relay would refuse, naming the key."""
    with pytest.raises(config_module.ConfigError) as info:
        config_module.parse({"outbound": {"helo_name": name}}, base=Path("/"))
    assert [p.split(":")[0] for p in info.value.problems] == ["outbound.helo_name"]


def test_an_unqualified_smtp_hostname_needs_an_explicit_helo_name() -> None:
    """The default cannot be ``[smtp] hostname`` when that is not fully qualified: an error
    that says which key to set (the file transport speaks no SMTP and needs none)."""
    with pytest.raises(config_module.ConfigError) as info:
        config_module.parse({"smtp": {"hostname": "localhost"}}, base=Path("/"))
    assert info.value.problems[0].startswith("outbound.helo_name: not set")
    config = config_module.parse({"smtp": {"hostname": "localhost"},
                                  "outbound": {"helo_name": "out.hotline.test"}}, base=Path("/"))
    assert config.outbound.helo_name == "out.hotline.test"
    config = config_module.parse({"smtp": {"hostname": "localhost"},
                                  "outbound": {"transport": "file"}}, base=Path("/"))
    assert config.outbound.helo_name is None
    config = config_module.parse({"outbound": {"helo_name": ""}}, base=Path("/"))
    assert config.outbound.helo_name == "report.hotline.test"  # "" is unset, as elsewhere


@given(st.one_of(st.text(), st.from_regex(r"[a-z0-9.-]{1,30}", fullmatch=True),
                 st.builds("{}.{}".format, st.text(), st.text())))
@example("localhost")
@example("out.hotline.test\r\nMAIL FROM:<x@evil.test>")
@example("out.hotline.test ")
@example("mail.hotline.test\n")
@example("\u0440\u0444.hotline.test")
@example("10.0.0.1")
def test_any_helo_name_accepted_is_one_word_with_a_dot(name: str) -> None:
    """Hostile names are refused, naming the key; one accepted is an ASCII host name of two
    labels or more that cannot smuggle an SMTP command or pass for an IP address."""
    try:
        config = config_module.parse({"outbound": {"helo_name": name}}, base=Path("/"))
    except config_module.ConfigError as exc:
        assert [p.split(":")[0] for p in exc.problems] == ["outbound.helo_name"]
        return
    helo = config.outbound.helo_name
    assert helo == (name or "report.hotline.test")
    assert helo.isascii() and all(c.isalnum() or c in ".-" for c in helo)
    labels = helo.split(".")
    assert len(labels) >= 2 and all(labels) and not labels[-1].isdigit()
