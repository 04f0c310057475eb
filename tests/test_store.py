"""CardStore on SQLite and, when CDS_TEST_POSTGRES_URL is set, on PostgreSQL.

For PostgreSQL run `eval "$(.ci/postgres.sh)"` first; without it those tests are skipped.
"""

from __future__ import annotations

import dataclasses
import json
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
from cds_service.store import CardRecord, CardStore, FeedbackEntry
from cds_service.store import card_store as card_store_module
from cds_service.store.models import card_feedback, issued_card, metadata

T0 = datetime(2025, 3, 3, 9, 0, tzinfo=timezone.utc)  # a Monday
PATIENT = "a3f1" * 16  # a salted SHA-256 hex, as the API layer computes it
SERVICE = "mtor-inhibitor-safety"
EHR = "https://ehr.example.org/jwt-issuer"
FHIR = "https://ehr.example.org/fhir"


@pytest.fixture
def store(empty_database_url):
    """A migrated, empty store."""
    url = empty_database_url
    card_store = CardStore.from_url(url)
    card_store.migrate()
    yield card_store
    card_store.close()


def card(uuid: str, topic: str = "mtor-ddi-strong-cyp3a4", *, indicator: str = "warning", service: str = SERVICE,
         patient: str = PATIENT, trigger: str = "MedicationRequest/1", issued_at: datetime = T0,
         issuer: str = EHR, fhir_server: str = FHIR) -> CardRecord:
    return CardRecord(
        uuid=uuid, service_id=service, hook="order-sign", topic=topic, indicator=indicator,
        hook_instance="d1577c69-dfbe-44ad-ba6d-3e05e953b2ea", patient_hash=patient, trigger_key=trigger,
        issued_at=issued_at, issuer=issuer, fhir_server=fhir_server, topic_display="Strong CYP3A4 interaction",
        suggestion_ids=("s-1", "s-2"), override_reasons=(("https://example.org/override", "patient-aware"),),
    )


def accepted(uuid: str, at: datetime = T0 + timedelta(minutes=1), suggestion: str = "s-1") -> FeedbackEntry:
    return FeedbackEntry(uuid, "accepted", at, accepted_suggestions=(suggestion,))


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


def outcomes(store: CardStore) -> dict[str, str]:
    """Each card's latest outcome ("" without feedback)."""
    with store.engine.connect() as connection:
        rows = connection.execute(sa.select(card_feedback.c.card_uuid, card_feedback.c.outcome)
                                  .order_by(card_feedback.c.outcome_timestamp))
        return dict(rows.all())


def test_migrations_build_the_schema_the_models_describe(store):
    store.migrate()  # a second run is a no-op
    with store.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"version_table": "cds_store_version"})
        assert compare_metadata(context, metadata) == []
        assert context.get_current_revision() is not None


def stored_cards(store: CardStore) -> dict[str, dict]:
    with store.engine.connect() as connection:
        return {row.uuid: row._asdict() for row in connection.execute(sa.select(issued_card))}


def test_cards_round_trip_with_their_caller_and_offer(store):
    store.record_cards([card("c1"), card("c2")])
    store.record_suppressed([card("c3")])
    assert store.flush() is True
    rows = stored_cards(store)
    assert {uuid: row["suppressed"] for uuid, row in rows.items()} == {"c1": False, "c2": False, "c3": True}
    c1 = rows["c1"]
    assert (c1["issuer"], c1["fhir_server"], c1["topic_display"]) == (EHR, FHIR, "Strong CYP3A4 interaction")
    assert json.loads(c1["offered_suggestions"]) == ["s-1", "s-2"]
    assert json.loads(c1["offered_override_reasons"]) == [["https://example.org/override", "patient-aware"]]
    assert c1["issued_at"] == T0
    assert store.counters() == {"cards_written": 3, "cards_dropped": 0, "cards_failed": 0}


def test_repeated_feedback_and_cards_are_idempotent(store):
    store.record_cards([card("c1"), card("c2")])
    store.record_cards([card("c1")])  # a retried write of the same card
    store.flush()
    batch = [accepted("c1"), overridden("c2"), overridden("c2")]
    store.record_feedback(SERVICE, EHR, batch)
    store.record_feedback(SERVICE, EHR, batch)
    assert feedback_rows(store) == 2
    assert len(stored_cards(store)) == 2
    assert outcomes(store) == {"c1": "accepted", "c2": "overridden"}


