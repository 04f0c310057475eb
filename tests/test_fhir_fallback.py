"""Prefetch first, then the EHR's FHIR server (mocked with `responses`) for whatever is missing."""

from __future__ import annotations

import json
import re
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
import responses

from cds_assertions import assert_valid_cds_response
from cds_service.fhir import client as fhir_client
from snapshots import PATIENT_ID, bundle, core_topics, everolimus, hook_request, level, make_app, med, patient_resource


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    """One app for this module's tests (conftest's `client` and `call_hook` use it)."""
    return make_app(tmp_path_factory.mktemp("app"))

BASE = "https://ehr.example.org/fhir"
TOKEN = "tok-7f3a"


class FakeFhirServer:
    """Answers GETs under BASE from a table: "Type/id" or "Type" (searches), optionally "?page=N"."""

    def __init__(self, mock: responses.RequestsMock):
        self.routes: dict[str, tuple[int, dict]] = {}
        mock.add_callback(responses.GET, re.compile(re.escape(BASE) + r"/.*"), callback=self._answer)
        self.mock = mock

    def serve(self, path: str, body: dict | str, status: int = 200) -> None:
        self.routes[path] = (status, body)

    def serve_empty_searches(self) -> None:
        for resource_type in ("MedicationRequest", "MedicationStatement", "Observation", "Condition", "Procedure", "ServiceRequest", "Appointment"):
            self.routes.setdefault(resource_type, (200, bundle()))
        self.routes.setdefault(f"Patient/{PATIENT_ID}", (200, patient_resource()))

    def _answer(self, request):
        parts = urlsplit(request.url)
        path = parts.path[len(urlsplit(BASE).path) + 1 :]
        page = parse_qs(parts.query).get("page")
        key = f"{path}?page={page[0]}" if page else path
        status, body = self.routes.get(key, (404, {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "not-found"}]}))
        return status, {"Content-Type": "application/fhir+json"}, body if isinstance(body, str) else json.dumps(body)

    @property
    def urls(self) -> list[str]:
        return [unquote(call.request.url) for call in self.mock.calls]

    @property
    def paths(self) -> list[str]:
        return [urlsplit(url).path[len(urlsplit(BASE).path) + 1 :] for url in self.urls]

    @property
    def authorizations(self) -> set[str | None]:
        return {call.request.headers.get("Authorization") for call in self.mock.calls}


@pytest.fixture
def fhir():
    """A FHIR server without batch (its CapabilityStatement already read): the parallel GETs; batch in test_fhir_batch.py."""
    fhir_client.remember_capability(BASE, batch=False)
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield FakeFhirServer(mock)


def with_server(request: dict, server: str = BASE) -> dict:
    request["fhirServer"] = server
    request["fhirAuthorization"] = {
        "access_token": TOKEN,
        "token_type": "Bearer",
        "expires_in": 300,
        "scope": "patient/*.read",
        "subject": "mtor-cds",
        "patient": PATIENT_ID,
    }
    return request


def without_prefetch(hook: str = "patient-view", **resources) -> dict:
    request = hook_request(hook, **resources)
    del request["prefetch"]
    return with_server(request)


def clarithromycin():
    return med("clarithromycin 500 MG Oral Tablet", rxnorm="197517")


def ok(response) -> dict:
    assert response.status_code == 200, response.get_data(as_text=True)
    body = response.get_json()
    assert_valid_cds_response(body)
    return body


# --- no prefetch: every template is queried ----------------------------------------------------


def test_without_prefetch_every_template_is_queried_with_the_bearer_token(client, call_hook, fhir):
    fhir.serve_empty_searches()
    templates = client.get("/cds-services").get_json()["services"][0]["prefetch"]
    assert call_hook(without_prefetch()).status_code == 200
    expected = {f"{BASE}/{t.replace('{{context.patientId}}', PATIENT_ID)}" for t in templates.values()}
    assert sorted(fhir.urls) == sorted(expected)
    assert fhir.authorizations == {f"Bearer {TOKEN}"}


