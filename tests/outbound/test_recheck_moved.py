"""End to end: a referred case whose hosting moves from NL to KZ is found by the hosting
re-check, becomes ``moved``, and is referred to the police international desk only after a
supervisor approves the proposed route in the console (a running gateway, a real DNS server,
real gpg, a fake upstream MTA)."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

from gateway.console.accounts import create_token, utcnow
from gateway.store.audit import verify
from routing.protocol import MembershipList
from routing.recheck import RecheckStage
from tests.conftest import Start
from tests.console_client import StaffClient, base, file_case, hidden, ready_user
from tests.dns_server import Zone
from tests.outbound.conftest import Keys
from tests.outbound.mta import FakeMta
from tests.outbound.test_refer import (
    api,
    assess,
    case_of,
    older_reader_takes,
    open_referral,
    referral_config,
    referral_in,
)

#: Read at import: not on the event loop.
MEMBERS = MembershipList.shipped({}, ["NL", "DE"])


async def test_moved_to_kz_is_sent_to_police_international_only_after_approval(
    start: Start, keys: Keys, mta: FakeMta, tmp_path: Path, zone: Zone
) -> None:
    """NL, referred to the NL hotline; the DNS answer moves to a KZ address; the re-check,
    12 h later on its clock, makes the case moved with a proposed route to the police
    international desk; nothing leaves until a supervisor approves it in the console; then
    the new referral is delivered encrypted and signed, and the old one stays moved."""
    zone.add("moving.test", "A", "145.100.8.8")
    gw = await start(**referral_config(keys, mta, tmp_path))
    assert gw.recheck is not None  # serve runs the re-check (every 12 h by default)
    backend = gw.console.context.backend
    await ready_user(backend, "ana")
    sam = await ready_user(backend, "sam", "supervisor")
    token = await create_token(backend, "ana", now=utcnow())
    case_id = await file_case(gw, "Please look at http://moving.test/moved-away", "moved-away")
    await assess(gw, token, case_id)
    await mta.wait_for(1)
    case = await referral_in(gw, case_id, "sent")
    assert case["referrals"][0]["destination"] == "hotline:NL"

    zone.add("moving.test", "A", "2.72.8.8")  # KZ now
    later = utcnow() + timedelta(hours=12, minutes=1)
    rechecker = RecheckStage(
        backend, gw.locator, worker="test-recheck", every=timedelta(hours=12),
        home_country=gw.config.gateway.home_country, members=MEMBERS,
        hotlines=gw.config.routing.hotlines, clock=lambda: later)
    assert await rechecker.run_once() == 1

    status, case = await api(gw, "GET", f"/api/v1/cases/{case_id}", token)
    assert status == 200 and case["status"] == "moved"
    old = case["referrals"][0]
    assert old["outcome"] == "moved" and old["outcomes"][-1]["source"] == "recheck"
    change = case["routing_change"]
    assert change["status"] == "pending" and change["country"] == "KZ"
    assert change["facts"]["proposed_destination"] == "police_international"
    assert change["facts"]["proposed_rule"] == "protocol-2-police"

    # Nothing is routed or sent before the approval.
    assert await gw.refer.run_once() == 0
    await asyncio.sleep(0)  # the stages get their turn; still one message
    assert len(mta.received) == 1
    status, refused = await api(gw, "POST", f"/api/v1/cases/{case_id}/routing-change/approval",
                                token)
    assert status == 403, refused  # an analyst cannot approve a moved case's route

    staff = StaffClient(base(gw))
    try:
        assert (await staff.login(sam))[0] == 200
        status, page = await staff.get(f"/cases/{case_id}")
        assert status == 200
        assert 'id="moved-route"' in page and "police_international" in page
        assert 'id="approve-routing-change"' in page
        status, _ = await staff.post_from(
            f"/cases/{case_id}", f"/cases/{case_id}/routing-change/approve",
            {"change": hidden(page, "change")})
        assert status == 200  # back on the case page after the 303
    finally:
        await staff.close()

    [to_nl, received] = await mta.wait_for(2)
    assert received.rcpt_tos == ["intl@police.test"]
    _, document, _ = open_referral(keys, received)
    # Readers of referral/v1 as first shipped take both, the later one's reference too.
    older_reader_takes(open_referral(keys, to_nl)[1])
    older_reader_takes(document)
    assert document["reference"] != open_referral(keys, to_nl)[1]["reference"]
    assert document["rule"] == "protocol-2-police"
    assert document["case"]["hosting"]["country"] == "KZ"
    async with asyncio.timeout(30):  # the outbox commits the delivery after the MTA has it
        while (case := await case_of(gw, case_id))["referrals"][-1]["status"] != "sent":
            await asyncio.sleep(0.05)
    assert case["status"] == "referred"
    first, second = case["referrals"]
    assert (first["destination"], first["outcome"], first["live"]) == \
        ("hotline:NL", "moved", False)
    assert (second["destination"], second["live"]) == ("police_international", True)
    assert case["decision"]["rule"] == "protocol-2-police"
    assert case["routing_change"]["status"] == "approved"
    assert case["routing_change"]["decided_by"] == "sam"
    async with gw.engine.connect() as conn:
        checked, broken, _ = await verify(conn)
    assert broken is None and checked > 0
