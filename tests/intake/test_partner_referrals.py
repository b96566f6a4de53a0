"""Partner hotlines' referrals reaching the intake address: a real gateway, real gpg homes,
mail over SMTP on 127.0.0.1. A referral built with our own outbound code, signed by the key
pinned for NL, becomes a case with its provenance; anything less is an ordinary report."""

from __future__ import annotations

import asyncio
import copy
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine
from structlog.testing import capture_logs

from gateway import config as config_module
from gateway.app import Gateway, reload
from gateway.cli import main
from gateway.config_sections import RoutingConfig
from gateway.console.accounts import create_token, utcnow
from gateway.store.backend import WriteBackend
from gateway.store.case_view import get_case, list_cases
from gateway.store.tables import audit_log, partner_referrals
from intake.partners import document_urls, untrusted_flag
from outbound.document import inner_message, referral_document
from outbound.gpg import Gpg
from outbound.partner_referrals import PartnerReferrals, ReferralReading
from outbound.pgpmime import encrypted_message
from tests.conftest import Start, serving
from tests.console_client import StaffClient, base, ready_user
from tests.gateway.test_admin import get, samples
from tests.gateway.test_cli import write_config
from tests.intake.test_normalise import drain, stage, store
from tests.outbound.conftest import add_subkey, make_key, new_home, run_gpg, stop_agent
from tests.smtp_client import deliver, report

THEIR_REFERENCE = "NL-2026-000045"
WHEN = datetime(2026, 12, 3, 9, 0, tzinfo=UTC)


@dataclass(frozen=True)
class Homes:
    hotline_home: Path  # ours: our secret key, the pinned keys of NL and the police
    sender_home: Path  # theirs: NL's, the police's and a stranger's secret keys, our public key
    hotline: str
    nl: str
    police: str
    stranger: str  # never imported by the hotline


@pytest.fixture(scope="module")
def homes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Homes]:
    ours = new_home(tmp_path_factory.mktemp("gpg") / "hotline")
    theirs = new_home(tmp_path_factory.mktemp("gpg") / "partner")
    hotline = make_key(ours, "Hotline BE <report@hotline.test>")
    add_subkey(ours, hotline)
    nl = make_key(theirs, "Hotline NL <referrals@hotline-nl.test>")
    add_subkey(theirs, nl)
    police = make_key(theirs, "Police <cp@police.test>")
    add_subkey(theirs, police)
    stranger = make_key(theirs, "Stranger <someone@elsewhere.test>")
    add_subkey(theirs, stranger)
    run_gpg(ours, "--armor", "--output", str(ours / "hotline.asc"), "--export", hotline)
    run_gpg(theirs, "--import", str(ours / "hotline.asc"))
    run_gpg(theirs, "--armor", "--output", str(theirs / "pinned.asc"), "--export", nl, police)
    run_gpg(ours, "--import", str(theirs / "pinned.asc"))
    yield Homes(ours, theirs, hotline, nl, police, stranger)
    stop_agent(ours)
    stop_agent(theirs)


@pytest.fixture
def sender(homes: Homes) -> Iterator[Gpg]:
    """The partner gateway's gpg, as its outbound code uses it."""
    with ThreadPoolExecutor(2) as pool:
        yield Gpg(homes.sender_home, executor=pool)


@pytest.fixture
async def gateway(start: Start, homes: Homes) -> AsyncIterator[Gateway]:
    """Our gateway (BE): NL's key pinned as [routing.hotlines.NL], the police's as a
    destination (pinned, but not a partner's)."""
    yield await start(
        gpg={"home": str(homes.hotline_home), "signing_key": homes.hotline},
        routing={"hotlines": {"NL": {"email": "referrals@hotline-nl.test", "key": homes.nl}},
                 "destinations": {"police": {"email": "cp@police.test", "key": homes.police}}})


def document(url: str, **changes: Any) -> dict[str, Any]:
    """NL's referral/v1 document, as their gateway's outbound code makes it."""
    made = referral_document(
        reference=THEIR_REFERENCE, created="2026-12-03T09:00:00Z", rule="protocol-2-inhope",
        destination="hotline:BE", hotline="Meldpunt NL", home_country="NL",
        case={"id": "0190a1b2-0000-7000-8000-000000000001", "url": url, "canonical_url": url,
              "first_reported": "2026-12-02T10:00:00Z", "last_reported": "2026-12-02T11:00:00Z",
              "report_count": 2},
        classification="baseline", assessed_at="2026-12-03T08:30:00Z",
        hosting={"country": "BE", "ips": ["193.190.1.1"], "asn": 2611, "org": "Belnet",
                 "cdn": False, "checked_at": "2026-12-03T08:00:00Z"},
        hashes=[{"sha256": "a" * 64, "md5": "b" * 32}])
    made.update(changes)
    return made


