"""The appointment-book hook (issue 16) end to end through the Flask client: discovery, validation, the surgery-timing
card for a surgical appointment being booked, quiet for everything else, and the card text (issue 13)."""

from __future__ import annotations

import json
import re
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import responses
from fhir.resources.R4B.task import Task

from cds_assertions import assert_no_empty_values, assert_valid_cds_response, topics_of
from conftest import FIXTURES, load_fixture
from snapshots import (
    SNOMED,
    SURGICAL_PROCEDURE,
    appointment,
    coding,
    concept,
    condition,
    everolimus,
    hook_request,
    make_app,
    med,
    ref,
    service_request,
    sirolimus,
)

SERVICE = "/cds-services/mtor-safety-appointment-book"
FHIR = "https://ehr.example.org/fhir"
SURGERY_TYPE = coding("http://terminology.hl7.org/CodeSystem/service-type", "221", "Surgery - General")
LAM = ("http://hl7.org/fhir/sid/icd-10-cm", "J84.81", "Lymphangioleiomyomatosis")
EXAMPLES = Path(__file__).parent / "spec_examples"
LINK = re.compile(r"(?<!\\)\]\((https?://[^)]+)\)")  # a Markdown link: an escaped "\]" is none


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    return make_app(tmp_path_factory.mktemp("app"))


def surgical(in_days: int, status: str = "proposed", **fields) -> dict:
    """An Appointment (proposed, unless told) coded as general surgery."""
    return appointment("Laparoscopic cholecystectomy", in_days, status=status,
                       serviceType=[concept("Surgery - General", SURGERY_TYPE)], **fields)


def book(client, *booking, medications=None, **resources):
    body = hook_request("appointment-book", medications=[everolimus()] if medications is None else medications,
                        booking=booking, **resources)
    return client.post(SERVICE, json=body)


def cards_of(response) -> list[dict]:
    assert response.status_code == 200, response.get_data(as_text=True)
    body = response.get_json()
    assert_valid_cds_response(body)
    return body["cards"]


def surgery_card(response) -> dict:
    [card] = [c for c in cards_of(response) if c["source"]["topic"]["code"] == "surgery-timing"]
    return card


# --- discovery ---------------------------------------------------------------------------------


def test_discovery_lists_the_appointment_book_service_with_its_prefetch(client):
    services = {s["id"]: s for s in client.get("/cds-services").get_json()["services"]}
    service = services["mtor-safety-appointment-book"]
    assert service["hook"] == "appointment-book" and service["title"] and service["description"]
    assert {"medications", "serviceRequests", "appointments", "conditions"} <= set(service["prefetch"])
    assert all("{{context.patientId}}" in t for t in service["prefetch"].values())
    assert_no_empty_values(service)


# --- fires -------------------------------------------------------------------------------------


def test_surgical_appointment_being_booked_names_the_date_the_last_dose_and_the_restart(client):
    card = surgery_card(book(client, surgical(12)))  # NOW is 23 Nov: surgery on 5 Dec
    assert card["indicator"] == "warning"
    assert card["summary"] == "Surgery on 5 Dec: last everolimus dose 27 Nov, restart no earlier than 19 Dec"
    assert "Last dose on **27 Nov**; hold from 28 Nov (at least 7 days" in card["detail"]
    assert "Restart no earlier than **19 Dec** (14 days after major surgery)" in card["detail"]


def test_a_waitlisted_surgery_with_only_its_requested_window_is_dated_by_its_earliest_day(client):
    """FHIR R4 (invariant app-3): a proposed or waitlisted Appointment may carry only requestedPeriod, no start."""
    waiting = surgical(12, status="waitlist")
    waiting["requestedPeriod"] = [{"start": waiting.pop("start"), "end": waiting.pop("end", None) or "2026-12-20T17:00:00Z"}]
    card = surgery_card(book(client, waiting))
    assert card["summary"] == "Surgery on 5 Dec: last everolimus dose 27 Nov, restart no earlier than 19 Dec"


