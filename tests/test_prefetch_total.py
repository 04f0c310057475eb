"""A prefetched searchset whose `total` says more matches than it carries, with no next page: not all there is."""

from __future__ import annotations

import pytest

from cds_assertions import assert_valid_cds_response
from snapshots import bundle, core_topics, everolimus, hook_request, make_app, med, medication


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    return make_app(tmp_path_factory.mktemp("app"))


def clarithromycin(**kwargs):
    return med("clarithromycin 500 MG Oral Tablet", rxnorm="197517", **kwargs)


def topics(call_hook, request):
    response = call_hook(request)
    assert response.status_code == 200, response.get_data(as_text=True)
    body = response.get_json()
    assert_valid_cds_response(body)
    return [c["source"]["topic"]["code"] for c in body["cards"]]


def test_medications_total_without_the_entries_is_not_read_as_no_medications(call_hook):
    """Found by the EHR-integration audit: {"resourceType": "Bundle", "type": "searchset", "total": 3} (the count,
    no entries, no next link) read as "no current medications": a selected clarithromycin got {"cards": []}."""
    request = hook_request("order-select", drafts=[clarithromycin(draft=True)],
                           prefetch={"medications": {"resourceType": "Bundle", "type": "searchset", "total": 3}})
    assert topics(call_hook, request) == ["checks-incomplete"]


def test_observations_total_above_the_entries_says_the_lab_checks_are_incomplete(call_hook):
    request = hook_request("patient-view", medications=[everolimus()])
    request["prefetch"]["observations"]["total"] = 5
    assert topics(call_hook, request) == ["checks-incomplete"]


@pytest.mark.parametrize("total", [0, 1])
def test_a_total_the_entries_reach_is_complete(call_hook, total):
    request = hook_request("order-select", medications=[everolimus()][:total], drafts=[clarithromycin(draft=True)])
    request["prefetch"]["medications"]["total"] = total
    assert core_topics_of(call_hook, request) == (["cyp3a4-interaction"] if total else [])


def test_included_medications_are_not_matches(call_hook):
    """total counts the matches (search.mode match) only: one MedicationRequest and its included Medication."""
    order = everolimus()
    order.pop("medicationCodeableConcept")
    order["medicationReference"] = {"reference": "Medication/eve"}
    medications = bundle(order)
    medications["entry"].append({"resource": medication("eve", "everolimus 10 MG Oral Tablet", rxnorm="845507"), "search": {"mode": "include"}})
    medications["total"] = 2
    request = hook_request("order-select", drafts=[clarithromycin(draft=True)], prefetch={"medications": medications})
    assert "checks-incomplete" in topics(call_hook, request)
    medications["total"] = 1
    assert topics(call_hook, request) == ["cyp3a4-interaction"]


def core_topics_of(call_hook, request):
    response = call_hook(request)
    assert response.status_code == 200
    return core_topics(response.get_json())


def test_the_kits_prefetch_counts_matches_not_the_medications_it_adds():
    """`mtor-cds call --prefetch` reads referenced Medications into the medications Bundle: its total counted them, and
    the service (rightly) read the Bundle as cut short."""
    import re

    import responses

    from cds_service.devkit.hook_request import fetch_prefetch

    order = everolimus()
    order.pop("medicationCodeableConcept")
    order["medicationReference"] = {"reference": "Medication/eve"}
    base = "https://ehr.example.org/fhir"
    with responses.RequestsMock(assert_all_requests_are_fired=False) as fhir:
        fhir.add(responses.GET, re.compile(rf"{base}/MedicationRequest\?.*"), json=bundle(order))
        fhir.add(responses.GET, f"{base}/Medication/eve", json=medication("eve", "everolimus 10 MG Oral Tablet", rxnorm="845507"))
        prefetch = fetch_prefetch(base, "pt-1", {"medications": "MedicationRequest?patient={{context.patientId}}"})
    assert [e["resource"]["resourceType"] for e in prefetch["medications"]["entry"]] == ["MedicationRequest", "Medication"]
    assert prefetch["medications"]["total"] == 1
