"""Generated requests: whatever arrives, the answer is a 2xx or a 4xx with an OperationOutcome, never a 5xx.

The strategies here are reused by fuzz/run_fuzz.py, which runs the same properties at scale.
"""

from __future__ import annotations

import copy
import json

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance, status_code_conformance

from cds_assertions import assert_valid_cds_response, topics_of
from cds_service import create_app
from conftest import FIXTURE_NOW, FIXTURES, SERVICE_FOR_HOOK, load_fixture

SERVICE_IDS = sorted(SERVICE_FOR_HOOK.values())
PREFETCH_KEYS = ["patient", "medications", "medicationStatements", "observations", "conditions", "procedures", "serviceRequests", "appointments"]
ANSWERS = {200, 400, 404, 412, 413, 415}
SCHEMA_CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
FUZZ_SETTINGS = settings(max_examples=150, deadline=None, database=None, suppress_health_check=list(HealthCheck))


def make_fuzz_app(database_url: str, **overrides):
    """JWT off (every generated request reaches the parser); the allowlist refuses every generated fhirServer."""
    settings = {"require_jwt": False, "allowed_fhir_servers": ("https://ehr.example.org/fhir",), "fhir_deadline_s": 0.5, **overrides}
    app = create_app(database_url=database_url, **settings)
    app.extensions["mtor_cds"].clock = lambda: FIXTURE_NOW
    return app


# --- strategies -------------------------------------------------------------------------------------


def _codings_in_fixtures() -> list[dict]:
    """Real codings (RxNorm, LOINC, CVX, SNOMED ...) from the fixtures, so generated resources can match rules."""
    found: dict[str, dict] = {}

    def walk(value):
        if isinstance(value, dict):
            if isinstance(value.get("system"), str) and isinstance(value.get("code"), str):
                found[value["system"] + "|" + value["code"]] = value
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    for path in sorted(FIXTURES.glob("*.json")):
        walk(json.loads(path.read_text()))
    return list(found.values())


REAL_CODINGS = _codings_in_fixtures()
FIXTURE_CALLS = [json.loads(p.read_text()) for p in sorted(FIXTURES.glob("*-*.json"))]

json_leaves = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=24)
)
json_values = st.recursive(json_leaves, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4), max_leaves=16)

fhir_dates = st.sampled_from(["2026-11-23", "2026-11-20T08:00:00Z", "2026-11", "2026", "2025-01-01T00:00:00+05:00", "not-a-date", "9999-99-99", ""])
codings = st.sampled_from(REAL_CODINGS) | st.fixed_dictionaries({}, optional={"system": json_leaves, "code": json_leaves, "display": json_leaves})
concepts = st.fixed_dictionaries({}, optional={"coding": st.lists(codings, max_size=3) | json_values, "text": st.text(max_size=30) | json_leaves}) | json_leaves
quantities = st.fixed_dictionaries(
    {},
    optional={
        "value": st.floats(allow_nan=False, allow_infinity=False) | st.integers() | json_leaves,
        "unit": st.sampled_from(["ng/mL", "ug/L", "nmol/L", "mg", "mg/dL", "mmol/L", "kg", "cm", "%"]) | json_leaves,
        "code": st.sampled_from(["ng/mL", "ug/L", "nmol/L", "mg"]) | json_leaves,
        "comparator": st.sampled_from(["<", "<=", ">", ">="]) | json_leaves,
    },
)
reference_texts = st.sampled_from(["Patient/pt-cyp-1", "Patient/other", "Medication/m1", "#med", "Medication/"])
references = st.fixed_dictionaries({}, optional={"reference": reference_texts | json_leaves, "display": json_leaves}) | json_leaves
doses_and_rates = st.lists(st.fixed_dictionaries({}, optional={"doseQuantity": quantities}) | json_leaves, max_size=2) | json_leaves
dosages = st.lists(
    st.fixed_dictionaries({}, optional={"text": json_leaves, "route": concepts, "doseAndRate": doses_and_rates, "timing": json_values}),
    max_size=2,
) | json_leaves
# Generated ids never collide with the fixtures' ids, so an extra resource cannot replace a real one.
generated_ids = st.from_regex(r"g-[0-9]{1,6}", fullmatch=True) | json_leaves

