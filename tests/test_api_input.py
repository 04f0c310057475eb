"""Bad input gets a clear 4xx with an OperationOutcome body: never a 500, never a traceback."""

from __future__ import annotations

import copy
import io

import orjson
import pytest

from cds_assertions import assert_valid_cds_response, topics_of
from cds_service import create_app
from conftest import load_fixture

ORDER_SELECT = "/cds-services/mtor-safety-order-select"
PATIENT_VIEW = "/cds-services/mtor-safety-patient-view"
CLARITHROMYCIN = "fires-cyp3a4-clarithromycin-order-select.json"


def assert_outcome(response, status: int, *words: str) -> str:
    """The response is `status` with a FHIR OperationOutcome naming the problem; returns its diagnostics."""
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/fhir+json"
    body = response.get_json(force=True)
    assert body["resourceType"] == "OperationOutcome"
    diagnostics = body["issue"][0]["diagnostics"]
    assert body["issue"][0]["severity"] == "error" and body["issue"][0]["code"]
    assert "Traceback" not in response.get_data(as_text=True)
    for word in words:
        assert word in diagnostics
    return diagnostics


def clarithromycin_call() -> dict:
    return load_fixture(CLARITHROMYCIN)


def without(body: dict, path: str) -> dict:
    body = copy.deepcopy(body)
    *parents, last = path.split(".")
    target = body
    for key in parents:
        target = target[key]
    del target[last]
    return body


def replaced(body: dict, path: str, value) -> dict:
    body = copy.deepcopy(body)
    *parents, last = path.split(".")
    target = body
    for key in parents:
        target = target[key]
    target[last] = value
    return body


# --- the body as a whole ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [b"{not json", b"", b'{"hook": "order-select",', b"\x00\xff", b'"\xff"', b"NaN", b'{"a": "\\ud800"}'],
    ids=["garbage", "empty", "truncated", "binary", "bad-utf8", "nan", "lone-surrogate"],
)
def test_malformed_json_is_400(client, raw):
    assert_outcome(client.post(ORDER_SELECT, data=raw, content_type="application/json"), 400, "not valid JSON")


def test_a_leading_byte_order_mark_is_ignored_as_rfc_8259_allows(client):
    raw = b"\xef\xbb\xbf" + orjson.dumps(load_fixture(CLARITHROMYCIN))
    response = client.post(ORDER_SELECT, data=raw, content_type="application/json")
    assert response.status_code == 200 and topics_of(response.get_json())[0] == "cyp3a4-interaction"
    assert_outcome(client.post(ORDER_SELECT, data=b"\xef\xbb\xbf", content_type="application/json"), 400, "not valid JSON")
    assert_outcome(client.post(ORDER_SELECT, data=b"\xef\xbb\xbf\xef\xbb\xbf{}", content_type="application/json"), 400, "not valid JSON")


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data", None])
def test_a_body_not_declared_as_json_is_415(client, content_type):
    response = client.post(ORDER_SELECT, data=b'{"hook": "order-select"}', content_type=content_type)
    assert_outcome(response, 415, "JSON")


def test_fhir_json_content_type_is_accepted(client):
    response = client.post(ORDER_SELECT, json=clarithromycin_call(), content_type="application/fhir+json")
    assert response.status_code == 200


@pytest.mark.parametrize("raw", [b"[]", b'"text"', b"42", b"null", b"true"])
def test_a_body_that_is_not_an_object_is_400(client, raw):
    assert_outcome(client.post(ORDER_SELECT, data=raw, content_type="application/json"), 400, "JSON object")