def test_booking_offers_a_task_for_the_prescriber_with_selection_behavior(client):
    prescribed = everolimus(requester={"reference": "Practitioner/dr-ng"})
    booked = surgical(12)
    card = surgery_card(book(client, booked, medications=[prescribed]))
    assert card["selectionBehavior"] == "at-most-one"
    [suggestion] = card["suggestions"]
    [action] = suggestion["actions"]
    assert action["type"] == "create" and suggestion["isRecommended"] is True
    task = Task.model_validate(action["resource"])
    assert task.status == "requested" and task.intent == "order"
    assert task.owner.reference == "Practitioner/dr-ng" and task.focus.reference == ref(prescribed)
    assert task.reasonReference.reference == ref(booked)
    assert "last dose 27 Nov 2026, restart no earlier than 19 Dec 2026" in task.description


def test_a_hold_that_should_already_have_started_reads_now(client):
    card = surgery_card(book(client, surgical(4)))  # hold began 20 Nov
    assert card["summary"].startswith("Hold everolimus now: surgery on 27 Nov;")
    assert "20 Nov" not in card["summary"]


def test_surgery_booked_beyond_the_planning_horizon_is_quiet(client):
    assert cards_of(book(client, surgical(31))) == []
    assert topics_of({"cards": cards_of(book(client, surgical(29)))}) == ["surgery-timing"]


def test_appointment_based_on_a_prefetched_surgical_order_fires(client):
    order = service_request("Left partial nephrectomy", None, category=SURGICAL_PROCEDURE)
    booked = appointment("Theatre slot", 12, status="proposed", basedOn=[{"reference": ref(order)}])
    del booked["serviceType"]
    card = surgery_card(book(client, booked, service_requests=[order]))
    assert "**Left partial nephrectomy** is being booked for **5 Dec**" in card["detail"]


def booking_with_server(booked: dict) -> dict:
    """An appointment-book call whose FHIR server (mocked with `responses`) may be asked for what is not prefetched."""
    body = hook_request("appointment-book", medications=[everolimus()], booking=[booked])
    body["fhirServer"] = FHIR
    body["fhirAuthorization"] = {"access_token": "t", "token_type": "Bearer", "expires_in": 300, "scope": "patient/*.read",
                                 "subject": "mtor-cds"}
    return body


@responses.activate
def test_the_surgical_order_an_appointment_is_based_on_is_read_when_not_prefetched(app):
    order = service_request("Left partial nephrectomy", None, category=SURGICAL_PROCEDURE)
    responses.get(f"{FHIR}/{ref(order)}", json=order)
    booked = appointment("Theatre slot", 12, status="proposed", basedOn=[{"reference": ref(order)}])
    body = booking_with_server(booked)
    assert topics_of({"cards": cards_of(app.test_client().post(SERVICE, json=body))}) == ["surgery-timing"]


@responses.activate
def test_a_revoked_order_read_from_the_server_is_not_surgery(app):
    order = service_request("Left partial nephrectomy", None, category=SURGICAL_PROCEDURE, status="revoked")
    responses.get(f"{FHIR}/{ref(order)}", json=order)
    booked = appointment("Theatre slot", 12, status="proposed", basedOn=[{"reference": ref(order)}])
    body = booking_with_server(booked)
    assert cards_of(app.test_client().post(SERVICE, json=body)) == []


def test_appointment_based_on_a_version_specific_reference_to_its_surgical_order_fires(client):
    """Found by the FHIR-path audit: basedOn "ServiceRequest/x/_history/2" (a version-specific reference, FHIR R4) was
    not read as that order, so the surgery being booked got no card (the same order's plain reference fires)."""
    order = service_request("Left partial nephrectomy", None, category=SURGICAL_PROCEDURE)
    booked = appointment("Theatre slot", 12, status="proposed", basedOn=[{"reference": f"{FHIR}/{ref(order)}/_history/2"}])
    del booked["serviceType"]
    card = surgery_card(book(client, booked, service_requests=[order]))
    assert "**Left partial nephrectomy** is being booked for **5 Dec**" in card["detail"]


@responses.activate
def test_the_surgical_order_of_a_version_specific_reference_is_read_when_not_prefetched(app):
    order = service_request("Left partial nephrectomy", None, category=SURGICAL_PROCEDURE)
    responses.get(f"{FHIR}/{ref(order)}", json=order)
    booked = appointment("Theatre slot", 12, status="proposed", basedOn=[{"reference": f"{ref(order)}/_history/2"}])
    body = booking_with_server(booked)
    assert topics_of({"cards": cards_of(app.test_client().post(SERVICE, json=body))}) == ["surgery-timing"]


