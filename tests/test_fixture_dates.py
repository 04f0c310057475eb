"""Fixtures that never go stale: every date moves by the same number of days, so each fixture gives its
documented cards on any day, with the service on the real clock."""

from __future__ import annotations

from datetime import date, timedelta

import pytest

from cds_assertions import topics_of
from cds_service import create_app
from cds_service.cli import main
from cds_service.devkit import dates
from conftest import FIXTURE_NOW, FIXTURES, SCENARIOS, SERVICE_FOR_HOOK, load_fixture


@pytest.fixture
def real_clock_client(tmp_path):
    """The service as it runs: no pinned clock."""
    app = create_app(require_jwt=False, allowed_fhir_servers=("https://ehr.example.org/fhir",), fhir_deadline_s=3.0,
                     database_url=f"sqlite:///{tmp_path}/cards.sqlite3")
    return app.test_client()


def test_the_fixture_set_names_the_day_it_was_written_for():
    assert dates.reference_day(FIXTURES) == FIXTURE_NOW.date()
    assert dates.reference_day(FIXTURES / "fires-surgery-planned-patient-view.json") == FIXTURE_NOW.date()
    assert dates.reference_day(next((FIXTURES / "synthea").glob("*.json"))) == FIXTURE_NOW.date()


def test_a_file_outside_a_fixture_set_has_no_reference_day(tmp_path):
    (tmp_path / "patient.json").write_text("{}")
    assert dates.reference_day(tmp_path / "patient.json") is None
    assert dates.days_to(date(2030, 1, 1), None) == 0


@pytest.mark.parametrize("scenario", SCENARIOS["scenarios"], ids=lambda s: s["file"])
def test_every_scenario_answers_as_the_table_says_today_on_the_real_clock(real_clock_client, scenario):
    shift = dates.days_to(dates.today(), dates.reference_day(FIXTURES))
    body = dates.shift_dates(load_fixture(scenario["file"]), shift)
    response = real_clock_client.post(f"/cds-services/{SERVICE_FOR_HOOK[body['hook']]}", json=body)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert topics_of(response.get_json()) == scenario["expect_topics"]
    if scenario["expect_indicator"]:
        assert response.get_json()["cards"][0]["indicator"] == scenario["expect_indicator"]


@pytest.mark.parametrize(("days", "hour", "minute"), [(-400, 0, 1), (1, 23, 59), (365 * 3 + 1, 6, 0)])
@pytest.mark.parametrize("scenario", SCENARIOS["scenarios"], ids=lambda s: s["file"])
def test_every_scenario_answers_the_same_on_any_day_at_any_time(app, scenario, days, hour, minute):
    """The app's clock `days` after the fixtures' day, at any time of that day (dates move by whole days), the
    fixture moved by as many days: the same cards."""
    app.extensions["mtor_cds"].clock = lambda: FIXTURE_NOW.replace(hour=hour, minute=minute) + timedelta(days=days)
    body = dates.shift_dates(load_fixture(scenario["file"]), days)
    response = app.test_client().post(f"/cds-services/{SERVICE_FOR_HOOK[body['hook']]}", json=body)
    assert topics_of(response.get_json()) == scenario["expect_topics"]


def test_without_the_shift_a_fixture_goes_stale(app):
    """Why the shift exists: a year later, the surgery planned in 4 days is long past and the card is gone."""
    app.extensions["mtor_cds"].clock = lambda: FIXTURE_NOW + timedelta(days=365)
    body = load_fixture("fires-surgery-planned-patient-view.json")
    assert "surgery-timing" not in topics_of(app.test_client().post("/cds-services/mtor-safety-patient-view", json=body).get_json())


def test_every_date_form_moves_and_nothing_else_does():
    document = {
        "birthDate": "1990-02-28",
        "effectiveDateTime": "2026-11-18T08:30:00Z",
        "issued": "2026-11-18T09:00:00.123+01:00",
        "period": {"start": "2024-12-31T23:59:59-05:00", "end": "2024-12-31"},
        "partial": ["2026", "2026-11"],
        "notDates": ["pt-2026-11-18", "2026-11-18 08:30", "2026-02-30", "2026-11-18T08", 20261118],
        "contained": [{"resourceType": "Medication", "id": "m", "batch": {"expirationDate": "2027-01-31"}}],
    }
    moved = dates.shift_dates(document, 1)
    assert moved["birthDate"] == "1990-03-01"
    assert moved["effectiveDateTime"] == "2026-11-19T08:30:00Z"
    assert moved["issued"] == "2026-11-19T09:00:00.123+01:00"
    assert moved["period"] == {"start": "2025-01-01T23:59:59-05:00", "end": "2025-01-01"}
    assert moved["partial"] == document["partial"]
    assert moved["notDates"] == document["notDates"]
    assert moved["contained"][0]["batch"]["expirationDate"] == "2027-02-01"
    assert document["birthDate"] == "1990-02-28"  # the original is not changed
    assert dates.shift_dates(document, 0) == document


def test_call_moves_a_fixture_to_today_by_default(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("CDS_REQUIRE_JWT", "false")
    monkeypatch.setenv("CDS_DATABASE_URL", f"sqlite:///{tmp_path}/cards.sqlite3")
    surgery = str(FIXTURES / "fires-surgery-planned-patient-view.json")
    code = main(["call", "patient-view", "--patient", surgery])  # the service in this process: the real clock
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "topic: surgery-timing" in captured.out
    shift = (dates.today() - FIXTURE_NOW.date()).days
    assert (f"dates moved by {shift:+d} days" in captured.err) is (shift != 0)


def test_call_as_of_another_day_moves_the_fixture_there(capsys, monkeypatch, tmp_path):
    """The service's real clock and a fixture moved to 60 days ago: the surgery "in 4 days" is long past."""
    monkeypatch.setenv("CDS_REQUIRE_JWT", "false")
    monkeypatch.setenv("CDS_DATABASE_URL", f"sqlite:///{tmp_path}/cards.sqlite3")
    surgery = str(FIXTURES / "fires-surgery-planned-patient-view.json")
    long_ago = (dates.today() - timedelta(days=60)).isoformat()
    code = main(["call", "patient-view", "--patient", surgery, "--as-of", long_ago, "--json"])
    out = capsys.readouterr().out
    assert code == 0
    assert "surgery-timing" not in out


def test_as_of_refuses_a_file_outside_a_fixture_set(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("CDS_REQUIRE_JWT", "false")
    (tmp_path / "mine.json").write_text((FIXTURES / "fires-surgery-planned-patient-view.json").read_text())
    code = main(["call", "patient-view", "--patient", str(tmp_path / "mine.json"), "--as-of", "2027-01-01"])
    assert code == 2
    assert "--as-of moves the dates of fixtures only" in capsys.readouterr().err


def test_as_of_refuses_a_patient_on_a_fhir_server(capsys):
    code = main(["call", "patient-view", "--patient", "pt-1", "--fhir", "https://fhir.test/r4", "--as-of", "2027-01-01"])
    assert code == 2
    assert "--as-of moves the dates of fixture files" in capsys.readouterr().err
