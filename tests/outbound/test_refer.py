"""End to end: reports by SMTP become cases, assessed through the API, routed by the protocol
table, and delivered encrypted and signed to a fake upstream MTA (STARTTLS, verified)."""

from __future__ import annotations

import asyncio
import json
import re
from email import message_from_bytes, policy
from pathlib import Path
from typing import Any

import aiohttp
import gnupg  # type: ignore[import-untyped]
import jsonschema

from gateway.app import Gateway
from gateway.console.accounts import create_token, utcnow
from gateway.store.audit import verify
from gateway.store.case_view import get_case
from outbound.document import schema
from tests.conftest import Start
from tests.console_client import ILLEGAL_DETAILS, LEGAL_DETAILS, base, file_case, ready_user
from tests.outbound.conftest import HOTLINE_PASSPHRASE, Keys
from tests.outbound.mta import Behaviour, FakeMta, Received

FIXTURES = Path(__file__).parent.parent / "fixtures"
#: The referral schema as first shipped, before it took the ICCAM details (read at import:
#: not on the event loop).
OLDER_SCHEMA = json.loads((FIXTURES / "referral-v1-before-details.json").read_text())
#: What a document carries only to a destination configured to take it (``iccam_details``).
DETAILS = frozenset({*ILLEGAL_DETAILS, "content_flags"})


def older_reader_takes(document: dict[str, Any]) -> None:
    """A reader of referral/v1 as first shipped validates ``document``: whole when it carries
    no ICCAM details, else without them (a destination whose reader is that old is not
    configured to get them): its reference, above all, is one that reader takes."""
    case = {k: v for k, v in document["case"].items() if k not in DETAILS}
    jsonschema.validate({**document, "case": case}, OLDER_SCHEMA)


def referral_config(keys: Keys, mta: FakeMta, tmp_path: Path, **outbound: Any
                    ) -> dict[str, Any]:
    secret = tmp_path / "passphrase"
    secret.write_text(HOTLINE_PASSPHRASE + "\n")
    return {
        "gpg": {"home": str(keys.hotline_home), "signing_key": keys.hotline,
                "passphrase_file": str(secret)},
        "outbound": {"transport": "smtp", "smtp_host": "127.0.0.1", "smtp_port": mta.port,
                     "tls": "starttls", "tls_ca_file": str(mta.ca_file),
                     "retry_after": "200ms", "retry_max": "1s", "timeout": "2s", **outbound},
        "routing": {
            "destinations": {
                "police": {"email": "cp@police.test", "key": keys.recipient},
                "police_international": {"email": "intl@police.test", "key": keys.recipient},
            },
            "hotlines": {"NL": {"email": "referrals@hotline-nl.test", "key": keys.recipient,
                                "iccam_details": True},
                         "DE": {"email": "referrals@hotline-de.test", "key": keys.expired}},
        },
    }


async def api(gw: Gateway, method: str, path: str, token: str, body: Any = None
              ) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http, http.request(
            method, base(gw) + path, json=body,
            headers={"Authorization": f"Bearer {token}"}) as response:
        return response.status, await response.json()


async def assess(gw: Gateway, token: str, case_id: str, verdict: str = "illegal") -> None:
    body = {"verdict": verdict,
            "classification": "baseline" if verdict == "illegal" else "not_illegal",
            **(ILLEGAL_DETAILS if verdict == "illegal" else LEGAL_DETAILS)}
    status, answer = await api(gw, "POST", f"/api/v1/cases/{case_id}/assessment", token, body)
    assert status == 200, answer


async def case_of(gw: Gateway, case_id: str) -> dict[str, Any]:
    import uuid

    async with gw.engine.connect() as conn:
        found = await get_case(conn, uuid.UUID(case_id))
    assert found is not None
    return found


async def settle(gw: Gateway, case_id: str, status: str, timeout: float = 30) -> dict[str, Any]:
    """The case once routing has decided and it is in ``status`` (a legal verdict closes a
    case at once; its decision follows)."""
    async with asyncio.timeout(timeout):
        while True:
            case = await case_of(gw, case_id)
            if case["status"] == status and case["decision"] is not None:
                return case
            await asyncio.sleep(0.05)


async def referral_in(gw: Gateway, case_id: str, status: str, timeout: float = 30
                      ) -> dict[str, Any]:
    """The case once its first referral is in ``status``. The upstream holds a message before
    the outbox commits its delivery, so a test that saw the message waits for the state."""
    async with asyncio.timeout(timeout):
        while True:
            case = await case_of(gw, case_id)
            if case["referrals"] and case["referrals"][0]["status"] == status:
                return case
            await asyncio.sleep(0.05)