def envelope(armored: bytes, n: int | str) -> bytes:
    return encrypted_message(armored, from_address="referrals@hotline-nl.test",
                             to_address="report@hotline.test", reference=THEIR_REFERENCE,
                             msg_id=f"<referral-{n}@hotline-nl.test>", date=WHEN)


async def signed_referral(sender: Gpg, homes: Homes, doc: dict[str, Any], n: int | str, *,
                          signer: str | None = None) -> bytes:
    """What NL's gateway sends: outbound's inner message, signed and encrypted in one."""
    armored = await sender.encrypt_and_sign(inner_message(doc), recipient=homes.hotline,
                                            signer=signer or homes.nl)
    return envelope(armored, n)


def unsigned_referral(homes: Homes, doc: dict[str, Any], n: int, folder: Path) -> bytes:
    """The same message, encrypted to us but signed by no one."""
    (folder / "inner.eml").write_bytes(inner_message(doc))
    out = folder / f"unsigned-{n}.asc"
    run_gpg(homes.sender_home, "--armor", "--trust-model", "always", "--output", str(out),
            "--encrypt", "--recipient", homes.hotline, str(folder / "inner.eml"))
    return envelope(out.read_bytes(), n)


async def case_of(gw: Gateway, fragment: str, *, status: str | None = None,
                  reports: int = 1) -> dict[str, Any]:
    """The case whose URL holds ``fragment``, once it has ``reports`` reports (and status)."""
    async with asyncio.timeout(20):
        while True:
            async with gw.engine.connect() as conn:
                for case in await list_cases(conn):
                    if (fragment in (case["canonical_url"] or "")
                            and case["report_count"] >= reports
                            and (status is None or case["status"] == status)):
                        found = await get_case(conn, uuid.UUID(case["id"]))
                        assert found is not None
                        return found
            await asyncio.sleep(0.05)


async def test_a_partners_signed_referral_becomes_a_case_with_its_provenance(
        gateway: Gateway, homes: Homes, sender: Gpg) -> None:
    """Signed by NL's pinned key, through SMTP and normalise: a case with provenance, sealed
    at rest, assessed like any other (it waits for an analyst), no URL in the logs."""
    url = "http://be.test/partner-trusted"
    raw = await signed_referral(sender, homes, document(url), 1)
    assert b"be.test" not in raw  # nothing readable outside the encryption
    with capture_logs() as logs:
        code, _ = await deliver(gateway.smtp.addresses[0][1], raw,
                                sender="referrals@hotline-nl.test")
        assert code == 250
        case = await case_of(gateway, "partner-trusted", status="awaiting_assessment")
    assert case["canonical_url"] == url and case["report_count"] == 1
    assert case["assessment"] is None and case["hosting"]["country"] == "BE"  # our own lookup
    [referred] = case["partner_referrals"]
    assert referred["summary"] == f"referred by hotline NL, their reference {THEIR_REFERENCE}"
    assert (referred["partner"], referred["their_reference"], referred["signer"]) == (
        "NL", THEIR_REFERENCE, homes.nl)
    assert referred["report"] == case["references"][0]
    theirs = referred["theirs"]
    assert theirs["hosting"]["org"] == "Belnet" and theirs["classification"] == "baseline"
    assert "partner_referral" in case["flags"] and not case["report_flags"]
    [entry] = [h for h in case["history"] if h["action"] == "case.partner_referral"]
    assert entry["actor"] == "system:normalise"
    assert (entry["details"]["partner"], entry["details"]["their_reference"]) == (
        "NL", THEIR_REFERENCE)
    # Their reference is plain; their document (URL, hosting facts) is sealed at rest.
    async with gateway.engine.connect() as conn:
        stored = (await conn.execute(select(partner_referrals))).one()
    assert stored.their_reference == THEIR_REFERENCE and stored.partner == "NL"
    assert type(stored.document) is bytes and stored.document[:1] == b"\x01"
    assert b"be.test" not in stored.document and b"Belnet" not in stored.document
    filed = [e for e in logs if e["event"] == "normalise.partner_referral"]
    assert filed and filed[0]["partner"] == "NL" and filed[0]["their_reference"] == THEIR_REFERENCE
    assert "be.test" not in repr(logs)