# --- fields ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path, value, words",
    [
        ("hook", None, "hook is required"),
        ("hook", 5, "hook is required"),
        ("hook", "", "hook is required"),
        ("hook", "patient-view", "does not match service"),
        ("hook", "medication-prescribe", "does not match service"),
        ("hookInstance", None, "hookInstance is required"),
        ("hookInstance", ["x"], "hookInstance is required"),
        ("context", None, "context is required"),
        ("context", [], "context is required"),
        ("context", "pt-cyp-1", "context is required"),
        ("context.patientId", None, "context.patientId"),
        ("context.patientId", 7, "context.patientId"),
        ("context.patientId", "  ", "context.patientId"),
        # Found by the EHR-integration audit: every resource then read as another patient's, and {"cards": []} came back
        ("context.patientId", "Patient/pt-cyp-1", "not a reference"),
        ("context.patientId", " pt-cyp-1", "context.patientId"),
        ("context.userId", None, "context.userId"),
        ("context.userId", {"reference": "Practitioner/1"}, "context.userId"),
        ("context.encounterId", 5, "context.encounterId"),
        ("context.selections", None, "context.selections"),
        ("context.selections", [], "context.selections"),
        ("context.selections", "MedicationRequest/draft-clari-1", "context.selections"),
        ("context.selections", [1], "context.selections"),
        ("context.draftOrders", None, "context.draftOrders"),
        ("context.draftOrders", [], "context.draftOrders"),
        ("context.draftOrders", {"resourceType": "Patient"}, "context.draftOrders"),
        ("context.draftOrders.entry", {"resource": {}}, "context.draftOrders.entry"),
        ("fhirServer", 5, "fhirServer"),
        ("fhirServer", "ehr.example.org/fhir", "fhirServer"),
        ("fhirAuthorization", "token", "fhirAuthorization"),
        ("fhirAuthorization", {"access_token": 5}, "fhirAuthorization"),
        ("fhirAuthorization", {"access_token": "tok\r\nX-Injected: 1"}, "access_token"),
        ("fhirAuthorization", {"access_token": "tøken"}, "access_token"),
        ("prefetch", [], "prefetch"),
        ("prefetch", "x", "prefetch"),
        ("extension", ["x"], "extension"),
    ],
)
def test_a_missing_or_wrong_typed_field_is_400_naming_it(client, path, value, words):
    body = without(clarithromycin_call(), path) if value is None else replaced(clarithromycin_call(), path, value)
    if path.startswith("fhirAuthorization"):
        body["fhirServer"] = "https://ehr.example.org/fhir"
    assert_outcome(client.post(ORDER_SELECT, json=body), 400, words)


def test_fhir_authorization_without_fhir_server_is_400(client):
    body = replaced(clarithromycin_call(), "fhirAuthorization", {"access_token": "abc"})
    assert_outcome(client.post(ORDER_SELECT, json=body), 400, "fhirServer is required")


def test_order_sign_requires_draft_orders_but_not_selections(client):
    body = load_fixture("fires-live-vaccine-mmr-order-sign.json")
    assert "selections" not in body["context"]
    assert client.post("/cds-services/mtor-safety-order-sign", json=body).status_code == 200
    response = client.post("/cds-services/mtor-safety-order-sign", json=without(body, "context.draftOrders"))
    assert_outcome(response, 400, "context.draftOrders")


@pytest.mark.parametrize("selections", [[{}], 5, [["x"]], {"a": 1}, "MedicationRequest/x"])
def test_selections_outside_order_select_are_ignored_whatever_they_hold(client, selections):
    """Found by fuzz/run_fuzz.py: patient-view with selections [{}] was a 500 (set() of unhashable items)."""
    body = load_fixture("fires-trough-high-patient-view.json")
    body["context"]["selections"] = selections
    response = client.post(PATIENT_VIEW, json=body)
    assert response.status_code == 200
    assert topics_of(response.get_json()) == ["trough-high"]


@pytest.mark.parametrize("draft_orders", ["garbage", {"resourceType": "Bundle", "entry": 5}])
def test_draft_orders_in_patient_view_are_ignored(client, draft_orders):
    body = load_fixture("fires-trough-high-patient-view.json")
    body["context"]["draftOrders"] = draft_orders
    response = client.post(PATIENT_VIEW, json=body)
    assert response.status_code == 200
    assert topics_of(response.get_json()) == ["trough-high"]


def test_draft_orders_in_patient_view_are_not_read_as_orders(client):
    body = load_fixture("fires-trough-high-patient-view.json")
    drafts = orjson.dumps(clarithromycin_call()["context"]["draftOrders"]).replace(b"pt-cyp-1", body["context"]["patientId"].encode())
    body["context"]["draftOrders"] = orjson.loads(drafts)  # a clarithromycin draft for this very patient
    assert topics_of(client.post(PATIENT_VIEW, json=body).get_json()) == ["trough-high"]


def test_unknown_fields_and_extensions_are_ignored(client):
    body = clarithromycin_call()
    body["extension"] = {"org.example.anything": {"deep": [1, 2]}}
    body["somethingNew"] = 1
    body["context"]["org.example.extra"] = True
    response = client.post(ORDER_SELECT, json=body)
    assert response.status_code == 200
    assert topics_of(response.get_json()) == ["cyp3a4-interaction"]


