"""Referrals from partner hotlines' gateways, as the normalise stage files them.

A reader handed in by the composition root (``ReadReferral``: gpg and the partners' pinned
keys, ``outbound.partner_referrals``) opens each PGP/MIME report. One that carries a
``hotline-gateway/referral/v1`` document is a candidate:

- *trusted* (signed by the key pinned for a partner, the document valid): its URL is filed
  like any report's (so it joins the case of the same URL reported by the public), and the
  report keeps its provenance (``partner_referrals``: partner, their reference, their
  document with their hosting facts, sealed). The case is assessed like any other.
- *untrusted* (unsigned, signed by another key, an invalid document): an ordinary report. Its
  URLs, from the text and from the document, are filed as anyone's e-mailed report would be
  (a stranger may report a URL too); it carries no provenance, and a ``partner_untrusted``
  flag with the reason shows every case it reports, for an analyst.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import structlog
from sqlalchemy import insert, select, tuple_
from sqlalchemy.engine import Connection

from gateway.store.audit import AuditEntry
from gateway.store.audit import record as record_audit
from gateway.store.ids import uuid7
from gateway.store.sealed import seal_values
from gateway.store.sealing import Sealer
from gateway.store.tables import partner_referrals
from intake.cases import ReportedUrl
from intake.webreport import field_urls

log = structlog.get_logger("intake.normalise")


class ReferralReading(Protocol):
    """What the reader found in one PGP/MIME message (``outbound.partner_referrals``)."""

    @property
    def plaintext(self) -> bytes: ...
    @property
    def candidate(self) -> bool: ...
    @property
    def trusted(self) -> bool: ...
    @property
    def reason(self) -> str | None: ...
    @property
    def detail(self) -> str: ...
    @property
    def signer(self) -> str | None: ...
    @property
    def partner(self) -> str | None: ...
    @property
    def document(self) -> Mapping[str, Any] | None: ...
    @property
    def problems(self) -> tuple[str, ...]: ...
    @property
    def message_id(self) -> str | None: ...
    @property
    def undecryptable(self) -> str | None: ...


#: raw message -> its reading, or None when it is not PGP/MIME the reader can open (blocking).
ReadReferral = Callable[[bytes], ReferralReading | None]


@dataclass(frozen=True, slots=True)
class Provenance:
    """A trusted partner referral, as stored beside the report it made."""

    partner: str
    their_reference: str
    signer: str
    document: Mapping[str, Any]
    #: Their referral's Message-ID: our replies (``outbound.partner_outcomes``) go in its thread.
    message_id: str | None = None


def document_urls(document: Mapping[str, Any] | None) -> list[ReportedUrl]:
    """The URL a referral document names (its ``url``, else its ``canonical_url``), read as
    the web form reads a URL field: canonicalised by us, so it meets the public's reports."""
    case = document.get("case") if document is not None else None
    if not isinstance(case, Mapping):
        return []
    for name in ("url", "canonical_url"):
        text = case.get(name)
        if isinstance(text, str) and text.strip():
            found = field_urls(text[:8192])
            if found:
                return [ReportedUrl(text, found[0].url, found[0].canonical)]
    return []


def untrusted_flag(reading: ReferralReading) -> dict[str, object]:
    """The flag an untrusted candidate's report carries: why, and who signed (no values)."""
    flag: dict[str, object] = {"flag": "partner_untrusted", "reason": reading.reason,
                               "detail": reading.detail}
    if reading.signer:
        flag["signer"] = reading.signer
    if reading.problems:
        flag["problems"] = list(reading.problems[:20])
    claimed = (reading.document or {}).get("from")
    if isinstance(claimed, Mapping) and isinstance(claimed.get("country"), str):
        flag["claimed_partner"] = claimed["country"][:8]
    return flag


def provenance_of(reading: ReferralReading) -> Provenance | None:
    """The provenance of a trusted reading; None for any other."""
    if not reading.trusted or reading.partner is None or reading.signer is None \
            or reading.document is None:
        return None
    return Provenance(reading.partner, str(reading.document["reference"]), reading.signer,
                      reading.document, reading.message_id)


