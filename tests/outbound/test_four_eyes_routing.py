"""Four-eyes on routing: with ``[assessment] four_eyes``, naming the hosting country of an
approved, held case is a proposal that routes only once a different user approves it; the
decision names both. Real daemons, console over HTTP, SQLite and PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from gateway.app import Gateway
from gateway.console.accounts import create_token, utcnow
from gateway.database import open_database
from gateway.store.tables import audit_log
from tests.conftest import BACKENDS, PG_URL, ConfigFactory, PgSchema, Start, serving
from tests.console_client import (
    ILLEGAL_DETAILS,
    StaffClient,
    base,
    file_case,
    ready_user,
)
from tests.dns_server import DnsServer
from tests.outbound.conftest import Keys
from tests.outbound.mta import FakeMta
from tests.outbound.test_refer import api, assess, case_of, referral_config, settle

FOUR_EYES = {"four_eyes": True}


@pytest.fixture(params=BACKENDS)
async def begin(
    request: pytest.FixtureRequest, start: Start, make_config: ConfigFactory, dns: DnsServer,
    mmdb: dict[str, Path],
) -> AsyncIterator[Start]:
    """``start`` on a SQLite file, or on a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        yield start
        return
    schema = PgSchema(PG_URL)
    await schema.create()
    opened: list[Any] = []

    async def go(**sections: dict[str, Any]) -> Gateway:
        locate = {"nameservers": [dns.nameserver], "geoip_db": str(mmdb["country"]),
                  "asn_db": str(mmdb["asn"]), "timeout": "10s"}
        config = make_config(locate=locate, database={"url": PG_URL}, **sections)
        engine = await open_database(config, **schema.connect_args)
        opened.append(engine)
        context = serving(config, engine=engine)
        gw = await context.__aenter__()
        opened.append(context)
        return gw

    try:
        yield go
    finally:
        for item in reversed(opened):
            if hasattr(item, "__aexit__"):
                await item.__aexit__(None, None, None)
            else:
                await item.dispose()
        await schema.drop()


async def held_case(gw: Gateway, ana: str, bob: str | None) -> str:
    """A case behind a CDN, found illegal by ana (approved by bob with four-eyes): held."""
    case_id = await file_case(gw, "Please look at http://cdn.test/behind", "behind")
    await assess(gw, ana, case_id)
    if bob is not None:
        status, _ = await api(gw, "POST", f"/api/v1/cases/{case_id}/approval", bob)
        assert status == 200
    case = await settle(gw, case_id, "held")
    assert case["hold_reason"] == "hold-unknown-hosting"
    return case_id


async def audited(gw: Gateway, case_id: str) -> list[tuple[str, str]]:
    async with gw.engine.connect() as conn:
        rows = await conn.execute(select(audit_log.c.actor, audit_log.c.action)
                                  .where(audit_log.c.case_id == uuid.UUID(case_id))
                                  .order_by(audit_log.c.seq))
        return [(row.actor, row.action) for row in rows]


async def staff_browser(gw: Gateway, name: str, new: Any) -> StaffClient:
    browser = StaffClient(base(gw))
    status, _ = await browser.login(new)
    assert status == 200, name
    return browser


