"""FHIR batch: where the server's CapabilityStatement lists `batch`, the queries of a call go in one POST.

Same answers and the same fault behaviour as the parallel GETs (tests/test_fhir_faults.py); the allowlist applies
to the batch's URLs and to `next` links in its entries.
"""

from __future__ import annotations

import json
import re
from urllib.parse import parse_qs, urlsplit

import pytest
import responses

from cds_assertions import topics_of
from conftest import TYPE_OF_PREFETCH_KEY, load_fixture

BASE = "https://ehr.example.org/fhir"
TOKEN = "fhir-access-token-abc123"
ORDER_SELECT = "/cds-services/mtor-safety-order-select"
KEY_OF_TYPE = {resource_type: key for key, resource_type in TYPE_OF_PREFETCH_KEY.items()}


def capability(batch: bool, includes: tuple[str, ...] = ()) -> dict:
    interactions = [{"code": "search-system"}, *([{"code": "batch"}] if batch else [])]
    resources = [{"type": include.split(":")[0], "searchInclude": [include]} for include in includes]
    return {"resourceType": "CapabilityStatement", "status": "active", "kind": "instance", "fhirVersion": "4.0.1",
            "format": ["json"], "rest": [{"mode": "server", "interaction": interactions, "resource": resources}]}


def fallback_call() -> tuple[dict, dict]:
    body = load_fixture("fires-cyp3a4-clarithromycin-order-select.json")
    server_data = body.pop("prefetch")
    body["fhirServer"] = BASE
    body["fhirAuthorization"] = {"access_token": TOKEN, "token_type": "Bearer", "expires_in": 300, "scope": "patient/*.read", "subject": "mtor-cds"}
    return body, server_data


class BatchServer:
    """A FHIR server that says it supports batch and answers each entry from `data` (or `entry_status[key]`)."""

    def __init__(self, mock: responses.RequestsMock, data: dict, batch: bool = True, includes: tuple[str, ...] = ()):
        self.mock, self.data, self.entry_status, self.batch_bodies = mock, data, {}, []
        mock.add(responses.GET, f"{BASE}/metadata", json=capability(batch, includes))
        mock.add_callback(responses.POST, BASE, callback=self._batch)
        mock.add_callback(responses.GET, re.compile(re.escape(BASE) + r"/(?!metadata).*"),
                          callback=self._get)

    def _answer(self, url: str) -> tuple[int, dict]:
        parts = urlsplit(url)
        resource_type = parts.path.rsplit("/fhir/", 1)[-1].split("/")[0]
        key = KEY_OF_TYPE.get(resource_type, "")
        if resource_type == "Medication":
            found = self.data.get("_medications", {}).get(parts.path.rsplit("/", 1)[-1])
            return (200, found) if found else (404, {"resourceType": "OperationOutcome", "issue": []})
        if key in self.entry_status:
            return self.entry_status[key], {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "exception"}]}
        if parse_qs(parts.query).get("page") and key in self.data.get("_page2", {}):
            return 200, self.data["_page2"][key]
        answer = self.data.get(key, {"resourceType": "OperationOutcome", "issue": []})
        if f"{resource_type}:medication" in parse_qs(parts.query).get("_include", []):  # the referenced Medications too
            referenced = [e["resource"]["medicationReference"]["reference"].split("/")[-1] for e in answer.get("entry", [])
                          if "medicationReference" in e["resource"]]
            included = [{"resource": self.data["_medications"][m], "search": {"mode": "include"}} for m in referenced]
            answer = {**answer, "entry": [*answer.get("entry", []), *included]}
        return 200, answer

    def _batch(self, request):
        body = json.loads(request.body)
        self.batch_bodies.append(body)
        entries = []
        for entry in body["entry"]:
            status, resource = self._answer(f"{BASE}/{entry['request']['url']}")
            entries.append({"resource": resource, "response": {"status": f"{status} {'OK' if status == 200 else 'Error'}"}})
        return 200, {"Content-Type": "application/fhir+json"}, json.dumps({"resourceType": "Bundle", "type": "batch-response", "entry": entries})

    def _get(self, request):
        status, body = self._answer(request.url)
        return status, {"Content-Type": "application/fhir+json"}, json.dumps(body)

    def calls(self, method: str, path_end: str = "") -> list:
        return [c for c in self.mock.calls if c.request.method == method and urlsplit(c.request.url).path.endswith(path_end)]


