"""Staff accounts: named API tokens with expiry and revocation time, last login.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def _moment(name: str) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=True)


def upgrade() -> None:
    with op.batch_alter_table("api_tokens") as batch:
        batch.add_column(sa.Column("name", sa.String(64), server_default="", nullable=False))
        batch.add_column(_moment("expires_at"))
        batch.add_column(_moment("revoked_at"))
        batch.add_column(sa.Column("survives_password_change", sa.Boolean(),
                                   server_default=sa.false(), nullable=False))
    # Tokens made before they had names get one from their hash (unique enough to revoke by).
    op.execute("UPDATE api_tokens SET name = 'token-' || substr(token_sha256, 1, 8)")
    with op.batch_alter_table("users") as batch:
        batch.add_column(_moment("last_login_at"))


def downgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.drop_column("last_login_at")
    with op.batch_alter_table("api_tokens") as batch:
        batch.drop_column("survives_password_change")
        batch.drop_column("revoked_at")
        batch.drop_column("expires_at")
        batch.drop_column("name")
