"""The specification's own example requests are answered as the spec says; discovery is valid CDS Hooks 2.0.

The examples are copies in tests/spec_examples/ (see the README there for where each came from and its quirks).
"""

from __future__ import annotations

import copy
import json
import re
import uuid
from pathlib import Path

import pytest
import responses

from cds_assertions import assert_no_empty_values, assert_valid_cds_response
from snapshots import bundle, core_topics, everolimus, hook_request, make_app


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    """One app for this module's tests (conftest's `client` and `call_hook` use it)."""
    return make_app(tmp_path_factory.mktemp("app"))

EXAMPLES = Path(__file__).parent / "spec_examples"
HOOKS = {"patient-view", "order-select", "order-sign", "appointment-book"}
ALLOWED_TOKEN = re.compile(
    r"\{\{\s*(context\.(patientId|userId|encounterId)|userPractitionerId|userPractitionerRoleId|userPatientId|userRelatedPersonId)\s*\}\}"
)
ANY_TOKEN = re.compile(r"\{\{.*?\}\}")


def example(name: str) -> dict:
    return json.loads((EXAMPLES / name).read_text())


def prefetch_for(patient_id: str, medications=()) -> dict:
    return hook_request("patient-view", patient_id=patient_id, medications=medications)["prefetch"]


def wrapped(context_example: str, hook: str, **prefetch_kwargs) -> dict:
    context = example(context_example)["context"]
    return {
        "hook": hook,
        "hookInstance": str(uuid.uuid4()),
        "context": context,
        "prefetch": prefetch_for(context["patientId"], **prefetch_kwargs),
    }


def invalid_tokens(template: str) -> list[str]:
    return [t for t in ANY_TOKEN.findall(template) if not ALLOWED_TOKEN.fullmatch(t)]


def assert_valid_discovery(body: dict) -> None:
    assert set(body) == {"services"} and isinstance(body["services"], list)
    ids = []
    for service in body["services"]:
        assert_no_empty_values(service)
        for field in ("hook", "id", "description"):
            assert isinstance(service.get(field), str) and service[field].strip(), f"{field} is required"
        assert set(service) <= {"hook", "title", "description", "id", "prefetch", "usageRequirements", "extension"}
        for key, template in service.get("prefetch", {}).items():
            assert isinstance(template, str)
            assert invalid_tokens(template) == [], f"prefetch {key!r}: {template}"
            assert "draftOrders" not in template and "selections" not in template
        ids.append(service["id"])
    assert len(ids) == len(set(ids))


# --- the checkers themselves agree with the spec's examples ------------------------------------


def test_discovery_checker_accepts_the_spec_discovery_example():
    assert_valid_discovery(example("discovery-response.json"))


def test_token_checker_accepts_every_token_of_the_spec_prefetch_example():
    templates = example("prefetch-templates.json")["prefetch"]
    assert "{{userPractitionerRoleId}}" in templates["user"]
    assert all(invalid_tokens(t) == [] for t in templates.values())


@pytest.mark.parametrize(
    "template", ["MedicationRequest?_id={{context.draftOrders.MedicationRequest.id}}", "Practitioner/{{user}}", "Patient/{{Patient.id}}"]
)
def test_token_checker_rejects_tokens_invalid_in_2_0(template):
    assert invalid_tokens(template)


# --- our discovery -----------------------------------------------------------------------------


def test_discovery_is_valid_cds_hooks_2_0(client):
    response = client.get("/cds-services")
    assert response.status_code == 200
    assert_valid_discovery(response.get_json())


def test_discovery_offers_one_service_per_hook_each_with_a_title(client):
    services = client.get("/cds-services").get_json()["services"]
    assert sorted(s["hook"] for s in services) == sorted(HOOKS)
    assert all(s.get("title") for s in services)


def test_discovery_prefetch_uses_only_the_patient_id_token(client):
    for service in client.get("/cds-services").get_json()["services"]:
        tokens = {t for template in service["prefetch"].values() for t in ANY_TOKEN.findall(template)}
        assert tokens == {"{{context.patientId}}"}
        assert set(service["prefetch"]) >= {"patient", "medications"}


