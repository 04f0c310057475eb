"""The card and feedback store: which cards were issued (or held back), what clinicians did with them.

Recording issued cards must never slow down or fail a hook call, so record_cards() only puts
them on a bounded queue that a background thread writes out. Feedback is written at once,
because the EHR is told whether it was accepted.

Only single records are written and read here; the analytics queries live in cds_service/report.py.

Nothing here sees patient ids: callers pass a salted hash. Log messages name only exception
classes and counts, never values, since SQL error texts can quote the row being written.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import json
import logging
import os
import pathlib
import queue
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy.dialects import postgresql, sqlite

from cds_service.errors import BadRequest
from cds_service.store.feedback import FeedbackEntry, clip, shorten
from cds_service.store.models import card_feedback, issued_card

log = logging.getLogger(__name__)

DEFAULT_DATABASE_URL = "sqlite:///mtor-cds.sqlite3"
MIGRATIONS_DIR = pathlib.Path(__file__).with_name("migrations")
QUEUE_BATCHES = 1000  # hook calls' worth of cards waiting for the writer before new ones are dropped
# The writer gathers the cards of this long into one transaction. Each transaction, not each row, is what costs:
# with 8 workers, 20 ms meant about 2 cards per transaction and 0.21 ms of writer CPU per hook call; 100 ms, about
# 10 cards and 0.10 ms (bench/results/notes.md). A crash (not a stop: those write first) can lose this long of cards.
WRITE_DELAY_S = 0.1
# Feedback naming a card not in the database yet waits this long, once, before it is refused: the card may have
# been issued by another worker process whose writer has not committed it yet (its delay, then its commit).
UNKNOWN_CARD_WAIT_S = 0.25
EXIT_FLUSH_TIMEOUT_S = 5.0  # a process leaving waits at most this long for its queued cards (gunicorn's graceful 25 s)
_WRITE_NOW: tuple[list[CardRecord], bool] = ([], False)  # queued by flush(): write what is gathered without waiting out the delay
# Retention (CDS_CARD_RETENTION_DAYS): the writer deletes cards older than that, with their feedback, at most this
# often per process, in transactions of at most PURGE_BATCH cards (a long delete would hold up the cards being written).
PURGE_INTERVAL_S = 3600.0
PURGE_BATCH = 5000
_MIGRATION_LOCK_ID = 0x6D746F72  # "mtor": serialises migrate() across workers on PostgreSQL


@dataclass(frozen=True)
class CardRecord:
    """One card as the rules produced it for one caller; the key for the feedback on it and for suppression."""

    uuid: str
    service_id: str
    hook: str
    topic: str
    indicator: str
    hook_instance: str
    patient_hash: str
    trigger_key: str
    issued_at: datetime
    issuer: str = ""  # JWT iss of the call; "" when JWTs are off
    fhir_server: str = ""  # the call's fhirServer; "" when it gave none
    topic_display: str = ""  # the card's source.topic.display
    suggestion_ids: tuple[str, ...] = ()  # uuids of the suggestions the card offered
    override_reasons: tuple[tuple[str, str], ...] = ()  # (system, code) of the overrideReasons it offered


def _utc(moment: datetime | None) -> datetime | None:
    """Aware UTC datetime; a naive one is taken to be UTC already (as the CLI's dates are)."""
    if moment is None:
        return None
    if moment.tzinfo is None:
        return moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc)


def _text(value: str) -> str:
    """Text as the database can hold it: PostgreSQL refuses a NUL character in any text value, and one such value
    (a hookInstance, a FHIR id in a trigger key, a feedback comment) would fail the whole batch of cards it is written
    with, or a feedback request with a 500. NUL becomes U+FFFD on every backend, so the same text matches on both."""
    return value.replace("\x00", "\ufffd")


def _storable(entry: FeedbackEntry) -> FeedbackEntry:
    """The entry with its text as the database can hold it (_text), before it is compared with what cards offered."""
    def text(value: str | None) -> str | None:
        return None if value is None else _text(value)

    return dataclasses.replace(
        entry,
        card_uuid=_text(entry.card_uuid),
        accepted_suggestions=tuple(_text(s) for s in entry.accepted_suggestions),
        reason_code=text(entry.reason_code),
        reason_system=text(entry.reason_system),
        reason_display=text(entry.reason_display),
        user_comment=text(entry.user_comment),
    )


