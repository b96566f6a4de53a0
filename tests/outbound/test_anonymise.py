"""Anonymising instead of deleting, end to end on a real SQLite file and PostgreSQL: reports
with distinctive URLs, hosts, texts and reporter addresses go through the whole flow; the
audit trail never holds them; retention anonymises the cases closed long enough (and no
other), after which no value in the database, each sealed one opened with the data keys,
holds any of them, while every table keeps its rows, the figures stay, the trail verifies, the
case still shows, and a repeat of a URL finds its case again."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime, timedelta

import aiohttp
import pytest
from sqlalchemy import func, select

from gateway.cases_cli import _print_case
from gateway.config import RetentionConfig
from gateway.console.accounts import create_token, utcnow
from gateway.retention import purge
from gateway.stats import collect_stats
from gateway.store.audit import verify
from gateway.store.case_view import get_case
from gateway.store.sealed import open_row, sealer_of
from gateway.store.tables import audit_log, cases, metadata
from tests.console_client import ILLEGAL_DETAILS, StaffClient, ready_user
from tests.dns_server import Zone
from tests.opened import leaks, opened_database
from tests.outbound import test_sealed_at_rest
from tests.outbound.test_refer import api, assess, base, referral_in, settle
from tests.outbound.test_sealed_at_rest import (
    SECRETS,
    Run,
    public_post,
    smtp_reports,
    waiting_cases,
)
from tests.smtp_client import deliver

# A case left open: its URL and words stay, so they are not among the secrets that must go.
OPEN_HOST = "pademelon-open-e2e.test"
OPEN = {"url": f"http://{OPEN_HOST}/still-open-7781", "text": "a potoroo still waiting"}
WINDOW = 30
#: The gateway of the encryption-at-rest test, with its DNS, keys and both backends.
run = test_sealed_at_rest.run


async def row_counts(run: Run) -> dict[str, int]:
    """Each table's rows, but the kept counts' (``tallies``: a row per change, until folded)."""
    async with run.gw.engine.connect() as conn:
        return {table.name: (await conn.execute(select(func.count()).select_from(table)))
                .scalar_one() for table in metadata.sorted_tables if table.name != "tallies"}


async def audit_details(run: Run) -> str:
    async with run.gw.engine.connect() as conn:
        sealer = sealer_of(conn)
        rows = (await conn.execute(select(audit_log))).all()
        return json.dumps([open_row(sealer, audit_log, row, id_key="seq").details
                           for row in rows], ensure_ascii=False)


@pytest.fixture
def open_zone(zone: Zone) -> Zone:
    zone.add(OPEN_HOST, "A", "193.190.1.78")
    return zone


async def test_closed_cases_are_anonymised_and_everything_still_adds_up(
        run: Run, open_zone: Zone, capsys: pytest.CaptureFixture[str]) -> None:
    gw = run.gw
    for sender, raw in smtp_reports():
        assert (await deliver(gw.smtp.addresses[0][1], raw, sender=sender))[0] == 250
    status, _ = await public_post(gw, "/report", data={
        "form_id": "e2e-form", "lang": "en", "urls": SECRETS["form url"],
        "seen_where": SECRETS["form where"], "description": SECRETS["form text"],
        "email": SECRETS["form email"], "consent": "yes", "website": ""})
    assert status == 303
    for urls, text, email in (([SECRETS["api url"]], SECRETS["api text"], SECRETS["api email"]),
                              ([OPEN["url"]], OPEN["text"], None)):
        status, _ = await public_post(gw, "/api/v1/reports", json={
            "urls": urls, "description": text,
            **({"reporter": {"email": email}} if email else {})})
        assert status == 201
    found = await waiting_cases(gw, 5)
    by_url = {case["canonical_url"]: str(case["id"]) for case in found}
    backend = gw.console.context.backend
    ana = await ready_user(backend, "ana")
    token = await create_token(backend, "ana", now=utcnow())
    illegal = [by_url[SECRETS[k]] for k in ("smtp url", "alias url", "form url")]
    legal = by_url[SECRETS["api url"]]
    open_case = by_url[OPEN["url"]]
    status, answer = await api(gw, "POST", f"/api/v1/cases/{illegal[0]}/assessment", token, {
        "verdict": "illegal", "classification": "baseline", **ILLEGAL_DETAILS,
        "note": SECRETS["note"]})
    assert status == 200, answer
    for case_id in illegal[1:]:
        await assess(gw, token, case_id)
    await assess(gw, token, legal, "legal")
    await settle(gw, legal, "closed_legal")
    for case_id in illegal:
        referral = (await referral_in(gw, case_id, "sent"))["referrals"][0]
        status, answer = await api(gw, "POST", f"/api/v1/referrals/{referral['id']}/outcome",
                                   token, {"outcome": "removed",
                                           "note": f"gone from {SECRETS['host']}"})
        assert status == 200, answer

    # The audit trail holds no URL, host, address or reporter data (opened: it is sealed).
    trail = await audit_details(run)
    assert [name for name, secret in {**SECRETS, **OPEN}.items()
            if secret.lower() in trail.lower()] == []

    counts = await row_counts(run)
    before = await collect_stats(gw.engine)
    policy = RetentionConfig(anonymise_after_days=WINDOW)
    now = datetime.now(UTC)
    younger = await purge(backend, policy, now=now + timedelta(days=WINDOW - 1))
    assert younger.anonymised_cases == 0
    # All still there: the scan can fail.
    assert leaks(await opened_database(run.gw.engine), SECRETS)

    purged = await purge(backend, policy, now=now + timedelta(days=WINDOW + 1), batch=2)
    assert (purged.anonymised_cases, purged.anonymised_submissions) == (4, 4)
    grown = await row_counts(run)
    # Every table keeps its rows; the trail gains the pass's own entries (raw messages
    # purged, two batches anonymised).
    assert {**grown, "audit_log": 0} == {**counts, "audit_log": 0}
    assert grown["audit_log"] == counts["audit_log"] + 3
    after = await collect_stats(gw.engine)
    assert (before["cases_anonymised"], after["cases_anonymised"]) == (0, 4)
    assert {**after, "cases_anonymised": 0} == before
    assert leaks(await opened_database(run.gw.engine), SECRETS) == []
    if run.database is not None:  # and the files themselves, byte for byte
        files = b"".join(path.read_bytes() for path in (
            run.database, run.database.with_name(run.database.name + "-wal")))
        assert [name for name, secret in SECRETS.items() if secret.encode() in files] == []
    async with gw.engine.connect() as conn:
        held, broken, _ = await verify(conn)
        assert broken is None and held > 0
        states = dict((await conn.execute(select(cases.c.id, cases.c.anonymised_at))).all())
        entries = (await conn.execute(select(func.count()).where(
            audit_log.c.action == "retention.anonymised"))).scalar_one()
    assert entries == 2  # two batches of two
    assert states[uuid.UUID(open_case)] is None
    assert all(states[uuid.UUID(c)] is not None for c in [*illegal, legal])
    (host, port), *_ = gw.admin.addresses
    async with aiohttp.ClientSession() as http, http.get(
            f"http://{host}:{port}/metrics") as response:
        assert "hotline_cases_anonymised 4.0" in (await response.text()).splitlines()
    again = await purge(backend, policy, now=now + timedelta(days=WINDOW + 2))
    assert again.anonymised_cases == 0  # done once

    # The open case kept what it had.
    opened = await opened_database(run.gw.engine)
    assert leaks(opened, OPEN) != []

    # Shown as anonymised: the API, `cases show`, the console's page.
    status, shown = await api(gw, "GET", f"/api/v1/cases/{illegal[0]}", token)
    assert status == 200, shown
    assert shown["anonymised"] and shown["url"] is None and shown["status"] == "removed"
    assert shown["hosting"]["country"] == "BE" and shown["assessment"]["verdict"] == "illegal"
    assert shown["milestones"]["removed"] is not None
    async with gw.engine.connect() as conn:
        case = await get_case(conn, uuid.UUID(illegal[0]))
    assert case is not None
    capsys.readouterr()
    _print_case(case)
    printed = capsys.readouterr().out
    assert "anonymised: " in printed and "url: (anonymised)" in printed
    staff = StaffClient(base(gw))
    try:
        assert (await staff.login(ana))[0] == 200
        status, page = await staff.get(f"/cases/{illegal[0]}")
        assert status == 200 and 'id="anonymised"' in page
        assert SECRETS["host"] not in page
    finally:
        await staff.close()

    # The same URL reported again is the same case: reported after its removal, it reopens
    # with the URL back, to be located and worked again.
    status, _ = await public_post(gw, "/api/v1/reports", json={"urls": [SECRETS["smtp url"]]})
    assert status == 201
    async with asyncio.timeout(30):
        while True:
            async with gw.engine.connect() as conn:
                case = await get_case(conn, uuid.UUID(illegal[0]))
            assert case is not None
            if case["report_count"] == 2:
                break
            await asyncio.sleep(0.05)
    assert case["canonical_url"] == SECRETS["smtp url"] and case["anonymised"] is None
    assert case["status"] in ("new", "awaiting_assessment") and case["reappeared"]
    async with gw.engine.connect() as conn:
        assert (await conn.execute(select(func.count()).select_from(cases))).scalar_one() == 5


async def test_a_pass_stopped_midway_is_completed_by_the_next(
        run: Run, open_zone: Zone) -> None:
    """Batches are whole transactions: a pass that did only some leaves those done, marked,
    and the next pass does the rest without touching them again."""
    gw = run.gw
    for n in range(5):
        status, _ = await public_post(gw, "/api/v1/reports", json={
            "urls": [f"http://{SECRETS['host']}/resume-{n}"],
            "description": f"{SECRETS['api text']} {n}"})
        assert status == 201
    found = await waiting_cases(gw, 5)
    backend = gw.console.context.backend
    await ready_user(backend, "ana")
    token = await create_token(backend, "ana", now=utcnow())
    for case in found:
        await assess(gw, token, str(case["id"]), "legal")
    for case in found:
        await settle(gw, str(case["id"]), "closed_legal")
    counts = await row_counts(run)
    policy = RetentionConfig(anonymise_after_days=1)
    later = datetime.now(UTC) + timedelta(days=2)
    first = await purge(backend, policy, now=later, batch=2, max_batches=1)
    assert first.anonymised_cases == 2
    async with gw.engine.connect() as conn:
        marked = {k: v for k, v in (await conn.execute(
            select(cases.c.id, cases.c.anonymised_at))).all() if v is not None}
    assert len(marked) == 2
    rest = await purge(backend, policy, now=later + timedelta(hours=1), batch=2)
    assert rest.anonymised_cases == 3
    async with gw.engine.connect() as conn:
        now_marked = dict((await conn.execute(select(cases.c.id, cases.c.anonymised_at))).all())
        assert (await verify(conn))[1] is None
    assert all(now_marked[k] == v for k, v in marked.items())
    assert all(v is not None for v in now_marked.values())
    grown = await row_counts(run)
    assert {**grown, "audit_log": 0} == {**counts, "audit_log": 0}
    assert leaks(await opened_database(run.gw.engine), {"host": SECRETS["host"],
                                              "text": SECRETS["api text"]}) == []


async def test_a_reopening_reason_naming_the_url_keeps_it_out_of_the_trail(
        run: Run, open_zone: Zone) -> None:
    """A supervisor's reason for reopening is a person's words: the trail keeps them without
    the URL, host, address or e-mail address they name."""
    gw = run.gw
    status, _ = await public_post(gw, "/api/v1/reports", json={
        "urls": [SECRETS["api url"]], "reporter": {"email": SECRETS["api email"]}})
    assert status == 201
    case_id = str((await waiting_cases(gw, 1))[0]["id"])
    backend = gw.console.context.backend
    await ready_user(backend, "ana")
    await ready_user(backend, "sam", "supervisor")
    ana = await create_token(backend, "ana", now=utcnow())
    sam = await create_token(backend, "sam", now=utcnow())
    await assess(gw, ana, case_id, "legal")
    await settle(gw, case_id, "closed_legal")
    reason = (f"still up at {SECRETS['api url']} ({SECRETS['host']}, 193.190.1.77), "
              f"says {SECRETS['api email']}; ticket CF-2026-000001")
    status, answer = await api(gw, "POST", f"/api/v1/cases/{case_id}/reopening", sam,
                               {"reason": reason})
    assert status == 200, answer
    trail = await audit_details(run)
    assert "ticket CF-2026-000001" in trail and "[removed]" in trail
    for text in (SECRETS["api url"], SECRETS["host"], "193.190.1.77", SECRETS["api email"]):
        assert text not in trail
