"""Reply trust: each referral its own reference, replies to reminders, no replayed replies.

``referrals.reference`` becomes unique: a case's first referral keeps the case's reference,
its later ones (a re-referral, a new referral after the content moved) take ``/2``, ``/3``...
Referrals stored before this shared the case's reference; the later ones are renumbered here,
oldest first, as the refer stage numbers them now. ``referral_reminders.message_id`` is
indexed: a reply to a reminder is matched by it. ``replies.signed_key`` keeps a trusted
reply's signed content as a lookup key, unique: a copy of it is never trusted again.

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections import defaultdict

import sqlalchemy as sa
from alembic import op

revision = "0020"
down_revision = "0019"
branch_labels = None
depends_on = None


def _renumber() -> None:
    """Every referral after the first of one reference: ``/2``, ``/3``... (oldest first),
    skipping any such reference already taken."""
    conn = op.get_bind()
    rows = conn.execute(sa.text(
        "SELECT id, reference FROM referrals ORDER BY created_at, id")).all()
    taken = {reference for _, reference in rows}
    seen: dict[str, int] = defaultdict(int)
    for referral_id, reference in rows:
        seen[reference] += 1
        if seen[reference] == 1:
            continue
        number = seen[reference]
        while f"{reference}/{number}" in taken:
            number += 1
        seen[reference] = number
        taken.add(f"{reference}/{number}")
        conn.execute(sa.text("UPDATE referrals SET reference = :reference WHERE id = :id"),
                     {"reference": f"{reference}/{number}", "id": referral_id})


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
    # The renumbered references stay: each still names its one referral.
    with op.batch_alter_table("referrals") as batch:
        batch.drop_constraint("uq_referrals_reference", type_="unique")