def test_the_core_queries_are_exactly_what_the_readme_says(call_hook, fhir):
    fhir.serve_empty_searches()
    call_hook(without_prefetch())
    assert f"{BASE}/Patient/{PATIENT_ID}" in fhir.urls
    assert f"{BASE}/MedicationRequest?patient={PATIENT_ID}&status=active,on-hold&_count=200" in fhir.urls
    assert f"{BASE}/MedicationStatement?patient={PATIENT_ID}&status=active,intended,on-hold&_count=200" in fhir.urls
    [observations] = [u for u in fhir.urls if "/Observation?" in u]
    codes = parse_qs(urlsplit(observations).query)["code"][0].split(",")
    assert {"50544-6", "29247-4", "82810-3", "2106-3", "2571-8", "8302-2"} <= set(codes)


def test_fetched_data_feeds_the_rules(call_hook, fhir):
    fhir.serve("MedicationRequest", bundle(everolimus(), clarithromycin()))
    fhir.serve_empty_searches()
    body = ok(call_hook(without_prefetch()))
    assert core_topics(body) == ["cyp3a4-interaction"]
    assert body["cards"][0]["indicator"] == "critical"


def test_patient_id_is_url_encoded_in_queries(call_hook, fhir):
    fhir.serve_empty_searches()
    request = without_prefetch()
    request["context"]["patientId"] = "a&b=c"
    call_hook(request)
    raw = [call.request.url for call in fhir.mock.calls if "/MedicationRequest?" in call.request.url]
    assert raw and all("patient=a%26b%3Dc&" in url for url in raw)


# --- pagination --------------------------------------------------------------------------------


def test_paginated_search_follows_next_links(call_hook, fhir):
    fhir.serve("MedicationRequest", bundle(everolimus(), next_url=f"{BASE}/MedicationRequest?patient={PATIENT_ID}&page=2"))
    fhir.serve("MedicationRequest?page=2", bundle(clarithromycin()))
    fhir.serve_empty_searches()
    body = ok(call_hook(without_prefetch()))
    assert core_topics(body) == ["cyp3a4-interaction"]
    assert fhir.paths.count("MedicationRequest") == 2


def test_prefetched_bundle_with_next_link_gets_its_further_pages_fetched(call_hook, fhir):
    request = with_server(hook_request("patient-view"))
    request["prefetch"]["medications"] = bundle(everolimus(), next_url=f"{BASE}/MedicationRequest?patient={PATIENT_ID}&page=2")
    fhir.serve("MedicationRequest?page=2", bundle(clarithromycin()))
    body = ok(call_hook(request))
    assert core_topics(body) == ["cyp3a4-interaction"]
    assert fhir.urls == [f"{BASE}/MedicationRequest?patient={PATIENT_ID}&page=2"]
    assert fhir.authorizations == {f"Bearer {TOKEN}"}


def test_next_link_to_another_host_is_not_followed(call_hook, fhir):
    request = with_server(hook_request("patient-view"))
    request["prefetch"]["medications"] = bundle(everolimus(), clarithromycin(), next_url="https://evil.example.com/fhir/MedicationRequest?page=2")
    body = ok(call_hook(request))
    assert fhir.urls == []
    assert core_topics(body) == ["cyp3a4-interaction", "checks-incomplete"]


def test_search_cut_at_the_page_limit_is_reported_incomplete(tmp_path, fhir):
    client = make_app(tmp_path, fhir_max_pages=2).test_client()
    request = with_server(hook_request("patient-view"))
    request["prefetch"]["medications"] = bundle(everolimus(), next_url=f"{BASE}/MedicationRequest?patient={PATIENT_ID}&page=2")
    fhir.serve("MedicationRequest?page=2", bundle(med("levetiracetam"), next_url=f"{BASE}/MedicationRequest?patient={PATIENT_ID}&page=3"))
    fhir.serve("MedicationRequest?page=3", bundle(clarithromycin()))
    body = ok(client.post("/cds-services/mtor-safety-patient-view", json=request))
    assert fhir.paths.count("MedicationRequest") == 1  # page 2 read, page 3 beyond the limit
    assert "checks-incomplete" in core_topics(body)


