"""Sealing at rest: room for sealed values, and where sealing keeps its state.

The values themselves are sealed after this migration, in batches that commit as they go
(``gateway.store.sealing`` upgrade pass, run by ``db upgrade`` and ``serve``), so a large
database is sealed resumably rather than in one transaction.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sealing_state",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    # A sealed value is longer than the plaintext; lookup keys are "k1:" and an HMAC.
    with op.batch_alter_table("submissions") as batch:
        batch.alter_column("peer_ip", type_=sa.Text, existing_type=sa.String(45),
                           existing_nullable=True)
        batch.alter_column("dedup_key", type_=sa.String(72), existing_type=sa.String(64),
                           existing_nullable=True)
    with op.batch_alter_table("users") as batch:
        batch.alter_column("totp_secret", type_=sa.Text, existing_type=sa.String(64),
                           existing_nullable=False)


def downgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.alter_column("totp_secret", type_=sa.String(64), existing_type=sa.Text,
                           existing_nullable=False)
    with op.batch_alter_table("submissions") as batch:
        batch.alter_column("dedup_key", type_=sa.String(64), existing_type=sa.String(72),
                           existing_nullable=True)
        batch.alter_column("peer_ip", type_=sa.String(45), existing_type=sa.Text,
                           existing_nullable=True)
    op.drop_table("sealing_state")
