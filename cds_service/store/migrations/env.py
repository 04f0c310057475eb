"""Alembic environment of the card store.

CardStore.migrate() hands over an open connection in ``config.attributes["connection"]``;
the alembic command line (developers only) connects to CDS_DATABASE_URL instead.
"""

from __future__ import annotations

import os

import sqlalchemy as sa
from alembic import context

from cds_service.store.models import metadata

VERSION_TABLE = "cds_store_version"  # not "alembic_version": the database may be shared


def _run(connection: sa.engine.Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        version_table=VERSION_TABLE,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite cannot ALTER most things
    )
    with context.begin_transaction():
        context.run_migrations()


connection = context.config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:
    from cds_service.store.card_store import DEFAULT_DATABASE_URL

    engine = sa.create_engine(os.environ.get("CDS_DATABASE_URL") or DEFAULT_DATABASE_URL)
    with engine.begin() as conn:
        _run(conn)