async def test_a_country_set_after_approval_routes_only_once_another_approves(
    begin: Start, keys: Keys, mta: FakeMta, tmp_path: Path
) -> None:
    """Ana's country waits unrouted; she cannot approve it; Bob does in the console; it goes."""
    gw = await begin(assessment=FOUR_EYES, **referral_config(keys, mta, tmp_path))
    backend = gw.console.context.backend
    await ready_user(backend, "ana")
    bob_user = await ready_user(backend, "bob")
    ana, bob = [await create_token(backend, n, now=utcnow()) for n in ("ana", "bob")]
    case_id = await held_case(gw, ana, bob)

    status, answer = await api(gw, "POST", f"/api/v1/cases/{case_id}/hosting-country", ana,
                               {"country": "NL"})
    assert status == 200
    case = answer["case"]
    assert case["status"] == "held" and case["referrals"] == []
    change = case["routing_change"]
    assert (change["status"], change["country"], change["proposed_by"]) == \
        ("pending", "NL", "ana")
    assert change["facts"]["rule"] == "hold-unknown-hosting"
    assert change["facts"]["status"] == "held"
    # One proposal at a time; the proposer cannot approve it, by API or in the console.
    status, _ = await api(gw, "POST", f"/api/v1/cases/{case_id}/hosting-country", ana,
                          {"country": "DE"})
    assert status == 409
    status, body = await api(gw, "POST",
                             f"/api/v1/cases/{case_id}/routing-change/approval", ana)
    assert status == 403 and "someone other" in body["error"]
    assert (await case_of(gw, case_id))["status"] == "held"

    browser = await staff_browser(gw, "bob", bob_user)
    try:
        _, page = await browser.get(f"/cases/{case_id}")
        assert 'id="routing-change"' in page and "proposed by ana" in page
        status, page = await browser.post_from(
            f"/cases/{case_id}", f"/cases/{case_id}/routing-change/approve",
            {"change": change["id"]})
        assert status == 200 and "approved by bob" in page
    finally:
        await browser.close()

    case = await settle(gw, case_id, "referred")
    facts = case["decision"]["facts"]
    assert case["decision"]["rule"] == "protocol-2-inhope"
    assert case["referrals"][0]["destination"] == "hotline:NL"
    assert (facts["country"], facts["country_source"]) == ("NL", "analyst")
    assert (facts["country_set_by"], facts["country_approved_by"]) == ("ana", "bob")
    assert facts["routing_change"] == change["id"]
    [received] = await mta.wait_for(1)
    assert received.rcpt_tos == ["referrals@hotline-nl.test"]
    trail = await audited(gw, case_id)
    assert ("ana", "case.routing_change_proposed") in trail
    assert ("bob", "case.routing_change_approved") in trail
    assert ("ana", "case.hosting_country_set") not in trail


async def test_a_rejected_routing_change_leaves_the_case_held(
    begin: Start, keys: Keys, mta: FakeMta, tmp_path: Path
) -> None:
    """Bob rejects Ana's country in the console: the case stays held, nothing is sent."""
    gw = await begin(assessment=FOUR_EYES, **referral_config(keys, mta, tmp_path))
    backend = gw.console.context.backend
    ana_user = await ready_user(backend, "ana")
    bob_user = await ready_user(backend, "bob")
    ana, bob = [await create_token(backend, n, now=utcnow()) for n in ("ana", "bob")]
    case_id = await held_case(gw, ana, bob)

    browser = await staff_browser(gw, "ana", ana_user)
    try:
        status, page = await browser.post_from(
            f"/cases/{case_id}", f"/cases/{case_id}/hosting-country", {"country": "nl"})
        assert status == 200 and "pending" in page
        assert 'id="approve-routing-change"' not in page  # not for its author
    finally:
        await browser.close()
    browser = await staff_browser(gw, "bob", bob_user)
    try:
        _, page = await browser.get(f"/cases/{case_id}")
        assert 'id="approve-routing-change"' in page
        change = (await case_of(gw, case_id))["routing_change"]["id"]
        status, page = await browser.post_from(
            f"/cases/{case_id}", f"/cases/{case_id}/routing-change/reject", {"change": change})
        assert status == 200 and "rejected by bob" in page
    finally:
        await browser.close()

    case = await case_of(gw, case_id)
    assert (case["status"], case["hold_reason"]) == ("held", "hold-unknown-hosting")
    assert case["assessment"]["hosting_country"] is None and case["referrals"] == []
    assert (await api(gw, "POST", f"/api/v1/cases/{case_id}/routing-change/approval",
                      ana))[0] == 409  # nothing left to approve
    assert ("bob", "case.routing_change_rejected") in await audited(gw, case_id)
    assert mta.received == []


