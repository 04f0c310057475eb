"""Tables of the card and feedback store.

The schema itself is created and changed only by the Alembic migrations in ``migrations/``;
these definitions are what the queries use, and must match the newest migration.
"""

from __future__ import annotations

from datetime import datetime, timezone

import sqlalchemy as sa
from sqlalchemy.types import TypeDecorator

# Fixed constraint names, so later migrations can refer to them on every backend.
metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


class UtcDateTime(TypeDecorator):
    """A timezone-aware UTC datetime on every backend.

    SQLite has no timezone type: values are stored there as naive UTC, and given back with
    tzinfo=UTC so that callers always compare aware datetimes.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store; use an aware UTC datetime")
        value = value.astimezone(timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)


# Every card the rules produced for a call: shown to the EHR, or held back by suppression (suppressed=true,
# never sent, so never open to feedback). The caller (JWT iss, "" without JWT) and the FHIR server it named
# ("" when it named none) bind feedback and suppression to the EHR that received the card; the suggestion
# uuids and override reasons the card offered are the only ones its feedback may name.
issued_card = sa.Table(
    "issued_card",
    metadata,
    sa.Column("uuid", sa.String(100), primary_key=True),
    sa.Column("service_id", sa.String(200), nullable=False),
    sa.Column("hook", sa.String(100), nullable=False),
    sa.Column("topic", sa.String(200), nullable=False),
    sa.Column("indicator", sa.String(20), nullable=False),
    sa.Column("hook_instance", sa.String(200), nullable=False),
    sa.Column("patient_hash", sa.String(64), nullable=False),
    sa.Column("trigger_key", sa.Text, nullable=False),
    sa.Column("issued_at", UtcDateTime, nullable=False),
    sa.Column("issuer", sa.Text, nullable=False, server_default=""),
    sa.Column("fhir_server", sa.Text, nullable=False, server_default=""),
    sa.Column("topic_display", sa.Text, nullable=False, server_default=""),
    # JSON lists, kept as text: only ever read back whole. Reasons are [system, code] pairs.
    sa.Column("offered_suggestions", sa.Text, nullable=False, server_default="[]"),
    sa.Column("offered_override_reasons", sa.Text, nullable=False, server_default="[]"),
    sa.Column("suppressed", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Index(None, "issued_at"),
    sa.Index(None, "patient_hash", "topic"),
)

card_feedback = sa.Table(
    "card_feedback",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("card_uuid", sa.String(100), sa.ForeignKey("issued_card.uuid"), nullable=False),
    sa.Column("outcome", sa.String(20), nullable=False),
    sa.Column("outcome_timestamp", UtcDateTime, nullable=False),
    # JSON list of suggestion uuids, kept as text: it is only ever read back whole.
    sa.Column("accepted_suggestions", sa.Text, nullable=False),
    sa.Column("reason_code", sa.Text),
    sa.Column("reason_system", sa.Text),
    sa.Column("reason_display", sa.Text),
    sa.Column("user_comment", sa.Text),
    sa.Column("received_at", UtcDateTime, nullable=False),
    sa.CheckConstraint("outcome IN ('accepted', 'overridden')", name="outcome"),
    # A client that resends a batch must not double-count it.
    sa.UniqueConstraint("card_uuid", "outcome", "outcome_timestamp"),
    sa.Index(None, "outcome_timestamp"),
)


# JWT ids already seen (CDS Hooks "Trusting CDS Clients": a jti must not be replayed), shared by every
# worker of every replica. The key is a SHA-256 of issuer and jti: fixed length whatever the token
# says, and no token content in the database. expires_at is Unix seconds (the token's exp + skew).
jwt_replay = sa.Table(
    "jwt_replay",
    metadata,
    sa.Column("token_key", sa.String(64), primary_key=True),
    sa.Column("expires_at", sa.Float, nullable=False),
    sa.Index(None, "expires_at"),
)