# --- Medication references ---------------------------------------------------------------------


def test_medication_reference_is_resolved_by_reading_the_medication(call_hook, fhir):
    by_reference = clarithromycin()
    del by_reference["medicationCodeableConcept"]
    by_reference["medicationReference"] = {"reference": "Medication/eve-1"}
    request = with_server(hook_request("patient-view", medications=[clarithromycin(), by_reference]))
    request["prefetch"]["medications"] = bundle(by_reference, clarithromycin())
    everolimus = {"coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "845507"}]}
    fhir.serve("Medication/eve-1", {"resourceType": "Medication", "id": "eve-1", "code": everolimus})
    body = ok(call_hook(request))
    assert fhir.urls == [f"{BASE}/Medication/eve-1"]
    assert fhir.authorizations == {f"Bearer {TOKEN}"}
    assert core_topics(body) == ["cyp3a4-interaction"]


def test_medication_that_cannot_be_read_is_reported_incomplete(call_hook, fhir):
    by_reference = clarithromycin()
    del by_reference["medicationCodeableConcept"]
    by_reference["medicationReference"] = {"reference": "Medication/unknown-1"}
    request = with_server(hook_request("patient-view", medications=[everolimus(), by_reference]))
    fhir.serve("Medication/unknown-1", {"resourceType": "OperationOutcome", "issue": [{"severity": "fatal", "code": "exception"}]}, status=500)
    body = ok(call_hook(request))
    assert fhir.paths == ["Medication/unknown-1"]
    assert "checks-incomplete" in core_topics(body)


@pytest.mark.parametrize("reference", ["Medication/eve-3/_history/2", f"{BASE}/Medication/eve-3/_history/2"])
def test_a_version_specific_medication_reference_names_that_medication(call_hook, fhir, reference):
    """FHIR R4 references may carry /_history/[vid]: the everolimus behind one must not read as "unnamed medication"."""
    by_reference = clarithromycin()
    del by_reference["medicationCodeableConcept"]
    by_reference["medicationReference"] = {"reference": reference}
    included = {"resourceType": "Medication", "id": "eve-3", "code": {"text": "Afinitor 10 mg tablet"}}
    request = with_server(hook_request("patient-view"))
    request["prefetch"]["medications"] = bundle(by_reference, clarithromycin(), included)
    assert core_topics(ok(call_hook(request))) == ["cyp3a4-interaction"]
    assert fhir.urls == []


@pytest.mark.parametrize("reference", [{"reference": "urn:uuid:6f1c9a3e-0d3b-4f4e-9a59-2d4b8f3f1d11"}, {"reference": "#not-there"},
                                       {"identifier": {"system": "urn:example:formulary", "value": "eve-10"}}])
def test_a_medication_reference_no_one_can_follow_says_checks_incomplete(call_hook, fhir, reference):
    by_reference = clarithromycin()
    del by_reference["medicationCodeableConcept"]
    by_reference["medicationReference"] = reference
    request = hook_request("patient-view", medications=[everolimus(), by_reference])
    assert "checks-incomplete" in core_topics(ok(call_hook(request)))


def outcome_entry(severity: str, code: str) -> dict:
    return {"resource": {"resourceType": "OperationOutcome", "issue": [{"severity": severity, "code": code}]},
            "search": {"mode": "outcome"}}


@pytest.mark.parametrize("severity, code", [("warning", "incomplete"), ("error", "processing"), ("information", "too-costly")])
def test_a_searchset_whose_outcome_says_it_is_incomplete_is_not_an_all_clear(call_hook, fhir, severity, code):
    """An OperationOutcome entry in a searchset that reports an error or cut-short results: what came is not all."""
    request = hook_request("patient-view", medications=[everolimus()])
    request["prefetch"]["medications"]["entry"].append(outcome_entry(severity, code))
    body = ok(call_hook(request))
    assert "checks-incomplete" in core_topics(body)
    quiet = hook_request("patient-view", medications=[everolimus()])
    quiet["prefetch"]["medications"]["entry"].append(outcome_entry("information", "informational"))
    assert "checks-incomplete" not in core_topics(ok(call_hook(quiet)))


def test_included_medication_is_not_read_again(call_hook, fhir):
    by_reference = clarithromycin()
    del by_reference["medicationCodeableConcept"]
    by_reference["medicationReference"] = {"reference": "Medication/eve-2"}
    included = {"resourceType": "Medication", "id": "eve-2", "code": {"text": "Afinitor 10 mg tablet"}}
    request = with_server(hook_request("patient-view"))
    request["prefetch"]["medications"] = bundle(by_reference, clarithromycin(), included)
    body = ok(call_hook(request))
    assert fhir.urls == []
    assert core_topics(body) == ["cyp3a4-interaction"]


# --- partial prefetch, null, OperationOutcome ----------------------------------------------


def test_partial_prefetch_fetches_only_the_missing_keys(call_hook, fhir):
    request = with_server(hook_request("patient-view", medications=[everolimus()]))
    del request["prefetch"]["observations"]
    del request["prefetch"]["appointments"]
    fhir.serve_empty_searches()
    ok(call_hook(request))
    assert sorted(fhir.paths) == ["Appointment", "Observation"]


def test_null_prefetch_is_not_fetched(call_hook, fhir):
    request = with_server(hook_request("patient-view", medications=[everolimus()]))
    request["prefetch"]["observations"] = None
    request["prefetch"]["conditions"] = None
    body = ok(call_hook(request))
    assert fhir.urls == []
    assert "checks-incomplete" not in core_topics(body)  # null means "no data", not "could not check"


def test_operation_outcome_in_prefetch_is_fetched(call_hook, fhir):
    request = with_server(hook_request("patient-view", medications=[everolimus()]))
    request["prefetch"]["observations"] = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "timeout"}]}
    fhir.serve("Observation", bundle(level("everolimus", 19)))
    body = ok(call_hook(request))
    assert fhir.paths == ["Observation"]
    assert core_topics(body) == ["trough-high"]


