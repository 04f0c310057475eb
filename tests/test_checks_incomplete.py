"""The checks-incomplete card: what could not be read, per resource type; findings beyond a card's cap ("and N more");
no resource ids in its text; and on order-select, a selected drug the checks weigh while the current medications
cannot be read (issue 11)."""

from __future__ import annotations

import re

import pytest

from cds_assertions import assert_valid_cds_response, topics_of
from cds_service import limits
from snapshots import SNOMED, condition, everolimus, hook_request, level, med

PATIENT_VIEW = "/cds-services/mtor-safety-patient-view"
ORDER_SELECT = "/cds-services/mtor-safety-order-select"
RESOURCE_ID = re.compile(r"\b[A-Z][A-Za-z]+/[A-Za-z0-9.\-]+")


def clarithromycin(**fields) -> dict:
    return med("clarithromycin 500 MG Oral Tablet", rxnorm="197517", **fields)


def unreadable_order(**fields) -> dict:
    """A MedicationRequest whose drug cannot be read (`contained` must be a list): it may be the mTOR inhibitor."""
    order = med(None, medicationReference={"reference": "#x"}, contained=5, **fields)
    del order["medicationCodeableConcept"]
    return order


def incomplete_card(answer: dict) -> dict:
    assert_valid_cds_response(answer)
    assert topics_of(answer)[-1] == "checks-incomplete", topics_of(answer)
    return answer["cards"][-1]


def test_unreadable_resources_are_counted_per_type_without_their_ids(client):
    broken = [level("everolimus", -3), level("everolimus", 12, effectiveDateTime="9999-12-31T23:59:59-14:00"),
              condition(SNOMED, "77386006", "Pregnant", onsetDateTime="0001-01-01T00:00:00+14:00")]
    body = hook_request("patient-view", medications=[everolimus()], observations=broken[:2], conditions=broken[2:])
    card = incomplete_card(client.post(PATIENT_VIEW, json=body).get_json())
    assert "- 2 Observations and 1 Condition could not be read" in card["detail"]
    assert "not valid FHIR" not in card["detail"] and "resource(s)" not in card["detail"]
    assert not RESOURCE_ID.search(card["detail"]), card["detail"]
    for resource in broken:
        assert resource["id"] not in card["detail"]
    assert card["summary"] == "Some mTOR inhibitor safety checks could not be run: data unavailable"


def test_another_patients_resources_are_said_apart_from_unreadable_ones(client):
    body = hook_request("patient-view", medications=[everolimus(), everolimus(patient="someone-else"),
                                                     unreadable_order()])
    detail = incomplete_card(client.post(PATIENT_VIEW, json=body).get_json())["detail"]
    assert "- 1 MedicationRequest could not be read" in detail
    assert "- 1 resource about another patient: left out" in detail
    assert "someone-else" not in detail


def test_findings_beyond_a_cards_cap_are_said_per_topic_as_and_n_more(client):
    extra = 5
    body = hook_request("patient-view", medications=[everolimus(), *(clarithromycin() for _ in range(limits.MAX_FINDINGS_PER_TOPIC + extra))])
    answer = client.post(PATIENT_VIEW, json=body).get_json()
    card = incomplete_card(answer)
    assert topics_of(answer)[0] == "cyp3a4-interaction"
    assert f"- CYP3A4/P-gp interaction: and {extra} more" in card["detail"]
    assert "could not be obtained" not in card["detail"]  # every datum was read: only the cap was hit
    assert card["summary"] == "More mTOR inhibitor findings than the cards list: review the full list in the chart"
    assert not RESOURCE_ID.search(card["detail"])


def test_below_the_cap_no_checks_incomplete_card(client):
    body = hook_request("patient-view", medications=[everolimus(), *(clarithromycin() for _ in range(limits.MAX_FINDINGS_PER_TOPIC))])
    assert "checks-incomplete" not in topics_of(client.post(PATIENT_VIEW, json=body).get_json())


def test_order_select_of_an_interacting_drug_with_an_unreadable_current_mtor_order_says_checks_incomplete(client):
    draft = clarithromycin(draft=True)
    body = hook_request("order-select", medications=[unreadable_order()], drafts=[draft])
    card = incomplete_card(client.post(ORDER_SELECT, json=body).get_json())
    assert topics_of(client.post(ORDER_SELECT, json=body).get_json()) == ["checks-incomplete"]
    assert "current medications" in card["detail"] and "1 MedicationRequest could not be read" in card["detail"]


def test_order_select_of_an_interacting_drug_with_an_unresolved_medication_says_checks_incomplete(client):
    current = med(None, medicationReference={"reference": "Medication/not-sent"})
    del current["medicationCodeableConcept"]
    body = hook_request("order-select", medications=[current], drafts=[clarithromycin(draft=True)])
    assert topics_of(client.post(ORDER_SELECT, json=body).get_json()) == ["checks-incomplete"]


@pytest.mark.parametrize("current", ["everolimus", "none"])
def test_order_select_of_a_drug_whose_medication_cannot_be_had_says_checks_incomplete(client, current):
    """The selected order may be clarithromycin (or the mTOR inhibitor itself): its Medication was neither prefetched nor
    fetchable, so an empty answer would read as "nothing interacts"."""
    selected = med(None, draft=True, medicationReference={"reference": "Medication/not-sent/_history/1"})
    del selected["medicationCodeableConcept"]
    body = hook_request("order-select", medications=[everolimus()] if current == "everolimus" else [], drafts=[selected])
    assert topics_of(client.post(ORDER_SELECT, json=body).get_json()) == ["checks-incomplete"]


def test_order_select_of_a_drug_the_checks_do_not_weigh_stays_silent(client):
    body = hook_request("order-select", medications=[unreadable_order()], drafts=[med("acetaminophen 500 MG Oral Tablet", rxnorm="198440", draft=True)])
    assert client.post(ORDER_SELECT, json=body).get_json() == {"cards": []}
    readable = hook_request("order-select", medications=[med("metformin 500 MG Oral Tablet", rxnorm="861007")], drafts=[clarithromycin(draft=True)])
    assert client.post(ORDER_SELECT, json=readable).get_json() == {"cards": []}  # no mTOR inhibitor: nothing to say
