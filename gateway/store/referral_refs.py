"""Each referral's own reference: the case's reference for its first referral, then a fresh
reference for each of the case's later ones (a re-referral, a new referral after the content
moved), so that a reply naming a reference names one referral.

A fresh reference is drawn from the same counter as report references (``reference_counters``,
the base's prefix and year), so it has their form (``CF-2026-000457``): every reader of
``hotline-gateway/referral/v1`` and ``outcome/v1`` takes it, as they took the first. Being
drawn from that counter, no report is ever given it; it stays on its referral row, with the
case's id, which is how a reply (or a person) naming it finds the case.

``referrals.reference`` is unique: two writers that chose the same one cannot both store it
(the second transaction fails). A case's referrals are made by one writer at a time (routing
leases the case; an ICCAM referral by hand needs the case waiting for it), so that is a
safeguard, not a path taken.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.engine import Connection

from gateway.store.references import ReferenceAllocator, format_reference
from gateway.store.tables import referrals, submissions


def _taken(conn: Connection, reference: str) -> bool:
    """Whether a referral or a report already has ``reference``."""
    return any(conn.execute(select(table.c.id).where(table.c.reference == reference).limit(1))
               .first() is not None for table in (referrals, submissions))


def fresh_reference(conn: Connection, base: str) -> str:
    """A reference of ``base``'s form no referral or report has, reserved in ``conn``'s
    transaction from the counter of ``base``'s prefix and year.

    The counter hands each number out once; numbers a report or referral took outside it
    (imported, or written by a test) are skipped.
    """
    prefix, year, _ = base.rsplit("-", 2)
    allocator = ReferenceAllocator(prefix)
    while True:
        reference = format_reference(prefix, int(year), allocator.reserve(conn, int(year), 1))
        if not _taken(conn, reference):
            return reference


def base_free(conn: Connection, base: str) -> bool:
    """Whether no referral has ``base`` (the case's reference) yet: a read, so that a case's
    first referral, the common one, needs no write transaction to learn its reference."""
    return conn.execute(select(referrals.c.id).where(referrals.c.reference == base).limit(1)
                        ).first() is None


def next_reference(conn: Connection, base: str) -> str:
    """``base`` (the case's reference) while no referral has it, else a fresh reference.

    Run it in a write transaction: a fresh reference is reserved there. On SQLite it must not
    nest in another write transaction (both need the write lock).
    """
    return base if base_free(conn, base) else fresh_reference(conn, base)