def open_referral(keys: Keys, received: Received) -> tuple[Any, dict[str, Any], Any]:
    """Parse, decrypt and verify one delivered referral: (outer, document, verification)."""
    outer = message_from_bytes(received.data, policy=policy.default)
    assert outer.get_content_type() == "multipart/encrypted"
    assert outer.get_param("protocol") == "application/pgp-encrypted"
    version, payload = list(outer.iter_parts())
    assert version.get_content_type() == "application/pgp-encrypted"
    assert version.get_content().strip() in ("Version: 1", b"Version: 1")
    armored = payload.get_payload(decode=True)
    partner = gnupg.GPG(gnupghome=str(keys.partner_home))
    decrypted = partner.decrypt(armored)
    assert decrypted.ok, decrypted.status
    assert decrypted.valid and decrypted.pubkey_fingerprint == keys.hotline
    inner = message_from_bytes(decrypted.data, policy=policy.default)
    parts = {part.get_content_type(): part for part in inner.iter_parts()}
    document = json.loads(parts["application/json"].get_content())
    assert "Referral" in parts["text/plain"].get_content()
    return outer, document, decrypted


async def test_every_rule_end_to_end(
    start: Start, keys: Keys, mta: FakeMta, tmp_path: Path
) -> None:
    """Domestic, INHOPE member, non-member and legal cases, unknown hosting and an expired
    key: each goes where the protocol says, encrypted and signed, or is held, or closed."""
    gw = await start(**referral_config(keys, mta, tmp_path))
    backend = gw.console.context.backend
    await ready_user(backend, "ana")
    token = await create_token(backend, "ana", now=utcnow())
    urls = {"domestic": "http://be.test/domestic", "inhope": "http://nl.test/inhope",
            "police": "http://ru.test/abroad", "nokey": "http://de.test/nokey",
            "cdn": "http://cdn.test/behind", "iccam": "http://us.test/iccam",
            "legal": "http://be.test/legal"}
    ids = {name: await file_case(gw, f"Please look at {url}", url.rsplit("/", 1)[1])
           for name, url in urls.items()}
    for name, case_id in ids.items():
        await assess(gw, token, case_id, "legal" if name == "legal" else "illegal")

    expected = {"domestic": ("referred", "protocol-1-domestic"),
                "inhope": ("referred", "protocol-2-inhope"),
                "police": ("referred", "protocol-2-police"),
                "nokey": ("held", "hold-no-key"),
                "cdn": ("held", "hold-unknown-hosting"),
                "iccam": ("awaiting_iccam", "protocol-2-iccam"),
                "legal": ("closed_legal", "protocol-3-legal")}
    for name, (status, rule) in expected.items():
        case = await settle(gw, ids[name], status)
        assert case["decision"]["rule"] == rule, (name, case["decision"])
        assert case["decision"]["explanation"]
        assert case["decision"]["facts"]["home_country"] == "BE"
    held = await case_of(gw, ids["nokey"])
    assert held["hold_reason"] == "hold-no-key" and held["referrals"] == []
    assert "expired" in held["decision"]["explanation"]

    received = await mta.wait_for(3)
    document_schema = await asyncio.to_thread(schema)
    by_rcpt = {r.rcpt_tos[0]: r for r in received}
    assert set(by_rcpt) == {"cp@police.test", "referrals@hotline-nl.test", "intl@police.test"}
    for rcpt, name in (("cp@police.test", "domestic"), ("referrals@hotline-nl.test", "inhope"),
                       ("intl@police.test", "police")):
        raw = by_rcpt[rcpt].data
        outer, document, _ = await asyncio.to_thread(open_referral, keys, by_rcpt[rcpt])
        jsonschema.validate(document, document_schema)
        assert document["case"]["id"] == ids[name]
        assert document["case"]["canonical_url"] == urls[name]
        assert document["rule"] == expected[name][1]
        if rcpt == "referrals@hotline-nl.test":  # iccam_details = true
            # The verdict's ICCAM details, as the analyst recorded them (no flag applied).
            assert {k: document["case"].get(k) for k in (*ILLEGAL_DETAILS, "content_flags")} \
                == {**ILLEGAL_DETAILS, "content_flags": []}
        else:  # the others' readers may validate against the schema shipped before them
            assert not DETAILS & set(document["case"])
            jsonschema.validate(document, OLDER_SCHEMA)
        # Nothing about the case on the wire: no URL, no host, no JSON.
        host = re.escape(urls[name].split("/")[2]).encode()
        assert not re.search(rb"(?<![\w.-])" + host, raw) and urls[name].encode() not in raw
        assert b"referral/v1" not in raw and b'"canonical_url"' not in raw
        case = await referral_in(gw, ids[name], "sent")
        assert outer["Subject"] == f"Referral {case['references'][0]}"
        assert outer["Message-ID"] == case["referrals"][0]["message_id"]

    # The analyst names the country the CDN hides; the case goes to the police.
    status, _ = await api(gw, "POST", f"/api/v1/cases/{ids['cdn']}/hosting-country", token,
                          {"country": "BE"})
    assert status == 200
    case = await settle(gw, ids["cdn"], "referred")
    assert case["decision"]["rule"] == "protocol-1-domestic"
    assert case["decision"]["facts"]["country_source"] == "analyst"
    await mta.wait_for(4)

    # A member without an e-mail destination: referred through ICCAM by hand.
    status, answer = await api(gw, "POST", f"/api/v1/cases/{ids['iccam']}/iccam", token,
                               {"reference": "ICCAM-2026-4711"})
    assert status == 200 and answer["case"]["status"] == "referred"
    assert answer["case"]["referrals"][0]["iccam_reference"] == "ICCAM-2026-4711"
    assert len(mta.received) == 4  # nothing sent for it

    referral_id = (await case_of(gw, ids["domestic"]))["referrals"][0]["id"]
    status, shown = await api(gw, "GET", f"/api/v1/referrals/{referral_id}", token)
    assert status == 200 and shown["outbox"]["status"] == "sent"
    assert [a["outcome"] for a in shown["attempts"]] == ["sent"]
    async with gw.engine.connect() as conn:
        _, broken, _ = await verify(conn)
    assert broken is None


