"""Alembic revisions of the card store."""