@pytest.fixture
def fhir():
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock


def test_one_batch_carries_every_template_query_and_answers_the_same_card(client, fhir):
    call, data = fallback_call()
    server = BatchServer(fhir, data)
    response = client.post(ORDER_SELECT, json=call)
    assert response.status_code == 200 and topics_of(response.get_json()) == ["cyp3a4-interaction"]
    assert len(server.calls("POST")) == 1 and not [c for c in server.calls("GET") if not c.request.url.endswith("/metadata")]
    templates = next(s for s in client.get("/cds-services").get_json()["services"] if s["id"] == "mtor-safety-order-select")["prefetch"]
    sent = {urlsplit(e["request"]["url"]).path: e["request"] for e in server.batch_bodies[0]["entry"]}
    assert server.batch_bodies[0]["type"] == "batch" and len(sent) == len(templates)
    for template in templates.values():
        expected = urlsplit(template.replace("{{context.patientId}}", "pt-cyp-1"))
        assert sent[expected.path]["method"] == "GET"
        assert parse_qs(urlsplit(sent[expected.path]["url"]).query) == parse_qs(expected.query)
    assert all(c.request.headers["Authorization"] == f"Bearer {TOKEN}" for c in fhir.calls)


def test_the_capability_is_asked_once_per_server(client, fhir):
    call, data = fallback_call()
    server = BatchServer(fhir, data)
    for _ in range(3):
        assert client.post(ORDER_SELECT, json=call).status_code == 200
    assert len(server.calls("GET", "/metadata")) == 1 and len(server.calls("POST")) == 3


def test_a_server_without_batch_gets_parallel_gets(client, fhir):
    call, data = fallback_call()
    server = BatchServer(fhir, data, batch=False)
    assert topics_of(client.post(ORDER_SELECT, json=call).get_json()) == ["cyp3a4-interaction"]
    assert not server.calls("POST") and len(server.calls("GET")) == 1 + len(TYPE_OF_PREFETCH_KEY)


def test_a_refused_batch_falls_back_to_gets_and_is_not_tried_again(client, fhir):
    call, data = fallback_call()
    fhir.add(responses.POST, BASE, status=405, json={"resourceType": "OperationOutcome", "issue": []})
    server = BatchServer(fhir, data)  # its POST callback comes after the 405 and is never reached
    for _ in range(2):
        assert topics_of(client.post(ORDER_SELECT, json=call).get_json()) == ["cyp3a4-interaction"]
    assert len(server.calls("POST")) == 1  # the second call went straight to GETs
    assert len(server.calls("GET")) == 1 + 2 * len(TYPE_OF_PREFETCH_KEY)


def test_a_failed_required_entry_is_412_and_a_failed_optional_one_says_checks_incomplete(client, fhir):
    call, data = fallback_call()
    server = BatchServer(fhir, data)
    server.entry_status["medications"] = 500
    response = client.post(ORDER_SELECT, json=call)
    assert response.status_code == 412 and "medications" in response.get_json(force=True)["issue"][0]["diagnostics"]
    del server.entry_status["medications"]
    server.entry_status["observations"] = 503
    answer = client.post(ORDER_SELECT, json=call).get_json()
    assert topics_of(answer) == ["cyp3a4-interaction", "checks-incomplete"]


def test_a_failed_batch_fails_each_query_like_gets_would(client, fhir):
    call, data = fallback_call()
    fhir.add(responses.POST, BASE, status=503)
    BatchServer(fhir, data)
    response = client.post(ORDER_SELECT, json=call)
    assert response.status_code == 412
    assert "HTTP 503" in response.get_json(force=True)["issue"][0]["diagnostics"]