def test_an_order_that_cannot_be_read_is_said_not_read_as_an_all_clear(client):
    booked = appointment("Theatre slot", 12, status="proposed", basedOn=[{"reference": "ServiceRequest/elsewhere"}])
    del booked["serviceType"]
    [card] = cards_of(book(client, booked))  # no fhirServer: the order cannot be read
    assert card["source"]["topic"]["code"] == "checks-incomplete"
    assert "service requests" in card["detail"]


# --- quiet -------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["Oncology clinic review", "Infusion chair 2 hours", "Laboratory blood draw", "Phlebotomy"])
def test_non_surgical_appointments_never_fire(client, text):
    assert cards_of(book(client, appointment(text, 5, status="proposed"))) == []


def test_a_follow_up_with_the_surgeon_never_fires(client):
    follow_up = surgical(5, appointmentType=concept(None, coding("http://terminology.hl7.org/CodeSystem/v2-0276", "FOLLOWUP")),
                         specialty=[concept(None, coding(SNOMED, "394609007", "General surgery"))])
    assert cards_of(book(client, follow_up)) == []


@pytest.mark.parametrize("status", ["cancelled", "entered-in-error", "noshow"])
def test_cancelled_appointments_never_fire(client, status):
    assert cards_of(book(client, surgical(5, status=status))) == []


def test_a_surgery_already_on_record_is_not_this_hooks_business(client):
    """appointment-book speaks about the appointments being booked; patient-view covers the rest of the record."""
    clinic = appointment("Oncology clinic review", 5, status="proposed")
    already_booked = surgical(3, status="booked")
    assert cards_of(book(client, clinic, appointments=[already_booked])) == []


def test_patient_on_no_mtor_inhibitor_gets_no_card(client):
    assert cards_of(book(client, surgical(5), medications=[med("amoxicillin 500 MG Oral Capsule", rxnorm="308191")])) == []


# --- use and label (issue 10 §1) ---------------------------------------------------------------


def test_zortress_transplant_booking_gives_the_label_warning_and_no_dates(client):
    zortress = med("everolimus 0.75 MG Oral Tablet [Zortress]", rxnorm="977440", dose_mg=0.75)
    card = surgery_card(book(client, surgical(10), medications=[zortress]))
    assert card["indicator"] == "info"
    assert card["summary"] == "Surgery on 3 Dec: plan everolimus around it with the transplant team (wound-healing risk)"
    text = card["summary"] + card["detail"] + json.dumps(card.get("suggestions", []))
    assert "Afinitor" not in text and "AFINITOR" not in text
    assert not re.search(r"\b(7|14) days\b|last dose|restart", text)
    assert card["suggestions"][0]["label"] == "Ask the transplant team to plan everolimus around the surgery on 3 Dec"


def test_sirolimus_for_lam_never_shows_the_unverified_7_and_14_days(client):
    card = surgery_card(book(client, surgical(10), medications=[sirolimus()], conditions=[condition(*LAM)]))
    text = card["summary"] + card["detail"] + json.dumps(card.get("suggestions", []))
    assert "Rapamune label warns of impaired wound healing" in card["detail"] and "the prescriber" in card["detail"]
    assert not re.search(r"\b(7|14) days\b|1 week|2 weeks", text)
    assert "Afinitor" not in text and "everolimus" not in text


def test_fyarro_booking_gives_no_surgery_card(client):
    fyarro = med("sirolimus protein-bound particles 100 MG Injectable Suspension [Fyarro]", dose_mg=None)
    assert "surgery-timing" not in topics_of({"cards": cards_of(book(client, surgical(10), medications=[fyarro]))})


# --- card style (issue 13) and the spec checklist ----------------------------------------------


