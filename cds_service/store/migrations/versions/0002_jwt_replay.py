"""JWT ids already seen, shared by every replica (the jti replay cache).

Revision ID: 0002
Revises: 0001
Create Date: 2025-01-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "jwt_replay",
        sa.Column("token_key", sa.String(64), nullable=False),  # SHA-256 hex of issuer and jti
        sa.Column("expires_at", sa.Float, nullable=False),  # Unix seconds: the token's exp + clock skew
        sa.PrimaryKeyConstraint("token_key", name=op.f("pk_jwt_replay")),
    )
    op.create_index(op.f("ix_jwt_replay_expires_at"), "jwt_replay", ["expires_at"])


def downgrade() -> None:
    op.drop_table("jwt_replay")