def _error_name(exc: BaseException) -> str:
    """The class of a database error, without its message (which may quote parameters)."""
    original = getattr(exc, "orig", None)
    return type(original or exc).__name__


class CardStore:
    """Issued cards and feedback in SQLite or PostgreSQL, through SQLAlchemy."""

    def __init__(self, engine: sa.engine.Engine, retention_days: int = 0):
        self.engine = engine
        self.retention_days = retention_days  # 0: kept for ever
        self._next_purge = 0.0  # monotonic; the writer's first write also purges
        # Each batch: the records and whether they were suppressed (held back, never sent to the EHR).
        self._queue: queue.Queue[tuple[list[CardRecord], bool] | None] = queue.Queue(maxsize=QUEUE_BATCHES)
        self._pending = 0  # batches queued or being written; guarded by _drained
        self._drained = threading.Condition()
        self._writer: threading.Thread | None = None
        self._counters = {"cards_written": 0, "cards_dropped": 0, "cards_failed": 0}

    @classmethod
    def from_url(cls, url: str | None, retention_days: int = 0) -> CardStore:
        """A store on CDS_DATABASE_URL; unset means a SQLite file in the working directory."""
        url_text = (url or "").strip() or DEFAULT_DATABASE_URL
        # psycopg 3 is the driver installed; accept the plain forms that ops people write.
        for plain in ("postgres://", "postgresql://"):
            if url_text.startswith(plain):
                url_text = "postgresql+psycopg://" + url_text[len(plain):]
        parsed = sa.engine.make_url(url_text)
        backend = parsed.get_backend_name()
        if backend == "sqlite":
            engine = sa.create_engine(parsed, hide_parameters=True, connect_args={"timeout": 5})
            sa.event.listen(engine, "connect", _sqlite_connection_settings)
        elif backend == "postgresql":
            engine = sa.create_engine(
                parsed, hide_parameters=True, pool_pre_ping=True, connect_args={"connect_timeout": 3},
                pool_size=2, max_overflow=2,  # per worker process (a request thread + the writer); replicas x workers x 4 must fit max_connections
            )
        else:
            raise ValueError(f"CDS_DATABASE_URL must be a sqlite or postgresql URL, not {backend!r}")
        return cls(engine, retention_days)

    def migrate(self) -> None:
        """Bring the schema to the newest migration. Safe to run from several workers at once."""
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS_DIR))
        with self.engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                connection.execute(sa.text("SELECT pg_advisory_xact_lock(:id)"), {"id": _MIGRATION_LOCK_ID})
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
        self.engine.dispose()  # gunicorn forks after start: workers must not share the migration's connection

    # -- issued cards: written in the background --------------------------------------------

    def record_cards(self, records: list[CardRecord]) -> None:
        """Queue the cards sent to the EHR for writing. Never blocks or raises: a full queue drops them and counts."""
        self._enqueue(records, suppressed=False)

    def record_suppressed(self, records: list[CardRecord]) -> None:
        """Queue cards that suppression held back (never sent), so the report can count them. Like record_cards."""
        self._enqueue(records, suppressed=True)

    def _enqueue(self, records: list[CardRecord], suppressed: bool) -> None:
        if not records:
            return
        try:
            self._start_writer()
            with self._drained:
                self._pending += 1
            try:
                self._queue.put_nowait((list(records), suppressed))
            except queue.Full:
                self._finish_batch()
                self._count("cards_dropped", len(records))
                log.warning("card store queue full: %d card(s) not recorded", len(records))
        except Exception as exc:  # recording is best effort; the hook answer matters more
            self._count("cards_dropped", len(records))
            log.error("card store could not queue %d card(s): %s", len(records), _error_name(exc))

    def flush(self, timeout_s: float = 5) -> bool:
        """Wait until every queued card is written (or failed). False if the timeout ran out."""
        with self._drained:
            if self._pending == 0:
                return True
        with contextlib.suppress(queue.Full):  # a full queue is written without delay anyway
            self._queue.put_nowait(_WRITE_NOW)  # the writer stops gathering and writes
        with self._drained:
            return self._drained.wait_for(lambda: self._pending == 0, timeout=timeout_s)

    def counters(self) -> dict[str, int]:
        """Cards written, dropped because the queue was full, and lost to database errors."""
        with self._drained:
            return dict(self._counters)

    def close(self, timeout_s: float = 5) -> None:
        """Write what is queued, stop the writer and release the connections."""
        self.flush(timeout_s)
        if self._writer is not None:
            self._queue.put(None)
            self._writer.join(timeout_s)
            self._writer = None
        self.engine.dispose()

    def _start_writer(self) -> None:
        if self._writer is not None:
            return
        with self._drained:
            if self._writer is None:
                self._writer = threading.Thread(target=self._write_loop, name="card-store-writer", daemon=True)
                self._writer.start()
                # A process that exits (a gunicorn worker recycled or stopped, the CLI) first writes what it has
                # queued: the cards of its last calls would otherwise be lost, and their feedback refused.
                atexit.register(self._flush_at_exit, os.getpid())

    def _flush_at_exit(self, pid: int) -> None:
        if os.getpid() == pid:  # a child forked afterwards inherits the handler, not the writer thread
            self.flush(EXIT_FLUSH_TIMEOUT_S)

    def _write_loop(self) -> None:
        stop = False
        while not stop:
            batches = [self._queue.get()]
            # What arrives within WRITE_DELAY_S goes into the same transaction: one commit per burst, not per
            # call (a commit costs more than the rows it writes). Stopping writes at once.
            # flush() and close() cut the wait short with a _WRITE_NOW marker.
            until = time.monotonic() + WRITE_DELAY_S
            while len(batches) < 500 and batches[-1] is not None and batches[-1] is not _WRITE_NOW:
                try:
                    batches.append(self._queue.get(timeout=max(0.0, until - time.monotonic())))
                except queue.Empty:
                    break
            stop = None in batches
            batches = [b for b in batches if b is not _WRITE_NOW]
            rows = []
            for batch in batches:
                if batch is not None:
                    records, suppressed = batch
                    rows += [_card_row(record, suppressed) for record in records]
            try:
                if rows:
                    with self.engine.begin() as connection:
                        _insert_ignoring_duplicates(connection, issued_card, rows)
                    self._count("cards_written", len(rows))
            except Exception as exc:
                self._count("cards_failed", len(rows))
                log.error("card store could not write %d card(s): %s", len(rows), _error_name(exc))
            finally:
                for batch in batches:
                    if batch is not None:
                        self._finish_batch()
            self._purge_now_and_then()

    def purge_older_than(self, cutoff: datetime) -> int:
        """Delete the cards issued before `cutoff` and the feedback on them; the number of cards deleted."""
        older = sa.select(issued_card.c.uuid).where(issued_card.c.issued_at < cutoff).limit(PURGE_BATCH)
        deleted = 0
        while True:
            with self.engine.begin() as connection:
                uuids = [row.uuid for row in connection.execute(older)]
                if not uuids:
                    return deleted
                connection.execute(sa.delete(card_feedback).where(card_feedback.c.card_uuid.in_(uuids)))
                connection.execute(sa.delete(issued_card).where(issued_card.c.uuid.in_(uuids)))
            deleted += len(uuids)
            if len(uuids) < PURGE_BATCH:
                return deleted

    def _purge_now_and_then(self) -> None:
        if not self.retention_days or time.monotonic() < self._next_purge:
            return
        self._next_purge = time.monotonic() + PURGE_INTERVAL_S
        try:
            deleted = self.purge_older_than(datetime.now(timezone.utc) - timedelta(days=self.retention_days))
        except Exception as exc:  # the next interval tries again; writing cards matters more
            log.error("card store could not delete old cards: %s", _error_name(exc))
            return
        if deleted:
            log.info("card store deleted %d card(s) older than %d days, with their feedback", deleted, self.retention_days)

    def _finish_batch(self) -> None:
        with self._drained:
            self._pending -= 1
            self._drained.notify_all()

    def _count(self, name: str, n: int) -> None:
        with self._drained:
            self._counters[name] += n

    # -- feedback: written at once -----------------------------------------------------------

    def record_feedback(self, service_id: str, issuer: str, entries: list[FeedbackEntry]) -> None:
        """Store feedback from the caller ``issuer`` (JWT iss, "" without JWT); resending the same entries changes nothing.

        Raises BadRequest, storing nothing, when any entry names a card this service did not send to this
        caller (unknown, another service's, another caller's, or held back by suppression: all answered
        alike, so a caller learns nothing about cards it did not receive), or a suggestion or override reason
        that its card did not offer. Database errors propagate: the EHR should learn that the feedback was
        not kept.
        """
        if not entries:
            return
        entries = [_storable(entry) for entry in entries]
        wanted = {entry.card_uuid for entry in entries}
        offers = self._offers_to(service_id, issuer, wanted)
        if len(offers) < len(wanted) and self._has_pending():  # the cards may still be in this process's writer queue
            self.flush()
            offers = self._offers_to(service_id, issuer, wanted)
        if len(offers) < len(wanted):  # or in another worker process's
            time.sleep(UNKNOWN_CARD_WAIT_S)
            offers = self._offers_to(service_id, issuer, wanted)
        unknown = sorted(wanted - offers.keys())
        if unknown:
            raise BadRequest(f"feedback names card(s) this service did not send to this caller: {_listed(unknown)}")
        for index, entry in enumerate(entries):
            _check_offered(entry, offers[entry.card_uuid], f"feedback[{index}]")
        received_at = datetime.now(timezone.utc)
        rows = {
            (entry.card_uuid, entry.outcome, entry.outcome_timestamp): _feedback_row(entry, received_at)
            for entry in entries
        }
        with self.engine.begin() as connection:
            _insert_ignoring_duplicates(connection, card_feedback, list(rows.values()))

    def _has_pending(self) -> bool:
        with self._drained:
            return self._pending > 0

    def _offers_to(self, service_id: str, issuer: str, uuids: set[str]) -> dict[str, _Offer]:
        """What each of these cards offered, for the cards this service sent to this caller."""
        query = sa.select(
            issued_card.c.uuid, issued_card.c.offered_suggestions, issued_card.c.offered_override_reasons
        ).where(
            issued_card.c.uuid.in_(sorted(uuids)),
            issued_card.c.service_id == service_id,
            issued_card.c.issuer == issuer,
            issued_card.c.suppressed.is_(False),
        )
        with self.engine.connect() as connection:
            return {
                row.uuid: _Offer(
                    suggestion_ids=frozenset(json.loads(row.offered_suggestions)),
                    override_reasons=frozenset(tuple(pair) for pair in json.loads(row.offered_override_reasons)),
                )
                for row in connection.execute(query)
            }

    def overridden_recently(self, card: CardRecord, since: datetime) -> bool:
        """Did this caller override an identical card (same FHIR server, patient, topic and trigger) with a reason
        after ``since``?

        Used to suppress repeating a card the clinician has already dismissed. Both the outcome and its
        receipt must fall after ``since``, so no feedback (whatever its outcomeTimestamp) suppresses a card
        for longer than the window. On a database error it answers False: showing the card again is the
        safe side.
        """
        since_utc = _utc(since) or since
        query = (
            sa.select(card_feedback.c.id)
            .join(issued_card, issued_card.c.uuid == card_feedback.c.card_uuid)
            .where(
                issued_card.c.issuer == _text(card.issuer),
                issued_card.c.fhir_server == _text(card.fhir_server),
                issued_card.c.patient_hash == _text(card.patient_hash),
                issued_card.c.topic == _text(card.topic),
                issued_card.c.trigger_key == _text(card.trigger_key),
                card_feedback.c.outcome == "overridden",
                card_feedback.c.reason_code.is_not(None),
                card_feedback.c.outcome_timestamp > since_utc,
                card_feedback.c.received_at > since_utc,
            )
            .limit(1)
        )
        try:
            with self.engine.connect() as connection:
                return connection.execute(query).first() is not None
        except sa.exc.SQLAlchemyError as exc:
            log.error("card store could not check for overridden cards: %s", _error_name(exc))
            return False

    def is_healthy(self) -> bool:
        """Can the database be reached now? (connect timeout 3 s on PostgreSQL, 5 s lock wait on SQLite)"""
        try:
            with self.engine.connect() as connection:
                connection.execute(sa.text("SELECT 1"))
            return True
        except Exception as exc:
            log.warning("card store unhealthy: %s", _error_name(exc))
            return False