def test_unknown_card_is_a_bad_request_and_nothing_is_stored(store):
    store.record_cards([card("c1")])
    store.flush()
    with pytest.raises(BadRequest) as raised:
        store.record_feedback(SERVICE, EHR, [accepted("c1"), overridden("nope-2"), overridden("nope-1")])
    assert "nope-1, nope-2" in raised.value.message
    assert "c1" not in raised.value.message
    assert feedback_rows(store) == 0


def test_card_issued_by_another_service_is_unknown(store):
    store.record_cards([card("c1", service="other-service")])
    store.flush()
    with pytest.raises(BadRequest, match="c1"):
        store.record_feedback(SERVICE, EHR, [accepted("c1")])
    store.record_feedback("other-service", EHR, [accepted("c1")])
    assert feedback_rows(store) == 1


def test_feedback_is_taken_only_from_the_caller_the_card_was_sent_to(store):
    store.record_cards([card("to-ehr"), card("no-jwt", issuer="")])
    store.record_suppressed([card("held-back")])
    store.flush()
    for issuer, uuid in [("https://other-ehr.example.org", "to-ehr"), ("", "to-ehr"), (EHR, "no-jwt"), (EHR, "held-back")]:
        with pytest.raises(BadRequest, match="did not send to this caller") as raised:
            store.record_feedback(SERVICE, issuer, [accepted(uuid)])
        assert uuid in raised.value.message
    assert feedback_rows(store) == 0
    store.record_feedback(SERVICE, EHR, [accepted("to-ehr")])
    store.record_feedback(SERVICE, "", [overridden("no-jwt")])
    assert outcomes(store) == {"to-ehr": "accepted", "no-jwt": "overridden"}


@pytest.mark.parametrize(("entry", "message"), [
    (accepted("c1", suggestion="s-9"), r"feedback\[1\]\.acceptedSuggestions names suggestion\(s\) the card did not offer: s-9"),
    (overridden("c1", code="made-up"), r"feedback\[1\]\.overrideReason\.reason is not one of the card's overrideReasons"),
])
def test_feedback_may_name_only_what_the_card_offered(store, entry, message):
    store.record_cards([card("c1")])
    store.flush()
    with pytest.raises(BadRequest, match=message):
        store.record_feedback(SERVICE, EHR, [accepted("c1"), entry])
    assert feedback_rows(store) == 0


def test_a_reason_code_offered_under_another_system_is_refused(store):
    store.record_cards([card("c1")])
    store.flush()
    entry = FeedbackEntry("c1", "overridden", T0, reason_code="patient-aware", reason_system="https://evil.example/o")
    with pytest.raises(BadRequest, match="not one of the card's overrideReasons"):
        store.record_feedback(SERVICE, EHR, [entry])


def test_refusals_never_echo_large_input(store):
    huge = ["x" * 90 + str(n) for n in range(50)]
    with pytest.raises(BadRequest) as raised:
        store.record_feedback(SERVICE, EHR, [accepted(uuid) for uuid in huge])
    assert len(raised.value.message) < 600
    assert raised.value.message.endswith("and 45 more")


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
    store.record_feedback(SERVICE, EHR, [accepted("c1")])  # no flush in between
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
    assert sorted(stored_cards(full_store)) == ["c1", "c2"]
    full_store.close()


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_database_outage_is_counted_not_raised(backend, tmp_path, caplog):
    # PostgreSQL needs no server here: nothing listens on the port
    sqlite_url = f"sqlite:///{tmp_path / 'no-such-dir' / 'cards.sqlite3'}"
    url = sqlite_url if backend == "sqlite" else f"postgresql+psycopg://postgres@127.0.0.1:{closed_port()}/mtor"
    down = CardStore.from_url(url)
    caplog.set_level(logging.INFO, logger="cds_service")
    try:
        down.record_cards([card("c1", patient=PATIENT, trigger="MedicationRequest/secret-7")])
        assert down.flush() is True
        assert down.counters()["cards_failed"] == 1
        assert down.is_healthy() is False
        assert down.overridden_recently(card("c1", trigger="MedicationRequest/secret-7"), T0) is False
    finally:
        down.close()
    assert "could not write 1 card(s)" in caplog.text
    assert PATIENT not in caplog.text and "secret-7" not in caplog.text


