"""The EHR's FHIR server misbehaves: required data -> 412, optional data -> findings + checks-incomplete; never 500."""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
import responses

from cds_assertions import assert_valid_cds_response, topics_of
from cds_service import create_app
from cds_service.fhir import client as fhir_client
from conftest import FIXTURE_NOW, TYPE_OF_PREFETCH_KEY, load_fixture

BASE = "https://ehr.example.org/fhir"
TOKEN = "fhir-access-token-abc123"
ORDER_SELECT = "/cds-services/mtor-safety-order-select"
TYPE_OF_KEY = TYPE_OF_PREFETCH_KEY


def make_app(tmp_path, **overrides):
    settings = {
        "require_jwt": False,
        "allowed_fhir_servers": (BASE,),
        "fhir_deadline_s": 3.0,  # the service default; the deadline tests below set their own short one
        "database_url": f"sqlite:///{tmp_path}/cards.sqlite3",
        **overrides,
    }
    app = create_app(**settings)
    app.extensions["mtor_cds"].clock = lambda: FIXTURE_NOW
    return app


def fallback_call(base: str = BASE) -> tuple[dict, dict]:
    """The clarithromycin order-select call without prefetch, plus what its FHIR server holds (by key)."""
    body = load_fixture("fires-cyp3a4-clarithromycin-order-select.json")
    server_data = body.pop("prefetch")
    body["fhirServer"] = base
    body["fhirAuthorization"] = {"access_token": TOKEN, "token_type": "Bearer", "expires_in": 300, "scope": "patient/*.read", "subject": "mtor-cds"}
    return body, server_data


def url_pattern(base: str, resource_type: str) -> re.Pattern:
    return re.compile(re.escape(f"{base}/{resource_type}") + r"([/?].*)?$")


def serve(rsps: responses.RequestsMock, server_data: dict, base: str = BASE, **faults) -> None:
    """Register the FHIR server: each key answers its data, unless `faults[key]` is responses.add kwargs or a callback."""
    for key, resource_type in TYPE_OF_KEY.items():
        answer = faults.get(key, {"json": server_data[key]})
        if callable(answer):
            rsps.add_callback(responses.GET, url_pattern(base, resource_type), callback=answer)
        else:
            rsps.add(responses.GET, url_pattern(base, resource_type), **answer)


def calls_to(rsps: responses.RequestsMock, resource_type: str) -> list:
    return [c for c in rsps.calls if urlsplit(c.request.url).path.split("/")[2] == resource_type]


@pytest.fixture
def fhir():
    """A FHIR server without batch (its CapabilityStatement already read): the parallel GETs; batch in test_fhir_batch.py."""
    fhir_client.remember_capability(BASE, batch=False)
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        yield rsps


def interaction_only_plus_incomplete(response) -> None:
    assert response.status_code == 200, response.get_data(as_text=True)
    body = response.get_json()
    assert_valid_cds_response(body)
    assert topics_of(body) == ["cyp3a4-interaction", "checks-incomplete"]
    assert body["cards"][1]["indicator"] == "info"


def assert_412(response) -> None:
    assert response.status_code == 412, response.get_data(as_text=True)
    body = response.get_json(force=True)
    assert body["resourceType"] == "OperationOutcome" and "medications" in body["issue"][0]["diagnostics"]


# --- the normal fallback -------------------------------------------------------------------------


def test_fallback_fetches_every_template_with_the_bearer_token(client, fhir):
    call, server_data = fallback_call()
    serve(fhir, server_data)
    response = client.post(ORDER_SELECT, json=call)
    assert response.status_code == 200
    assert topics_of(response.get_json()) == ["cyp3a4-interaction"]
    assert len(fhir.calls) == len(TYPE_OF_KEY)
    for recorded in fhir.calls:
        assert recorded.request.headers["Authorization"] == f"Bearer {TOKEN}"