# --- paths and methods --------------------------------------------------------------------------


def test_unknown_service_is_404(client):
    assert_outcome(client.post("/cds-services/no-such-service", json=clarithromycin_call()), 404, "no-such-service")
    assert_outcome(client.post("/cds-services/no-such-service/feedback", json={"feedback": []}), 404, "no CDS service")


def test_unknown_service_id_is_not_echoed_at_length(client):
    diagnostics = assert_outcome(client.post("/cds-services/" + "x" * 5000, json={}), 404)
    assert len(diagnostics) < 200


@pytest.mark.parametrize("path", ["/", "/nope", "/cds-services/", "/cds-services/a/b/c", "/cds-services/mtor-safety-patient-view/feedback/x"])
def test_unknown_paths_are_404(client, path):
    assert_outcome(client.get(path), 404)
    assert_outcome(client.post(path, json={}), 404)
    assert_outcome(client.options(path), 404)


@pytest.mark.parametrize("path", ["/cds-services//mtor-safety-patient-view", "/cds-services/mtor-safety-patient-view//feedback",
                                  "/cds-services//mtor-safety-patient-view/feedback"])
def test_doubled_slashes_are_404_not_an_html_redirect(client, path):
    assert_outcome(client.post(path, json={}), 404)


@pytest.mark.parametrize(
    "method, path, allowed",
    [
        ("GET", ORDER_SELECT, {"POST", "OPTIONS"}),
        ("PUT", ORDER_SELECT, {"POST", "OPTIONS"}),
        ("DELETE", ORDER_SELECT + "/feedback", {"POST", "OPTIONS"}),
        ("POST", "/cds-services", {"GET", "HEAD", "OPTIONS"}),
        ("PATCH", "/cds-services", {"GET", "HEAD", "OPTIONS"}),
        ("POST", "/healthz", {"GET", "HEAD", "OPTIONS"}),
    ],
)
def test_methods_not_allowed_are_405_with_allow(client, method, path, allowed):
    response = client.open(path, method=method, json={})
    assert_outcome(response, 405)
    assert {m.strip() for m in response.headers["Allow"].split(",")} == allowed


# --- size and shape -----------------------------------------------------------------------------


@pytest.fixture
def small_client(tmp_path):
    app = create_app(require_jwt=False, max_body_bytes=20_000, database_url=f"sqlite:///{tmp_path}/cards.sqlite3")
    return app.test_client()


def test_a_body_over_the_limit_is_413(small_client):
    assert_outcome(small_client.post(PATIENT_VIEW, data=b" " * 20_001, content_type="application/json"), 413)
    assert_outcome(small_client.post(PATIENT_VIEW + "/feedback", data=b" " * 30_000, content_type="application/json"), 413)


def chunked(client, path: str, data: bytes):
    """POST without Content-Length, as gunicorn hands a chunked body over (it terminates the input)."""
    return client.post(
        path,
        input_stream=io.BytesIO(data),
        content_type="application/json",
        headers={"Transfer-Encoding": "chunked"},
        environ_overrides={"wsgi.input_terminated": True},
    )


def test_a_chunked_body_over_the_limit_is_413_even_when_its_first_part_is_valid_json(small_client):
    body = b'{"hook": "patient-view"}' + b" " * 20_000  # cut at the limit, this would be valid JSON
    assert_outcome(chunked(small_client, PATIENT_VIEW, body), 413)


def test_a_body_the_server_cannot_read_is_a_400_not_a_500(small_client):
    """gunicorn raises from wsgi.input on a malformed chunk (InvalidChunkSize) or a body cut short (NoMoreData)."""

    class InvalidChunkSize(Exception):  # like gunicorn's, which Werkzeug's stream wrapper does not turn into a 400
        pass

    class BrokenChunks(io.BytesIO):
        def read(self, *args):
            raise InvalidChunkSize("Invalid chunk size: 'zz'")

        readinto = read

    response = small_client.post(PATIENT_VIEW, input_stream=BrokenChunks(), content_type="application/json",
                                 headers={"Transfer-Encoding": "chunked"}, environ_overrides={"wsgi.input_terminated": True})
    assert "zz" not in assert_outcome(response, 400, "could not be read")