def _insert_ignoring_duplicates(connection: sa.engine.Connection, table: sa.Table, rows: list[dict]) -> None:
    """INSERT ... ON CONFLICT DO NOTHING: repeats of a row already stored are not errors."""
    if not rows:
        return
    dialect = postgresql if connection.dialect.name == "postgresql" else sqlite
    connection.execute(dialect.insert(table).on_conflict_do_nothing(), rows)


@dataclass(frozen=True)
class _Offer:
    """What one issued card offered the clinician: the only suggestion ids and override reasons feedback may name."""

    suggestion_ids: frozenset[str]
    override_reasons: frozenset[tuple[str, str]]  # (system, code)


def _check_offered(entry: FeedbackEntry, offer: _Offer, where: str) -> None:
    foreign = sorted(set(entry.accepted_suggestions) - offer.suggestion_ids)
    if foreign:
        raise BadRequest(f"{where}.acceptedSuggestions names suggestion(s) the card did not offer: {_listed(foreign)}")
    if entry.reason_code is not None and (entry.reason_system, entry.reason_code) not in offer.override_reasons:
        raise BadRequest(
            f"{where}.overrideReason.reason is not one of the card's overrideReasons: "
            f"{shorten(entry.reason_system)} {shorten(entry.reason_code)}"
        )