def test_full_prefetch_makes_no_query(call_hook, fhir):
    ok(call_hook(with_server(hook_request("patient-view", medications=[everolimus()]))))
    assert fhir.urls == []


# --- 412 ---------------------------------------------------------------------------------------


def test_no_prefetch_and_no_fhir_server_is_412(call_hook):
    request = hook_request("patient-view")
    del request["prefetch"]
    response = call_hook(request)
    assert response.status_code == 412
    outcome = response.get_json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert "medications" in outcome["issue"][0]["diagnostics"]


def test_medications_operation_outcome_without_fhir_server_is_412(call_hook):
    request = hook_request("patient-view")
    request["prefetch"]["medications"] = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "exception"}]}
    assert call_hook(request).status_code == 412


def test_fhir_server_failing_on_medications_is_412(call_hook, fhir):
    fhir.serve("MedicationRequest", {"resourceType": "OperationOutcome", "issue": [{"severity": "fatal", "code": "exception"}]}, status=500)
    fhir.serve_empty_searches()
    assert call_hook(without_prefetch()).status_code == 412


def test_fhir_server_off_the_allowlist_is_never_called_and_gives_412(call_hook, fhir):
    request = without_prefetch()
    request["fhirServer"] = "https://elsewhere.example.net/fhir"
    assert call_hook(request).status_code == 412
    assert fhir.urls == []


# --- optional data failing -----------------------------------------------------------------------