@pytest.mark.parametrize("in_days", [4, 12])
def test_surgery_card_has_one_citation_to_a_primary_publisher_and_no_resource_ids(client, knowledge, in_days):
    card = surgery_card(book(client, surgical(in_days)))
    links = LINK.findall(card["detail"])
    allowed = {h["host"] for h in knowledge.files["publishers.json"]["hosts"] if h["card_link_allowed"]}
    assert len(links) == 1 and links[0].split("/")[2] in allowed
    assert "MedicationRequest/" not in card["detail"] and "Appointment/" not in card["detail"]
    assert len(card["summary"]) < 140 and "more)" not in card["summary"]


def test_fhir_text_is_escaped_in_the_card(client):
    tricky = surgical(12, description="Nephrectomy [see](http://evil.example) *now*")
    card = surgery_card(book(client, tricky))
    assert "\\[see\\]" in card["detail"] and "\\*now\\*" in card["detail"]
    assert [link for link in LINK.findall(card["detail"]) if "evil" in link] == []  # the bracket is escaped: no link


def test_every_appointment_book_fixture_answers_a_valid_cds_response(call_hook):
    for name in ("fires-surgery-tsc-appointment-book.json", "fires-surgery-transplant-appointment-book.json",
                 "quiet-surgery-clinic-visit-appointment-book.json"):
        response = call_hook(load_fixture(name))
        assert response.status_code == 200
        assert_valid_cds_response(response.get_json())


# --- validation: a clear 400 OperationOutcome, never a 500 ----------------------------------------


def bad_request(client, appointments, drop=False):
    body = hook_request("appointment-book", medications=[everolimus()], booking=[surgical(5)])
    if drop:
        del body["context"]["appointments"]
    else:
        body["context"]["appointments"] = appointments
    response = client.post(SERVICE, json=body)
    assert response.status_code == 400, response.get_data(as_text=True)
    outcome = response.get_json()
    assert outcome["resourceType"] == "OperationOutcome"
    return outcome["issue"][0]["diagnostics"]


def test_missing_appointments_is_a_400_naming_the_field(client):
    assert "context.appointments is required" in bad_request(client, None, drop=True)


@pytest.mark.parametrize("garbage", [None, "Appointment/1", 42, {}, {"resourceType": "Appointment"}, {"resourceType": "Bundle", "entry": "x"}])
def test_garbage_appointments_is_a_400(client, garbage):
    assert "context.appointments" in bad_request(client, garbage)


@pytest.mark.parametrize("entry", [{"resource": {"resourceType": "Patient", "id": "x"}}, {"resource": "x"}, "x", {}])
def test_a_bundle_entry_that_is_not_an_appointment_is_a_400(client, entry):
    message = bad_request(client, {"resourceType": "Bundle", "type": "collection", "entry": [entry]})
    assert "context.appointments.entry[0].resource must be an Appointment" in message


def test_the_cds_hooks_library_example_context_is_answered(client):
    """The library's own example (an array of proposed Appointments, STU3-style codes): a sleep-medicine follow-up and
    a check-up are no surgery, so a patient on everolimus gets no card."""
    context = json.loads((EXAMPLES / "context-appointment-book.json").read_text())["context"]
    body = {"hook": "appointment-book", "hookInstance": str(uuid.uuid4()), "context": context,
            "prefetch": hook_request("patient-view", patient_id=context["patientId"], medications=[everolimus(patient=context["patientId"])])["prefetch"]}
    assert cards_of(client.post(SERVICE, json=body)) == []


# --- the integrator kit: mtor-cds call appointment-book ------------------------------------------


@pytest.fixture
def cli_environment(monkeypatch, tmp_path):
    for name in ("CDS_TRUSTED_ISSUERS", "CDS_PUBLIC_BASE_URL", "CDS_ALLOWED_FHIR_SERVERS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CDS_DATABASE_URL", f"sqlite:///{tmp_path / 'cards.sqlite3'}")
    monkeypatch.setenv("CDS_REQUIRE_JWT", "false")
    return tmp_path


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    from cds_service.cli import main

    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_call_appointment_book_with_a_fixture_prints_the_surgery_card(capsys, cli_environment):
    fixture = str(FIXTURES / "fires-surgery-tsc-appointment-book.json")
    code, out, _ = run_cli(capsys, "call", "appointment-book", "--patient", fixture)  # dates moved to today, as the clock
    assert code == 0
    assert re.match(r"\[1\] WARNING: Surgery on \d+ \w{3}( \d{4})?: last everolimus dose \d+ \w{3}", out), out
    assert "create Task" in out