def test_fallback_queries_what_the_prefetch_templates_say(client, fhir):
    call, server_data = fallback_call()
    serve(fhir, server_data)
    client.post(ORDER_SELECT, json=call)
    templates = next(s for s in client.get("/cds-services").get_json()["services"] if s["id"] == "mtor-safety-order-select")["prefetch"]
    asked = {urlsplit(c.request.url).path + "?" + (urlsplit(c.request.url).query or "") for c in fhir.calls}
    for key, template in templates.items():
        expected = urlsplit(f"{BASE}/{template.replace('{{context.patientId}}', 'pt-cyp-1')}")
        match = [a for a in asked if urlsplit(a).path == expected.path]
        assert match, f"{key}: {expected.path} was not queried"
        assert parse_qs(urlsplit(match[0]).query) == parse_qs(expected.query), key


def test_only_missing_prefetch_keys_are_fetched(client, fhir):
    call, server_data = fallback_call()
    call["prefetch"] = {k: v for k, v in server_data.items() if k not in ("conditions", "appointments")}
    call["prefetch"]["observations"] = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "timeout"}]}
    serve(fhir, server_data)
    assert client.post(ORDER_SELECT, json=call).status_code == 200
    assert sorted(urlsplit(c.request.url).path.rsplit("/", 1)[-1] for c in fhir.calls) == ["Appointment", "Condition", "Observation"]


def test_next_pages_on_the_same_server_are_followed(client, fhir):
    call, server_data = fallback_call()
    everolimus = server_data["medications"]["entry"]
    first_page = {"resourceType": "Bundle", "type": "searchset", "entry": [], "link": [{"relation": "next", "url": f"{BASE}/MedicationRequest?page=2"}]}
    fhir.add(responses.GET, f"{BASE}/MedicationRequest?page=2", json={"resourceType": "Bundle", "type": "searchset", "entry": everolimus})
    serve(fhir, server_data, medications={"json": first_page})
    response = client.post(ORDER_SELECT, json=call)
    assert topics_of(response.get_json()) == ["cyp3a4-interaction"]  # the everolimus order is on page 2
    assert all(c.request.headers["Authorization"] == f"Bearer {TOKEN}" for c in fhir.calls)


# --- faults ------------------------------------------------------------------------------------------

FAULTS = {
    "http-401": {"status": 401, "json": {"resourceType": "OperationOutcome"}},
    "http-403": {"status": 403},
    "http-404": {"status": 404},
    "http-500": {"status": 500, "body": "<html>Internal Server Error</html>"},
    "http-503": {"status": 503, "headers": {"Retry-After": "1"}},
    "timeout": {"body": requests.Timeout("read timed out")},
    "connection-error": {"body": requests.ConnectionError("connection reset")},
    "invalid-json": {"body": "{not json", "content_type": "application/fhir+json"},
    "empty-body": {"body": ""},
    "json-array": {"json": [1, 2, 3]},
    "json-string": {"json": "Bundle"},
    "operation-outcome": {"json": {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "forbidden"}]}},
    "not-a-bundle": {"json": {"resourceType": "Patient", "id": "pt-cyp-1"}},
    "redirect": {"status": 302, "headers": {"Location": "https://evil.example.com/fhir/MedicationRequest"}},
    "bundle-garbage": {"json": {"resourceType": "Bundle", "entry": "garbage", "link": "garbage"}},
}


@pytest.mark.parametrize("fault", FAULTS, ids=str)
def test_required_medications_unavailable_is_412(client, fhir, fault):
    call, server_data = fallback_call()
    fhir.add(responses.GET, url_pattern("https://evil.example.com/fhir", "MedicationRequest"), json={})
    serve(fhir, server_data, medications=FAULTS[fault])
    assert_412(client.post(ORDER_SELECT, json=call))
    assert not [c for c in fhir.calls if "evil" in c.request.url], "a redirect must not be followed"


