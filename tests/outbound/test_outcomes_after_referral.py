"""End to end: a report by SMTP, assessed (with four-eyes) through the API, routed and
delivered encrypted to a fake upstream MTA; then the analysts record what the destination did,
and the case shows the states, the outcomes and every milestone with its time."""

from __future__ import annotations

from pathlib import Path

from gateway.console.accounts import create_token, utcnow
from tests.conftest import Start
from tests.console_client import file_case, ready_user
from tests.outbound.conftest import Keys
from tests.outbound.mta import FakeMta
from tests.outbound.test_refer import api, assess, case_of, referral_config, referral_in


async def test_a_referral_acknowledged_then_removed(
    start: Start, keys: Keys, mta: FakeMta, tmp_path: Path
) -> None:
    """ana assesses, bob approves, the hotline in NL receives the referral; bob records its
    acknowledgement and ana the removal: the case is ``removed`` with its milestones in
    order, approved when bob approved."""
    gw = await start(assessment={"four_eyes": True}, **referral_config(keys, mta, tmp_path))
    backend = gw.console.context.backend
    await ready_user(backend, "ana")
    await ready_user(backend, "bob")
    ana = await create_token(backend, "ana", now=utcnow())
    bob = await create_token(backend, "bob", now=utcnow())
    case_id = await file_case(gw, "Please look at http://nl.test/e2e-outcome", "e2e-outcome")
    await assess(gw, ana, case_id)
    status, _ = await api(gw, "POST", f"/api/v1/cases/{case_id}/approval", bob)
    assert status == 200
    await mta.wait_for(1)
    case = await referral_in(gw, case_id, "sent")
    assert case["status"] == "referred"
    (referral,) = case["referrals"]
    assert referral["destination"] == "hotline:NL"
    assert referral["next_outcomes"][0] == "acknowledged"
    path = f"/api/v1/referrals/{referral['id']}/outcome"
    status, answer = await api(gw, "POST", path, bob, {"outcome": "acknowledged"})
    assert status == 200 and answer["case_status"] == "acknowledged", answer
    status, answer = await api(gw, "POST", path, ana, {"outcome": "removed"})
    assert status == 200 and answer["case_status"] == "removed", answer
    case = await case_of(gw, case_id)
    assert case["status"] == "removed"
    assert [(o["outcome"], o["recorded_by"]) for o in case["referrals"][0]["outcomes"]] == [
        ("acknowledged", "bob"), ("removed", "ana")]
    times = case["milestones"]
    assert None not in times.values(), times
    order = ["first_reported", "located", "assessed", "approved", "referred", "acknowledged",
             "removed"]
    assert [times[name] for name in order] == sorted(times[name] for name in order)
    assert times["approved"] == case["assessment"]["approved_at"]
    assert times["assessed"] == case["assessment"]["at"]
