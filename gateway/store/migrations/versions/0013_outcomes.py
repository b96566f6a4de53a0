"""Outcomes of referrals and the milestones of cases.

``referral_outcomes`` keeps every outcome recorded for a referral; ``referrals.outcome`` and
``outcome_at`` its latest. Cases keep the first time they reached each milestone; for cases
made before this revision the times are taken from what is stored (the first ``case.located``
entry of the audit trail, the first verdict, the first final illegal verdict or its approval,
the first referral); none was acknowledged or removed before.

A referral is unique per routing decision and destination, no longer per case and destination:
a removed case that is reported again is reopened, and may be referred to the same destination
again on a new decision.

Downgrading takes what newer code wrote to what the older release knows: a case in a state
after its referral (acknowledged, removed, content unavailable, not actionable, moved) is
``referred`` again, and of several referrals of one case to one destination the newest stays.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

MILESTONES = ("located", "assessed", "approved", "referred", "acknowledged", "removed")


def _moment(name: str, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    with op.batch_alter_table("cases") as batch:
        for name in MILESTONES:
            batch.add_column(_moment(f"{name}_at", nullable=True))
    with op.batch_alter_table("referrals") as batch:
        batch.add_column(sa.Column("outcome", sa.String(24), nullable=True))
        batch.add_column(_moment("outcome_at", nullable=True))
        batch.drop_constraint("uq_referrals_case_id_destination", type_="unique")
        batch.create_unique_constraint("uq_referrals_decision_id_destination",
                                       ["decision_id", "destination"])
    op.create_table(
        "referral_outcomes",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("referral_id", sa.Uuid(), nullable=False),
        sa.Column("case_id", sa.Uuid(), nullable=False),
        sa.Column("outcome", sa.String(24), nullable=False),
        sa.Column("reason_code", sa.String(32), nullable=True),
        _moment("occurred_at"),
        _moment("recorded_at"),
        sa.Column("recorded_by", sa.Uuid(), nullable=True),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("destination", sa.String(32), nullable=True),
        sa.Column("signer_fingerprint", sa.String(40), nullable=True),
        sa.Column("note", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["referral_id"], ["referrals.id"],
                                name="fk_referral_outcomes_referral_id_referrals"),
        sa.ForeignKeyConstraint(["case_id"], ["cases.id"],
                                name="fk_referral_outcomes_case_id_cases"),
        sa.ForeignKeyConstraint(["recorded_by"], ["users.id"],
                                name="fk_referral_outcomes_recorded_by_users"),
        sa.PrimaryKeyConstraint("id", name="pk_referral_outcomes"),
    )
    op.create_index("ix_referral_outcomes_referral_id_recorded_at", "referral_outcomes",
                    ["referral_id", "recorded_at"])
    op.create_index("ix_referral_outcomes_case_id", "referral_outcomes", ["case_id"])
    _milestones_of_earlier_cases()


def _milestones_of_earlier_cases() -> None:
    """What the stored rows tell of the milestones of cases made before this revision."""
    moment = sa.DateTime(timezone=True)
    cases = sa.table("cases", sa.column("id", sa.Uuid()), *(
        sa.column(f"{name}_at", moment) for name in MILESTONES[:4]))
    audit = sa.table("audit_log", sa.column("case_id", sa.Uuid()), sa.column("action"),
                     sa.column("at", moment))
    verdicts = sa.table("assessments", sa.column("case_id", sa.Uuid()), sa.column("verdict"),
                        sa.column("status"), sa.column("created_at", moment),
                        sa.column("approved_at", moment))
    referrals = sa.table("referrals", sa.column("case_id", sa.Uuid()),
                         sa.column("created_at", moment))
    approval = sa.case((verdicts.c.approved_at.is_not(None), verdicts.c.approved_at),
                       (verdicts.c.status == "final", verdicts.c.created_at))
    op.execute(sa.update(cases).values(
        located_at=sa.select(sa.func.min(audit.c.at))
        .where(audit.c.case_id == cases.c.id, audit.c.action == "case.located")
        .scalar_subquery(),
        assessed_at=sa.select(sa.func.min(verdicts.c.created_at))
        .where(verdicts.c.case_id == cases.c.id).scalar_subquery(),
        approved_at=sa.select(sa.func.min(approval))
        .where(verdicts.c.case_id == cases.c.id, verdicts.c.verdict == "illegal")
        .scalar_subquery(),
        referred_at=sa.select(sa.func.min(referrals.c.created_at))
        .where(referrals.c.case_id == cases.c.id).scalar_subquery(),
    ))


#: The states of a case after its referral that the older release does not know: each is
#: ``referred`` there (the nearest it has: referred, nothing known since).
AFTER_REFERRAL = ("acknowledged", "removed", "content_unavailable", "not_actionable", "moved")


def _to_older_states() -> None:
    cases = sa.table("cases", sa.column("status", sa.String()))
    op.execute(sa.update(cases).where(cases.c.status.in_(AFTER_REFERRAL))
               .values(status="referred"))


def _one_referral_per_case_and_destination() -> None:
    """The older release keeps one referral per case and destination: of a case referred to
    one destination again (reopened after a removal), the newest stays (the live one); the
    earlier ones go, with their outbox items and delivery attempts (the audit trail keeps
    that they were made, sent and answered)."""
    moment = sa.DateTime(timezone=True)
    referrals = sa.table("referrals", sa.column("id", sa.Uuid()), sa.column("case_id", sa.Uuid()),
                         sa.column("destination", sa.String()), sa.column("created_at", moment))
    newer = referrals.alias("newer")
    older = [row[0] for row in op.get_bind().execute(sa.select(referrals.c.id).where(
        sa.exists().where(
            newer.c.case_id == referrals.c.case_id,
            newer.c.destination == referrals.c.destination,
            sa.or_(newer.c.created_at > referrals.c.created_at,
                   sa.and_(newer.c.created_at == referrals.c.created_at,
                           newer.c.id > referrals.c.id)))))]
    if not older:
        return
    outbox = sa.table("outbox", sa.column("id", sa.Uuid()), sa.column("referral_id", sa.Uuid()))
    attempts = sa.table("outbox_attempts", sa.column("outbox_id", sa.Uuid()))
    items = sa.select(outbox.c.id).where(outbox.c.referral_id.in_(older))
    op.execute(sa.delete(attempts).where(attempts.c.outbox_id.in_(items)))
    op.execute(sa.delete(outbox).where(outbox.c.referral_id.in_(older)))
    op.execute(sa.delete(referrals).where(referrals.c.id.in_(older)))


def downgrade() -> None:
    _to_older_states()
    op.drop_index("ix_referral_outcomes_case_id", table_name="referral_outcomes")
    op.drop_index("ix_referral_outcomes_referral_id_recorded_at", table_name="referral_outcomes")
    op.drop_table("referral_outcomes")
    _one_referral_per_case_and_destination()
    with op.batch_alter_table("referrals") as batch:
        batch.drop_constraint("uq_referrals_decision_id_destination", type_="unique")
        batch.create_unique_constraint("uq_referrals_case_id_destination",
                                       ["case_id", "destination"])
        batch.drop_column("outcome_at")
        batch.drop_column("outcome")
    with op.batch_alter_table("cases") as batch:
        for name in reversed(MILESTONES):
            batch.drop_column(f"{name}_at")
