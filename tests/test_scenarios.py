"""Every fixture in fhir_fixtures/scenarios.json, end to end through the Flask app, as the table says."""

from __future__ import annotations

import pytest

from cds_assertions import assert_valid_cds_response, topics_of
from conftest import SCENARIOS, load_fixture


@pytest.mark.parametrize("scenario", SCENARIOS["scenarios"], ids=lambda s: s["file"])
def test_scenario_answers_as_the_table_says(call_hook, scenario):
    response = call_hook(load_fixture(scenario["file"]))
    assert response.status_code == 200, response.get_data(as_text=True)
    body = response.get_json()
    assert_valid_cds_response(body)
    assert topics_of(body) == scenario["expect_topics"]
    if scenario["expect_indicator"]:
        assert body["cards"][0]["indicator"] == scenario["expect_indicator"]


def test_oid_forms_of_code_systems_are_read_like_their_fhir_uris(call_hook):
    body = load_fixture("fires-cyp3a4-clarithromycin-order-select.json")
    oid = {"http://www.nlm.nih.gov/research/umls/rxnorm": "urn:oid:2.16.840.1.113883.6.88"}
    for bundle_entry in body["prefetch"]["medications"]["entry"] + body["context"]["draftOrders"]["entry"]:
        for coding in bundle_entry["resource"]["medicationCodeableConcept"]["coding"]:
            coding["system"] = oid[coding["system"]]
            coding.pop("display", None)  # codes only: no name to fall back on
    body["context"]["draftOrders"]["entry"][0]["resource"]["medicationCodeableConcept"].pop("text", None)
    assert topics_of(call_hook(body).get_json()) == ["cyp3a4-interaction"]


def test_brand_name_concept_code_is_recognised(call_hook):
    body = load_fixture("fires-cyp3a4-clarithromycin-order-select.json")
    current = body["prefetch"]["medications"]["entry"][0]["resource"]
    current["medicationCodeableConcept"] = {"coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "845509"}]}
    assert topics_of(call_hook(body).get_json()) == ["cyp3a4-interaction"]


def test_one_malformed_field_does_not_drop_the_mtor_order(call_hook):
    body = load_fixture("fires-cyp3a4-clarithromycin-order-select.json")
    everolimus = body["prefetch"]["medications"]["entry"][0]["resource"]
    everolimus["dosageInstruction"][0]["timing"]["repeat"]["periodUnit"] = ["d"]  # not a code: ignore the field only
    everolimus["dosageInstruction"][0]["doseAndRate"][0]["doseQuantity"]["code"] = 5
    assert topics_of(call_hook(body).get_json()) == ["cyp3a4-interaction"]


@pytest.mark.parametrize(("answer", "fires"), [("Pregnant", True), ("Not pregnant", False), ("Possible pregnancy", False)])
def test_text_only_pregnancy_status_is_read_by_its_whole_answer(call_hook, answer, fires):
    body = load_fixture("fires-pregnancy-hcg-order-select.json")
    hcg = body["prefetch"]["observations"]["entry"][0]["resource"]
    hcg["code"] = {"coding": [{"system": "http://loinc.org", "code": "82810-3", "display": "Pregnancy status"}]}
    hcg["valueCodeableConcept"] = {"text": answer}
    assert ("pregnancy" in topics_of(call_hook(body).get_json())) is fires


@pytest.mark.parametrize("unit", ["ug/l", "NG/ML", "mcg/L"])
def test_trough_units_are_read_whatever_their_case(call_hook, unit):
    body = load_fixture("fires-trough-high-patient-view.json")
    level = next(e["resource"] for e in body["prefetch"]["observations"]["entry"] if e["resource"]["id"] == "lvl-10b")
    level["valueQuantity"] = {"value": 18.2, "unit": unit}
    assert topics_of(call_hook(body).get_json()) == ["trough-high"]


def test_unidentifiable_medication_is_not_answered_with_an_all_clear(call_hook):
    body = load_fixture("fires-live-vaccine-mmr-order-sign.json")
    entries = body["prefetch"]["medications"]["entry"]
    body["prefetch"]["medications"]["entry"] = [e for e in entries if e["resource"]["resourceType"] != "Medication"]
    body["prefetch"]["medications"]["entry"][0]["resource"]["medicationReference"].pop("display")
    cards = call_hook(body).get_json()["cards"]  # no fhirServer: Medication/rapa-1 cannot be read
    assert topics_of({"cards": cards}) == ["checks-incomplete"]
    assert "current medications" in cards[0]["detail"]
