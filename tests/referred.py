"""Referred cases for the outcome tests, made as routing makes them (through the lifecycle),
without gpg or an upstream: the referrals are stored as delivered."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.engine import Connection

from gateway.store.backend import WriteBackend
from gateway.store.ids import uuid7
from gateway.store.lifecycle import Actor, move
from gateway.store.referral_refs import next_reference
from gateway.store.sealed import seal_values, sealer_of
from gateway.store.tables import cases, referrals, routing_decisions
from tests.sealed_cases import case_row


def refer(conn: Connection, *, at: datetime, case_id: uuid.UUID | None = None,
          destinations: tuple[str, ...] = ("hotline:NL",), status: str = "sent",
          ) -> tuple[uuid.UUID, list[uuid.UUID]]:
    """A case (``case_id``, waiting for assessment; else a new one) assessed illegal by ana
    and routed to ``destinations``, each referral in ``status``: the case and referral ids."""
    if case_id is None:
        case_id = uuid7()
        conn.execute(insert(cases).values(case_row(
            sealer_of(conn), id=case_id, kind="url", status="awaiting_assessment",
            url=f"http://nl.test/{case_id.hex}", canonical_url=f"http://nl.test/{case_id.hex}",
            report_count=1, first_reported=at, last_reported=at, created_at=at,
            status_changed_at=at)))
    state = conn.execute(select(cases.c.status).where(cases.c.id == case_id)).scalar_one()
    move(conn, case_id, "assess_illegal", actor=Actor("ana", "analyst"), at=at, state=state)
    decision_id = uuid7()
    decision: dict[str, Any] = {
        "id": decision_id, "case_id": case_id, "created_at": at, "rule": "protocol-2-inhope",
        "outcome": "refer", "destination": destinations[0], "facts": {"country": "NL"},
        "explanation": "hosted in NL, an INHOPE member"}
    conn.execute(insert(routing_decisions).values(
        seal_values(sealer_of(conn), routing_decisions, decision_id, decision)))
    move(conn, case_id, "route_refer", actor=Actor.system("route"), at=at, state="assessed")
    made = []
    for n, destination in enumerate(destinations):
        referral_id = uuid7()
        conn.execute(insert(referrals).values(
            id=referral_id, case_id=case_id, decision_id=decision_id,
            reference=next_reference(conn, f"CF-2026-{n:06d}"), destination=destination,
            email=f"referrals@{n}.test", key_fingerprint="A" * 40,
            message_id=f"<referral-{referral_id}@hotline.test>", status=status,
            created_at=at, sent_at=at if status == "sent" else None,
            follow_up_at=at if status == "sent" else None))  # as the outbox marks it
        made.append(referral_id)
    return case_id, made


async def delivered(backend: WriteBackend, key: str, *, at: datetime,
                    destination: str = "hotline:NL") -> tuple[uuid.UUID, uuid.UUID]:
    """A case referred to ``destination`` and delivered at ``at``, encrypted to ``key`` (the
    fingerprint its replies must be signed by): the case and referral ids."""

    def work(conn: Connection) -> tuple[uuid.UUID, uuid.UUID]:
        case_id, (referral_id,) = refer(conn, at=at, destinations=(destination,))
        conn.execute(update(referrals).where(referrals.c.id == referral_id)
                     .values(key_fingerprint=key))
        return case_id, referral_id

    return await backend.transaction(work)