@pytest.mark.parametrize(
    "key, fault",
    [(key, fault) for key in ("patient", "observations", "conditions", "appointments") for fault in FAULTS
     if (key, fault) != ("patient", "not-a-bundle")],  # a Patient is the right answer to a Patient read
)
def test_optional_data_unavailable_gives_findings_and_checks_incomplete(client, fhir, key, fault):
    call, server_data = fallback_call()
    serve(fhir, server_data, **{key: FAULTS[fault]})
    interaction_only_plus_incomplete(client.post(ORDER_SELECT, json=call))


def test_an_oversized_response_is_not_read(tmp_path, fhir):
    client = make_app(tmp_path, fhir_max_response_bytes=5_000).test_client()
    call, server_data = fallback_call()
    padded = {**server_data["conditions"], "entry": [{"resource": {"resourceType": "Basic", "id": "x" * 100}}] * 200}
    serve(fhir, server_data, conditions={"json": padded})
    interaction_only_plus_incomplete(client.post(ORDER_SELECT, json=call))
    big_meds = {**server_data["medications"], "entry": server_data["medications"]["entry"] * 50}
    fhir.replace(responses.GET, url_pattern(BASE, "MedicationRequest"), json=big_meds)
    assert_412(client.post(ORDER_SELECT, json=call))


@pytest.mark.parametrize(
    "next_url",
    [
        "https://evil.example.com/fhir/MedicationRequest?page=2",
        "https://ehr.example.org.evil.com/fhir/MedicationRequest?page=2",
        "https://ehr.example.org@evil.com/fhir/MedicationRequest?page=2",
        "https://ehr.example.org/fhir/../admin/MedicationRequest?page=2",
        "https://ehr.example.org/fhir/%2e%2e/admin/MedicationRequest?page=2",
        "http://ehr.example.org/fhir/MedicationRequest?page=2",
        "https://ehr.example.org:8443/fhir/MedicationRequest?page=2",
        "https://[::1/fhir",
    ],
)
def test_a_next_link_that_leaves_the_server_is_not_followed(client, fhir, next_url):
    call, server_data = fallback_call()
    first_page = {**server_data["medications"], "link": [{"relation": "next", "url": next_url}]}
    elsewhere = r"https?://(evil\.example\.com|ehr\.example\.org\.evil\.com|ehr\.example\.org(:8443)?)/.*(page=2|admin).*"
    fhir.add(responses.GET, re.compile(elsewhere), json=server_data["medications"])
    serve(fhir, server_data, medications={"json": first_page})
    response = client.post(ORDER_SELECT, json=call)
    assert_412(response)  # the medications are only partly known
    assert len(fhir.calls) == len(TYPE_OF_KEY), [c.request.url for c in fhir.calls]


def test_a_prefetched_next_link_to_another_host_is_not_followed(client, fhir):
    call, server_data = fallback_call()
    call["prefetch"] = dict(server_data)
    call["prefetch"]["conditions"] = {**server_data["conditions"], "link": [{"relation": "next", "url": "https://evil.example.com/fhir/Condition?p=2"}]}
    fhir.add(responses.GET, re.compile(r"https://evil\.example\.com/.*"), json=server_data["conditions"])
    interaction_only_plus_incomplete(client.post(ORDER_SELECT, json=call))
    assert not fhir.calls


def test_a_search_longer_than_the_page_limit_is_not_taken_as_complete(tmp_path, fhir):
    client = make_app(tmp_path, fhir_max_pages=2).test_client()
    call, server_data = fallback_call()
    pages = [{"resourceType": "Bundle", "type": "searchset", "entry": [], "link": [{"relation": "next", "url": f"{BASE}/Condition?page={n + 1}"}]}
             for n in range(1, 4)]
    for n, page in enumerate(pages[1:], start=2):
        fhir.add(responses.GET, f"{BASE}/Condition?page={n}", json=page)
    serve(fhir, server_data, conditions={"json": pages[0]})
    interaction_only_plus_incomplete(client.post(ORDER_SELECT, json=call))
    assert len(calls_to(fhir, "Condition")) == 2  # page 3 is beyond the limit and never asked for


