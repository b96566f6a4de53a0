"""The case of a partner's referral says what we told the partner back: the API and the page."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from sqlalchemy import insert
from sqlalchemy.engine import Connection

from gateway.app import Gateway
from gateway.console.accounts import create_token, utcnow
from gateway.store.ids import uuid7
from gateway.store.sealed import seal_values, sealer_of
from gateway.store.tables import outbox, partner_outcomes, submissions
from intake.partners import Provenance, provenance_row
from intake.partners import record as record_provenance
from tests.console_client import StaffClient, ready_user
from tests.gateway.conftest import Start
from tests.gateway.test_console_outcomes import api
from tests.referred import refer

AT = datetime(2026, 12, 3, 9, 0, tzinfo=UTC)


def told_back(conn: Connection) -> uuid.UUID:
    """A case NL referred to us, whose acknowledgement was sent and removal queued."""
    case_id, _ = refer(conn, at=AT, destinations=("police",))
    submission_id = uuid7()
    conn.execute(insert(submissions).values(seal_values(sealer_of(conn), submissions,
                                                        submission_id, {
        "id": submission_id, "reference": "CF-R-000007", "channel": "smtp", "status": "filed",
        "received_at": AT, "rcpt_tos": ["report@hotline.test"], "body_sha256": "0" * 64,
        "raw_size": 10})))
    row = provenance_row(sealer_of(conn), Provenance(
        "NL", "NL-2026-000045", "B" * 40, {"reference": "NL-2026-000045"}, "<r@nl.test>"),
        submission_id, AT)
    record_provenance(conn, [row], {submission_id: [case_id]}, now=AT)
    for n, (outcome, status) in enumerate((("acknowledged", "sent"), ("removed", "pending"))):
        item_id, when = uuid7(), AT + timedelta(minutes=n)
        conn.execute(insert(outbox).values(
            id=item_id, referral_id=None, partner_referral_id=row["id"],
            kind="partner_outcome", mail_from="referrals@hotline.test",
            rcpt_to="replies@hotline-nl.test", message=b"x", status=status, attempts=0,
            next_attempt_at=when, created_at=when, sent_at=when if status == "sent" else None))
        conn.execute(insert(partner_outcomes).values(
            id=uuid7(), partner_referral_id=row["id"], case_id=case_id, outcome=outcome,
            occurred_at=when, queued_at=when, outbox_id=item_id, message_id=f"<o{n}@x>"))
    return case_id


async def test_the_case_says_what_the_partner_was_told(
        start: Start, client: Callable[[Gateway], StaffClient]) -> None:
    """``partner_referrals[].told``: each outcome with its times and delivery; the page too."""
    gw = await start()
    backend = gw.console.context.backend
    user = await ready_user(backend, "ana")
    token = await create_token(backend, "ana", now=utcnow())
    case_id = await backend.transaction(told_back)
    status, case = await api(gw, "GET", f"/api/v1/cases/{case_id}", token)
    assert status == 200, case
    [referred] = case["partner_referrals"]
    assert [(t["outcome"], t["status"]) for t in referred["told"]] == [
        ("acknowledged", "sent"), ("removed", "pending")]
    assert referred["told"][0]["sent_at"] == "2026-12-03T09:00:00Z"
    assert referred["told"][1]["occurred_at"] == "2026-12-03T09:01:00Z"
    browser = client(gw)
    await browser.login(user)
    status, page = await browser.get(f"/cases/{case_id}")
    assert status == 200
    assert "Told them: acknowledged of 2026-12-03T09:00:00Z, sent" in page
    assert "removed of 2026-12-03T09:01:00Z, pending" in page