FIELDS = {
    "id": generated_ids,
    "status": st.sampled_from(["active", "on-hold", "draft", "completed", "final", "preliminary", "booked", "preparation",
                               "entered-in-error", "stopped"]) | json_leaves,
    "intent": st.sampled_from(["order", "plan", "proposal"]) | json_leaves,
    "subject": references,
    "patient": references,
    "medicationCodeableConcept": concepts,
    "medicationReference": references,
    "code": concepts,
    "vaccineCode": concepts,
    "category": st.lists(concepts, max_size=2) | concepts,
    "clinicalStatus": concepts,
    "verificationStatus": concepts,
    "valueQuantity": quantities | json_leaves,
    "valueCodeableConcept": concepts,
    "valueString": json_leaves,
    "interpretation": st.lists(concepts, max_size=2) | json_leaves,
    "dosageInstruction": dosages,
    "authoredOn": fhir_dates | json_leaves,
    "effectiveDateTime": fhir_dates,
    "occurrenceDateTime": fhir_dates,
    "performedDateTime": fhir_dates,
    "performedPeriod": st.fixed_dictionaries({}, optional={"start": fhir_dates, "end": fhir_dates}) | json_leaves,
    "start": fhir_dates | json_leaves,
    "onsetDateTime": fhir_dates,
    "abatementDateTime": fhir_dates,
    "birthDate": fhir_dates | json_leaves,
    "gender": st.sampled_from(["female", "male"]) | json_leaves,
    "serviceType": st.lists(concepts, max_size=2) | json_leaves,
    "contained": st.lists(
        st.fixed_dictionaries({"resourceType": st.just("Medication"), "id": st.just("med")}, optional={"code": concepts}) | json_values, max_size=2
    ),
    "ingredient": st.lists(st.fixed_dictionaries({}, optional={"itemCodeableConcept": concepts}) | json_leaves, max_size=2),
}
RESOURCE_TYPES = ["MedicationRequest", "Medication", "Immunization", "Observation", "Condition", "Procedure", "ServiceRequest", "Appointment",
                  "Patient", "OperationOutcome", "Bundle"]
fhir_resources = st.fixed_dictionaries({"resourceType": st.sampled_from(RESOURCE_TYPES) | json_leaves}, optional=FIELDS)
entries = st.fixed_dictionaries({}, optional={"resource": fhir_resources | json_values, "fullUrl": json_leaves}) | json_values
bundles = st.fixed_dictionaries(
    {"resourceType": st.just("Bundle")},
    optional={
        "type": st.sampled_from(["searchset", "collection"]) | json_leaves,
        "entry": st.lists(entries, max_size=5) | json_leaves,
        "link": st.lists(st.fixed_dictionaries({
            "relation": st.sampled_from(["next", "self"]),
            "url": st.sampled_from(["https://evil.example.com/fhir/x?page=2", "MedicationRequest?page=2"]) | json_leaves,
        }), max_size=2) | json_leaves,
    },
)
prefetch_values = st.none() | bundles | fhir_resources | json_values
prefetches = st.dictionaries(st.sampled_from(PREFETCH_KEYS) | st.text(max_size=12), prefetch_values, max_size=8) | json_leaves
REFUSED_SERVERS = ["https://evil.example.com/fhir", "https://ehr.example.org.evil.com/fhir", "https://ehr.example.org@evil.com/fhir",
                   "http://ehr.example.org/fhir", "https://ehr.example.org/fhir/../x"]
fhir_servers = st.sampled_from([*REFUSED_SERVERS, "ftp://x"]) | json_leaves
contexts = st.fixed_dictionaries(
    {},
    optional={
        "userId": st.sampled_from(["Practitioner/1", ""]) | json_values,
        "patientId": st.sampled_from(["pt-cyp-1", "", "../x", "a/b?c#d"]) | json_values,
        "encounterId": json_values,
        "selections": st.lists(st.sampled_from(["MedicationRequest/draft-clari-1", "MedicationRequest/x", "x"]) | json_leaves, max_size=3) | json_values,
        "draftOrders": bundles | json_values,
    },
)
hook_bodies = st.fixed_dictionaries(
    {},
    optional={
        "hook": st.sampled_from(list(SERVICE_FOR_HOOK)) | json_leaves,
        "hookInstance": st.uuids().map(str) | json_leaves,
        "context": contexts | json_values,
        "prefetch": prefetches,
        "fhirServer": fhir_servers,
        "fhirAuthorization": st.fixed_dictionaries({}, optional={"access_token": json_leaves, "token_type": json_leaves}) | json_values,
        "extension": json_values,
    },
) | json_values


@st.composite
def mutated_calls(draw) -> tuple[str, dict]:
    """A real fixture call with its context and prefetch partly replaced by generated values."""
    call = copy.deepcopy(draw(st.sampled_from(FIXTURE_CALLS)))
    if draw(st.integers(0, 2)) == 0:  # most draws keep a valid context, to reach the data and rules below it
        call["context"].update(draw(contexts))
    for key, value in draw(st.dictionaries(st.sampled_from(PREFETCH_KEYS), prefetch_values, max_size=3)).items():
        call["prefetch"][key] = value
    if draw(st.booleans()):  # a server the allowlist refuses: the answer comes from prefetch, or 412
        call["fhirServer"] = draw(st.sampled_from(REFUSED_SERVERS))
        call["fhirAuthorization"] = {"access_token": draw(st.from_regex(r"[!-~]{1,40}", fullmatch=True))}
    return SERVICE_FOR_HOOK[call["hook"]], call


