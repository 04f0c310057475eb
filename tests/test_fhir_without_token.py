"""CDS Hooks 2.0, FHIR Resource Access: the service may use the fhirServer only when the call gives both fhirServer and
fhirAuthorization, and presents that token with each query. A call without fhirAuthorization is answered from its
prefetch alone; CDS_FHIR_WITHOUT_TOKEN lets an operator query an open test server anyway."""

from __future__ import annotations

import responses

from cds_assertions import topics_of
from snapshots import everolimus, hook_request, level, make_app

FHIR = "https://ehr.example.org/fhir"
PATIENT_VIEW = "/cds-services/mtor-safety-patient-view"


def without_medications(**extra) -> dict:
    body = hook_request("patient-view", observations=[level("everolimus", 18.2)])
    del body["prefetch"]["medications"]
    return {**body, "fhirServer": FHIR, **extra}


def medications_search() -> dict:
    return {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": everolimus()}]}


@responses.activate
def test_a_call_without_fhir_authorization_never_queries_the_server_and_says_412(tmp_path):
    responses.get(f"{FHIR}/MedicationRequest", json=medications_search())
    answer = make_app(tmp_path).test_client().post(PATIENT_VIEW, json=without_medications())
    assert answer.status_code == 412
    assert "no fhirAuthorization" in answer.get_json()["issue"][0]["diagnostics"]
    assert len(responses.calls) == 0


@responses.activate
def test_with_fhir_authorization_each_query_carries_its_token(tmp_path):
    responses.get(f"{FHIR}/MedicationRequest", json=medications_search())
    authorization = {"access_token": "abc.def", "token_type": "Bearer", "expires_in": 300, "scope": "patient/*.read",
                     "subject": "mtor-cds"}
    answer = make_app(tmp_path).test_client().post(PATIENT_VIEW, json=without_medications(fhirAuthorization=authorization))
    assert answer.status_code == 200 and "trough-high" in topics_of(answer.get_json())
    assert responses.calls and all(c.request.headers["Authorization"] == "Bearer abc.def" for c in responses.calls)


@responses.activate
def test_an_operator_may_allow_an_open_test_server_without_a_token(tmp_path):
    responses.get(f"{FHIR}/MedicationRequest", json=medications_search())
    answer = make_app(tmp_path, fhir_without_token=True).test_client().post(PATIENT_VIEW, json=without_medications())
    assert answer.status_code == 200 and "trough-high" in topics_of(answer.get_json())
    assert responses.calls and all("Authorization" not in c.request.headers for c in responses.calls)


def test_the_integrating_guide_says_so():
    from pathlib import Path

    text = " ".join((Path(__file__).resolve().parent.parent / "docs" / "integrating.md").read_text(encoding="utf-8").split())
    assert ("A call that gives no `fhirAuthorization` is answered from its prefetch alone, with `412` when the current "
            "medications are missing") in text
    assert "`CDS_FHIR_WITHOUT_TOKEN=true` lets the service query it without a token" in text