async def test_refused_then_accepted_and_refused_for_good(
    start: Start, keys: Keys, mta: FakeMta, tmp_path: Path
) -> None:
    """451 is retried until it goes through; 550 fails the referral at once, visibly."""
    mta.behaviour = Behaviour("451", times=2)
    gw = await start(**referral_config(keys, mta, tmp_path))
    backend = gw.console.context.backend
    await ready_user(backend, "ana")
    token = await create_token(backend, "ana", now=utcnow())
    first = await file_case(gw, "http://be.test/retry", "retry")
    await assess(gw, token, first)
    await mta.wait_for(1)
    case = await referral_in(gw, first, "sent")
    status, shown = await api(gw, "GET", f"/api/v1/referrals/{case['referrals'][0]['id']}",
                              token)
    assert status == 200
    assert [a["outcome"] for a in shown["attempts"]] == ["deferred", "deferred", "sent"]
    assert shown["attempts"][0]["detail"].startswith("451")

    mta.behaviour = Behaviour("550")
    second = await file_case(gw, "http://nl.test/refused", "refused")
    await assess(gw, token, second)
    case = await referral_in(gw, second, "failed")
    assert case["referrals"][0]["error"].startswith("550")
    assert gw.outbox.failed == 1
    assert "referral_failed" in case["flags"]
    # Once the upstream takes it again, a supervisor sends it again.
    mta.behaviour = Behaviour("accept")
    referral_id = case["referrals"][0]["id"]
    status, _ = await api(gw, "POST", f"/api/v1/referrals/{referral_id}/retry", token)
    assert status == 403  # an analyst may not
    await ready_user(backend, "sue", "supervisor")
    sue = await create_token(backend, "sue", now=utcnow())
    status, shown = await api(gw, "POST", f"/api/v1/referrals/{referral_id}/retry", sue)
    assert status == 200 and shown["status"] == "queued"
    await referral_in(gw, second, "sent")
    assert (await api(gw, "POST", f"/api/v1/referrals/{referral_id}/retry", sue))[0] == 409
    # A malformed id is no referral, as /referrals/{id} says.
    assert (await api(gw, "POST", "/api/v1/referrals/not-an-id/retry", sue))[0] == 404


