"""Reply trust: each referral its own reference, replies to reminders, no replayed replies.

``referrals.reference`` becomes unique: a case's first referral keeps the case's reference,
its later ones (a re-referral, a new referral after the content moved) take a fresh reference
of the same form, from the report references' counter (``gateway.store.referral_refs``), so
that every reader of ``referral/v1`` still takes it. Referrals stored before this shared the
case's reference; the later ones are given fresh references here, oldest first, as the refer
stage gives them now (so is any numbered ``<reference>/N`` one, which v1 readers refuse).
``referral_reminders.message_id`` is indexed: a reply to a reminder is matched by it.
``replies.signed_key`` keeps a trusted reply's signed content as a lookup key, unique: a copy
of it is never trusted again.

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0020"
down_revision = "0019"
branch_labels = None
depends_on = None


def _fresh(conn: sa.Connection, base: str, taken: set[str]) -> str:
    """The next reference of ``base``'s prefix and year from ``reference_counters`` (as
    ``gateway.store.referral_refs`` draws it), skipping any already ``taken``."""
    prefix, year, _ = base.split("/")[0].rsplit("-", 2)
    scope = f"{prefix}-{int(year):04d}"
    number = conn.execute(sa.text("SELECT next_value FROM reference_counters WHERE scope = :s"),
                          {"s": scope}).scalar()
    if number is None:
        number = 1
        conn.execute(sa.text("INSERT INTO reference_counters (scope, next_value) "
                             "VALUES (:s, 1)"), {"s": scope})
    while (reference := f"{prefix}-{int(year):04d}-{number:06d}") in taken:
        number += 1
    conn.execute(sa.text("UPDATE reference_counters SET next_value = :n WHERE scope = :s"),
                 {"n": number + 1, "s": scope})
    return reference


def _renumber() -> None:
    """Every referral after the first of one reference, and any numbered one (``/N``), takes
    a fresh reference (oldest first)."""
    conn = op.get_bind()
    rows = conn.execute(sa.text(
        "SELECT id, reference FROM referrals ORDER BY created_at, id")).all()
    taken = {reference for _, reference in rows}
    taken |= set(conn.execute(sa.text("SELECT reference FROM submissions")).scalars())
    seen: set[str] = set()
    for referral_id, reference in rows:
        if reference not in seen and "/" not in reference:
            seen.add(reference)
            continue
        fresh = _fresh(conn, reference, taken)
        taken.add(fresh)
        conn.execute(sa.text("UPDATE referrals SET reference = :reference WHERE id = :id"),
                     {"reference": fresh, "id": referral_id})


def upgrade() -> None:
    _renumber()
    with op.batch_alter_table("referrals") as batch:
        batch.create_unique_constraint("uq_referrals_reference", ["reference"])
    with op.batch_alter_table("referral_reminders") as batch:
        batch.create_index("ix_referral_reminders_message_id", ["message_id"])
    with op.batch_alter_table("replies") as batch:
        batch.add_column(sa.Column("signed_key", sa.String(72), nullable=True))
        batch.create_unique_constraint("uq_replies_signed_key", ["signed_key"])


def downgrade() -> None:
    with op.batch_alter_table("replies") as batch:
        batch.drop_constraint("uq_replies_signed_key", type_="unique")
        batch.drop_column("signed_key")
    with op.batch_alter_table("referral_reminders") as batch:
        batch.drop_index("ix_referral_reminders_message_id")
    # The fresh references stay: each still names its one referral, in the form v1 takes.
    with op.batch_alter_table("referrals") as batch:
        batch.drop_constraint("uq_referrals_reference", type_="unique")
