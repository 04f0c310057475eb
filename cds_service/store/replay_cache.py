"""The JWT `jti` replay cache in the database, shared by every worker of every replica.

auth.InMemoryReplayCache remembers the (iss, jti) pairs one process has seen; a token replayed
against another worker or replica passes it. DatabaseReplayCache keeps them in the card store's
database (SQLite or PostgreSQL, same engine), so the first use anywhere wins and every later one is
refused. It implements auth.ReplayCache:

    check_and_add(issuer, jti, expires_at) -> True (new: recorded) | False (a replay)

Atomicity comes from the primary key, not from a read-then-write: one statement
``INSERT ... ON CONFLICT (token_key) DO UPDATE SET expires_at = excluded.expires_at
WHERE jwt_replay.expires_at <= :now RETURNING token_key`` inserts a new pair, takes over a pair whose
earlier token has expired (as the in-memory cache forgets it), and changes no row for a live replay:
a row returned means "new", none means "replay", even when two replicas race with the same token.
(RETURNING needs SQLite 3.35 or newer: python:3.11-slim links 3.40.)

Rows whose token has expired are deleted now and then (at most every PURGE_INTERVAL_S per process),
so the table holds about (calls per second x token lifetime) rows.

If the database cannot be reached the check falls back to a per-process InMemoryReplayCache and
logs an error: hook answers keep flowing (a clinician waiting on a chart matters more), replays are
still refused within a process, and /readyz reports the database as down.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from cds_service.auth import InMemoryReplayCache
from cds_service.store.models import jwt_replay

__all__ = ["PURGE_INTERVAL_S", "DatabaseReplayCache", "token_key"]

log = logging.getLogger(__name__)

PURGE_INTERVAL_S = 60.0


def token_key(issuer: str, jti: str) -> str:
    """SHA-256 of issuer and jti: a fixed-length key, and no token content stored in the database.

    The issuer is length-prefixed, so no choice of characters makes two different pairs collide.
    """
    issuer_bytes = issuer.encode("utf-8")
    return hashlib.sha256(b"%d:" % len(issuer_bytes) + issuer_bytes + jti.encode("utf-8")).hexdigest()


class DatabaseReplayCache:
    """auth.ReplayCache on the card store's SQLAlchemy engine (table jwt_replay, migration 0002)."""

    def __init__(
        self,
        engine: sa.engine.Engine,
        *,
        now: Callable[[], float] = time.time,
        purge_interval_s: float = PURGE_INTERVAL_S,
        fallback: InMemoryReplayCache | None = None,
    ):
        self.engine = engine
        self._now = now
        self._purge_interval_s = purge_interval_s
        self._next_purge = 0.0  # purge on first use
        self._purge_lock = threading.Lock()
        self._fallback = fallback if fallback is not None else InMemoryReplayCache(now=now)
        dialect = postgresql if engine.dialect.name == "postgresql" else sqlite
        insert = dialect.insert(jwt_replay)
        self._statement = insert.on_conflict_do_update(
            index_elements=[jwt_replay.c.token_key],
            set_={"expires_at": insert.excluded.expires_at},
            where=jwt_replay.c.expires_at <= sa.bindparam("now"),
        ).returning(jwt_replay.c.token_key)  # rowcount is not reliable for upserts on every driver

    def check_and_add(self, issuer: str, jti: str, expires_at: float) -> bool:
        now = self._now()
        row = {"token_key": token_key(issuer, jti), "expires_at": float(expires_at), "now": now}
        try:
            with self.engine.begin() as connection:
                recorded = connection.execute(self._statement, row).first() is not None
            self._purge_now_and_then(now)
        except sa.exc.SQLAlchemyError as exc:
            log.error("replay cache database unavailable, checking this process only: %s", _error_name(exc))
            return self._fallback.check_and_add(issuer, jti, expires_at)
        return recorded

    def purge_expired(self, now: float | None = None) -> int:
        """Delete the rows of tokens that can no longer pass the exp check; returns how many."""
        cutoff = self._now() if now is None else now
        with self.engine.begin() as connection:
            return connection.execute(sa.delete(jwt_replay).where(jwt_replay.c.expires_at <= cutoff)).rowcount

    def _purge_now_and_then(self, now: float) -> None:
        if now < self._next_purge or not self._purge_lock.acquire(blocking=False):
            return
        try:
            self._next_purge = now + self._purge_interval_s
            self.purge_expired(now)
        except sa.exc.SQLAlchemyError as exc:  # the check itself succeeded; purging can wait
            log.warning("replay cache could not purge expired rows: %s", _error_name(exc))
        finally:
            self._purge_lock.release()


def _error_name(exc: BaseException) -> str:
    """The class of a database error, without its message (which may quote parameters)."""
    return type(getattr(exc, "orig", None) or exc).__name__
