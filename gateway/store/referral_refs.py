"""Each referral's own reference: the case's reference for its first referral, then
``<reference>/2``, ``/3``... for the case's later ones (a re-referral, a new referral after the
content moved), so that a reply naming a reference names one referral.

``referrals.reference`` is unique: two writers that chose the same one cannot both store it
(the second transaction fails). A case's referrals are made by one writer at a time (routing
leases the case; an ICCAM referral by hand needs the case waiting for it), so that is a
safeguard, not a path taken.
"""

from __future__ import annotations

from sqlalchemy import or_, select
from sqlalchemy.engine import Connection

from gateway.store.tables import referrals


def numbered(base: str, number: int) -> str:
    """The reference of a case's ``number``-th referral (1: the case's own)."""
    return base if number == 1 else f"{base}/{number}"


def next_reference(conn: Connection, base: str) -> str:
    """The first of ``base``, ``base/2``, ``base/3``... no referral has yet."""
    taken = set(conn.execute(select(referrals.c.reference).where(or_(
        referrals.c.reference == base,
        referrals.c.reference.startswith(f"{base}/", autoescape=True)))).scalars())
    number = 1
    while numbered(base, number) in taken:
        number += 1
    return numbered(base, number)


def file_safe(reference: str) -> str:
    """A reference as part of a file name (``/2`` would make a folder of it)."""
    return reference.replace("/", "-")