async def test_an_upstream_that_is_down_gets_everything_when_it_returns(
    start: Start, keys: Keys, mta: FakeMta, tmp_path: Path
) -> None:
    """Referrals wait while the MTA is down and all go when it is back."""
    await mta.stop()
    gw = await start(**referral_config(keys, mta, tmp_path))
    backend = gw.console.context.backend
    await ready_user(backend, "ana")
    token = await create_token(backend, "ana", now=utcnow())
    ids = [await file_case(gw, f"http://be.test/down{n}", f"down{n}") for n in range(3)]
    for case_id in ids:
        await assess(gw, token, case_id)
    async with asyncio.timeout(30):
        while gw.outbox.deferred < 3:
            await asyncio.sleep(0.05)
    assert mta.received == []
    await mta.start()  # same port
    received = await mta.wait_for(3)
    assert len({r.data for r in received}) == 3
    for case_id in ids:
        await referral_in(gw, case_id, "sent")


async def test_content_that_moved_is_routed_where_it_is_now(
    start: Start, keys: Keys, mta: FakeMta, tmp_path: Path, zone: Any
) -> None:
    """Located in NL at intake, in BE by the time it is routed: the police get it, and the
    decision says the hosting moved."""
    gw = await start(**referral_config(keys, mta, tmp_path))
    backend = gw.console.context.backend
    await ready_user(backend, "ana")
    token = await create_token(backend, "ana", now=utcnow())
    zone.add("moving.test", "A", "145.100.8.8")
    case_id = await file_case(gw, "http://moving.test/now", "moving")
    assert (await case_of(gw, case_id))["hosting"]["country"] == "NL"
    zone.add("moving.test", "A", "193.190.8.8")
    await assess(gw, token, case_id)
    case = await settle(gw, case_id, "referred")
    assert case["decision"]["rule"] == "protocol-1-domestic"
    assert case["decision"]["facts"]["country_at_assessment"] == "NL"
    assert "moved from NL" in case["decision"]["explanation"]
    assert [e["trigger"] for e in case["hosting_evidence"]] == ["auto", "recheck"]
    received = await mta.wait_for(1)
    assert received[0].rcpt_tos == ["cp@police.test"]


async def test_a_dropped_connection_is_retried_until_delivered(
    start: Start, keys: Keys, mta: FakeMta, tmp_path: Path
) -> None:
    """The upstream closes the connection at DATA without answering: deferred, then sent."""
    mta.behaviour = Behaviour("drop", times=2)
    gw = await start(**referral_config(keys, mta, tmp_path))
    backend = gw.console.context.backend
    await ready_user(backend, "ana")
    token = await create_token(backend, "ana", now=utcnow())
    case_id = await file_case(gw, "http://be.test/dropped", "dropped")
    await assess(gw, token, case_id)
    received = await mta.wait_for(1)
    case = await settle(gw, case_id, "referred")
    case = await referral_in(gw, case_id, "sent")
    status, shown = await api(gw, "GET", f"/api/v1/referrals/{case['referrals'][0]['id']}",
                              token)
    assert status == 200
    outcomes = [a["outcome"] for a in shown["attempts"]]
    assert outcomes == ["deferred", "deferred", "sent"], shown["attempts"]
    assert "Disconnected" in shown["attempts"][0]["detail"] or \
        "closed" in shown["attempts"][0]["detail"].lower()
    assert len(received) == 1


async def test_the_hotline_can_read_what_it_sent(
    start: Start, keys: Keys, mta: FakeMta, tmp_path: Path
) -> None:
    """By default a referral is also encrypted to the hotline's own key: the destination and
    the hotline each decrypt the same signed referral, and the document in it is the one the
    destination alone would get. The relay, refusing unqualified EHLO names, takes it."""
    mta.behaviour = Behaviour(require_fqdn_helo=True)
    gw = await start(**referral_config(keys, mta, tmp_path, helo_name="out.hotline.test"))
    backend = gw.console.context.backend
    await ready_user(backend, "ana")
    token = await create_token(backend, "ana", now=utcnow())
    case_id = await file_case(gw, "http://nl.test/archived", "archived")
    await assess(gw, token, case_id)
    received = await mta.wait_for(1)
    assert received[0].helo == "out.hotline.test"
    _, document, as_partner = await asyncio.to_thread(open_referral, keys, received[0])
    outer = message_from_bytes(received[0].data, policy=policy.default)
    armored = list(outer.iter_parts())[1].get_payload(decode=True)
    ours = gnupg.GPG(gnupghome=str(keys.hotline_home))
    as_hotline = await asyncio.to_thread(ours.decrypt, armored, passphrase=HOTLINE_PASSPHRASE)
    assert as_hotline.ok and as_hotline.valid and as_hotline.pubkey_fingerprint == keys.hotline
    assert as_hotline.data == as_partner.data
    jsonschema.validate(document, await asyncio.to_thread(schema))
    assert document["case"]["id"] == case_id and document["destination"] == "hotline:NL"
    assert document["case"]["canonical_url"] == "http://nl.test/archived"
    assert set(document) == {"schema", "reference", "created", "rule", "destination", "from",
                             "case"}
    await referral_in(gw, case_id, "sent")


