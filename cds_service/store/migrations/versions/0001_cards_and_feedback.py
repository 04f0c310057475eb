"""Issued cards and the feedback on them.

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "issued_card",
        sa.Column("uuid", sa.String(100), nullable=False),
        sa.Column("service_id", sa.String(200), nullable=False),
        sa.Column("hook", sa.String(100), nullable=False),
        sa.Column("topic", sa.String(200), nullable=False),
        sa.Column("indicator", sa.String(20), nullable=False),
        sa.Column("hook_instance", sa.String(200), nullable=False),
        sa.Column("patient_hash", sa.String(64), nullable=False),
        sa.Column("trigger_key", sa.Text, nullable=False),
        sa.Column("issued_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("uuid", name=op.f("pk_issued_card")),
    )
    op.create_index(op.f("ix_issued_card_issued_at"), "issued_card", ["issued_at"])
    op.create_index(op.f("ix_issued_card_patient_hash_topic"), "issued_card", ["patient_hash", "topic"])

    op.create_table(
        "card_feedback",
        sa.Column("id", sa.Integer, autoincrement=True, nullable=False),
        sa.Column("card_uuid", sa.String(100), nullable=False),
        sa.Column("outcome", sa.String(20), nullable=False),
        sa.Column("outcome_timestamp", sa.DateTime(timezone=True), nullable=False),
        sa.Column("accepted_suggestions", sa.Text, nullable=False),
        sa.Column("reason_code", sa.Text),
        sa.Column("reason_system", sa.Text),
        sa.Column("reason_display", sa.Text),
        sa.Column("user_comment", sa.Text),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_card_feedback")),
        sa.ForeignKeyConstraint(
            ["card_uuid"], ["issued_card.uuid"], name=op.f("fk_card_feedback_card_uuid_issued_card")
        ),
        sa.CheckConstraint("outcome IN ('accepted', 'overridden')", name=op.f("ck_card_feedback_outcome")),
        sa.UniqueConstraint(
            "card_uuid", "outcome", "outcome_timestamp",
            name=op.f("uq_card_feedback_card_uuid_outcome_outcome_timestamp"),
        ),
    )
    op.create_index(op.f("ix_card_feedback_outcome_timestamp"), "card_feedback", ["outcome_timestamp"])


def downgrade() -> None:
    op.drop_table("card_feedback")
    op.drop_table("issued_card")
