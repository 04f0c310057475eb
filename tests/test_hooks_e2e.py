"""Each hook end to end through the Flask test client: request in, CDS Hooks 2.0 cards out."""

from __future__ import annotations

import copy

import pytest

from cds_assertions import assert_valid_cds_response
from conftest import FIXTURE_NOW, load_fixture
from snapshots import (
    NOW,
    core_topics,
    everolimus,
    hcg,
    hook_request,
    immunization,
    level,
    make_app,
    med,
    procedure,
    ref,
    service_request,
    sirolimus,
)


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    """One app for this module's tests (conftest's `client` and `call_hook` use it)."""
    return make_app(tmp_path_factory.mktemp("app"))


def clarithromycin(**kwargs):
    return med("clarithromycin 500 MG Oral Tablet", rxnorm="197517", **kwargs)


def mmr(**kwargs):
    return med("MMR", cvx="03", **kwargs)


def answer(call_hook, request, status=200):
    response = call_hook(request)
    assert response.status_code == status, response.get_data(as_text=True)
    body = response.get_json()
    if status == 200:
        assert_valid_cds_response(body)
    return body


def card(body, topic):
    [found] = [c for c in body["cards"] if c["source"]["topic"]["code"] == topic]
    return found


def deleted_ids(card):
    return [a["resourceId"] for s in card.get("suggestions", []) for a in s["actions"] if a["type"] == "delete"]


def test_builders_and_app_share_the_same_now():
    assert NOW == FIXTURE_NOW


# --- patient-view ------------------------------------------------------------------------------


def test_patient_view_on_everolimus_with_clarithromycin_is_critical(call_hook):
    clari = clarithromycin()
    body = answer(call_hook, hook_request("patient-view", medications=[everolimus(), clari]))
    assert core_topics(body) == ["cyp3a4-interaction"]
    interaction = card(body, "cyp3a4-interaction")
    assert interaction["indicator"] == "critical"
    assert "suggestions" not in interaction  # nothing is a draft: nothing to delete
    assert "clarithromycin" in interaction["detail"] and ref(clari) not in interaction["detail"]  # issue 13: no ids in text
    assert interaction["source"]["url"].startswith("https://")


def test_patient_view_cards_are_most_severe_first(call_hook):
    request = hook_request(
        "patient-view", medications=[everolimus()], observations=[level("everolimus", 21), hcg("positive", 3)]
    )
    body = answer(call_hook, request)
    assert core_topics(body) == ["pregnancy", "trough-high"]
    rank = {"critical": 0, "warning": 1, "info": 2}
    indicators = [rank[c["indicator"]] for c in body["cards"]]
    assert indicators == sorted(indicators) and indicators[0] == 0


def test_patient_view_trough_card_names_value_unit_and_date_but_no_resource_id(call_hook):
    high = level("everolimus", 18.2, "ug/L", days_ago=3)
    body = answer(call_hook, hook_request("patient-view", medications=[everolimus()], observations=[high]))
    trough = card(body, "trough-high")
    assert "18.2 ng/mL" in trough["summary"] and "20 Nov 2026" in trough["summary"]
    # issue 13: ids stay out of the text; the value as the lab wrote it goes through md_text ("18." escaped: it
    # could otherwise start an ordered list)
    assert ref(high) not in trough["detail"] and "18\\.2 ug/L" in trough["detail"]


def test_patient_view_planned_surgery_warns_without_suggestion(call_hook):
    body = answer(call_hook, hook_request("patient-view", medications=[everolimus()], service_requests=[service_request("Nephrectomy", 4)]))
    surgery = card(body, "surgery-timing")
    assert surgery["indicator"] == "warning" and "suggestions" not in surgery


def test_patient_view_planned_surgery_on_sirolimus_is_an_info_caution_without_suggestion(call_hook):
    # Rapamune sets no hold interval (issue 10): the label's warning, no computed dates, no one-click action.
    body = answer(call_hook, hook_request("patient-view", medications=[sirolimus()], service_requests=[service_request("Nephrectomy", 4)]))
    surgery = card(body, "surgery-timing")
    assert surgery["indicator"] == "info" and "suggestions" not in surgery