async def test_the_api_the_cli_and_the_console_show_the_provenance(
        gateway: Gateway, homes: Homes, sender: Gpg, tmp_path: Path) -> None:
    """GET /api/v1/cases/{id} and the case page say who referred it, and their reference."""
    raw = await signed_referral(sender, homes, document("http://be.test/partner-shown"), 2)
    assert (await deliver(gateway.smtp.addresses[0][1], raw))[0] == 250
    case = await case_of(gateway, "partner-shown")
    backend = gateway.console.context.backend
    user = await ready_user(backend, "ana")
    token = await create_token(backend, "ana", now=utcnow())
    async with aiohttp.ClientSession() as http, http.get(
            f"{base(gateway)}/api/v1/cases/{case['id']}",
            headers={"Authorization": f"Bearer {token}"}) as response:
        assert response.status == 200
        shown = await response.json()
    assert shown["partner_referrals"][0]["summary"] == (
        f"referred by hotline NL, their reference {THEIR_REFERENCE}")
    browser = StaffClient(base(gateway))
    try:
        assert (await browser.login(user))[0] == 200
        status, page = await browser.get(f"/cases/{case['id']}")
    finally:
        await browser.close()
    assert status == 200
    assert f"referred by hotline NL, their reference {THEIR_REFERENCE}" in page
    assert "Their hosting facts, as they reported them (not our evidence): BE" in page


async def test_the_public_and_the_partner_reporting_one_url_make_one_case(
        gateway: Gateway, homes: Homes, sender: Gpg) -> None:
    """The same URL from the public (as they wrote it) and from NL: one case, two reports."""
    port = gateway.smtp.addresses[0][1]
    code, _ = await deliver(port, report("public-1", body="see hxxp://BE.test/partner-both"))
    assert code == 250
    await case_of(gateway, "partner-both")
    raw = await signed_referral(sender, homes, document("http://be.test/partner-both"), 3)
    assert (await deliver(port, raw))[0] == 250
    case = await case_of(gateway, "partner-both", reports=2)
    assert case["report_count"] == 2 and len(case["references"]) == 2
    assert [p["report"] for p in case["partner_referrals"]] == [case["references"][1]]
    async with gateway.engine.connect() as conn:
        assert sum("partner-both" in (c["canonical_url"] or "")
                   for c in await list_cases(conn)) == 1


def _untrusted(case: dict[str, Any]) -> dict[str, Any]:
    [flag] = [f for f in case["report_flags"] if f["flag"] == "partner_untrusted"]
    return flag


async def test_an_unsigned_referral_is_an_ordinary_report_with_the_reason(
        gateway: Gateway, homes: Homes, tmp_path: Path) -> None:
    """Encrypted to us but signed by no one: filed as anyone's report, flagged, no
    provenance, and an alert in the log (without the URL) and in the metrics."""
    raw = await asyncio.to_thread(unsigned_referral, homes,
                                  document("http://be.test/partner-unsigned"), 4, tmp_path)
    with capture_logs() as logs:
        assert (await deliver(gateway.smtp.addresses[0][1], raw))[0] == 250
        case = await case_of(gateway, "partner-unsigned")
    assert case["partner_referrals"] == [] and "partner_referral" not in case["flags"]
    assert "partner_untrusted" in case["flags"]
    flag = _untrusted(case)
    assert flag["reason"] == "unsigned" and flag["claimed_partner"] == "NL"
    assert "not trusted" in flag["message"] and "ordinary report" in flag["message"]
    [alert] = [e for e in logs if e["event"] == "normalise.partner_referral_untrusted"]
    assert alert["log_level"] == "warning" and alert["reason"] == "unsigned"
    assert "be.test" not in repr(logs)
    found = samples((await get(gateway, "/metrics"))[1])
    assert found[("hotline_normalise_partner_untrusted_total", ())] == 1
    assert found[("hotline_normalise_partner_referrals_total", ())] == 0


