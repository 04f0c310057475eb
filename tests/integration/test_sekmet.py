"""End to end against a real FHIR R4 server (SEKMET): the service fetches each fixture patient's data itself
(no prefetch) and answers the cards scenarios.json expects; `mtor-cds call --prefetch` gathers the same data."""

from __future__ import annotations

import json

import pytest
import requests

from cds_service import create_app
from cds_service.cli import main
from cds_service.devkit.fixtures import fixture_bundles, post_bundle
from cds_service.devkit.hook_request import build_hook_request, fetch_prefetch
from conftest import FIXTURE_NOW, SCENARIOS, SERVICE_FOR_HOOK, load_fixture
from integration.conftest import FIXTURES

SYNTHEA_IDENTIFIER = "aa25e0d083cfe2ba"  # 22_Neil_Terry: no mTOR inhibitor


@pytest.fixture
def service(sekmet, tmp_path):
    app = create_app(
        allowed_fhir_servers=(sekmet,),
        require_jwt=False,
        fhir_without_token=True,  # SEKMET here is an open test server: the kit's calls give no fhirAuthorization
        fhir_deadline_s=10.0,
        database_url=f"sqlite:///{tmp_path}/cards.sqlite3",
    )
    app.extensions["mtor_cds"].clock = lambda: FIXTURE_NOW
    return app.test_client()


def request_without_prefetch(fixture: dict, fhir_server: str) -> dict:
    context = fixture["context"]
    return build_hook_request(
        fixture["hook"], context["patientId"], user_id=context["userId"], fhir_server=fhir_server,
        draft_orders=context.get("draftOrders"), selections=context.get("selections"), appointments=context.get("appointments"),
    )


def topics(response) -> list[str]:
    assert response.status_code == 200, response.get_data(as_text=True)
    return [card["source"]["topic"]["code"] for card in response.get_json()["cards"]]


@pytest.mark.parametrize("scenario", SCENARIOS["scenarios"], ids=lambda s: s["file"])
def test_service_fetching_from_sekmet_answers_as_the_table_says(service, sekmet, scenario):
    fixture = load_fixture(scenario["file"])
    body = request_without_prefetch(fixture, sekmet)
    assert "prefetch" not in body
    response = service.post(f"/cds-services/{SERVICE_FOR_HOOK[fixture['hook']]}", json=body)
    assert topics(response) == scenario["expect_topics"]
    if scenario["expect_indicator"]:
        assert response.get_json()["cards"][0]["indicator"] == scenario["expect_indicator"]


@pytest.mark.parametrize("scenario", SCENARIOS["scenarios"], ids=lambda s: s["file"])
def test_prefetch_gathered_from_sekmet_answers_as_the_table_says(service, sekmet, scenario):
    fixture = load_fixture(scenario["file"])
    service_id = SERVICE_FOR_HOOK[fixture["hook"]]
    templates = service.application.extensions["mtor_cds"].services[service_id].prefetch
    body = request_without_prefetch(fixture, sekmet)
    del body["fhirServer"]  # the service must answer from the prefetch alone
    body["prefetch"] = fetch_prefetch(sekmet, fixture["context"]["patientId"], templates)
    assert topics(service.post(f"/cds-services/{service_id}", json=body)) == scenario["expect_topics"]


def test_synthea_patient_without_mtor_inhibitor_gets_no_cards(service, sekmet):
    found = requests.get(f"{sekmet}/Patient", params={"identifier": SYNTHEA_IDENTIFIER}, timeout=10).json()
    patient_id = found["entry"][0]["resource"]["id"]
    conditions = requests.get(f"{sekmet}/Condition", params={"patient": patient_id}, timeout=10).json()
    assert conditions["total"] > 0  # the transaction's urn:uuid references now point at the stored patient
    body = build_hook_request("patient-view", patient_id, fhir_server=sekmet)
    assert topics(service.post("/cds-services/mtor-safety-patient-view", json=body)) == []


def test_loading_the_fixtures_again_changes_nothing(sekmet):
    def count(resource_type: str) -> int:
        return requests.get(f"{sekmet}/{resource_type}", params={"_summary": "count"}, timeout=10).json()["total"]

    before = count("MedicationRequest")
    for fixture in fixture_bundles(FIXTURES):
        if not fixture.name.startswith("synthea/"):
            post_bundle(sekmet, fixture.bundle)  # the PUTs again: the same ids are updated, none added
    assert count("MedicationRequest") == before
    answer = requests.get(f"{sekmet}/MedicationRequest/mr-eve-1", timeout=10).json()
    assert answer["status"] == "active"


def test_cli_call_with_prefetch_from_sekmet(sekmet, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("CDS_REQUIRE_JWT", "false")
    monkeypatch.setenv("CDS_DATABASE_URL", f"sqlite:///{tmp_path}/cli.sqlite3")
    monkeypatch.setenv("CDS_ALLOWED_FHIR_SERVERS", sekmet)
    monkeypatch.setenv("CDS_FHIR_WITHOUT_TOKEN", "true")
    code = main(["call", "patient-view", "--patient", "pt-cyp-2", "--fhir", sekmet, "--prefetch", "--json"])
    cards = json.loads(capsys.readouterr().out)["cards"]
    assert code == 0
    assert [(c["source"]["topic"]["code"], c["indicator"]) for c in cards] == [("cyp3a4-interaction", "warning")]


def test_referenced_medications_come_with_the_search_from_a_server_that_lists_the_include(service, sekmet, caplog):
    """SEKMET's CapabilityStatement lists MedicationRequest:medication: the sirolimus order's Medication arrives with
    the search (`_include`), so the log line shows no separate Medication read."""
    statement = requests.get(f"{sekmet}/metadata", timeout=10).json()
    listed = {i for rest in statement["rest"] for r in rest.get("resource", []) for i in r.get("searchInclude", [])}
    assert "MedicationRequest:medication" in listed
    fixture = load_fixture("fires-surgery-lam-appointment-book.json")
    caplog.set_level("INFO", logger="mtor_cds")
    body = request_without_prefetch(fixture, sekmet)
    assert topics(service.post(f"/cds-services/{SERVICE_FOR_HOOK[fixture['hook']]}", json=body)) == ["surgery-timing"]
    lines = [json.loads(r.getMessage()) if r.getMessage().startswith("{") else getattr(r, "fields", {}) for r in caplog.records]
    queried = [q[0] for fields in lines if isinstance(fields, dict) for q in fields.get("fhir_queries", [])]
    assert "MedicationRequest" in queried and "Medication" not in queried