def test_healthy_store(store):
    assert store.is_healthy() is True


def test_overridden_recently_needs_same_card_caller_and_a_reason(store):
    store.record_cards([
        card("with-reason", trigger="MedicationRequest/1"),
        card("no-reason", trigger="MedicationRequest/2"),
        card("accepted", trigger="MedicationRequest/3"),
    ])
    store.flush()
    overridden_at = T0 + timedelta(hours=1)
    store.record_feedback(SERVICE, EHR, [
        overridden("with-reason", at=overridden_at),
        overridden("no-reason", at=overridden_at, code=None),
        accepted("accepted", at=overridden_at),
    ])

    def recently(since, **same_card_but):
        return store.overridden_recently(card("next-call", **same_card_but), since)

    just_before = overridden_at - timedelta(minutes=1)
    assert recently(just_before)
    assert recently(just_before.astimezone(timezone(timedelta(hours=-5))))  # the same moment in another timezone
    assert recently(datetime(2025, 3, 3, 9, 59))  # naive: UTC
    assert not recently(overridden_at + timedelta(minutes=1))
    assert not recently(T0, trigger="MedicationRequest/2")  # no reason picked
    assert not recently(T0, trigger="MedicationRequest/3")  # accepted
    assert not recently(T0, patient="b" * 64)  # other patient
    assert not recently(T0, topic="mtor-live-vaccine")  # other topic
    # another EHR, or the same EHR's other FHIR server (where the same patient id is another patient)
    assert not recently(T0, issuer="https://other-ehr.example.org")
    assert not recently(T0, fhir_server="https://ehr.example.org/other-fhir")


def test_suppression_window_also_runs_from_when_the_feedback_was_received(store):
    """However late an outcomeTimestamp says it is, feedback cannot suppress beyond the window after its receipt."""
    store.record_cards([card("c1")])
    store.flush()
    far_future = datetime.now(timezone.utc) + timedelta(days=3650)
    store.record_feedback(SERVICE, EHR, [overridden("c1", at=far_future)])  # as if stored before parsing refused it
    assert store.overridden_recently(card("next"), datetime.now(timezone.utc) - timedelta(hours=1))
    assert not store.overridden_recently(card("next"), datetime.now(timezone.utc) + timedelta(seconds=1))


def test_upgrade_keeps_cards_stored_before_callers_were_recorded(empty_database_url):
    """Revision 0003 on a database holding 0002-era cards: they belong to the no-JWT caller and offered nothing."""
    from alembic import command
    from alembic.config import Config

    old = CardStore.from_url(empty_database_url)
    config = Config()
    config.set_main_option("script_location", str(card_store_module.MIGRATIONS_DIR))
    with old.engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0002")
        connection.execute(sa.text(
            "INSERT INTO issued_card (uuid, service_id, hook, topic, indicator, hook_instance, patient_hash, "
            "trigger_key, issued_at) VALUES ('old', :service, 'order-sign', 'lipids', 'info', 'h', :patient, 'k', :at)"
        ), {"service": SERVICE, "patient": PATIENT, "at": T0.replace(tzinfo=None)})
    old.migrate()
    row = stored_cards(old)["old"]
    assert (row["issuer"], row["fhir_server"], row["suppressed"], row["offered_suggestions"]) == ("", "", False, "[]")
    old.record_feedback(SERVICE, "", [overridden("old", code=None)])
    with pytest.raises(BadRequest, match="did not offer"):
        old.record_feedback(SERVICE, "", [accepted("old")])
    old.close()


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


