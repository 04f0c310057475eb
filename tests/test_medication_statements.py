"""MedicationStatement: what the patient takes without an order here (St John's wort over the counter) counts as a
current medication; only active, intended and on-hold ones; never offered for deletion."""

from __future__ import annotations

import pytest

from cds_assertions import assert_valid_cds_response
from cds_service.fhir.read import CURRENT_STATEMENT_STATUSES
from cds_service.services import prefetch_templates
from snapshots import PATIENT_ID, bundle, core_topics, everolimus, hook_request, knowledge, snapshot_of
from test_fhir_fallback import fhir, with_server  # noqa: F401 -- the `fhir` fixture: a FakeFhirServer

PATIENT_VIEW = "/cds-services/mtor-safety-patient-view"


def st_johns_wort(status: str = "active", **fields) -> dict:
    return {
        "resourceType": "MedicationStatement",
        "id": f"ms-sjw-{status}",
        "status": status,
        "subject": {"reference": f"Patient/{PATIENT_ID}"},
        "medicationCodeableConcept": {"text": "St. John's wort 300 MG Oral Capsule"},
        "effectiveDateTime": "2026-09-01",
        **fields,
    }


def test_the_template_asks_for_current_statements_only():
    template = prefetch_templates(knowledge())["medicationStatements"]
    assert template == "MedicationStatement?patient={{context.patientId}}&status=active,intended,on-hold&_count=200"
    assert {"active", "intended", "on-hold"} == CURRENT_STATEMENT_STATUSES  # FHIR R4 MedicationStatement.status


@pytest.mark.parametrize("status", ["active", "intended", "on-hold"])
def test_a_current_statement_is_a_current_medication_of_kind_statement(status):
    snapshot = snapshot_of(hook="patient-view", medications=[everolimus()], medication_statements=[st_johns_wort(status)])
    [statement] = [m for m in snapshot.medications if m.ref.startswith("MedicationStatement/")]
    assert statement.kind == "statement" and not statement.is_draft
    assert any(c.key == "st-johns-wort" for c in statement.concepts)


@pytest.mark.parametrize("status", ["completed", "stopped", "not-taken", "entered-in-error", "unknown"])
def test_a_statement_that_is_not_current_is_not_read(status):
    snapshot = snapshot_of(hook="patient-view", medications=[everolimus()], medication_statements=[st_johns_wort(status)])
    assert [m.ref for m in snapshot.medications if m.ref.startswith("MedicationStatement/")] == []


@pytest.mark.parametrize(("end", "current"), [
    ("2024-05-31", False), ("2024", False), ("2026-10", False), ("2026-11-22T23:00:00Z", False),  # NOW is 2026-11-23 12:00
    ("2026-11-23", True), ("2026-11", True), ("2026-12-31", True), ("2026-11-23T18:00:00Z", True), ("9999-12-31", True),
])
def test_an_active_statement_whose_period_has_ended_is_not_a_current_medication(end, current):
    """Found by an audit: St John's wort 'active' with effectivePeriod.end in 2024 still fired the interaction card. A
    date to the month or year ends with that month or year; an unreadable end date leaves the statement current."""
    statement = st_johns_wort(effectivePeriod={"start": "2024-01-01", "end": end})
    del statement["effectiveDateTime"]
    snapshot = snapshot_of(hook="patient-view", medications=[everolimus()], medication_statements=[statement])
    assert any(m.ref.startswith("MedicationStatement/") for m in snapshot.medications) is current


def test_st_johns_wort_taken_over_the_counter_warns_without_offering_to_delete_it(client):
    response = client.post(PATIENT_VIEW, json=hook_request("patient-view", medications=[everolimus()], medication_statements=[st_johns_wort()]))
    body = response.get_json()
    assert_valid_cds_response(body)
    assert core_topics(body) == ["cyp3a4-interaction"]
    card = body["cards"][0]
    # issue 13: no resource ids in the text; the statement is named and said to be taken, not ordered
    assert card["indicator"] == "warning" and "recorded as taken" in card["detail"] and "MedicationStatement/" not in card["detail"]
    deletes = [a for s in card.get("suggestions", ()) for a in s.get("actions", ()) if a.get("type") == "delete"]
    assert not [a for a in deletes if "MedicationStatement" in str(a.get("resourceId"))]


def test_statements_missing_from_prefetch_are_fetched(client, fhir):  # noqa: F811
    server = fhir
    server.serve("MedicationStatement", bundle(st_johns_wort()))
    server.serve_empty_searches()
    request = hook_request("patient-view", medications=[everolimus()])
    del request["prefetch"]["medicationStatements"]
    body = client.post(PATIENT_VIEW, json=with_server(request)).get_json()
    assert core_topics(body) == ["cyp3a4-interaction"]
    assert server.paths == ["MedicationStatement"]


def test_the_readme_says_an_ended_period_is_not_current():
    from pathlib import Path

    readme = " ".join((Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8").split())
    assert "counted as current medications unless their `effectivePeriod.end` has passed, never offered for deletion" in readme