def test_failing_optional_query_adds_checks_incomplete_and_keeps_other_cards(call_hook, fhir):
    fhir.serve("MedicationRequest", bundle(everolimus(), clarithromycin()))
    fhir.serve("Observation", {"resourceType": "OperationOutcome", "issue": [{"severity": "fatal", "code": "exception"}]}, status=500)
    fhir.serve_empty_searches()
    body = ok(call_hook(without_prefetch()))
    assert core_topics(body) == ["cyp3a4-interaction", "checks-incomplete"]
    [incomplete] = [c for c in body["cards"] if c["source"]["topic"]["code"] == "checks-incomplete"]
    assert incomplete["indicator"] == "info"
    assert "lab results" in incomplete["detail"]


def test_invalid_json_from_the_server_counts_as_unavailable(call_hook, fhir):
    fhir.serve("MedicationRequest", bundle(everolimus(), clarithromycin()))
    fhir.serve("Condition", "<html>Service temporarily unavailable</html>")
    fhir.serve_empty_searches()
    body = ok(call_hook(without_prefetch()))
    assert core_topics(body) == ["cyp3a4-interaction", "checks-incomplete"]
    [incomplete] = [c for c in body["cards"] if c["source"]["topic"]["code"] == "checks-incomplete"]
    assert "conditions" in incomplete["detail"]


# --- long records: a server that pages at 20 whatever _count asks ------------------------------------


def test_every_search_template_sets_count():
    from cds_service.limits import SEARCH_PAGE_SIZE
    from cds_service.services import prefetch_templates
    from snapshots import knowledge

    searches = {k: t for k, t in prefetch_templates(knowledge()).items() if "?" in t}
    assert len(searches) == 7 and SEARCH_PAGE_SIZE == 200
    assert all(parse_qs(urlsplit(t).query)["_count"] == ["200"] for t in searches.values()), searches


def test_a_long_record_from_a_server_that_pages_at_20_is_read_whole(call_hook, fhir):
    from snapshots import SNOMED, condition

    conditions = [condition(SNOMED, "38341003", "Hypertension") for _ in range(201)] + [condition(SNOMED, "19943007", "Cirrhosis of liver")]
    pages = [conditions[i : i + 20] for i in range(0, len(conditions), 20)]
    for n, page in enumerate(pages, start=1):
        following = f"{BASE}/Condition?patient={PATIENT_ID}&page={n + 1}" if n < len(pages) else None
        fhir.serve("Condition" if n == 1 else f"Condition?page={n}", bundle(*page, next_url=following))
    fhir.serve("MedicationRequest", bundle(everolimus()))
    fhir.serve_empty_searches()
    body = ok(call_hook(without_prefetch()))
    topics = [c["source"]["topic"]["code"] for c in body["cards"]]
    assert "checks-incomplete" not in topics
    assert "hepatic-impairment" in topics  # the cirrhosis on page 11 was read
    assert fhir.paths.count("Condition") == 11


@pytest.mark.parametrize("value", [{"resourceType": "Patient", "id": "x"}, {"resourceType": "MedicationRequest", "id": "m"}])
def test_a_prefetch_that_is_not_the_bundle_its_search_asks_for_is_not_read_as_no_medications(call_hook, value):
    """A search template's prefetch is a Bundle; a single resource in its place (a Patient for the medications) is not the
    patient's medications, so without a FHIR server to ask the call cannot be answered (412), never as "none"."""
    request = hook_request("patient-view", medications=[everolimus()])
    request["prefetch"]["medications"] = value
    response = call_hook(request)
    assert response.status_code == 412
    assert "not the FHIR Bundle or resource its template asks for" in response.get_json()["issue"][0]["diagnostics"]


def batch_response_of(searchset: dict) -> dict:
    """A prefetch value as an EHR that prefetches with one batch may pass it on: the batch-response, whose entry holds
    the search's Bundle."""
    return {"resourceType": "Bundle", "type": "batch-response", "entry": [{"resource": searchset, "response": {"status": "200 OK"}}]}