@pytest.mark.parametrize("who", ["police", "stranger"])
async def test_a_referral_signed_by_another_key_is_not_trusted(
        gateway: Gateway, homes: Homes, sender: Gpg, who: str) -> None:
    """Signed by the police's pinned key (not a partner's) or by a key we never had."""
    signer = getattr(homes, who)
    raw = await signed_referral(sender, homes, document(f"http://be.test/partner-{who}"),
                                f"5-{who}", signer=signer)
    assert (await deliver(gateway.smtp.addresses[0][1], raw))[0] == 250
    case = await case_of(gateway, f"partner-{who}")
    assert case["partner_referrals"] == []
    flag = _untrusted(case)
    assert flag["reason"] == "unpinned_signer" and flag["signer"].endswith(signer[-16:])
    assert "partner hotline" in flag["detail"]


@pytest.mark.parametrize(("name", "changes", "problem"), [
    ("rule", {"rule": "protocol-9-anything"}, "rule: enum"),
    ("from", {"from": {"hotline": "Meldpunt NL", "country": "DE"}}, "from/country: not NL"),
    ("missing", {"created": None}, "created: type"),
])
async def test_a_signed_referral_with_a_bad_document_is_not_trusted(
        gateway: Gateway, homes: Homes, sender: Gpg, name: str, changes: dict[str, Any],
        problem: str) -> None:
    """NL's key, but a document the schema refuses (or claiming another hotline): the URL
    is still reported, as anyone's, and the analyst sees which field is wrong."""
    doc = document(f"http://be.test/partner-bad-{name}")
    doc.update(changes)
    raw = await signed_referral(sender, homes, doc, f"6-{name}")
    assert (await deliver(gateway.smtp.addresses[0][1], raw))[0] == 250
    case = await case_of(gateway, f"partner-bad-{name}")
    assert case["partner_referrals"] == [] and case["canonical_url"].endswith(name)
    flag = _untrusted(case)
    assert flag["reason"] == "bad_document" and flag["signer"] == homes.nl
    assert any(p.startswith(problem) for p in flag["problems"]), flag


async def test_an_encrypted_public_report_is_not_a_referral(
        gateway: Gateway, homes: Homes, sender: Gpg) -> None:
    """Signed and encrypted by someone, but no referral document: read as it always was."""
    message = EmailMessage(policy=SMTP)
    message.set_content("I found www.be.test/partner-none, please look.")
    armored = await sender.encrypt_and_sign(message.as_bytes(), recipient=homes.hotline,
                                            signer=homes.stranger)
    assert (await deliver(gateway.smtp.addresses[0][1], envelope(armored, 7)))[0] == 250
    case = await case_of(gateway, "partner-none")
    assert case["partner_referrals"] == [] and case["report_flags"] == []


def test_an_untrusted_referral_keeps_nothing_of_its_document_but_the_url() -> None:
    """The flag names fields and the claimed partner, never values from the document."""
    doc = document("http://be.test/partner-values")
    reading = ReferralReading(b"", candidate=True, reason="bad_document", detail="d",
                              signer="F" * 40, document=copy.deepcopy(doc),
                              problems=("rule: enum",))
    flag = untrusted_flag(reading)
    assert "be.test" not in json.dumps(flag) and "Belnet" not in json.dumps(flag)
    assert flag["claimed_partner"] == "NL"


async def test_a_partner_pinned_by_a_reload_is_trusted_from_then_on(
        start: Start, homes: Homes, sender: Gpg) -> None:
    """Before NL's key is pinned its referral is an ordinary report; after a reload of the
    config that pins it, the next one is a partner referral."""
    gw = await start(gpg={"home": str(homes.hotline_home), "signing_key": homes.hotline})
    port = gw.smtp.addresses[0][1]
    raw = await signed_referral(sender, homes, document("http://be.test/partner-before"), 8)
    assert (await deliver(port, raw))[0] == 250
    assert _untrusted(await case_of(gw, "partner-before"))["reason"] == "unpinned_signer"
    pinned = RoutingConfig.model_validate(
        {"hotlines": {"NL": {"email": "referrals@hotline-nl.test", "key": homes.nl}}})
    # As the daemon's SIGHUP does, but off the loop: reload reads the membership list file.
    await asyncio.to_thread(reload, gw, gw.config.model_copy(update={"routing": pinned}))
    raw = await signed_referral(sender, homes, document("http://be.test/partner-after"), 9)
    assert (await deliver(port, raw))[0] == 250
    case = await case_of(gw, "partner-after")
    assert [p["partner"] for p in case["partner_referrals"]] == ["NL"]