def provenance_row(sealer: Sealer, provenance: Provenance, submission_id: uuid.UUID,
                   received_at: datetime) -> dict[str, Any]:
    """The ``partner_referrals`` row (but its case), its document sealed (in the executor)."""
    row_id = uuid7()
    return seal_values(sealer, partner_referrals, row_id, {
        "id": row_id, "submission_id": submission_id, "partner": provenance.partner,
        "their_reference": provenance.their_reference, "signer": provenance.signer,
        "received_at": received_at, "document": dict(provenance.document),
        "message_id": provenance.message_id,
    })


def record(conn: Connection, rows: Sequence[dict[str, Any]],
           filed: Mapping[uuid.UUID, list[uuid.UUID]], *, now: datetime) -> None:
    """Store the provenance rows of the submissions just filed (``Filing.flush``'s answer),
    each with an entry in its case's history (``case.partner_referral``)."""
    values = [{**row, "case_id": filed[row["submission_id"]][0]} for row in rows
              if filed.get(row["submission_id"])]
    if not values:
        return
    conn.execute(insert(partner_referrals), values)
    record_audit(conn, [AuditEntry("system:normalise", "case.partner_referral", v["case_id"], {
        "partner": v["partner"], "their_reference": v["their_reference"],
        "signer": v["signer"], "submission": str(v["submission_id"])}) for v in values], at=now)

def key_of(row: Mapping[str, Any]) -> tuple[str, str]:
    """What makes a partner referral one: the partner and their reference."""
    return str(row["partner"]), str(row["their_reference"])


def filed_keys(conn: Connection, rows: Sequence[Mapping[str, Any]]) -> set[tuple[str, str]]:
    """Which of these provenance rows' referrals are filed already (a delivery before)."""
    wanted = {key_of(row) for row in rows}
    if not wanted:
        return set()
    found = conn.execute(select(partner_referrals.c.partner, partner_referrals.c.their_reference)
                         .where(tuple_(partner_referrals.c.partner,
                                       partner_referrals.c.their_reference).in_(wanted)))
    return {(row.partner, row.their_reference) for row in found}


def repeat_flag(row: Mapping[str, Any]) -> dict[str, object]:
    """The flag of a report that is a partner referral filed already: delivered again."""
    return {"flag": "partner_repeat", "partner": row["partner"],
            "their_reference": row["their_reference"]}


def record_repeats(conn: Connection, rows: Sequence[Mapping[str, Any]], *,
                   now: datetime) -> None:
    """A partner referral delivered again (a resend, a retry after a lost acknowledgement)
    is filed once: its case's history says it came again, with the report that brought it."""
    if not rows:
        return
    columns = (partner_referrals.c.partner, partner_referrals.c.their_reference)
    cases: dict[tuple[str, str], uuid.UUID] = {
        (found.partner, found.their_reference): found.case_id for found in conn.execute(
            select(*columns, partner_referrals.c.case_id)
            .where(tuple_(*columns).in_({key_of(row) for row in rows})))}
    record_audit(conn, [AuditEntry("system:normalise", "case.partner_referral_repeated",
                                   cases.get(key_of(row)), {
        "partner": row["partner"], "their_reference": row["their_reference"],
        "submission": str(row["submission_id"])}) for row in rows], at=now)


def log_filed(reference: str, provenance: Provenance | None,
              flags: Sequence[Mapping[str, object]], *, repeat: bool = False) -> tuple[int, int]:
    """Log a partner's referral filed, or an alert for one not trusted (never a URL); how
    many of each (0 or 1), for the metrics. ``repeat``: filed already, not counted again."""
    if provenance is not None and repeat:
        log.info("normalise.partner_referral_repeated", reference=reference,
                 partner=provenance.partner, their_reference=provenance.their_reference)
        return 0, 0
    if provenance is not None:
        log.info("normalise.partner_referral", reference=reference,
                 partner=provenance.partner, their_reference=provenance.their_reference)
        return 1, 0
    for flag in flags:
        if flag.get("flag") == "partner_untrusted":
            log.warning("normalise.partner_referral_untrusted", reference=reference,
                        reason=flag.get("reason"), detail=flag.get("detail"),
                        signer=flag.get("signer"))
            return 0, 1
    return 0, 0
