"""Bind cards to their caller and offer; record suppressed cards (issue 11, issue 13).

Cards stored before this revision get issuer "" and fhir_server "" (the no-JWT caller) and offered
nothing: feedback naming a suggestion or override reason on them is refused.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_NEW_COLUMNS = (
    ("issuer", sa.Text, ""),  # JWT iss of the call ("" without JWT)
    ("fhir_server", sa.Text, ""),  # fhirServer of the call ("" when none was given)
    ("topic_display", sa.Text, ""),  # the card's source.topic.display, for the report
    ("offered_suggestions", sa.Text, "[]"),  # JSON list of suggestion uuids
    ("offered_override_reasons", sa.Text, "[]"),  # JSON list of [system, code]
)


def upgrade() -> None:
    with op.batch_alter_table("issued_card") as batch:
        for name, kind, default in _NEW_COLUMNS:
            batch.add_column(sa.Column(name, kind, nullable=False, server_default=default))
        batch.add_column(sa.Column("suppressed", sa.Boolean, nullable=False, server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table("issued_card") as batch:
        batch.drop_column("suppressed")
        for name, _, _ in reversed(_NEW_COLUMNS):
            batch.drop_column(name)