def test_a_chunked_body_at_the_limit_is_read(small_client):
    body = b'{"hook": "patient-view"}'
    response = chunked(small_client, PATIENT_VIEW, body + b" " * (20_000 - len(body)))
    assert_outcome(response, 400, "hookInstance")  # read whole and parsed, not refused as too large


def test_a_chunked_valid_call_is_answered(client):
    response = chunked(client, ORDER_SELECT, orjson.dumps(clarithromycin_call()))
    assert response.status_code == 200
    assert topics_of(response.get_json()) == ["cyp3a4-interaction"]


@pytest.mark.parametrize("depth", [100, 5_000])
def test_deeply_nested_json_is_answered_without_a_crash(client, depth):
    body = clarithromycin_call()
    body["extension"] = {"deep": None}
    raw = orjson.dumps(body).replace(b'{"deep":null}', b'{"deep":' + b"[" * depth + b"]" * depth + b"}")
    response = client.post(ORDER_SELECT, data=raw, content_type="application/json")
    assert response.status_code in (200, 400)
    if response.status_code == 400:
        assert_outcome(response, 400)


def test_deeply_nested_prefetch_and_draft_values_do_not_crash(client):
    # 400 levels: deep, yet inside orjson's parse limit (deeper bodies are a 400, tested above)
    nest = b'{"x":[' * 200 + b'{"a":1}' + b"]}" * 200
    body = clarithromycin_call()
    body["prefetch"]["conditions"]["entry"].append({"resource": {"resourceType": "Condition", "code": "NEST"}})
    body["context"]["draftOrders"]["entry"].append({"resource": {"resourceType": "MedicationRequest", "id": "n", "medicationCodeableConcept": "NEST"}})
    raw = orjson.dumps(body).replace(b'"NEST"', nest)
    response = client.post(ORDER_SELECT, data=raw, content_type="application/json")
    assert response.status_code == 200
    assert "cyp3a4-interaction" in topics_of(response.get_json())


def test_huge_arrays_within_the_size_limit_are_answered(client):
    body = clarithromycin_call()
    body["prefetch"]["observations"]["entry"] = [{"resource": {"resourceType": "Observation"}}] * 50_000
    body["context"]["selections"] = body["context"]["selections"] + ["MedicationRequest/none"] * 20_000
    response = client.post(ORDER_SELECT, json=body)
    assert response.status_code == 200
    assert topics_of(response.get_json())[0] == "cyp3a4-interaction"


# --- resources that are not valid FHIR ---------------------------------------------------------

GARBAGE_RESOURCES = [
    "garbage",
    42,
    None,
    [],
    {},
    {"resourceType": 5},
    {"resourceType": "MedicationRequest"},
    {"resourceType": "MedicationRequest", "id": ["x"], "status": {"a": 1}, "medicationCodeableConcept": "clarithromycin"},
    {"resourceType": "MedicationRequest", "id": "m", "status": "active", "medicationCodeableConcept": {"coding": "x"}, "dosageInstruction": "daily"},
    {"resourceType": "MedicationRequest", "id": "m2", "status": "active", "medicationReference": "Medication/1", "subject": "Patient/pt-cyp-1"},
    {"resourceType": "MedicationRequest", "id": "m3", "status": "active", "medicationCodeableConcept": {"coding": [None, 1, {"code": 5}]},
     "dosageInstruction": [{"doseAndRate": [{"doseQuantity": {"value": "ten", "unit": 5}}]}], "authoredOn": 2026},
    {"resourceType": "Observation", "code": {"coding": [{"system": "http://loinc.org", "code": 5}]}, "valueQuantity": {"value": 1e308}},
    {"resourceType": "Condition", "clinicalStatus": "active", "code": None, "onsetDateTime": "not a date"},
    {"resourceType": "Procedure", "status": ["completed"], "performedPeriod": "yesterday"},
    {"resourceType": "Appointment", "status": "booked", "start": {"date": 1}, "serviceType": "surgery"},
    {"resourceType": "ServiceRequest", "status": "active", "occurrenceDateTime": "9999-99-99", "category": "x"},
]


@pytest.mark.parametrize("garbage", GARBAGE_RESOURCES, ids=lambda g: repr(g)[:40])
def test_a_garbage_prefetch_entry_does_not_hide_the_interaction(client, garbage):
    body = clarithromycin_call()
    for key in ("medications", "observations", "conditions", "procedures", "serviceRequests", "appointments"):
        body["prefetch"][key]["entry"].insert(0, {"resource": garbage})
        body["prefetch"][key]["entry"].append(garbage)
    response = client.post(ORDER_SELECT, json=body)
    assert response.status_code == 200, response.get_data(as_text=True)
    answer = response.get_json()
    assert_valid_cds_response(answer)
    assert topics_of(answer)[0] == "cyp3a4-interaction"
    assert answer["cards"][0]["indicator"] == "critical"


