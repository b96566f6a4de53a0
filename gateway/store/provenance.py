"""Where a case's reports came from when a partner hotline's gateway referred them to us
(``partner_referrals``), as the case view shows it: the partner, their reference, and, in
full, what their document said (their hosting facts: what they reported, not our evidence),
and what we told them back (``partner_outcomes``: each outcome, when queued and sent)."""

from __future__ import annotations

import uuid
from collections import defaultdict
from typing import Any

import structlog
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.store.sealed import open_value, sealer_of
from gateway.store.sealing import SealBroken
from gateway.store.tables import outbox, partner_outcomes, partner_referrals, submissions
from gateway.store.times import iso

log = structlog.get_logger("gateway.store.provenance")


def summary(partner: str, their_reference: str) -> str:
    return f"referred by hotline {partner}, their reference {their_reference}"


def _their_facts(document: Any) -> dict[str, Any]:
    """What the partner's document says of the case, as they reported it."""
    case = document.get("case") if isinstance(document, dict) else None
    case = case if isinstance(case, dict) else {}
    sender = document.get("from") if isinstance(document, dict) else None
    return {
        "hotline": (sender or {}).get("hotline") if isinstance(sender, dict) else None,
        "rule": document.get("rule") if isinstance(document, dict) else None,
        "created": document.get("created") if isinstance(document, dict) else None,
        "url": case.get("url"), "canonical_url": case.get("canonical_url"),
        "classification": case.get("classification"),
        "first_reported": case.get("first_reported"), "report_count": case.get("report_count"),
        "hosting": case.get("hosting"), "hashes": case.get("hashes") or [],
    }


async def referred_by(conn: AsyncConnection, case_ids: list[uuid.UUID], *,
                      full: bool = False) -> dict[uuid.UUID, list[dict[str, Any]]]:
    """Each case's partner referrals, oldest first; ``full``: with what their document said
    (opened), else only the plain facts (a list of cases opens no document)."""
    found: dict[uuid.UUID, list[dict[str, Any]]] = defaultdict(list)
    if not case_ids:
        return found
    columns = [partner_referrals.c.id, partner_referrals.c.case_id, partner_referrals.c.partner,
               partner_referrals.c.their_reference, partner_referrals.c.signer,
               partner_referrals.c.received_at, submissions.c.reference]
    rows = (await conn.execute(
        select(*columns, *([partner_referrals.c.document] if full else []))
        .join(submissions, submissions.c.id == partner_referrals.c.submission_id)
        .where(partner_referrals.c.case_id.in_(case_ids))
        .order_by(partner_referrals.c.received_at, partner_referrals.c.id))).all()
    told: dict[uuid.UUID, list[dict[str, Any]]] = defaultdict(list)
    for said in await conn.execute(
            select(partner_outcomes.c.partner_referral_id, partner_outcomes.c.outcome,
                   partner_outcomes.c.reason_code, partner_outcomes.c.occurred_at,
                   partner_outcomes.c.queued_at, outbox.c.status, outbox.c.sent_at)
            .join(outbox, outbox.c.id == partner_outcomes.c.outbox_id)
            .where(partner_outcomes.c.partner_referral_id.in_([r.id for r in rows]))
            .order_by(partner_outcomes.c.queued_at)):
        told[said.partner_referral_id].append({
            "outcome": said.outcome, "reason": said.reason_code,
            "occurred_at": iso(said.occurred_at), "queued_at": iso(said.queued_at),
            "status": said.status, "sent_at": iso(said.sent_at)})
    sealer = sealer_of(conn) if full else None
    for row in rows:
        item: dict[str, Any] = {
            "partner": row.partner, "their_reference": row.their_reference,
            "report": row.reference, "received_at": iso(row.received_at),
            "signer": row.signer, "summary": summary(row.partner, row.their_reference),
            "told": told.get(row.id, [])}
        if sealer is not None:
            try:
                document = open_value(sealer, partner_referrals.c.document, row.id,
                                      row.document)
                item["theirs"] = _their_facts(document)
            except SealBroken as exc:
                log.error("sealed.unreadable", table="partner_referrals", column="document",
                          record=str(row.id), error=str(exc))
                item["damaged"] = str(exc)
        found[row.case_id].append(item)
    return found
