"""The kit against a real FHIR server (SEKMET), as an integrator uses it: `mtor-cds fixtures load --server-ids`
lets the server choose every id and moves every date to today; the service, on the real clock, then fetches
each patient by the id the server chose (the draft orders sent today, for that patient) and answers the cards
scenarios.json expects."""

from __future__ import annotations

import contextlib
import io
import re

import pytest
import requests

from cds_service import create_app
from cds_service.cli import main
from cds_service.devkit import dates
from cds_service.devkit.fixtures import FIXTURE_ID_SYSTEM
from cds_service.devkit.hook_request import build_hook_request
from conftest import FIXTURES, SCENARIOS, SERVICE_FOR_HOOK, load_fixture

LOADED = re.compile(r"^loaded (\S+): Patient/(\S+)$")


@pytest.fixture(scope="module")
def loaded_with_server_ids(sekmet):
    """{fixture file: the id SEKMET chose for its patient}, after loading twice (the second load updates)."""
    outputs = []
    for _ in range(2):
        printed = io.StringIO()  # capsys is per test; this loads once per module
        with contextlib.redirect_stdout(printed):
            assert main(["fixtures", "load", "--fhir", sekmet, "--server-ids"]) == 0
        outputs.append(printed.getvalue())
    first, second = ({m.group(1): m.group(2) for line in out.splitlines() if (m := LOADED.match(line))} for out in outputs)
    fixtures = {name for name in first if not name.startswith("synthea/")}  # Synthea bundles are POSTed as they are
    assert len(fixtures) == len(list(FIXTURES.glob("*-*.json")))
    assert {n: first[n] for n in fixtures} == {n: second[n] for n in fixtures}  # conditional updates: the same ids
    return first


@pytest.fixture
def real_clock_service(sekmet, tmp_path):
    app = create_app(allowed_fhir_servers=(sekmet,), require_jwt=False, fhir_deadline_s=10.0, fhir_without_token=True,
                     database_url=f"sqlite:///{tmp_path}/cards.sqlite3")
    return app.test_client()


def test_the_server_chose_the_ids_and_holds_each_patient_once(sekmet, loaded_with_server_ids):
    fixture_patient = load_fixture("fires-surgery-planned-patient-view.json")["context"]["patientId"]
    server_id = loaded_with_server_ids["fires-surgery-planned-patient-view.json"]
    assert server_id != fixture_patient
    found = requests.get(f"{sekmet}/Patient", params={"identifier": f"{FIXTURE_ID_SYSTEM}|Patient/{fixture_patient}"},
                         timeout=10).json()
    assert [e["resource"]["id"] for e in found.get("entry", [])] == [server_id]


def drafts_for(fixture: dict, patient_id: str) -> dict | None:
    """The fixture's draft orders, as the EHR would send them today for the patient the server holds."""
    drafts = fixture["context"].get("draftOrders")
    if drafts is None:
        return None
    moved = dates.shift_dates(drafts, dates.days_to(dates.today(), dates.reference_day(FIXTURES)))
    for entry in moved["entry"]:
        entry["resource"]["subject"] = {"reference": f"Patient/{patient_id}"}
    return moved


def appointments_for(fixture: dict, patient_id: str, sekmet: str) -> dict | None:
    """appointment-book: the fixture's appointments being booked, as the EHR would send them today, pointing at the
    patient and the ServiceRequests by the ids the server holds them under."""
    booking = fixture["context"].get("appointments")
    if booking is None:
        return None
    moved = dates.shift_dates(booking, dates.days_to(dates.today(), dates.reference_day(FIXTURES)))
    for entry in moved["entry"]:
        appointment = entry["resource"]
        for participant in appointment.get("participant", []):
            if participant["actor"]["reference"].startswith("Patient/"):
                participant["actor"]["reference"] = f"Patient/{patient_id}"
        for order in appointment.get("basedOn", []):
            found = requests.get(f"{sekmet}/ServiceRequest", params={"identifier": f"{FIXTURE_ID_SYSTEM}|{order['reference']}"},
                                 timeout=10).json()
            order["reference"] = f"ServiceRequest/{found['entry'][0]['resource']['id']}"
    return moved


@pytest.mark.parametrize("scenario", SCENARIOS["scenarios"], ids=lambda s: s["file"])
def test_patients_loaded_with_server_ids_answer_as_the_table_says_today(real_clock_service, sekmet, loaded_with_server_ids, scenario):
    fixture = load_fixture(scenario["file"])
    patient_id = loaded_with_server_ids[scenario["file"]]
    body = build_hook_request(fixture["hook"], patient_id, fhir_server=sekmet, draft_orders=drafts_for(fixture, patient_id),
                              selections=fixture["context"].get("selections"), appointments=appointments_for(fixture, patient_id, sekmet))
    response = real_clock_service.post(f"/cds-services/{SERVICE_FOR_HOOK[fixture['hook']]}", json=body)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert [c["source"]["topic"]["code"] for c in response.get_json()["cards"]] == scenario["expect_topics"]
    if scenario["expect_indicator"]:
        assert response.get_json()["cards"][0]["indicator"] == scenario["expect_indicator"]


def test_cli_call_for_an_unknown_patient_on_sekmet_says_so(sekmet, capsys):
    code = main(["call", "patient-view", "--patient", "pt-does-not-exist", "--fhir", sekmet, "--prefetch"])
    captured = capsys.readouterr()
    assert (code, captured.out) == (1, "")
    assert "the FHIR server has no Patient/pt-does-not-exist (HTTP 404" in captured.err