def test_a_batch_response_of_search_bundles_in_prefetch_is_not_read_as_no_medications(call_hook):
    """Found by the FHIR-path audit: a medications prefetch holding a batch-response (its entry the MedicationRequest
    searchset) was read as a Bundle of no MedicationRequests: the clarithromycin with everolimus got no card at all and
    no checks-incomplete. Without a FHIR server to ask, the call cannot be answered (412), and says why."""
    request = hook_request("order-select", medications=[everolimus()], drafts=[med("clarithromycin 500 MG Oral Tablet", rxnorm="197517", draft=True)])
    request["prefetch"]["medications"] = batch_response_of(request["prefetch"]["medications"])
    response = call_hook(request)
    assert response.status_code == 412
    assert "its prefetch Bundle holds Bundles, not the MedicationRequest resources" in response.get_json()["issue"][0]["diagnostics"]


def test_a_batch_response_of_search_bundles_in_prefetch_is_fetched_from_the_server(call_hook, fhir):
    request = with_server(hook_request("order-select", medications=[everolimus()],
                                       drafts=[med("clarithromycin 500 MG Oral Tablet", rxnorm="197517", draft=True)]))
    fhir.serve("MedicationRequest", request["prefetch"]["medications"])
    request["prefetch"]["medications"] = batch_response_of(request["prefetch"]["medications"])
    assert core_topics(ok(call_hook(request))) == ["cyp3a4-interaction"]
    assert fhir.paths == ["MedicationRequest"]


def test_a_patient_prefetch_of_another_type_is_not_the_patient(call_hook):
    request = hook_request("patient-view", medications=[everolimus()])
    request["prefetch"]["patient"] = {"resourceType": "Practitioner", "id": "dr-lee"}
    body = ok(call_hook(request))
    assert "checks-incomplete" in core_topics(body)


def test_the_ended_order_a_renewal_renews_is_read_from_the_server(call_hook, fhir):
    """Found by the FHIR-path audit: the medications search returns active orders only, so a routine renewal whose prior
    10 mg order has completed read as a new start, and a trough of 18 ng/mL drawn after it got 'drawn before steady
    state: recheck' instead of the label's dose. The order named by priorPrescription is read when the data lacks it."""
    from conftest import load_fixture

    request = load_fixture("fires-trough-high-renewal-same-dose-patient-view.json")
    expected = [c["summary"] for c in ok(call_hook(request))["cards"]]
    assert "reduce to" in expected[0]
    medications = request["prefetch"]["medications"]
    [june] = [e["resource"] for e in medications["entry"] if e["resource"]["status"] == "completed"]
    medications["entry"] = [e for e in medications["entry"] if e["resource"] is not june]
    medications["total"] = len(medications["entry"])
    without_server = [c["summary"] for c in ok(call_hook(request))["cards"]]
    assert "reduce to" not in without_server[0]  # no server: read as a start, as before
    fhir.serve(f"MedicationRequest/{june['id']}", june)
    assert [c["summary"] for c in ok(call_hook(with_server(request)))["cards"]] == expected
    assert fhir.paths == [f"MedicationRequest/{june['id']}"]


def test_the_readme_says_the_renewed_order_is_read():
    from pathlib import Path

    from cds_service.fhir.gather import MAX_PRIOR_READS

    readme = " ".join((Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8").split())
    assert (f"The order a renewal renews (`priorPrescription`), when the data lacks it, is read from the FHIR server (at most "
            f"{MAX_PRIOR_READS} per call; kept only if it has ended") in readme


@pytest.mark.parametrize("entry", [5, 1.5, True, None, "x", {"a": 1}])
def test_a_prefetch_bundle_whose_entry_is_not_a_list_is_a_failed_prefetch_not_a_500(call_hook, entry):
    """Found by the fuzz test in CI: the nested-Bundle check iterated `entry` whatever it was, and `"entry": 5` gave a
    500. Such a Bundle is not the search's data: with no server it is named on the checks-incomplete card."""
    request = hook_request("patient-view", medications=[everolimus()])
    request["prefetch"]["conditions"] = {"resourceType": "Bundle", "type": "searchset", "entry": entry}
    response = call_hook(request)
    assert response.status_code == 200, response.get_data(as_text=True)[:300]
    assert "checks-incomplete" in core_topics(response.get_json())