def test_patient_view_with_missing_optional_data_adds_checks_incomplete_info_card(call_hook):
    request = hook_request("patient-view", medications=[everolimus(), clarithromycin()])
    del request["prefetch"]["observations"]
    body = answer(call_hook, request)
    assert core_topics(body) == ["cyp3a4-interaction", "checks-incomplete"]
    assert card(body, "checks-incomplete")["indicator"] == "info"


# --- order-select ------------------------------------------------------------------------------


def test_order_select_shows_only_findings_that_rest_on_a_selected_order(call_hook):
    clari, vaccine = clarithromycin(draft=True), mmr(draft=True)
    request = hook_request("order-select", medications=[everolimus()], drafts=[clari, vaccine], selections=[ref(clari)])
    body = answer(call_hook, request)
    assert core_topics(body) == ["cyp3a4-interaction"]
    assert deleted_ids(card(body, "cyp3a4-interaction")) == [ref(clari)]


def test_order_select_counts_unselected_draft_mtor_order_as_a_medication(call_hook):
    draft_mtor, clari = everolimus(draft=True), clarithromycin(draft=True)
    request = hook_request("order-select", drafts=[draft_mtor, clari], selections=[ref(clari)])
    body = answer(call_hook, request)
    interaction = card(body, "cyp3a4-interaction")
    assert interaction["indicator"] == "critical"
    assert deleted_ids(interaction) == [ref(clari)]


def test_order_select_is_quiet_about_patient_level_findings_unrelated_to_the_selection(call_hook):
    request = hook_request(
        "order-select",
        medications=[everolimus(), clarithromycin()],
        observations=[level("everolimus", 25)],
        drafts=[med("levetiracetam 500 MG Oral Tablet", draft=True)],
    )
    assert answer(call_hook, request) == {"cards": []}


def test_order_select_of_draft_mtor_for_pregnant_patient_suggests_deleting_it(call_hook):
    draft = everolimus(draft=True)
    body = answer(call_hook, hook_request("order-select", drafts=[draft], observations=[hcg("positive", 5)]))
    pregnancy = card(body, "pregnancy")
    assert pregnancy["indicator"] == "critical"
    assert deleted_ids(pregnancy) == [ref(draft)]
    assert pregnancy["selectionBehavior"] == "at-most-one"


def test_order_select_of_live_vaccine_immunization_warns_and_suggests_deleting_it(call_hook):
    vaccine = immunization("Varivax", cvx="21")
    body = answer(call_hook, hook_request("order-select", medications=[sirolimus()], drafts=[vaccine]))
    assert core_topics(body) == ["live-vaccine"]
    assert deleted_ids(card(body, "live-vaccine")) == [ref(vaccine)]


def test_order_select_unrelated_selection_does_not_show_checks_incomplete(call_hook):
    request = hook_request("order-select", medications=[everolimus()], drafts=[med("levetiracetam 500 MG Oral Tablet", draft=True)])
    del request["prefetch"]["observations"]
    assert answer(call_hook, request) == {"cards": []}


def test_order_select_of_mtor_order_does_show_checks_incomplete(call_hook):
    request = hook_request("order-select", drafts=[everolimus(draft=True)])
    del request["prefetch"]["observations"]
    assert core_topics(answer(call_hook, request)) == ["checks-incomplete"]


# --- order-sign --------------------------------------------------------------------------------


def test_order_sign_checks_every_draft_and_each_suggestion_deletes_its_own_order(call_hook):
    clari, vaccine = clarithromycin(draft=True), mmr(draft=True)
    body = answer(call_hook, hook_request("order-sign", medications=[everolimus()], drafts=[clari, vaccine]))
    assert core_topics(body) == ["cyp3a4-interaction", "live-vaccine"]
    assert deleted_ids(card(body, "cyp3a4-interaction")) == [ref(clari)]
    assert deleted_ids(card(body, "live-vaccine")) == [ref(vaccine)]


def test_order_sign_draft_mtor_meeting_current_inhibitor_suggests_deleting_the_mtor_draft(call_hook):
    draft = sirolimus(draft=True)
    body = answer(call_hook, hook_request("order-sign", medications=[clarithromycin()], drafts=[draft]))
    assert deleted_ids(card(body, "cyp3a4-interaction")) == [ref(draft)]


