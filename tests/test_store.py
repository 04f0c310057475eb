"""CardStore on SQLite and, when CDS_TEST_POSTGRES_URL is set, on PostgreSQL.

For PostgreSQL run `eval "$(.ci/postgres.sh)"` first; without it those tests are skipped.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from cds_service.errors import BadRequest
from cds_service.store import card_store as card_store_module
from cds_service.store import CardRecord, CardStore, FeedbackEntry
from cds_service.store.models import card_feedback, issued_card, metadata

T0 = datetime(2025, 3, 3, 9, 0, tzinfo=timezone.utc)  # a Monday
PATIENT = "a3f1" * 16  # a salted SHA-256 hex, as the API layer computes it
SERVICE = "mtor-inhibitor-safety"


@pytest.fixture
def store(empty_database_url):
    """A migrated, empty store."""
    url = empty_database_url
    card_store = CardStore.from_url(url)
    card_store.migrate()
    yield card_store
    card_store.close()


def card(uuid: str, topic: str = "mtor-ddi-strong-cyp3a4", *, indicator: str = "warning", service: str = SERVICE,
         patient: str = PATIENT, trigger: str = "MedicationRequest/1", issued_at: datetime = T0) -> CardRecord:
    return CardRecord(
        uuid=uuid, service_id=service, hook="order-sign", topic=topic, indicator=indicator,
        hook_instance="d1577c69-dfbe-44ad-ba6d-3e05e953b2ea", patient_hash=patient, trigger_key=trigger,
        issued_at=issued_at,
    )


def accepted(uuid: str, at: datetime = T0 + timedelta(minutes=1)) -> FeedbackEntry:
    return FeedbackEntry(uuid, "accepted", at, accepted_suggestions=("s-1",))


def overridden(uuid: str, at: datetime = T0 + timedelta(minutes=1), code: str | None = "patient-aware",
               display: str | None = "Patient aware of risk") -> FeedbackEntry:
    return FeedbackEntry(
        uuid, "overridden", at,
        reason_code=code, reason_system="https://example.org/override" if code else None,
        reason_display=display if code else None, user_comment="discussed",
    )


def feedback_rows(store: CardStore) -> int:
    with store.engine.connect() as connection:
        return connection.scalar(sa.select(sa.func.count()).select_from(card_feedback))


def by_topic(store: CardStore, **period) -> dict:
    return {(row.topic, row.indicator): row for row in store.report(**period)}


def test_migrations_build_the_schema_the_models_describe(store):
    store.migrate()  # a second run is a no-op
    with store.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"version_table": "cds_store_version"})
        assert compare_metadata(context, metadata) == []
        assert context.get_current_revision() is not None


def test_cards_and_feedback_round_trip_into_the_report(store):
    store.record_cards([card("c1"), card("c2"), card("c3")])
    store.record_cards([card("c4", "mtor-live-vaccine", indicator="critical")])
    assert store.flush() is True
    store.record_feedback(SERVICE, [accepted("c1"), overridden("c2"), overridden("c4", code=None)])

    rows = by_topic(store)
    ddi = rows[("mtor-ddi-strong-cyp3a4", "warning")]
    assert (ddi.issued, ddi.accepted, ddi.overridden, ddi.no_feedback) == (3, 1, 1, 1)
    assert ddi.override_rate == 0.5
    [reason] = ddi.override_reasons
    assert (reason.code, reason.system, reason.display, reason.count) == (
        "patient-aware", "https://example.org/override", "Patient aware of risk", 1)
    vaccine = rows[("mtor-live-vaccine", "critical")]
    assert (vaccine.issued, vaccine.accepted, vaccine.overridden, vaccine.no_feedback) == (1, 0, 1, 0)
    assert [r.label for r in vaccine.override_reasons] == ["(no reason given)"]
    assert store.counters() == {"cards_written": 4, "cards_dropped": 0, "cards_failed": 0}


def test_repeated_feedback_and_cards_are_idempotent(store):
    store.record_cards([card("c1"), card("c2")])
    store.record_cards([card("c1")])  # a retried write of the same card
    store.flush()
    batch = [accepted("c1"), overridden("c2"), overridden("c2")]
    store.record_feedback(SERVICE, batch)
    store.record_feedback(SERVICE, batch)
    assert feedback_rows(store) == 2
    ddi = by_topic(store)[("mtor-ddi-strong-cyp3a4", "warning")]
    assert (ddi.issued, ddi.accepted, ddi.overridden) == (2, 1, 1)


def test_latest_feedback_on_a_card_decides_its_outcome(store):
    store.record_cards([card("c1")])
    store.flush()
    store.record_feedback(SERVICE, [overridden("c1", at=T0 + timedelta(minutes=5)), accepted("c1", at=T0 + timedelta(minutes=2))])
    ddi = by_topic(store)[("mtor-ddi-strong-cyp3a4", "warning")]
    assert (ddi.issued, ddi.accepted, ddi.overridden, ddi.no_feedback) == (1, 0, 1, 0)
    assert feedback_rows(store) == 2


def test_unknown_card_is_a_bad_request_and_nothing_is_stored(store):
    store.record_cards([card("c1")])
    store.flush()
    with pytest.raises(BadRequest) as raised:
        store.record_feedback(SERVICE, [accepted("c1"), overridden("nope-2"), overridden("nope-1")])
    assert "nope-1, nope-2" in raised.value.message
    assert "c1" not in raised.value.message
    assert feedback_rows(store) == 0


def test_card_issued_by_another_service_is_unknown(store):
    store.record_cards([card("c1", service="other-service")])
    store.flush()
    with pytest.raises(BadRequest, match="c1"):
        store.record_feedback(SERVICE, [accepted("c1")])
    store.record_feedback("other-service", [accepted("c1")])
    assert feedback_rows(store) == 1


def slow_card_writes(monkeypatch, gate: threading.Event, entered: threading.Event | None = None) -> None:
    """Make the background writer wait for ``gate`` before writing cards."""
    real_insert = card_store_module._insert_ignoring_duplicates

    def gated_insert(connection, table, rows):
        if table is issued_card:
            if entered is not None:
                entered.set()
            gate.wait(10)
        return real_insert(connection, table, rows)

    monkeypatch.setattr(card_store_module, "_insert_ignoring_duplicates", gated_insert)


def test_feedback_on_a_card_still_queued_waits_for_the_writer(store, monkeypatch):
    gate = threading.Event()
    slow_card_writes(monkeypatch, gate)
    threading.Timer(0.3, gate.set).start()
    store.record_cards([card("c1")])
    store.record_feedback(SERVICE, [accepted("c1")])  # no flush in between
    assert feedback_rows(store) == 1


def test_record_cards_does_not_block_and_drops_when_the_queue_is_full(store, monkeypatch):
    monkeypatch.setattr(card_store_module, "QUEUE_BATCHES", 1)
    full_store = CardStore(store.engine)
    gate, entered = threading.Event(), threading.Event()
    slow_card_writes(monkeypatch, gate, entered)
    try:
        full_store.record_cards([card("c1")])  # taken by the writer, which then waits
        assert entered.wait(5)
        started = time.monotonic()
        full_store.record_cards([card("c2")])  # fills the queue
        full_store.record_cards([card("c3"), card("c4")])  # no room: dropped
        assert time.monotonic() - started < 0.5
        assert full_store.counters()["cards_dropped"] == 2
    finally:
        gate.set()
    assert full_store.flush() is True
    assert full_store.counters() == {"cards_written": 2, "cards_dropped": 2, "cards_failed": 0}
    assert [row.issued for row in full_store.report()] == [2]
    full_store.close()


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_database_outage_is_counted_not_raised(backend, tmp_path, caplog):
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'no-such-dir' / 'cards.sqlite3'}"
    else:  # needs no server: nothing listens on the port
        url = f"postgresql+psycopg://postgres@127.0.0.1:{closed_port()}/mtor"
    down = CardStore.from_url(url)
    caplog.set_level(logging.INFO, logger="cds_service")
    try:
        down.record_cards([card("c1", patient=PATIENT, trigger="MedicationRequest/secret-7")])
        assert down.flush() is True
        assert down.counters()["cards_failed"] == 1
        assert down.is_healthy() is False
        assert down.overridden_recently(PATIENT, "t", "MedicationRequest/secret-7", T0) is False
    finally:
        down.close()
    assert "could not write 1 card(s)" in caplog.text
    assert PATIENT not in caplog.text and "secret-7" not in caplog.text


def test_healthy_store(store):
    assert store.is_healthy() is True


def test_overridden_recently_needs_same_card_and_a_reason(store):
    store.record_cards([
        card("with-reason", trigger="MedicationRequest/1"),
        card("no-reason", trigger="MedicationRequest/2"),
        card("accepted", trigger="MedicationRequest/3"),
    ])
    store.flush()
    overridden_at = T0 + timedelta(hours=1)
    store.record_feedback(SERVICE, [
        overridden("with-reason", at=overridden_at),
        overridden("no-reason", at=overridden_at, code=None),
        accepted("accepted", at=overridden_at),
    ])
    recently = store.overridden_recently
    assert recently(PATIENT, "mtor-ddi-strong-cyp3a4", "MedicationRequest/1", overridden_at - timedelta(minutes=1))
    # the same moment given in another timezone
    assert recently(PATIENT, "mtor-ddi-strong-cyp3a4", "MedicationRequest/1",
                    (overridden_at - timedelta(minutes=1)).astimezone(timezone(timedelta(hours=-5))))
    assert recently(PATIENT, "mtor-ddi-strong-cyp3a4", "MedicationRequest/1", datetime(2025, 3, 3, 9, 59))  # naive: UTC
    assert not recently(PATIENT, "mtor-ddi-strong-cyp3a4", "MedicationRequest/1", overridden_at + timedelta(minutes=1))
    assert not recently(PATIENT, "mtor-ddi-strong-cyp3a4", "MedicationRequest/2", T0)  # no reason picked
    assert not recently(PATIENT, "mtor-ddi-strong-cyp3a4", "MedicationRequest/3", T0)  # accepted
    assert not recently("b" * 64, "mtor-ddi-strong-cyp3a4", "MedicationRequest/1", T0)  # other patient
    assert not recently(PATIENT, "mtor-live-vaccine", "MedicationRequest/1", T0)  # other topic


def test_report_period_is_by_issue_time(store):
    store.record_cards([card("jan", issued_at=datetime(2025, 1, 15, tzinfo=timezone.utc)),
                        card("feb", issued_at=datetime(2025, 2, 15, tzinfo=timezone.utc)),
                        card("mar", issued_at=datetime(2025, 3, 1, tzinfo=timezone.utc))])
    store.flush()
    store.record_feedback(SERVICE, [overridden("feb"), accepted("jan")])
    feb = datetime(2025, 2, 1, tzinfo=timezone.utc)
    mar = datetime(2025, 3, 1, tzinfo=timezone.utc)
    [only_feb] = store.report(since=feb, until=mar)
    assert (only_feb.issued, only_feb.overridden, only_feb.accepted) == (1, 1, 0)
    [from_feb] = store.report(since=feb, until=None)
    assert from_feb.issued == 2
    [before_feb] = store.report(since=None, until=datetime(2025, 2, 1))  # naive means UTC
    assert (before_feb.issued, before_feb.accepted) == (1, 1)
    assert store.report(since=datetime(2026, 1, 1, tzinfo=timezone.utc), until=None) == []


def test_weekly_outcomes_bucket_by_monday(store):
    store.record_cards([
        card("mon", issued_at=T0),
        card("sun", issued_at=T0 + timedelta(days=6, hours=14)),
        card("next-mon", issued_at=T0 + timedelta(days=7)),
    ])
    store.flush()
    store.record_feedback(SERVICE, [overridden("mon"), accepted("sun")])
    weeks = [(w.week.isoformat(), w.issued, w.accepted, w.overridden, w.override_rate) for w in store.weekly_outcomes()]
    assert weeks == [("2025-03-03", 2, 1, 1, 0.5), ("2025-03-10", 1, 0, 0, None)]


def test_default_url_is_a_sqlite_file_in_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    default = CardStore.from_url(None)
    try:
        default.migrate()
        assert (tmp_path / "mtor-cds.sqlite3").is_file()
    finally:
        default.close()


def test_plain_postgresql_urls_use_psycopg_and_other_backends_are_refused():
    plain = CardStore.from_url("postgresql://u@127.0.0.1:1/db")
    assert plain.engine.url.drivername == "postgresql+psycopg"
    plain.engine.dispose()
    with pytest.raises(ValueError, match="sqlite or postgresql"):
        CardStore.from_url("mysql://u@127.0.0.1/db")
