"""ICCAM's classification details on assessments: age group, gender, media, site type, the
content flags of an illegal verdict and the reason code of a legal one. Plain category codes
(``gateway.store.classification``), NULL for verdicts recorded before.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

COLUMNS = (
    ("age_group", sa.String(16)),
    ("gender", sa.String(8)),
    ("media", sa.String(8)),
    ("site_type", sa.String(24)),
    ("computer_generated", sa.Boolean()),
    ("self_generated", sa.Boolean()),
    ("commercial", sa.Boolean()),
    ("reason", sa.String(24)),
)


def upgrade() -> None:
    with op.batch_alter_table("assessments") as batch:
        for name, type_ in COLUMNS:
            batch.add_column(sa.Column(name, type_, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("assessments") as batch:
        for name, _ in reversed(COLUMNS):
            batch.drop_column(name)