async def test_cases_show_says_who_referred_it(
        homes: Homes, sender: Gpg, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """``cases show`` (text and --json) names the partner and their reference."""
    path = write_config(tmp_path, f'''[smtp]
listen = ["127.0.0.1:0"]
[gpg]
home = "{homes.hotline_home}"
signing_key = "{homes.hotline}"
[routing.hotlines.NL]
email = "referrals@hotline-nl.test"
key = "{homes.nl}"
''')
    async with serving(config_module.load(path)) as gw:
        raw = await signed_referral(sender, homes, document("http://be.test/partner-cli"), 10)
        assert (await deliver(gw.smtp.addresses[0][1], raw))[0] == 250
        case = await case_of(gw, "partner-cli")
    capsys.readouterr()  # the daemon's own log lines
    # The CLI runs its own event loop: call it from a thread, as a shell would from a process.
    assert await asyncio.to_thread(main, ["--config", str(path), "cases", "show",
                                          case["id"]]) == 0
    assert f"referred by hotline NL, their reference {THEIR_REFERENCE}" in capsys.readouterr().out
    assert await asyncio.to_thread(main, ["--config", str(path), "cases", "show", case["id"],
                                          "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["partner_referrals"][0]["their_reference"] == THEIR_REFERENCE


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=30),
                    lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)


@given(st.dictionaries(st.sampled_from(["case", "from", "reference", "schema"]), JSON
                       | st.fixed_dictionaries({}, optional={
                           "url": JSON | st.text(max_size=60), "canonical_url": JSON,
                           "country": JSON})))
def test_any_document_an_untrusted_referral_carries_is_read_without_raising(
        doc: dict[str, Any]) -> None:
    """A forged or broken document: at most one URL taken from it, a flag of known keys."""
    reading = ReferralReading(b"", candidate=True, reason="unsigned", document=doc)
    assert len(document_urls(doc)) <= 1
    flag = untrusted_flag(reading)
    assert set(flag) <= {"flag", "reason", "detail", "signer", "problems", "claimed_partner"}
    assert len(str(flag.get("claimed_partner", ""))) <= 8


async def test_the_stage_stores_provenance_on_every_database(
        backend: WriteBackend, engine: AsyncEngine, homes: Homes, sender: Gpg) -> None:
    """On SQLite and PostgreSQL alike: NL's referral and a public report of its URL, filed
    in one batch, are one case; the provenance is the referral's report's alone."""
    raw = await signed_referral(sender, homes, document("http://be.test/partner-db"), 11)
    references = await store(backend, [raw, report("db", body="hxxp://be[.]test/partner-db")])
    with ThreadPoolExecutor(2) as pool:
        gpg = Gpg(homes.hotline_home, executor=pool)
        await drain(stage(backend, decrypt=gpg.decrypt_blocking,
                          read_referral=PartnerReferrals(gpg, {homes.nl: "NL"}, home="BE")))
    async with engine.connect() as conn:
        [listed] = await list_cases(conn)
        case = await get_case(conn, uuid.UUID(listed["id"]))
    assert case is not None and case["report_count"] == 2
    assert sorted(case["references"]) == sorted(references)
    [referred] = case["partner_referrals"]
    assert (referred["report"], referred["partner"]) == (references[0], "NL")
    assert referred["theirs"]["url"] == "http://be.test/partner-db"


async def _filed_twice(backend: WriteBackend, engine: AsyncEngine, homes: Homes,
                       sender: Gpg, fragment: str, *stages_kw: dict[str, Any]
                       ) -> tuple[list[str], dict[str, Any], list[Any]]:
    """NL's referral delivered twice (a resend: another Message-ID, encrypted anew), read
    by a stage for each of ``stages_kw`` side by side: the references, the case, the audit."""
    doc = document(f"http://be.test/{fragment}")
    raws = [await signed_referral(sender, homes, doc, f"{fragment}-{n}") for n in (1, 2)]
    references = await store(backend, raws)
    with ThreadPoolExecutor(2) as pool:
        gpg = Gpg(homes.hotline_home, executor=pool)
        reader = PartnerReferrals(gpg, {homes.nl: "NL"}, home="BE")
        await drain(*(stage(backend, f"w{n}", decrypt=gpg.decrypt_blocking,
                            read_referral=reader, **kw) for n, kw in enumerate(stages_kw)))
    async with engine.connect() as conn:
        [listed] = await list_cases(conn)
        case = await get_case(conn, uuid.UUID(listed["id"]))
        audit = (await conn.execute(select(audit_log.c.action, audit_log.c.case_id)
                                    .where(audit_log.c.action.like("case.partner_%")))).all()
    assert case is not None
    return references, case, audit


@pytest.mark.parametrize("stages_kw", [
    pytest.param([{}], id="one-batch"),
    pytest.param([{"batch_size": 1}], id="one-by-one"),
    pytest.param([{"batch_size": 1}, {"batch_size": 1}], id="two-workers-at-once"),
])
async def test_a_partner_referral_delivered_twice_is_filed_once(
        backend: WriteBackend, engine: AsyncEngine, homes: Homes, sender: Gpg,
        stages_kw: list[dict[str, Any]]) -> None:
    """One partner referral (partner, their reference) delivered twice, in one batch, one
    after the other, or read by two workers at once (the unique key settles the race): one
    report on the case, one provenance; the second delivery is in the case's history."""
    references, case, audit = await _filed_twice(backend, engine, homes, sender,
                                                 f"partner-twice-{len(stages_kw)}", *stages_kw)
    assert case["report_count"] == 1
    [referred] = case["partner_referrals"]
    assert referred["their_reference"] == THEIR_REFERENCE
    [filed] = case["references"]
    assert referred["report"] == filed and filed in references
    assert [a.action for a in audit].count("case.partner_referral") == 1
    [again] = [a for a in audit if a.action == "case.partner_referral_repeated"]
    assert str(again.case_id) == case["id"]
    async with engine.connect() as conn:
        assert (await conn.execute(select(func.count()).select_from(partner_referrals))
                ).scalar_one() == 1


@pytest.mark.parametrize(("destination", "said"), [
    ("hotline:FR", "addressed to another destination"),
    ("police", "addressed to another destination"), (None, "names no destination")])
async def test_a_partners_referral_to_another_hotline_is_not_filed_as_ours(
        gateway: Gateway, homes: Homes, sender: Gpg, destination: str | None,
        said: str) -> None:
    """NL's valid, signed referral to another hotline (forwarded or replayed to us) is not a
    referral to us: no provenance, the reason for the analyst, an alert."""
    fragment = f"partner-elsewhere-{destination or 'none'}".replace(":", "-")
    doc = document(f"http://be.test/{fragment}")
    if destination is None:
        del doc["destination"]
    else:
        doc["destination"] = destination
    raw = await signed_referral(sender, homes, doc, f"9-{fragment}")
    with capture_logs() as logs:
        assert (await deliver(gateway.smtp.addresses[0][1], raw))[0] == 250
        case = await case_of(gateway, fragment)
    assert case["partner_referrals"] == []
    flag = _untrusted(case)
    assert flag["reason"] == "not_for_us" and said in flag["detail"]
    assert "hotline:BE" in flag["detail"] and (destination or "-") not in flag["detail"]
    assert flag["signer"] == homes.nl
    [alert] = [e for e in logs if e["event"] == "normalise.partner_referral_untrusted"]
    assert alert["reason"] == "not_for_us"


async def test_a_resent_referral_is_acknowledged_once_and_counted(
        gateway: Gateway, homes: Homes, sender: Gpg) -> None:
    """End to end: NL's referral, then NL's resend of it, over SMTP: one case, one report;
    /metrics counts one referral, one repeat, and one acknowledgement queued back to NL."""
    doc = document("http://be.test/partner-resent")
    port = gateway.smtp.addresses[0][1]
    assert (await deliver(port, await signed_referral(sender, homes, doc, "10-a")))[0] == 250
    await case_of(gateway, "partner-resent")
    assert (await deliver(port, await signed_referral(sender, homes, doc, "10-b")))[0] == 250
    async with asyncio.timeout(20):
        while True:
            found = samples((await get(gateway, "/metrics"))[1])
            if (found[("hotline_normalise_partner_repeats_total", ())] == 1
                    and found[("hotline_partner_outcomes_queued_total", ())] == 1):
                break
            await asyncio.sleep(0.05)
    assert found[("hotline_normalise_partner_referrals_total", ())] == 1
    assert found[("hotline_partner_outcomes_failed_total", ())] == 0
    case = await case_of(gateway, "partner-resent")
    assert case["report_count"] == 1 and len(case["partner_referrals"]) == 1
