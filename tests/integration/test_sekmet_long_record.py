"""A long record end to end against SEKMET: the service pages through hundreds of Conditions (each search asks
`_count=200`; the server's own page size decides) and reads them all, with no checks-incomplete card."""

from __future__ import annotations

import requests

from cds_service import create_app
from cds_service.devkit.fixtures import post_bundle
from conftest import FIXTURE_NOW

PATIENT = "pt-long-record"
CONDITIONS = 450
SNOMED = "http://snomed.info/sct"


def _put(resource: dict) -> dict:
    return {"resource": resource, "request": {"method": "PUT", "url": f"{resource['resourceType']}/{resource['id']}"}}


def _condition(n: int, code: str, display: str) -> dict:
    return {"resourceType": "Condition", "id": f"{PATIENT}-c{n}", "subject": {"reference": f"Patient/{PATIENT}"},
            "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]},
            "verificationStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-ver-status", "code": "confirmed"}]},
            "code": {"coding": [{"system": SNOMED, "code": code, "display": display}], "text": display},
            "onsetDateTime": "2015-01-01"}


def test_a_patient_with_hundreds_of_conditions_is_read_whole_from_sekmet(sekmet, tmp_path):
    entries = [
        _put({"resourceType": "Patient", "id": PATIENT, "gender": "male", "birthDate": "1970-05-01"}),
        _put({"resourceType": "MedicationRequest", "id": f"{PATIENT}-eve", "status": "active", "intent": "order",
              "subject": {"reference": f"Patient/{PATIENT}"}, "authoredOn": "2026-06-01",
              "medicationCodeableConcept": {"coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "845507",
                                                        "display": "everolimus 10 MG Oral Tablet"}]}}),
        *(_put(_condition(n, "38341003", "Hypertensive disorder")) for n in range(CONDITIONS - 1)),
        _put(_condition(CONDITIONS, "19943007", "Cirrhosis of liver")),
    ]
    post_bundle(sekmet, {"resourceType": "Bundle", "type": "transaction", "entry": entries})
    first_page = requests.get(f"{sekmet}/Condition", params={"patient": PATIENT, "_count": 200}, timeout=10).json()
    assert first_page.get("total", CONDITIONS) == CONDITIONS
    assert len(first_page["entry"]) < CONDITIONS and any(link["relation"] == "next" for link in first_page["link"])  # it pages
    app = create_app(allowed_fhir_servers=(sekmet,), require_jwt=False, fhir_deadline_s=20.0, fhir_without_token=True, database_url=f"sqlite:///{tmp_path}/c.sqlite3")
    app.extensions["mtor_cds"].clock = lambda: FIXTURE_NOW
    body = {"hook": "patient-view", "hookInstance": "0b6f7b0e-5a8e-4a52-9a55-2a3c3c3b7a11", "fhirServer": sekmet,
            "context": {"userId": "Practitioner/dr-lee", "patientId": PATIENT}}
    response = app.test_client().post("/cds-services/mtor-safety-patient-view", json=body)
    assert response.status_code == 200, response.get_data(as_text=True)
    topics = [c["source"]["topic"]["code"] for c in response.get_json()["cards"]]
    assert "checks-incomplete" not in topics, response.get_json()["cards"][-1]["detail"]
    assert "hepatic-impairment" in topics  # the cirrhosis, last of 450 Conditions, was read