def test_call_appointment_book_with_an_appointment_file_books_it_for_the_fixture_patient(capsys, cli_environment):
    fixture = load_fixture("fires-surgery-planned-patient-view.json")
    patient_id = fixture["context"]["patientId"]
    in_5_days = datetime.now(timezone.utc) + timedelta(days=5)  # the in-process service runs on the real clock
    booked = surgical(5, participant=[{"actor": {"reference": f"Patient/{patient_id}"}, "status": "accepted"}],
                      start=in_5_days.isoformat(), end=(in_5_days + timedelta(hours=2)).isoformat())
    (cli_environment / "appointment.json").write_text(json.dumps(booked))
    code, out, err = run_cli(capsys, "call", "appointment-book", "--patient", str(FIXTURES / "fires-surgery-planned-patient-view.json"),
                             "--appointment", str(cli_environment / "appointment.json"), "--json")
    assert code == 0, err
    assert topics_of(json.loads(out)) == ["surgery-timing"]


def test_call_appointment_book_without_an_appointment_is_a_usage_error(capsys, cli_environment):
    code, _, err = run_cli(capsys, "call", "appointment-book", "--patient", str(FIXTURES / "fires-surgery-planned-patient-view.json"))
    assert code == 2 and "--appointment FILE" in err


def test_call_appointment_book_refuses_another_patients_appointment(capsys, cli_environment):
    someone_else = surgical(5, participant=[{"actor": {"reference": "Patient/someone-else"}, "status": "accepted"}])
    (cli_environment / "appointment.json").write_text(json.dumps(someone_else))
    code, _, err = run_cli(capsys, "call", "appointment-book", "--patient", str(FIXTURES / "fires-surgery-planned-patient-view.json"),
                           "--appointment", str(cli_environment / "appointment.json"))
    assert code == 2 and "is for Patient/someone-else" in err


# --- docs are code: what README, GLOSSARY and docs/integrating.md say about surgery and this hook -----

ROOT = Path(__file__).resolve().parent.parent


def test_readme_surgery_row_states_the_knowledge_intervals(knowledge):
    row = next(line for line in (ROOT / "README.md").read_text().splitlines() if line.startswith("| `surgery-timing`"))
    window = knowledge.surgery_windows["everolimus"]
    assert f"planned within {window.withhold_before_days} days" in row
    assert f"booked (`appointment-book`) within {knowledge.surgery_planning_days} days" in row
    assert f"done in the last {window.avoid_after_major_days} days" in row
    assert f"planned or booked within {knowledge.surgery_planning_days} days" in row
    assert "sirolimus" not in knowledge.surgery_windows  # "the 7/14 days ... are not shown"


def test_glossary_planning_horizon_and_withhold_window_are_the_knowledge(knowledge):
    glossary = (ROOT / "GLOSSARY.md").read_text()
    assert f"| planning horizon | {knowledge.surgery_planning_days} days" in glossary
    window = knowledge.surgery_windows["everolimus"]
    assert f"at least {window.withhold_before_days} days before elective surgery" in glossary
    assert f"at least {window.avoid_after_major_days} days after major surgery" in glossary


def test_integrating_names_the_codes_the_knowledge_reads(knowledge):
    text = (ROOT / "docs" / "integrating.md").read_text()
    assert {code for _, code in knowledge.surgical_service_types} == {"221"} and "HL7 service-type 221" in text
    assert all(code in text for _, code in knowledge.surgical_specialties)
    assert {code for _, code in knowledge.clinic_visit_appointment_types} == {"FOLLOWUP", "CHECKUP", "WALKIN"}
    assert "FOLLOWUP, CHECKUP or\nWALKIN" in text or "FOLLOWUP, CHECKUP or WALKIN" in text


def test_two_surgeries_booked_at_once_give_one_card_with_a_task_for_each(client):
    card = surgery_card(book(client, surgical(10), surgical(20)))
    assert card["selectionBehavior"] == "any" and len(card["suggestions"]) == 2
    assert {s["actions"][0]["resource"]["reasonReference"]["reference"].split("/")[0] for s in card["suggestions"]} == {"Appointment"}
