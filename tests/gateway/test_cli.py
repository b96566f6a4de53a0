"""The command line as an operator uses it: messages, output shapes and exit codes."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import insert

from gateway import config as config_module
from gateway.cli import main
from gateway.database import open_database
from gateway.store import migrate
from gateway.store.sealed import sealer_of
from gateway.store.tables import cases
from tests.conftest import serving
from tests.daemon import ensure_keyring
from tests.dns_server import free_udp_port
from tests.hostile_text import RAW
from tests.sealed_cases import case_row
from tests.smtp_client import deliver, report

REPO = Path(__file__).resolve().parents[2]


def write_config(tmp_path: Path, text: str = "", *, keyring: bool = True) -> Path:
    """A config file; unless it says otherwise, its resolver is a port where nothing answers
    (tests never ask a real resolver about reported hosts)."""
    if "[locate]" not in text:
        text += f'\n[locate]\nnameservers = ["127.0.0.1:{free_udp_port()}"]\ntimeout = "500ms"\n'
    if "[console]" not in text:  # passwords hashed at argon2's cheapest (tests/passwords.py)
        text += '\n[console]\nlisten = ["127.0.0.1:0"]\npassword_hashing = "insecure-for-tests"\n'
    if "[http]" not in text:
        text += '\n[http]\nlisten = ["127.0.0.1:0"]\n'
    if "[admin]" not in text:
        text += '\n[admin]\nlisten = ["127.0.0.1:0"]\n'
    path = tmp_path / "config.toml"
    path.write_text(text)
    if keyring:  # what setup-demo would make; tests of setup-demo let it
        ensure_keyring(path)
    return path


def test_check_config_accepts_the_repository_config(capsys: pytest.CaptureFixture[str]) -> None:
    """The shipped config.toml passes check-config."""
    assert main(["--config", str(REPO / "config.toml"), "check-config"]) == 0
    assert capsys.readouterr().out.strip().endswith(": ok")


def test_check_config_prints_every_problem_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each problem is printed on its own line, starting with its key; the exit code is 2."""
    path = write_config(tmp_path, '[smtp]\nlisten = ["nowhere"]\nbogus = 1\n'
                                  '[gateway]\nhome_country = "Belgium"\n')
    assert main(["--config", str(path), "check-config"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert sorted(line.split(":")[0] for line in lines) == [
        "gateway.home_country", "smtp.bogus", "smtp.listen.0"]


def test_check_config_reports_missing_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A certificate that is not there is a config problem naming the key."""
    path = write_config(tmp_path, '[http]\ntls_cert = "x.pem"\ntls_key = "x.key"\n')
    assert main(["--config", str(path), "check-config"]) == 2
    assert "http.tls_cert:" in capsys.readouterr().err


def test_serve_with_a_bad_config_exits_2(tmp_path: Path) -> None:
    """serve refuses to start on a bad config, says why, and exits 2."""
    path = write_config(tmp_path, "[smtp]\nmax_message_bytes = -1\n")
    result = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "--config", str(path), "serve"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 2
    assert "smtp.max_message_bytes" in result.stderr


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    """An unknown command is a usage error."""
    with pytest.raises(SystemExit) as info:
        main(["frobnicate"])
    assert info.value.code == 2


def test_setup_demo_is_idempotent(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """setup-demo makes the directories and database once; a second run changes nothing."""
    path = write_config(tmp_path, keyring=False)
    assert main(["--config", str(path), "setup-demo"]) == 0
    first = capsys.readouterr().out
    assert "created  data directory" in first and "migrated database" in first
    assert (tmp_path / "var" / "gnupg").stat().st_mode & 0o777 == 0o700
    assert main(["--config", str(path), "setup-demo"]) == 0
    second = capsys.readouterr().out
    assert "created" not in second and "migrated" not in second


def test_db_upgrade_reports_the_revision(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """db upgrade brings an empty database to the head revision and says so."""
    path = write_config(tmp_path)
    assert main(["--config", str(path), "db", "upgrade"]) == 0
    assert capsys.readouterr().out.strip() == f"database at revision {migrate.head()} (was None)"
    assert main(["--config", str(path), "db", "upgrade"]) == 0
    assert capsys.readouterr().out.strip() == f"database at revision {migrate.head()}"


def test_stats_json_has_the_contract_shape(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """stats --json prints the documented keys with counts."""
    path = write_config(tmp_path)
    assert main(["--config", str(path), "db", "upgrade"]) == 0
    capsys.readouterr()
    assert main(["--config", str(path), "stats", "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["submissions"] == 0
    assert stats["cases"] == {} and stats["referrals"] == {} and stats["outbox_pending"] == 0


def test_unreachable_database_is_a_runtime_failure(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A database that cannot be reached gives exit code 1 and a one-line reason."""
    path = write_config(
        tmp_path, '[database]\nurl = "postgresql+asyncpg://nobody@127.0.0.1:1/none"\n')
    assert main(["--config", str(path), "stats"]) == 1
    assert "hotline-gateway:" in capsys.readouterr().err


def test_serve_exits_1_when_its_port_is_taken(tmp_path: Path) -> None:
    """A listener that cannot bind is a runtime failure: exit code 1 and the reason."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        path = write_config(tmp_path, f'[smtp]\nlisten = ["127.0.0.1:{port}"]\n')
        result = subprocess.run(
            [sys.executable, "-m", "gateway.cli", "--config", str(path), "serve"],
            capture_output=True, text=True, timeout=60, check=False,
        )
    assert result.returncode == 1
    assert "address already in use" in result.stderr.lower()


async def test_cases_list_and_show_after_reports_by_email(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Reports sent by e-mail become cases that `cases list` and `cases show` present in the
    documented shape, with URLs defanged in the human-readable output."""
    path = write_config(tmp_path, '[smtp]\nlisten = ["127.0.0.1:0"]\n')
    config = config_module.load(path)
    async with serving(config) as gw:
        port = gw.smtp.addresses[0][1]
        for n, spelling in enumerate(["http://example.com/x", "hxxp://example[.]com/x"]):
            code, _ = await deliver(port, report(f"c{n}", body=f"look: {spelling}"))
            assert code == 250
        code, _ = await deliver(port, report("c9", body="no address, sorry"))
        assert code == 250
        async with asyncio.timeout(10):
            while gw.normaliser.processed < 3:
                await asyncio.sleep(0.02)
    capsys.readouterr()  # the daemon's own log lines
    # The CLI runs its own event loop: call it from a thread, as a shell would from a process.
    assert await asyncio.to_thread(main, ["--config", str(path), "cases", "list", "--json"]) == 0
    cases = json.loads(capsys.readouterr().out)
    by_kind = {c["kind"]: c for c in cases}
    assert by_kind["url"]["canonical_url"] == "http://example.com/x"
    assert by_kind["url"]["report_count"] == 2 and len(by_kind["url"]["references"]) == 2
    assert by_kind["no_url"]["url"] is None
    assert set(by_kind["url"]) >= {"id", "status", "kind", "url", "canonical_url", "report_count",
                                   "first_reported", "last_reported", "references", "hosting",
                                   "assessment", "decision", "referrals"}
    assert await asyncio.to_thread(main, ["--config", str(path), "cases", "list"]) == 0
    listing = capsys.readouterr().out
    assert "hxxp[:]//example[.]com/x" in listing and "http://" not in listing
    case_id = by_kind["url"]["id"]
    assert await asyncio.to_thread(main, ["--config", str(path), "cases", "show", case_id,
                                          "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert [r["reference"] for r in shown["reports"]] == by_kind["url"]["references"]
    assert await asyncio.to_thread(main, ["--config", str(path), "cases", "show", "nope"]) == 2
    stats = await asyncio.to_thread(main, ["--config", str(path), "stats", "--json"])
    assert stats == 0
    # The URL's host could not be looked up (nothing answers): it waits to be located again.
    assert json.loads(capsys.readouterr().out)["cases"] == {"new": 1, "awaiting_assessment": 1}


async def test_normalising_in_a_separate_process(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With normalise = "separate", serve only stores reports; `normalise --once` files them."""
    path = write_config(
        tmp_path, '[smtp]\nlisten = ["127.0.0.1:0"]\n[intake]\nnormalise = "separate"\n')
    async with serving(config_module.load(path)) as gw:
        for n in range(2):
            body = "http://example.com/s"
            code, _ = await deliver(gw.smtp.addresses[0][1], report(f"s{n}", body=body))
            assert code == 250
        assert gw.normaliser.processed == 0
    capsys.readouterr()
    assert await asyncio.to_thread(main, ["--config", str(path), "stats", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["submissions_by_status"] == {"received": 2}
    assert await asyncio.to_thread(main, ["--config", str(path), "normalise", "--once"]) == 0
    assert capsys.readouterr().out.strip().endswith("2 submissions normalised")
    assert await asyncio.to_thread(main, ["--config", str(path), "stats", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["cases"] == {"new": 1}  # not located: no serve


async def test_cases_list_and_show_escape_stored_text(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A stored URL carrying RLO, an OSC sequence, DEL and a C1 CSI is printed by `cases list`
    and `cases show` with each as a visible escape, never raw; `--json` stays valid JSON with
    no such character raw (DEL included) that reads back to the exact text."""
    path = write_config(tmp_path)
    assert await asyncio.to_thread(main, ["--config", str(path), "db", "upgrade"]) == 0
    url = "http://nl.test/invoice\u202efdp.exe\x1b]0;owned\x07\x7f\x9b2J"
    case_id = uuid.uuid4()
    engine = await open_database(config_module.load(path))
    try:
        async with engine.begin() as conn:
            now = datetime.now(UTC)
            await conn.execute(insert(cases).values(case_row(
                sealer_of(engine), id=case_id, kind="url", status="awaiting_assessment",
                url_key="k" * 64, url=url, canonical_url=url, report_count=1,
                first_reported=now, last_reported=now, created_at=now, status_changed_at=now)))
    finally:
        await engine.dispose()
    capsys.readouterr()
    shown = "hxxp[:]//nl[.]test/invoice\\u202efdp[.]exe\\x1b]0;owned\\x07\\x7f\\x9b2J"
    assert await asyncio.to_thread(main, ["--config", str(path), "cases", "list"]) == 0
    listing = capsys.readouterr().out
    assert RAW.search(listing) is None and listing.rstrip().endswith(shown)
    assert await asyncio.to_thread(
        main, ["--config", str(path), "cases", "show", str(case_id)]) == 0
    text = capsys.readouterr().out
    assert RAW.search(text) is None and f"url: {shown}\n" in text
    for command in (["cases", "show", str(case_id), "--json"], ["cases", "list", "--json"]):
        assert await asyncio.to_thread(main, ["--config", str(path), *command]) == 0
        out = capsys.readouterr().out
        assert RAW.search(out) is None and out.isascii() and "\\u202e" in out
        document = json.loads(out)
        assert (document if isinstance(document, dict) else document[0])["url"] == url
