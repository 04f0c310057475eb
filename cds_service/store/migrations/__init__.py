"""Alembic migrations of the card store (a package only so that it ships with the code)."""