@st.composite
def garbage_added(draw) -> dict:
    """The clarithromycin call with generated entries appended to every bundle: the interaction must still show."""
    call = load_fixture("fires-cyp3a4-clarithromycin-order-select.json")
    bundles_in_call = [v for v in call["prefetch"].values() if v.get("resourceType") == "Bundle"]
    for bundle in [*bundles_in_call, call["context"]["draftOrders"]]:
        bundle["entry"] = bundle.get("entry", []) + draw(st.lists(entries, max_size=3))
    return call


# --- the properties -----------------------------------------------------------------------------------


def post_json(client, path: str, body):
    """POST any JSON value, null included (the test client's json= would send no body for None)."""
    return client.post(path, data=json.dumps(body), content_type="application/json")


def assert_answer(response, allowed: set[int] = ANSWERS) -> None:
    assert response.status_code in allowed, response.get_data(as_text=True)[:500]
    if response.status_code >= 400:
        body = response.get_json(force=True)
        assert response.mimetype == "application/fhir+json" and body["resourceType"] == "OperationOutcome"
    elif response.status_code == 200 and response.mimetype == "application/json":
        assert_valid_cds_response(response.get_json())


@pytest.fixture(scope="module")
def fuzz_app(tmp_path_factory):
    return make_fuzz_app(f"sqlite:///{tmp_path_factory.mktemp('fuzz')}/cards.sqlite3")


@pytest.fixture(scope="module")
def fuzz_client(fuzz_app):
    return fuzz_app.test_client()


@FUZZ_SETTINGS
@given(service_id=st.sampled_from([*SERVICE_IDS, "unknown-service"]), body=hook_bodies)
def test_any_json_body_gets_a_2xx_or_4xx(fuzz_client, service_id, body):
    assert_answer(post_json(fuzz_client, f"/cds-services/{service_id}", body))


@FUZZ_SETTINGS
@given(service_id=st.sampled_from(SERVICE_IDS), raw=st.binary(max_size=300),
       content_type=st.sampled_from(["application/json", "application/fhir+json", "text/plain", ""]))
def test_any_bytes_get_a_4xx(fuzz_client, service_id, raw, content_type):
    assert_answer(fuzz_client.post(f"/cds-services/{service_id}", data=raw, content_type=content_type or None), {200, 400, 412, 415})


@FUZZ_SETTINGS
@given(call=mutated_calls())
def test_any_context_and_prefetch_values_get_200_400_or_412(fuzz_client, call):
    service_id, body = call
    assert_answer(post_json(fuzz_client, f"/cds-services/{service_id}", body), {200, 400, 412})


@FUZZ_SETTINGS
@given(call=garbage_added())
def test_generated_resources_never_hide_the_interaction(fuzz_client, call):
    response = post_json(fuzz_client, "/cds-services/mtor-safety-order-select", call)
    assert_answer(response, {200})
    assert "cyp3a4-interaction" in topics_of(response.get_json())


@FUZZ_SETTINGS
@given(service_id=st.sampled_from(SERVICE_IDS), body=json_values)
def test_any_feedback_body_gets_200_or_400(fuzz_client, service_id, body):
    assert_answer(post_json(fuzz_client, f"/cds-services/{service_id}/feedback", body), {200, 400})


# --- schemathesis: requests generated from cds_service/openapi.yaml, against the app in-process -----------


def schema_cases(app):
    """(operation, mode) pairs worth generating: negative data needs something to negate (a body or a parameter)."""
    schema = schemathesis.openapi.from_wsgi("/openapi.yaml", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    return [(op, mode) for op in operations for mode in GenerationMode if mode is GenerationMode.POSITIVE or op.method == "post"]


@pytest.fixture(scope="module")
def generated_cases(fuzz_app):
    return schema_cases(fuzz_app)


def test_openapi_document_is_served_and_lists_every_route(fuzz_app, fuzz_client, generated_cases):
    response = fuzz_client.get("/openapi.yaml")
    assert response.status_code == 200 and response.mimetype == "application/yaml"
    operations = {(op.method.upper(), op.path) for op, _ in generated_cases}
    routes = {
        (method, rule.rule.replace("<service_id>", "{serviceId}"))
        for rule in fuzz_app.url_map.iter_rules()
        if rule.endpoint != "static"
        for method in rule.methods - {"HEAD", "OPTIONS"}
    }
    assert routes - {("GET", "/openapi.yaml")} <= operations


def _schema_check(strategy, where: str, failures: list[str]):
    """One operation's generated cases, each answer validated against the OpenAPI document; failures collected."""

    @settings(max_examples=25, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(case=strategy)
    def run(case):
        response = case.call()
        try:
            case.validate_response(response, checks=SCHEMA_CHECKS)
        except Exception as failure:  # collected, so one run reports every operation's failures
            failures.append(f"{where}: {str(failure)[:300]}")

    return run


def test_schemathesis_finds_no_server_error_or_nonconformance(generated_cases):
    failures: list[str] = []
    for operation, mode in generated_cases:
        where = f"{mode.value} {operation.method.upper()} {operation.path}"
        _schema_check(operation.as_strategy(generation_mode=mode), where, failures)()
    assert not failures, "\n".join(failures[:10])