# --- the deadline ------------------------------------------------------------------------------------


@pytest.fixture
def stalled():
    """A callback that holds its response until the test ends: a server that never answers in time."""
    release = threading.Event()

    def callback(request):
        release.wait(10)
        return 200, {}, json.dumps({"resourceType": "Bundle", "type": "searchset"})

    yield callback
    release.set()


DEADLINE_S = 1.0  # short, but long enough for a loaded 2-CPU machine to start the queries at all
MARGIN_S = 0.5  # generous for loaded CI machines; a stalled server would hold the answer for 10 s


def timed_call(client, call) -> tuple:
    started = time.monotonic()
    response = client.post(ORDER_SELECT, json=call)
    return response, time.monotonic() - started


def test_a_stalled_required_query_is_412_within_the_deadline(tmp_path, fhir, stalled):
    client = make_app(tmp_path, fhir_deadline_s=DEADLINE_S).test_client()
    call, server_data = fallback_call()
    serve(fhir, server_data, medications=stalled)
    response, elapsed = timed_call(client, call)
    assert_412(response)
    assert elapsed < DEADLINE_S + MARGIN_S


def test_stalled_optional_queries_answer_with_what_is_known_within_the_deadline(tmp_path, fhir, stalled):
    client = make_app(tmp_path, fhir_deadline_s=DEADLINE_S).test_client()
    call, server_data = fallback_call()
    serve(fhir, server_data, **{key: stalled for key in TYPE_OF_KEY if key not in ("medications", "patient")})
    response, elapsed = timed_call(client, call)
    interaction_only_plus_incomplete(response)
    assert elapsed < DEADLINE_S + MARGIN_S


def test_a_slow_page_chain_stops_at_the_deadline(tmp_path, fhir, stalled):
    client = make_app(tmp_path, fhir_deadline_s=DEADLINE_S).test_client()
    call, server_data = fallback_call()
    first_page = {**server_data["conditions"], "link": [{"relation": "next", "url": f"{BASE}/Condition?page=2"}]}
    fhir.add_callback(responses.GET, f"{BASE}/Condition?page=2", callback=stalled)
    serve(fhir, server_data, conditions={"json": first_page})
    response, elapsed = timed_call(client, call)
    interaction_only_plus_incomplete(response)
    assert elapsed < DEADLINE_S + MARGIN_S


# --- a real refused connection ---------------------------------------------------------------------


def test_a_refused_connection_is_412_not_500(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again when the block ends: nothing listens there
    client = make_app(tmp_path, allowed_fhir_servers=()).test_client()
    call, _ = fallback_call(base=f"http://127.0.0.1:{port}/fhir")
    response, elapsed = timed_call(client, call)
    assert_412(response)
    assert elapsed < 1.0 + MARGIN_S


# --- a 412 says which data and why; its log line lists the queries tried ----------------------------

REASONS_412 = {
    "http-401": ({"status": 401, "json": {"resourceType": "OperationOutcome"}}, "answered HTTP 401: the access token was not accepted", "http-401"),
    "http-403": ({"status": 403}, "answered HTTP 403: the access token does not allow this query (its scopes may not include it)", "http-403"),
    "timeout": ({"body": requests.Timeout("read timed out")}, "did not answer in time", "timeout"),
    "connection-refused": ({"body": requests.ConnectionError(ConnectionRefusedError(111, "Connection refused"))}, "refused the connection",
                           "connection failed"),
    "invalid-json": ({"body": "{not json", "content_type": "application/fhir+json"}, "invalid response from the FHIR server: invalid JSON", "invalid JSON"),
    "operation-outcome": ({"json": {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "forbidden"}]}},
                          "invalid response from the FHIR server: expected a Bundle, got OperationOutcome", "ok"),
}