async def test_without_four_eyes_the_country_routes_at_once(
    start: Start, keys: Keys, mta: FakeMta, tmp_path: Path
) -> None:
    """As before: Ana's country routes the case straight away, recorded as hers alone."""
    gw = await start(**referral_config(keys, mta, tmp_path))
    backend = gw.console.context.backend
    await ready_user(backend, "ana")
    ana = await create_token(backend, "ana", now=utcnow())
    case_id = await held_case(gw, ana, None)
    status, _ = await api(gw, "POST", f"/api/v1/cases/{case_id}/hosting-country", ana,
                          {"country": "NL"})
    assert status == 200
    case = await settle(gw, case_id, "referred")
    facts = case["decision"]["facts"]
    assert (facts["country"], facts["country_set_by"], facts["country_approved_by"]) == \
        ("NL", "ana", None)
    assert case["routing_change"]["status"] == "applied"
    assert ("ana", "case.hosting_country_set") in await audited(gw, case_id)


async def test_a_country_given_at_assessment_is_routed_as_approved_with_the_verdict(
    begin: Start, keys: Keys, mta: FakeMta, tmp_path: Path
) -> None:
    """Ana's override of located hosting routes only with Bob's approval, naming them both."""
    gw = await begin(assessment=FOUR_EYES, **referral_config(keys, mta, tmp_path))
    backend = gw.console.context.backend
    await ready_user(backend, "ana")
    await ready_user(backend, "bob")
    ana, bob = [await create_token(backend, n, now=utcnow()) for n in ("ana", "bob")]
    case_id = await file_case(gw, "Please look at http://nl.test/override", "override")
    status, answer = await api(gw, "POST", f"/api/v1/cases/{case_id}/assessment", ana,
                               {"verdict": "illegal", "classification": "baseline",
                                **ILLEGAL_DETAILS,
                                "hosting_country": "BE"})
    assert status == 200 and answer["assessment"]["status"] == "pending_approval"
    assert answer["case"]["decision"] is None and answer["case"]["referrals"] == []
    status, _ = await api(gw, "POST", f"/api/v1/cases/{case_id}/approval", bob)
    assert status == 200
    case = await settle(gw, case_id, "referred")
    facts = case["decision"]["facts"]
    assert (facts["country"], facts["country_source"]) == ("BE", "analyst")
    assert (facts["country_set_by"], facts["country_approved_by"]) == ("ana", "bob")
    [received] = await mta.wait_for(1)
    assert received.rcpt_tos == ["cp@police.test"]


async def test_hostile_routing_change_input_gets_4xx(
    start: Start, keys: Keys, mta: FakeMta, tmp_path: Path
) -> None:
    """Wrong types, bad ids, lone surrogates and NULs are refused with 409/422, never routed."""
    gw = await start(assessment=FOUR_EYES, **referral_config(keys, mta, tmp_path))
    backend = gw.console.context.backend
    await ready_user(backend, "ana")
    await ready_user(backend, "bob")
    ana, bob = [await create_token(backend, n, now=utcnow()) for n in ("ana", "bob")]
    case_id = await held_case(gw, ana, bob)
    path = f"/api/v1/cases/{case_id}"
    for country in ("nl", "NLD", "", None, 31, ["NL"], "N\u0000", "\ud800L", "ÑL"):
        status, _ = await api(gw, "POST", path + "/hosting-country", ana, {"country": country})
        assert status == 422, country
    status, _ = await api(gw, "POST", path + "/hosting-country", ana, {"country": "NL"})
    assert status == 200
    for change in ("not-an-id", 5, ["x"], {"id": 1}, "\ud800", str(uuid.uuid4())):
        for route in ("/routing-change/approval", "/routing-change/rejection"):
            status, _ = await api(gw, "POST", path + route, bob, {"change": change})
            assert status in (409, 422), (route, change)
    case = await case_of(gw, case_id)
    assert case["status"] == "held" and case["routing_change"]["status"] == "pending"
    assert (await api(gw, "POST", path + "/routing-change/approval", bob, ["x"]))[0] == 422