def test_sqlite_store_uses_a_write_ahead_log_without_syncing_each_commit(tmp_path):
    """Each hook call's cards are a commit: in rollback-journal mode that was three fdatasync calls per call."""
    sqlite_store = CardStore.from_url(f"sqlite:///{tmp_path / 'cards.sqlite3'}")
    sqlite_store.migrate()
    try:
        with sqlite_store.engine.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert connection.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL
            assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    finally:
        sqlite_store.close()


def test_cards_of_calls_close_together_are_written_in_one_transaction(store):
    commits: list[int] = []
    sa.event.listen(store.engine, "commit", lambda connection: commits.append(1))
    for n in range(5):  # five hook calls within the writer's delay
        store.record_cards([card(f"burst-{n}")])
    assert store.flush() is True
    assert sorted(stored_cards(store)) == [f"burst-{n}" for n in range(5)]
    assert len(commits) == 1


def test_closing_the_store_writes_what_is_queued_without_waiting_for_the_delay(store, monkeypatch):
    monkeypatch.setattr(card_store_module, "WRITE_DELAY_S", 30.0)
    started = time.monotonic()
    store.record_cards([card("last-call")])
    store.close()
    assert time.monotonic() - started < 5
    reopened = CardStore(store.engine)
    assert list(stored_cards(reopened)) == ["last-call"]