async def test_an_own_key_that_cannot_encrypt_holds_the_referral(
    start: Start, keys: Keys, mta: FakeMta, tmp_path: Path
) -> None:
    """With encrypt_to_self on and an archive key that cannot encrypt, the referral is held
    (hold-no-key, naming the hotline's own key) and nothing is sent, though the destination's
    key is good."""
    config = referral_config(keys, mta, tmp_path)
    config["gpg"]["archive_key"] = keys.sign_only
    gw = await start(**config)
    backend = gw.console.context.backend
    await ready_user(backend, "ana")
    token = await create_token(backend, "ana", now=utcnow())
    case_id = await file_case(gw, "http://nl.test/unarchived", "unarchived")
    await assess(gw, token, case_id)
    case = await settle(gw, case_id, "held")
    assert case["hold_reason"] == "hold-no-key" and case["referrals"] == []
    explanation = case["decision"]["explanation"]
    assert f"the hotline's own key {keys.sign_only}" in explanation
    assert "no valid encryption subkey" in explanation
    assert mta.received == [] and gw.outbox.sent == 0


async def test_a_case_referred_again_gets_a_reference_of_its_own(
    start: Start, keys: Keys, mta: FakeMta, tmp_path: Path, zone: Any
) -> None:
    """Referred to NL; the re-check finds it in BE; a supervisor approves the new route: the
    police's referral has a fresh reference of the same form (its Subject, its document),
    the first keeps the case's reference, each is unique, and a reader of referral/v1 as
    first shipped takes both documents."""
    import uuid

    from sqlalchemy import select

    from gateway.console.accounts import Staff
    from gateway.console.routing_changes import decide_routing_change
    from gateway.store.tables import users

    gw = await start(**referral_config(keys, mta, tmp_path), locate={"recheck_every": "1s"})
    backend = gw.console.context.backend
    await ready_user(backend, "ana")
    await ready_user(backend, "sam", "supervisor")
    token = await create_token(backend, "ana", now=utcnow())
    zone.add("twice.test", "A", "145.100.8.8")
    case_id = await file_case(gw, "http://twice.test/again", "twice")
    await assess(gw, token, case_id)
    first = (await referral_in(gw, case_id, "sent"))["referrals"][0]
    assert first["reference"] == (await case_of(gw, case_id))["references"][0]
    zone.add("twice.test", "A", "193.190.8.8")
    async with asyncio.timeout(30):
        while (change := (await case_of(gw, case_id)).get("routing_change")) is None \
                or change["status"] != "pending":
            await asyncio.sleep(0.05)
    sam_id = await backend.transaction(lambda conn: conn.execute(
        select(users.c.id).where(users.c.name == "sam")).scalar_one())
    await decide_routing_change(backend, Staff(sam_id, "sam", "supervisor"),
                                uuid.UUID(case_id), approve=True, now=utcnow(),
                                change_id=uuid.UUID(change["id"]))
    received = await mta.wait_for(2)
    async with asyncio.timeout(30):
        while len(referrals := (await case_of(gw, case_id))["referrals"]) < 2:
            await asyncio.sleep(0.05)
    again = next(r for r in referrals if r["id"] != first["id"])
    prefix_year = first["reference"].rsplit("-", 1)[0]  # CF-2026, say
    assert re.fullmatch(re.escape(prefix_year) + r"-[0-9]{6}", again["reference"])
    assert again["reference"] not in (await case_of(gw, case_id))["references"]
    to_police = next(r for r in received if r.rcpt_tos == ["cp@police.test"])
    outer, document, _ = await asyncio.to_thread(open_referral, keys, to_police)
    assert outer["Subject"] == f"Referral {again['reference']}"
    assert document["reference"] == again["reference"]
    jsonschema.validate(document, await asyncio.to_thread(schema))
    for delivered in received:
        older_reader_takes((await asyncio.to_thread(open_referral, keys, delivered))[1])
