"""The card and feedback store: which cards were issued, what clinicians did with them.

Recording issued cards must never slow down or fail a hook call, so record_cards() only puts
them on a bounded queue that a background thread writes out. Feedback is written at once,
because the EHR is told whether it was accepted.

Nothing here sees patient ids: callers pass a salted hash. Log messages name only exception
classes and counts, never values, since SQL error texts can quote the row being written.
"""

from __future__ import annotations

import json
import logging
import pathlib
import queue
import threading
from collections import defaultdict
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy.dialects import postgresql, sqlite

from cds_service.errors import BadRequest
from cds_service.store.feedback import FeedbackEntry
from cds_service.store.models import card_feedback, issued_card

log = logging.getLogger(__name__)

DEFAULT_DATABASE_URL = "sqlite:///mtor-cds.sqlite3"
MIGRATIONS_DIR = pathlib.Path(__file__).with_name("migrations")
QUEUE_BATCHES = 1000  # hook calls' worth of cards waiting for the writer before new ones are dropped
_MIGRATION_LOCK_ID = 0x6D746F72  # "mtor": serialises migrate() across workers on PostgreSQL


@dataclass(frozen=True)
class CardRecord:
    """One card as it was returned to the EHR; the key for the feedback on it."""

    uuid: str
    service_id: str
    hook: str
    topic: str
    indicator: str
    hook_instance: str
    patient_hash: str
    trigger_key: str
    issued_at: datetime


@dataclass(frozen=True)
class OverrideReasonCount:
    """How often one override reason (or none: code None) was given."""

    code: str | None
    system: str | None
    display: str | None
    count: int

    @property
    def label(self) -> str:
        if self.code is None:
            return "(no reason given)"
        return f"{self.display} [{self.code}]" if self.display else self.code


@dataclass(frozen=True)
class TopicReport:
    """Outcomes of the cards of one topic and indicator. Each card counts once, by its latest feedback."""

    topic: str
    indicator: str
    issued: int
    accepted: int
    overridden: int
    no_feedback: int
    override_reasons: tuple[OverrideReasonCount, ...]

    @property
    def override_rate(self) -> float | None:
        """Share of the cards acted on that were overridden (ignored cards are never reported)."""
        acted_on = self.accepted + self.overridden
        return self.overridden / acted_on if acted_on else None


@dataclass(frozen=True)
class WeeklyOutcomes:
    """Cards of one topic issued in the ISO week starting on ``week`` (a Monday)."""

    topic: str
    week: date
    issued: int
    accepted: int
    overridden: int

    @property
    def override_rate(self) -> float | None:
        acted_on = self.accepted + self.overridden
        return self.overridden / acted_on if acted_on else None


def _utc(moment: datetime | None) -> datetime | None:
    """Aware UTC datetime; a naive one is taken to be UTC already (as the CLI's dates are)."""
    if moment is None:
        return None
    if moment.tzinfo is None:
        return moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc)


def _error_name(exc: BaseException) -> str:
    """The class of a database error, without its message (which may quote parameters)."""
    original = getattr(exc, "orig", None)
    return type(original or exc).__name__


