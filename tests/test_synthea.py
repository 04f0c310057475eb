"""Realistic synthetic patients (Synthea R4 bundles) on no mTOR inhibitor get exactly {"cards": []}.

The bundles in fhir_fixtures/synthea/ always run; the 36 in /work/shared/data/synthea-r4/ run when that folder
exists. Each transaction bundle becomes a patient-view prefetch: every urn:uuid reference is rewritten to
Type/id, the id taken from the entry's fullUrl, as a FHIR server would have stored it.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from cds_assertions import assert_valid_cds_response, topics_of
from conftest import FIXTURES, TYPE_OF_PREFETCH_KEY
from snapshots import RXNORM, make_app


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    """One app for this module's tests (conftest's `client` and `call_hook` use it)."""
    return make_app(tmp_path_factory.mktemp("app"))

SHARED_SYNTHEA = Path("/work/shared/data/synthea-r4")
LOCAL = sorted((FIXTURES / "synthea").glob("*.json"))
SHARED = sorted(SHARED_SYNTHEA.glob("*.json")) if SHARED_SYNTHEA.is_dir() else []
PREFETCH_TYPES = {key: rtype for key, rtype in TYPE_OF_PREFETCH_KEY.items() if key != "patient"}


def _rewrite(node: Any, ids: dict[str, str]) -> Any:
    if isinstance(node, dict):
        return {k: (ids.get(v, v) if k == "reference" and isinstance(v, str) else _rewrite(v, ids)) for k, v in node.items()}
    if isinstance(node, list):
        return [_rewrite(item, ids) for item in node]
    return node


def stored_resources(bundle: dict) -> list[dict]:
    """The bundle's resources as a server stores them: ids from fullUrl, urn:uuid references as Type/id."""
    ids = {}
    for entry in bundle["entry"]:
        full_url, resource_type = entry["fullUrl"], entry["resource"]["resourceType"]
        ids[full_url] = f"{resource_type}/{full_url.removeprefix('urn:uuid:')}"
    resources = []
    for entry in bundle["entry"]:
        resource = _rewrite(entry["resource"], ids)
        resource["id"] = entry["fullUrl"].removeprefix("urn:uuid:")
        resources.append(resource)
    return resources


def searchset(resources: list[dict]) -> dict:
    return {"resourceType": "Bundle", "type": "searchset", "total": len(resources), "entry": [{"resource": r} for r in resources]}


def patient_view_request(path: Path) -> dict:
    resources = stored_resources(json.loads(path.read_text()))
    [patient] = [r for r in resources if r["resourceType"] == "Patient"]
    prefetch: dict[str, Any] = {"patient": patient}
    for key, resource_type in PREFETCH_TYPES.items():
        found = [r for r in resources if r["resourceType"] == resource_type]
        if key == "medications":
            found = [r for r in found if r.get("status") in ("active", "on-hold")]  # as the template's search asks
        prefetch[key] = searchset(found)
    return {
        "hook": "patient-view",
        "hookInstance": str(uuid.uuid4()),
        "context": {"userId": "Practitioner/dr-lee", "patientId": patient["id"]},
        "prefetch": prefetch,
    }


def add_everolimus(request: dict) -> dict:
    patient_id = request["context"]["patientId"]
    request["prefetch"]["medications"]["entry"].append({"resource": {
        "resourceType": "MedicationRequest", "id": "added-everolimus", "status": "active", "intent": "order",
        "subject": {"reference": f"Patient/{patient_id}"},
        "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": "845507", "display": "everolimus 10 MG Oral Tablet"}]},
    }})
    return request


def test_rewriting_turns_urn_uuid_references_into_type_and_id():
    request = patient_view_request(LOCAL[0])
    patient_id = request["context"]["patientId"]
    conditions = [e["resource"] for e in request["prefetch"]["conditions"]["entry"]]
    assert conditions and all(c["subject"]["reference"] == f"Patient/{patient_id}" for c in conditions)
    assert "urn:uuid:" not in json.dumps(request["prefetch"])


@pytest.mark.parametrize("path", LOCAL, ids=lambda p: p.stem)
def test_synthea_fixture_patient_on_no_mtor_inhibitor_gets_no_cards(call_hook, path):
    response = call_hook(patient_view_request(path))
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.get_json() == {"cards": []}


@pytest.mark.parametrize("path", LOCAL, ids=lambda p: p.stem)
def test_synthea_fixture_patient_is_read_without_skipping_anything(call_hook, path):
    body = call_hook(add_everolimus(patient_view_request(path))).get_json()
    assert_valid_cds_response(body)
    assert "checks-incomplete" not in topics_of(body)


@pytest.mark.skipif(not SHARED, reason=f"{SHARED_SYNTHEA} is not available")
def test_all_shared_synthea_patients_get_no_cards(call_hook):
    assert len(SHARED) == 36
    answers = {}
    for path in SHARED:
        response = call_hook(patient_view_request(path))
        answers[path.stem] = (response.status_code, response.get_json())
    assert {stem: a for stem, a in answers.items() if a != (200, {"cards": []})} == {}


@pytest.mark.skipif(not SHARED, reason=f"{SHARED_SYNTHEA} is not available")
def test_all_shared_synthea_patients_are_read_without_skipping_anything(call_hook):
    incomplete = []
    for path in SHARED:
        body = call_hook(add_everolimus(patient_view_request(path))).get_json()
        assert_valid_cds_response(body)
        if "checks-incomplete" in topics_of(body):
            incomplete.append(path.stem)
    assert incomplete == []


@pytest.mark.skipif(not SHARED, reason=f"{SHARED_SYNTHEA} is not available")
def test_shared_synthea_procedures_recognised_as_surgery_by_code_alone_are_only_real_operations():
    """Negative control for procedures.json surgical_procedures: across the 36 patients' thousands of Procedures
    (dental cleanings, screenings, imaging, vaccinations, counselling, IUD insertions, ...), the only ones a SNOMED
    CT code alone makes surgery are caesarean sections, which are operations."""
    from snapshots import snapshot_of

    by_code = {}
    for path in SHARED:
        snapshot = snapshot_of(add_everolimus(patient_view_request(path)))
        by_code |= {code: event.text for event in snapshot.procedures if event.surgery_evidence == "code" for code in event.codes}
    assert by_code == {("http://snomed.info/sct", "11466000"): "Cesarean section (procedure)"}