def test_the_readme_states_the_write_delay_and_the_sqlite_journal():
    from pathlib import Path

    readme = " ".join((Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8").split())
    assert card_store_module.WRITE_DELAY_S == 0.1 and card_store_module.UNKNOWN_CARD_WAIT_S == 0.25
    assert "the cards of each 100 ms in one transaction (a worker that is recycled or stopped writes its queued cards first)" in readme
    assert "feedback naming a card not stored yet (issued by another worker a moment ago) waits 0.25 s once" in readme
    assert "SQLite runs in write-ahead-log mode: back up the database file with its `-wal` and `-shm` files" in readme


def test_feedback_on_a_card_another_worker_is_still_writing_waits_for_it(store, monkeypatch):
    """Two worker processes share the database: feedback reaching one of them for a card the other issued a moment
    ago (still in that writer's delay) is accepted, not refused as unknown."""
    other_worker = CardStore(store.engine)
    try:
        other_worker.record_cards([card("from-the-other-worker")])
        store.record_feedback(SERVICE, EHR, [accepted("from-the-other-worker")])  # this worker has nothing pending
        assert feedback_rows(store) == 1
    finally:
        other_worker.close()


def test_feedback_on_a_card_never_issued_is_refused_after_one_short_wait(store):
    started = time.monotonic()
    with pytest.raises(BadRequest, match="did not send"):
        store.record_feedback(SERVICE, EHR, [accepted("never-issued")])
    assert card_store_module.UNKNOWN_CARD_WAIT_S <= time.monotonic() - started < 1.0
    assert feedback_rows(store) == 0


def test_the_feedback_rules_state_the_wait_for_cards_not_stored_yet():
    from pathlib import Path

    text = " ".join((Path(__file__).resolve().parent.parent / "docs" / "feedback.md").read_text(encoding="utf-8").split())
    assert "the cards of each 100 ms in one transaction" in text and "waits 0.25 s once before it is refused" in text
    assert card_store_module.UNKNOWN_CARD_WAIT_S == 0.25


def test_a_nul_character_in_caller_text_loses_no_card_and_is_no_500(store):
    """PostgreSQL refuses NUL in text: one hookInstance, FHIR id or fhirServer carrying it failed the writer's whole
    batch (the other calls' cards lost, their feedback then refused), and a feedback entry carrying it was a 500."""
    nul_card = dataclasses.replace(
        card("nul-1", trigger="MedicationRequest/a\x00b", fhir_server=FHIR + "\x00"), hook_instance="hi\x00"
    )
    store.record_cards([card("clean-1")])
    store.record_cards([nul_card])  # same batch as clean-1
    assert store.flush() is True
    rows = stored_cards(store)
    assert sorted(rows) == ["clean-1", "nul-1"]
    assert store.counters()["cards_failed"] == 0
    assert "\x00" not in json.dumps(rows["nul-1"], default=str)
    assert rows["nul-1"]["hook_instance"] == "hi\ufffd"
    with pytest.raises(BadRequest):
        store.record_feedback(SERVICE, EHR, [overridden("clean-1\x00")])
    entry = dataclasses.replace(overridden("clean-1"), user_comment="held\x00", reason_display="aware\x00")
    store.record_feedback(SERVICE, EHR, [entry])
    with store.engine.connect() as connection:
        assert connection.execute(sa.select(card_feedback.c.user_comment)).scalar_one() == "held\ufffd"
    # suppression still finds the card it stored (its key is compared as stored)
    assert store.overridden_recently(dataclasses.replace(nul_card, uuid="nul-2"), T0) is False
    store.record_feedback(SERVICE, EHR, [overridden("nul-1")])
    assert store.overridden_recently(dataclasses.replace(nul_card, uuid="nul-2"), T0) is True


def card_uuids(store: CardStore) -> set[str]:
    with store.engine.connect() as connection:
        return set(connection.scalars(sa.select(issued_card.c.uuid)))


def test_cards_older_than_the_cutoff_are_deleted_with_their_feedback_in_batches(store, monkeypatch):
    monkeypatch.setattr(card_store_module, "PURGE_BATCH", 2)  # several transactions
    old = [card(f"old-{i}", issued_at=T0 - timedelta(days=400 + i)) for i in range(5)]
    store.record_cards([*old, card("new", issued_at=T0)])
    store.flush()
    store.record_feedback(SERVICE, EHR, [accepted("old-0"), accepted("new")])
    assert store.purge_older_than(T0 - timedelta(days=365)) == 5
    assert card_uuids(store) == {"new"} and outcomes(store) == {"new": "accepted"}
    assert store.purge_older_than(T0 - timedelta(days=365)) == 0


def test_the_writer_deletes_cards_past_the_retention_once_an_interval(empty_database_url):
    """CDS_CARD_RETENTION_DAYS: an issued card is a record about a patient (by salted hash); it is not kept for ever."""
    store = CardStore.from_url(empty_database_url, retention_days=30)
    store.migrate()
    try:
        now = datetime.now(timezone.utc)
        store.record_cards([card("ancient", issued_at=now - timedelta(days=31)), card("recent", issued_at=now - timedelta(days=29))])
        store.flush()
        deadline = time.monotonic() + 5
        while card_uuids(store) != {"recent"} and time.monotonic() < deadline:  # the purge follows the write
            time.sleep(0.02)
        assert card_uuids(store) == {"recent"}  # the writer's first write also purged
        store.record_cards([card("ancient-2", issued_at=now - timedelta(days=40))])
        store.flush()
        time.sleep(0.2)
        assert card_uuids(store) == {"recent", "ancient-2"}  # not again before PURGE_INTERVAL_S
    finally:
        store.close()
    keep = CardStore.from_url(empty_database_url)  # 0: kept for ever
    try:
        keep.record_cards([card("ancient-3", issued_at=now - timedelta(days=4000))])
        keep.flush()
        assert "ancient-3" in card_uuids(keep)
    finally:
        keep.close()


def test_the_retention_default_and_its_documentation():
    from pathlib import Path

    from cds_service.settings import Settings, SettingsError

    assert Settings().card_retention_days == 365 and Settings.from_env({"CDS_CARD_RETENTION_DAYS": "0"}).card_retention_days == 0
    with pytest.raises(SettingsError, match="CDS_CARD_RETENTION_DAYS"):
        Settings.from_env({"CDS_CARD_RETENTION_DAYS": "-1"})
    with pytest.raises(SettingsError, match="CDS_SUPPRESS_OVERRIDDEN_HOURS"):
        Settings.from_env({"CDS_CARD_RETENTION_DAYS": "1", "CDS_SUPPRESS_OVERRIDDEN_HOURS": "25"})
    docs = " ".join((Path(__file__).resolve().parent.parent / "docs" / "feedback.md").read_text(encoding="utf-8").split())
    assert "kept for `CDS_CARD_RETENTION_DAYS` (365 days by default; 0 keeps them for ever)" in docs
    assert f"at most once an hour, in transactions of at most {card_store_module.PURGE_BATCH:,} cards" in docs
    assert card_store_module.PURGE_INTERVAL_S == 3600