class CardStore:
    """Issued cards and feedback in SQLite or PostgreSQL, through SQLAlchemy."""

    def __init__(self, engine: sa.engine.Engine):
        self.engine = engine
        self._queue: queue.Queue[list[CardRecord] | None] = queue.Queue(maxsize=QUEUE_BATCHES)
        self._pending = 0  # batches queued or being written; guarded by _drained
        self._drained = threading.Condition()
        self._writer: threading.Thread | None = None
        self._counters = {"cards_written": 0, "cards_dropped": 0, "cards_failed": 0}

    @classmethod
    def from_url(cls, url: str | None) -> CardStore:
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
            sa.event.listen(engine, "connect", _sqlite_enforce_foreign_keys)
        elif backend == "postgresql":
            engine = sa.create_engine(
                parsed, hide_parameters=True, pool_pre_ping=True, connect_args={"connect_timeout": 3},
                pool_size=2, max_overflow=2,  # per worker process (a request thread + the writer); replicas x workers x 4 must fit max_connections
            )
        else:
            raise ValueError(f"CDS_DATABASE_URL must be a sqlite or postgresql URL, not {backend!r}")
        return cls(engine)

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
        """Queue cards for writing. Never blocks or raises: a full queue drops them and counts."""
        if not records:
            return
        try:
            self._start_writer()
            with self._drained:
                self._pending += 1
            try:
                self._queue.put_nowait(list(records))
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

    def _write_loop(self) -> None:
        stop = False
        while not stop:
            batches = [self._queue.get()]
            # Everything already waiting goes into the same transaction: one commit per burst, not per call.
            while len(batches) < 500:
                try:
                    batches.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stop = None in batches
            records = [r for batch in batches if batch is not None for r in batch]
            try:
                if records:
                    with self.engine.begin() as connection:
                        _insert_ignoring_duplicates(connection, issued_card, [_card_row(r) for r in records])
                    self._count("cards_written", len(records))
            except Exception as exc:
                self._count("cards_failed", len(records))
                log.error("card store could not write %d card(s): %s", len(records), _error_name(exc))
            finally:
                for batch in batches:
                    if batch is not None:
                        self._finish_batch()

    def _finish_batch(self) -> None:
        with self._drained:
            self._pending -= 1
            self._drained.notify_all()

    def _count(self, name: str, n: int) -> None:
        with self._drained:
            self._counters[name] += n

    # -- feedback: written at once -----------------------------------------------------------

    def record_feedback(self, service_id: str, entries: list[FeedbackEntry]) -> None:
        """Store feedback on cards this service issued; resending the same entries changes nothing.

        Raises BadRequest, storing nothing, when any card is unknown or was issued by another
        service. Database errors propagate: the EHR should learn that the feedback was not kept.
        """
        if not entries:
            return
        wanted = {entry.card_uuid for entry in entries}
        unknown = wanted - self._cards_of_service(service_id, wanted)
        if unknown and self._has_pending():  # the cards may still be in the writer's queue
            self.flush()
            unknown = wanted - self._cards_of_service(service_id, wanted)
        if unknown:
            raise BadRequest(
                f"feedback names card(s) not issued by service {service_id!r}: {', '.join(sorted(unknown))}"
            )
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

    def _cards_of_service(self, service_id: str, uuids: set[str]) -> set[str]:
        query = sa.select(issued_card.c.uuid).where(
            issued_card.c.uuid.in_(sorted(uuids)), issued_card.c.service_id == service_id
        )
        with self.engine.connect() as connection:
            return set(connection.scalars(query))

    def overridden_recently(self, patient_hash: str, topic: str, trigger_key: str, since: datetime) -> bool:
        """Was an identical card (same patient, topic and trigger) overridden with a reason after ``since``?

        Used to suppress repeating a card the clinician has already dismissed. On a database
        error it answers False: showing the card again is the safe side.
        """
        query = (
            sa.select(card_feedback.c.id)
            .join(issued_card, issued_card.c.uuid == card_feedback.c.card_uuid)
            .where(
                issued_card.c.patient_hash == patient_hash,
                issued_card.c.topic == topic,
                issued_card.c.trigger_key == trigger_key,
                card_feedback.c.outcome == "overridden",
                card_feedback.c.reason_code.is_not(None),
                card_feedback.c.outcome_timestamp > _utc(since),
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

    # -- analytics ---------------------------------------------------------------------------

    def report(self, since: datetime | None = None, until: datetime | None = None) -> list[TopicReport]:
        """Outcomes per topic and indicator of the cards issued in [since, until)."""
        latest = _latest_feedback()
        query = (
            sa.select(
                issued_card.c.topic,
                issued_card.c.indicator,
                latest.c.outcome,
                latest.c.reason_code,
                latest.c.reason_system,
                latest.c.reason_display,
                sa.func.count().label("cards"),
            )
            .select_from(issued_card.outerjoin(latest, latest.c.card_uuid == issued_card.c.uuid))
            .where(*_issued_between(since, until))
            .group_by(
                issued_card.c.topic,
                issued_card.c.indicator,
                latest.c.outcome,
                latest.c.reason_code,
                latest.c.reason_system,
                latest.c.reason_display,
            )
        )
        counts: dict[tuple[str, str], dict[str, int]] = defaultdict(lambda: defaultdict(int))
        reasons: dict[tuple[str, str], dict[tuple, int]] = defaultdict(lambda: defaultdict(int))
        with self.engine.connect() as connection:
            for row in connection.execute(query):
                key = (row.topic, row.indicator)
                counts[key]["issued"] += row.cards
                counts[key][row.outcome or "no_feedback"] += row.cards
                if row.outcome == "overridden":
                    reasons[key][(row.reason_code, row.reason_system, row.reason_display)] += row.cards
        return [
            TopicReport(
                topic=topic,
                indicator=indicator,
                issued=n["issued"],
                accepted=n["accepted"],
                overridden=n["overridden"],
                no_feedback=n["no_feedback"],
                override_reasons=tuple(
                    sorted(
                        (OverrideReasonCount(*reason, count) for reason, count in reasons[(topic, indicator)].items()),
                        key=lambda r: (-r.count, r.label),
                    )
                ),
            )
            for (topic, indicator), n in sorted(counts.items())
        ]

    def weekly_outcomes(self, since: datetime | None = None, until: datetime | None = None) -> list[WeeklyOutcomes]:
        """Outcomes per topic and ISO week of issue, for the override-rate chart."""
        latest = _latest_feedback()
        query = (
            sa.select(issued_card.c.topic, issued_card.c.issued_at, latest.c.outcome)
            .select_from(issued_card.outerjoin(latest, latest.c.card_uuid == issued_card.c.uuid))
            .where(*_issued_between(since, until))
        )
        # Weeks are bucketed here rather than in SQL, which has no portable week function.
        counts: dict[tuple[str, date], dict[str, int]] = defaultdict(lambda: defaultdict(int))
        with self.engine.connect() as connection:
            for row in connection.execute(query.execution_options(yield_per=1000)):
                day = row.issued_at.date()
                week = day - timedelta(days=day.weekday())
                counts[(row.topic, week)]["issued"] += 1
                if row.outcome:
                    counts[(row.topic, week)][row.outcome] += 1
        return [
            WeeklyOutcomes(topic, week, n["issued"], n["accepted"], n["overridden"])
            for (topic, week), n in sorted(counts.items())
        ]


def _latest_feedback() -> sa.Subquery:
    """Each card's most recent feedback entry: the clinician's final word on it."""
    ranked = sa.select(
        card_feedback,
        sa.func.row_number()
        .over(
            partition_by=card_feedback.c.card_uuid,
            order_by=(card_feedback.c.outcome_timestamp.desc(), card_feedback.c.id.desc()),
        )
        .label("rank"),
    ).subquery()
    return sa.select(ranked).where(ranked.c.rank == 1).subquery("latest_feedback")


def _issued_between(since: datetime | None, until: datetime | None) -> list:
    conditions = []
    if since is not None:
        conditions.append(issued_card.c.issued_at >= _utc(since))
    if until is not None:
        conditions.append(issued_card.c.issued_at < _utc(until))
    return conditions


def _insert_ignoring_duplicates(connection: sa.engine.Connection, table: sa.Table, rows: list[dict]) -> None:
    """INSERT ... ON CONFLICT DO NOTHING: repeats of a row already stored are not errors."""
    if not rows:
        return
    dialect = postgresql if connection.dialect.name == "postgresql" else sqlite
    connection.execute(dialect.insert(table).on_conflict_do_nothing(), rows)


def _card_row(record: CardRecord) -> dict:
    return {
        "uuid": record.uuid,
        "service_id": record.service_id,
        "hook": record.hook,
        "topic": record.topic,
        "indicator": record.indicator,
        "hook_instance": record.hook_instance,
        "patient_hash": record.patient_hash,
        "trigger_key": record.trigger_key,
        "issued_at": _utc(record.issued_at),
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


def _sqlite_enforce_foreign_keys(dbapi_connection, _record) -> None:
    """SQLite ignores foreign keys unless asked, per connection."""
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()