def request_log(caplog) -> dict:
    [fields] = [r.fields for r in caplog.records if r.name == "mtor_cds.request" and "hook" in getattr(r, "fields", {})]
    return fields


@pytest.mark.parametrize("fault", REASONS_412, ids=str)
def test_a_412_says_which_data_and_why_and_logs_the_queries(client, fhir, caplog, fault):
    answer, reason, outcome = REASONS_412[fault]
    call, server_data = fallback_call()
    serve(fhir, server_data, medications=answer)
    with caplog.at_level("INFO"):
        response = client.post(ORDER_SELECT, json=call)
    assert_412(response)
    diagnostics = response.get_json(force=True)["issue"][0]["diagnostics"]
    assert f"medications (the FHIR server {reason}" in diagnostics or f"medications ({reason}" in diagnostics, diagnostics
    queries = request_log(caplog)["fhir_queries"]
    assert ["MedicationRequest", outcome] in [q[:2] for q in queries]
    assert len(queries) == len(TYPE_OF_KEY)  # every query tried is logged, not only the failed one
    assert TOKEN not in caplog.text and "pt-cyp-1" not in json.dumps(request_log(caplog))


def test_a_412_for_a_server_off_the_allowlist_says_so_in_the_answer_and_the_log(client, fhir, caplog):
    call, _ = fallback_call("https://evil.example.com/fhir")
    with caplog.at_level("INFO"):
        response = client.post(ORDER_SELECT, json=call)
    assert_412(response)
    assert "not on CDS_ALLOWED_FHIR_SERVERS" in response.get_json(force=True)["issue"][0]["diagnostics"]
    assert request_log(caplog)["fhir_queries"] == [["-", "not-allowed", 0.0]]
    assert not fhir.calls


def test_a_412_for_a_failed_prefetch_without_a_server_quotes_its_operation_outcome(client):
    call, server_data = fallback_call()
    del call["fhirServer"], call["fhirAuthorization"]
    call["prefetch"] = {**server_data, "medications": {"resourceType": "OperationOutcome", "issue": [
        {"severity": "error", "code": "processing", "diagnostics": "MedicationRequest search timed out in the EHR"}]}}
    response = client.post(ORDER_SELECT, json=call)
    assert_412(response)
    diagnostics = response.get_json(force=True)["issue"][0]["diagnostics"]
    assert "MedicationRequest search timed out in the EHR" in diagnostics and "no fhirServer" in diagnostics


def test_an_unresolved_medication_reference_is_logged_as_unresolved_never_ok(client, fhir, caplog):
    call, server_data = fallback_call()
    by_reference = json.loads(json.dumps(server_data["medications"]))
    order = by_reference["entry"][0]["resource"]
    del order["medicationCodeableConcept"]
    order["medicationReference"] = {"reference": "Medication/med-gone"}
    serve(fhir, server_data, medications={"json": by_reference})
    fhir.add(responses.GET, f"{BASE}/Medication/med-gone", json={"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "not-found"}]})
    with caplog.at_level("INFO"):
        response = client.post("/cds-services/mtor-safety-patient-view", json={**call, "hook": "patient-view", "context": {
            "userId": call["context"]["userId"], "patientId": "pt-cyp-1"}})
    assert response.status_code == 200
    assert topics_of(response.get_json()) == ["checks-incomplete"]  # the unidentified order is said, not hidden
    queries = [q[:2] for q in request_log(caplog)["fhir_queries"]]
    assert ["Medication", "unresolved"] in queries


def test_a_412_for_a_real_refused_connection_says_refused(tmp_path):
    with socket.socket() as probe:  # a loopback port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    base = f"http://127.0.0.1:{port}/fhir"
    client = make_app(tmp_path, allowed_fhir_servers=(base,)).test_client()
    call, _ = fallback_call(base)
    response = client.post(ORDER_SELECT, json=call)
    assert_412(response)
    assert "medications (the FHIR server refused the connection)" in response.get_json(force=True)["issue"][0]["diagnostics"]