# --- request examples --------------------------------------------------------------------------


def test_patient_view_example_as_is_is_parsed_and_answered_412_without_calling_plain_http(call_hook):
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        response = call_hook(example("request-patient-view.json"))
        assert len(mock.calls) == 0  # the token never travels over plain http
    assert response.status_code == 412
    assert response.get_json()["resourceType"] == "OperationOutcome"


def test_patient_view_example_with_an_https_server_is_answered_from_fetched_data(call_hook):
    request = example("request-patient-view.json")
    request["fhirServer"] = "https://ehr.example.org/fhir"
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        mock.add(responses.GET, "https://ehr.example.org/fhir/Patient/1288992", json=request["prefetch"]["patientToGreet"])
        mock.add(responses.GET, re.compile(r"https://ehr\.example\.org/fhir/\w+\?.*"), json=bundle())
        response = call_hook(request)
        assert {c.request.headers["Authorization"] for c in mock.calls} == {"Bearer some-opaque-fhir-access-token"}
    assert response.status_code == 200
    assert response.get_json() == {"cards": []}


def test_patient_view_example_with_prefetch_is_200(call_hook):
    request = example("request-patient-view.json")
    request["prefetch"].update(prefetch_for("1288992"))
    response = call_hook(request)
    assert response.status_code == 200
    assert response.get_json() == {"cards": []}


def test_extension_example_as_is_is_a_400_naming_the_missing_patient_id(call_hook):
    response = call_hook(example("request-extension.json"))
    assert response.status_code == 400
    assert "patientId" in response.get_json()["issue"][0]["diagnostics"]


def test_extension_example_with_patient_id_is_200_and_its_extension_ignored(call_hook):
    request = example("request-extension.json")
    request["context"]["patientId"] = "1288992"
    request["prefetch"] = prefetch_for("1288992", medications=[everolimus(patient="1288992")])
    response = call_hook(request)
    assert response.status_code == 200
    assert_valid_cds_response(response.get_json())


def test_extension_that_is_not_an_object_is_a_400(call_hook):
    request = example("request-extension.json")
    request["context"]["patientId"] = "1288992"
    request["extension"] = ["not", "an", "object"]
    assert call_hook(request).status_code == 400


@pytest.mark.parametrize("hook, name", [("order-select", "context-order-select-r4.json"), ("order-sign", "context-order-sign-r4.json")])
def test_order_context_example_wrapped_into_a_request_is_200(call_hook, hook, name):
    response = call_hook(wrapped(name, hook))
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.get_json() == {"cards": []}


@pytest.mark.parametrize("hook, name", [("order-select", "context-order-select-r4.json"), ("order-sign", "context-order-sign-r4.json")])
def test_order_context_example_for_a_patient_on_everolimus_is_200_and_valid(call_hook, hook, name):
    request = wrapped(name, hook, medications=[everolimus(patient="1288992")])
    response = call_hook(request)
    assert response.status_code == 200, response.get_data(as_text=True)
    body = response.get_json()
    assert_valid_cds_response(body)
    assert core_topics(body) == []  # amoxicillin-clavulanate and a pureed diet do not interact with everolimus


def test_order_select_example_with_a_live_vaccine_added_warns(call_hook):
    request = wrapped("context-order-select-r4.json", "order-select", medications=[everolimus(patient="1288992")])
    vaccine = copy.deepcopy(request["context"]["draftOrders"]["entry"][1]["resource"])
    vaccine.update(id="mmr-1", medicationCodeableConcept={"coding": [{"system": "http://hl7.org/fhir/sid/cvx", "code": "03"}], "text": "MMR"})
    request["context"]["draftOrders"]["entry"].append({"resource": vaccine})
    request["context"]["selections"].append("MedicationRequest/mmr-1")
    body = call_hook(request).get_json()
    assert_valid_cds_response(body)
    assert core_topics(body) == ["live-vaccine"]

