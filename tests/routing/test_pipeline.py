"""The whole way: an e-mailed report becomes a located case in the queue; `cases relocate`."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
import structlog
import structlog.testing

from gateway import config as config_module
from gateway.cli import main
from tests.conftest import serving
from tests.daemon import ensure_keyring
from tests.dns_server import DnsServer, Zone
from tests.smtp_client import deliver, report


def write_config(tmp_path: Path, dns: DnsServer, mmdb: dict[str, Path], extra: str = "") -> Path:
    path = tmp_path / "config.toml"
    path.write_text(
        '[smtp]\nlisten = ["127.0.0.1:0"]\n[console]\nlisten = ["127.0.0.1:0"]\n'
        '[http]\nlisten = ["127.0.0.1:0"]\n[admin]\nlisten = ["127.0.0.1:0"]\n'
        f'[locate]\nnameservers = ["{dns.nameserver}"]\n'
        f'geoip_db = "{mmdb["country"]}"\nasn_db = "{mmdb["asn"]}"\ntimeout = "2s"\n' + extra
    )
    ensure_keyring(path)
    return path


async def test_a_reported_url_reaches_the_queue_located(
    tmp_path: Path, dns: DnsServer, zone: Zone, mmdb: dict[str, Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = write_config(tmp_path, dns, mmdb,
                        '[[locate.override]]\nnetwork = "193.190.0.0/16"\ncountry = "LU"\n')
    with structlog.testing.capture_logs() as logged:
        async with serving(config_module.load(path)) as gw:
            body = "Found this: http://nl.test/a and hxxp://mixed[.]test/b"
            code, _ = await deliver(gw.smtp.addresses[0][1], report("p1", body=body))
            assert code == 250
            async with asyncio.timeout(20):
                while gw.locate.located < 2:
                    await asyncio.sleep(0.02)
    # Reported hosts never reach the logs, which name cases by id.
    assert any(entry["event"] == "normalise.batch" for entry in logged)
    assert not [e for e in logged if "nl.test" in str(e) or "mixed" in str(e)]
    capsys.readouterr()
    assert await asyncio.to_thread(main, ["--config", str(path), "cases", "list", "--json"]) == 0
    found = {c["canonical_url"]: c for c in json.loads(capsys.readouterr().out)}
    nl = found["http://nl.test/a"]
    assert nl["status"] == "awaiting_assessment"
    assert (nl["hosting"]["status"], nl["hosting"]["country"]) == ("located", "NL")
    mixed = found["http://mixed.test/b"]["hosting"]
    assert (mixed["status"], mixed["source"]) == ("mixed", "geoip")  # NL and LU (override)

    assert await asyncio.to_thread(main, ["--config", str(path), "cases", "show", nl["id"]]) == 0
    text = capsys.readouterr().out
    assert "hosting: located country=NL asn=1103" in text and "http://" not in text

    zone.add("nl.test", "A", "193.190.4.4")  # moved: now in an overridden network
    del zone.records[("nl.test.", "AAAA")]
    assert await asyncio.to_thread(
        main, ["--config", str(path), "cases", "relocate", nl["id"], "--json"]) == 0
    relocated = json.loads(capsys.readouterr().out)
    assert (relocated["status"], relocated["country"], relocated["source"]) == (
        "located", "LU", "override")
    assert await asyncio.to_thread(
        main, ["--config", str(path), "cases", "show", nl["id"], "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert [e["country"] for e in shown["hosting_evidence"]] == ["NL", "LU"]
    assert shown["hosting"]["country"] == "LU"


async def test_relocate_says_what_is_wrong(
    tmp_path: Path, dns: DnsServer, mmdb: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_config(tmp_path, dns, mmdb)
    assert await asyncio.to_thread(main, ["--config", str(path), "db", "upgrade"]) == 0
    assert await asyncio.to_thread(
        main, ["--config", str(path), "cases", "relocate", "not-an-id"]) == 2
    assert "not a case id" in capsys.readouterr().err
    assert await asyncio.to_thread(
        main, ["--config", str(path), "cases", "relocate",
               "01234567-89ab-7def-8123-456789abcdef"]) == 1
    assert "no case" in capsys.readouterr().err


def test_check_config_names_a_database_that_is_not_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "bad.mmdb").write_bytes(b"\0" * 4096)
    path = tmp_path / "config.toml"
    path.write_text('[locate]\ngeoip_db = "bad.mmdb"\nasn_db = "missing.mmdb"\n')
    assert main(["--config", str(path), "check-config"]) == 2
    err = capsys.readouterr().err
    assert "locate.geoip_db: not a MaxMind-format database" in err
    assert "locate.asn_db:" in err and "does not exist" in err