@pytest.mark.parametrize("next_url, followed", [
    (f"{BASE}/MedicationRequest?page=2", True),
    ("https://evil.example.com/fhir/MedicationRequest?page=2", False),
    ("https://ehr.example.org/fhir/../admin/MedicationRequest?page=2", False),
])
def test_next_links_in_a_batch_entry_obey_the_allowlist(client, fhir, next_url, followed):
    call, data = fallback_call()
    everolimus = data["medications"]["entry"]
    data["medications"] = {"resourceType": "Bundle", "type": "searchset", "entry": [], "link": [{"relation": "next", "url": next_url}]}
    data["_page2"] = {"medications": {"resourceType": "Bundle", "type": "searchset", "entry": everolimus}}
    fhir.add(responses.GET, re.compile(r"https://evil\.example\.com/.*"), json=data["_page2"]["medications"])
    BatchServer(fhir, data)
    response = client.post(ORDER_SELECT, json=call)
    if followed:
        assert topics_of(response.get_json()) == ["cyp3a4-interaction"]  # the everolimus order is on page 2
    else:
        assert response.status_code == 412
        assert all(c.request.url.startswith(f"{BASE}/") or c.request.url == BASE for c in fhir.calls)


def test_batch_urls_stay_relative_to_the_server(fhir):
    from cds_service.fhir.client import Deadline, FhirClient
    from cds_service.settings import Settings

    settings = Settings.from_env({}, require_jwt=False, allowed_fhir_servers=(BASE,))
    client = FhirClient(BASE, TOKEN, settings, Deadline.after(2))
    _, data = fallback_call()
    server = BatchServer(fhir, data)
    results = client.batch({"conditions": "Condition?patient=x", "away": "https://evil.example.com/fhir/Condition", "up": "../admin/Condition"})
    assert isinstance(results["conditions"], list)
    assert str(results["away"]) == str(results["up"]) == "URL leaves the FHIR server"
    assert [e["request"]["url"] for e in server.batch_bodies[0]["entry"]] == ["Condition?patient=x"]


def test_the_integration_guide_says_how_the_service_asks():
    from pathlib import Path

    from cds_service.fhir import client as fhir_client

    text = " ".join((Path(__file__).resolve().parent.parent / "docs" / "integrating.md").read_text(encoding="utf-8").split())
    assert (fhir_client.CAPABILITY_TTL_S, fhir_client.CAPABILITY_TIMEOUT_S, fhir_client.CAPABILITY_RETRY_S) == (3600.0, 1.0, 300.0)
    for said in ("once per worker process and server (again after an hour)", "`GET [base]/metadata`", "at most 1 s of the call's deadline",
                 "lists the `batch` interaction gets all of a call's queries in one `POST [base]` batch Bundle",
                 "not offered a batch again for 5 minutes", "when a call has more than one query to send",
                 "`MedicationRequest:medication` (or `MedicationStatement:medication`) among its `searchInclude` values (or `*`) gets that "
                 "search with `_include`", "Prefetch templates never carry `_include`"):
        assert said in text, said


def test_medication_references_are_resolved_in_one_batch(client, fhir):
    call, data = fallback_call()
    medications = [e["resource"] for e in data["medications"]["entry"]] + [e["resource"] for e in call["context"]["draftOrders"]["entry"]]
    data["_medications"] = {}
    for n, request in enumerate(medications):
        concept = request.pop("medicationCodeableConcept")
        request["medicationReference"] = {"reference": f"Medication/med-{n}"}
        data["_medications"][f"med-{n}"] = {"resourceType": "Medication", "id": f"med-{n}", "code": concept}
    assert len(medications) > 1
    server = BatchServer(fhir, data)
    response = client.post(ORDER_SELECT, json=call)
    assert topics_of(response.get_json()) == ["cyp3a4-interaction"]  # both orders are known only by their Medications
    assert len(server.calls("POST")) == 2  # the searches, then the references
    assert sorted(e["request"]["url"] for e in server.batch_bodies[1]["entry"]) == sorted(f"Medication/med-{n}" for n in range(len(medications)))