def test_order_sign_draft_mtor_after_recent_surgery_suggests_deleting_it(call_hook):
    draft = everolimus(draft=True)
    body = answer(call_hook, hook_request("order-sign", drafts=[draft], procedures=[procedure("Nephrectomy", -5)]))
    surgery = card(body, "surgery-timing")
    assert deleted_ids(surgery) == [ref(draft)]


def test_order_sign_two_interacting_drafts_give_one_card_with_two_suggestions(call_hook):
    clari, itra = clarithromycin(draft=True), med("itraconazole 100 MG Oral Capsule", draft=True)
    body = answer(call_hook, hook_request("order-sign", medications=[everolimus()], drafts=[clari, itra]))
    interaction = card(body, "cyp3a4-interaction")
    assert sorted(deleted_ids(interaction)) == sorted([ref(clari), ref(itra)])
    assert interaction["selectionBehavior"] == "any"


# --- no mTOR inhibitor: always exactly {"cards": []} ----------------------------------------


def test_patient_on_no_mtor_inhibitor_gets_exactly_no_cards_on_every_hook(call_hook):
    worrying = dict(
        medications=[clarithromycin()],
        observations=[hcg("positive", 2), level("everolimus", 40)],
        service_requests=[service_request("Nephrectomy", 2)],
        drafts=[mmr(draft=True), med("carbamazepine 200 MG Oral Tablet", draft=True)],
    )
    for hook in ("patient-view", "order-select", "order-sign"):
        response = call_hook(hook_request(hook, **worrying))
        assert response.status_code == 200
        assert response.get_json() == {"cards": []}, hook


def test_patient_on_no_mtor_inhibitor_with_missing_data_still_gets_no_cards(call_hook):
    request = hook_request("patient-view", medications=[clarithromycin()])
    for key in ("observations", "conditions", "procedures"):
        del request["prefetch"][key]
    assert answer(call_hook, request) == {"cards": []}


def test_stopped_mtor_order_is_no_mtor_inhibitor(call_hook):
    request = hook_request("patient-view", medications=[everolimus(status="stopped"), clarithromycin()])
    assert answer(call_hook, request) == {"cards": []}


# --- malformed calls --------------------------------------------------------------------------


def test_order_select_without_selections_is_a_400_operation_outcome(call_hook):
    request = hook_request("order-select", drafts=[everolimus(draft=True)])
    del request["context"]["selections"]
    body = answer(call_hook, request, status=400)
    assert body["resourceType"] == "OperationOutcome"


def test_hook_sent_to_the_wrong_service_is_a_400(client):
    response = client.post("/cds-services/mtor-safety-order-sign", json=hook_request("patient-view"))
    assert response.status_code == 400


def test_unknown_service_is_a_404(client):
    assert client.post("/cds-services/nope", json=hook_request("patient-view")).status_code == 404


def test_a_renewal_whose_prior_prescription_is_version_specific_is_still_a_renewal(call_hook):
    """Found by the FHIR-path audit: priorPrescription ".../MedicationRequest/x/_history/3" (FHIR R4 allows a
    version-specific reference) was read as "_history/3", so the renewal was matched by date instead, to an August 5 mg
    order between: a same-dose renewal read as a dose change, 'drawn before steady state, recheck' instead of the
    label's dose for a trough above range."""
    request = load_fixture("fires-trough-high-renewal-same-dose-patient-view.json")
    entries = request["prefetch"]["medications"]["entry"]
    august = copy.deepcopy(next(e for e in entries if e["resource"]["status"] == "completed"))
    august["resource"].update(id="mr-eve-5-august", authoredOn="2026-08-01")
    august["resource"]["dosageInstruction"][0]["doseAndRate"][0]["doseQuantity"]["value"] = 5
    entries.append(august)
    request["prefetch"]["medications"]["total"] += 1
    expected = [c["summary"] for c in call_hook(request).get_json()["cards"]]
    assert "reduce to" in expected[0]  # the plain reference: a renewal of the June 10 mg order, at steady state
    prior = next(e["resource"]["priorPrescription"] for e in entries if e["resource"].get("priorPrescription"))
    prior["reference"] = f"https://ehr.example.org/fhir/{prior['reference']}/_history/3"
    assert [c["summary"] for c in call_hook(request).get_json()["cards"]] == expected