def _listed(values: list[str], most: int = 5) -> str:
    """A few values, each shortened: an error message never echoes a large body back."""
    shown = ", ".join(clip(value) for value in values[:most])
    return shown + (f" and {len(values) - most} more" if len(values) > most else "")


def _card_row(record: CardRecord, suppressed: bool) -> dict:
    return {
        "uuid": _text(record.uuid),
        "service_id": _text(record.service_id),
        "hook": _text(record.hook),
        "topic": _text(record.topic),
        "indicator": _text(record.indicator),
        "hook_instance": _text(record.hook_instance),
        "patient_hash": _text(record.patient_hash),
        "trigger_key": _text(record.trigger_key),
        "issued_at": _utc(record.issued_at),
        "issuer": _text(record.issuer),
        "fhir_server": _text(record.fhir_server),
        "topic_display": _text(record.topic_display),
        "offered_suggestions": json.dumps([_text(s) for s in record.suggestion_ids]),
        "offered_override_reasons": json.dumps([[_text(part) for part in pair] for pair in record.override_reasons]),
        "suppressed": suppressed,
    }


def _feedback_row(entry: FeedbackEntry, received_at: datetime) -> dict:
    return {
        "card_uuid": entry.card_uuid,
        "outcome": entry.outcome,
        "outcome_timestamp": entry.outcome_timestamp,
        "accepted_suggestions": json.dumps(list(entry.accepted_suggestions)),
        "reason_code": entry.reason_code,
        "reason_system": entry.reason_system,
        "reason_display": entry.reason_display,
        "user_comment": entry.user_comment,
        "received_at": received_at,
    }


def _sqlite_connection_settings(dbapi_connection, _record) -> None:
    """Per connection: enforce foreign keys (SQLite ignores them unless asked); write-ahead log.

    In the default rollback-journal mode every commit creates, syncs and deletes a journal file
    (three fdatasync calls and an unlink per hook call, the largest share of a call's system time).
    With WAL and synchronous=NORMAL a commit appends to the log without syncing; the database
    stays consistent, and only a power cut (not a crash of the process) can lose the last commits.
    Readers (feedback checks, the report) do not block the writer.
    """
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()