def test_a_batch_answer_over_the_size_cap_is_asked_again_as_gets(tmp_path, fhir):
    from cds_service import create_app

    call, data = fallback_call()
    server = BatchServer(fhir, data)
    whole = len(json.dumps({"entry": list(data.values())}))
    app = create_app(require_jwt=False, allowed_fhir_servers=(BASE,), database_url=f"sqlite:///{tmp_path}/c.sqlite3",
                     fhir_max_response_bytes=max(len(json.dumps(v)) for v in data.values()) + 1000)
    assert whole > app.extensions["mtor_cds"].settings.fhir_max_response_bytes  # the batch's answer is over the cap
    client = app.test_client()
    for _ in range(2):
        assert topics_of(client.post(ORDER_SELECT, json=call).get_json()) == ["cyp3a4-interaction"]
    assert len(server.calls("POST")) == 2  # still offered a batch: the record, not the server, was too large


def referencing_medications(data: dict) -> int:
    """Turn the server's MedicationRequests into ones that reference a Medication; returns how many."""
    data["_medications"] = {}
    requests = [e["resource"] for e in data["medications"]["entry"]]
    for n, request in enumerate(requests):
        concept = request.pop("medicationCodeableConcept")
        request["medicationReference"] = {"reference": f"Medication/med-{n}"}
        data["_medications"][f"med-{n}"] = {"resourceType": "Medication", "id": f"med-{n}", "code": concept}
    return len(requests)


@pytest.mark.parametrize(("batch", "includes"), [
    (True, ("MedicationRequest:medication", "MedicationStatement:medication")),
    (False, ("MedicationRequest:medication", "MedicationStatement:medication")),
    (False, ("*",)),
], ids=["batch", "parallel GETs", "any include"])
def test_a_server_listing_the_include_sends_referenced_medications_with_the_search(client, fhir, batch, includes):
    call, data = fallback_call()
    assert referencing_medications(data) >= 1
    server = BatchServer(fhir, data, batch=batch, includes=includes)
    response = client.post(ORDER_SELECT, json=call)
    assert topics_of(response.get_json()) == ["cyp3a4-interaction"]  # the current everolimus is known only by its Medication
    searched = [e["request"]["url"] for e in server.batch_bodies[0]["entry"]] if batch else [c.request.url for c in server.calls("GET")]
    medication_search = next(u for u in searched if "MedicationRequest?" in u)
    assert parse_qs(urlsplit(medication_search).query)["_include"] == ["MedicationRequest:medication"]
    statement_search = next(u for u in searched if "MedicationStatement?" in u)
    assert parse_qs(urlsplit(statement_search).query)["_include"] == ["MedicationStatement:medication"]
    assert not any("_include" in u for u in searched if "Medication" not in urlsplit(u).path)
    assert len(server.calls("POST")) == (1 if batch else 0)  # no second round trip for the references
    assert not server.calls("GET", "/med-0")


def test_a_server_not_listing_the_include_gets_the_template_query_and_the_references_read_after(client, fhir):
    call, data = fallback_call()
    referencing_medications(data)
    server = BatchServer(fhir, data, batch=False, includes=("Condition:subject",))
    response = client.post(ORDER_SELECT, json=call)
    assert topics_of(response.get_json()) == ["cyp3a4-interaction"]
    assert not any("_include" in c.request.url for c in server.calls("GET"))
    assert len(server.calls("GET", "/med-0")) == 1


@pytest.mark.parametrize("rest", [5, [{"mode": "server", "resource": "x"}], [{"mode": "server", "resource": [{"searchInclude": 7}]}],
                                  [{"mode": "server", "interaction": {"code": "batch"}}]])
def test_a_malformed_capability_statement_means_plain_gets(client, fhir, rest):
    call, data = fallback_call()
    server = BatchServer(fhir, data, batch=False)
    fhir.replace(responses.GET, f"{BASE}/metadata", json={"resourceType": "CapabilityStatement", "rest": rest})
    response = client.post(ORDER_SELECT, json=call)
    assert response.status_code == 200 and topics_of(response.get_json()) == ["cyp3a4-interaction"]
    assert not server.calls("POST") and not any("_include" in c.request.url for c in server.calls("GET"))