def test_a_garbage_draft_order_does_not_hide_the_selected_interaction(client):
    body = clarithromycin_call()
    body["context"]["draftOrders"]["entry"] = [*({"resource": g} for g in GARBAGE_RESOURCES), *GARBAGE_RESOURCES, *body["context"]["draftOrders"]["entry"]]
    response = client.post(ORDER_SELECT, json=body)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert topics_of(response.get_json())[0] == "cyp3a4-interaction"


def test_a_non_string_dose_unit_does_not_hide_the_mtor_order(client):
    body = clarithromycin_call()
    body["prefetch"]["medications"]["entry"][0]["resource"]["dosageInstruction"][0]["doseAndRate"][0]["doseQuantity"]["code"] = 5
    assert topics_of(client.post(ORDER_SELECT, json=body).get_json())[0] == "cyp3a4-interaction"


def test_a_list_as_coding_system_does_not_hide_the_mtor_order(client):
    body = clarithromycin_call()
    body["prefetch"]["medications"]["entry"][0]["resource"]["medicationCodeableConcept"]["coding"].append({"system": [], "code": "x"})
    assert topics_of(client.post(ORDER_SELECT, json=body).get_json())[0] == "cyp3a4-interaction"


def test_a_resource_that_cannot_be_read_is_said_in_a_checks_incomplete_card(client):
    body = clarithromycin_call()
    body["prefetch"]["medications"]["entry"].append({"resource": "not a resource"})
    response = client.post(ORDER_SELECT, json=body)
    cards = response.get_json()["cards"]
    assert topics_of(response.get_json()) == ["cyp3a4-interaction", "checks-incomplete"]
    assert cards[1]["indicator"] == "info" and "1 Bundle entry without a resource could not be read" in cards[1]["detail"]


@pytest.mark.parametrize("value", ["garbage", 5, [], {"resourceType": "OperationOutcome", "issue": []}, {"no": "type"}])
def test_unusable_prefetch_medications_without_a_fhir_server_is_412(client, value):
    body = replaced(clarithromycin_call(), "prefetch.medications", value)
    assert_outcome(client.post(ORDER_SELECT, json=body), 412, "medications")


@pytest.mark.parametrize("value", ["garbage", 5, [], {"resourceType": "OperationOutcome", "issue": []}])
def test_unusable_optional_prefetch_gives_findings_and_checks_incomplete(client, value):
    body = replaced(clarithromycin_call(), "prefetch.conditions", value)
    response = client.post(ORDER_SELECT, json=body)
    assert response.status_code == 200
    assert topics_of(response.get_json()) == ["cyp3a4-interaction", "checks-incomplete"]


# --- Werkzeug's own errors ------------------------------------------------------------------------


def test_werkzeug_errors_are_operation_outcomes_too(client):
    """Routing (404, 405) errors come from Werkzeug, not from our code: same shape. So does a declared size over the limit."""
    assert_outcome(client.get("/definitely/not/here"), 404)
    assert_outcome(client.delete("/cds-services"), 405)
    huge = client.post(PATIENT_VIEW, data=b"x", content_type="application/json", environ_overrides={"CONTENT_LENGTH": str(10**9)})
    assert_outcome(huge, 413)


def test_an_unexpected_error_is_a_500_operation_outcome_without_details(app, client, monkeypatch, caplog):
    def explode(*args, **kwargs):
        raise RuntimeError("secret patient detail pt-cyp-1")

    monkeypatch.setattr("cds_service.api.answer_hook", explode)
    response = client.post(ORDER_SELECT, json=clarithromycin_call())
    diagnostics = assert_outcome_500(response)
    assert "pt-cyp-1" not in diagnostics and "RuntimeError" not in response.get_data(as_text=True)
    assert "pt-cyp-1" not in caplog.text and "Traceback" not in caplog.text


def assert_outcome_500(response) -> str:
    assert response.status_code == 500
    body = response.get_json(force=True)
    assert body["resourceType"] == "OperationOutcome" and body["issue"][0]["severity"] == "fatal"
    return body["issue"][0]["diagnostics"]
