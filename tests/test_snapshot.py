"""FHIR JSON -> PatientSnapshot: how medications are recognised, which orders count, what is dropped or skipped."""

from __future__ import annotations

import pytest

from cds_service.fhir.read import ENDED_DRAFT_STATUSES
from snapshots import (
    PATIENT_ID,
    SNOMED,
    bundle,
    condition,
    everolimus,
    hcg,
    hook_request,
    immunization,
    level,
    med,
    medication,
    ref,
    service_request,
    snapshot_of,
)


def orders_of(*medications, drafts=(), hook="order-sign", **kwargs):
    return snapshot_of(hook=hook, medications=medications, drafts=drafts, **kwargs).medications


def mtor_drug_of(resource, *extra_medication_resources):
    [order] = [o for o in orders_of(resource, *extra_medication_resources) if o.ref == ref(resource)]
    return order.mtor_drug


# --- medicationCodeableConcept -----------------------------------------------------------------


@pytest.mark.parametrize(
    "rxnorm, drug",
    [
        ("141704", "everolimus"),  # ingredient
        ("35302", "sirolimus"),  # ingredient
        ("845507", "everolimus"),  # SCD everolimus 10 MG Oral Tablet
        ("845512", "everolimus"),  # SBD everolimus 10 MG Oral Tablet [Afinitor]
        ("977436", "everolimus"),  # SBD [Zortress]
        ("360110", "sirolimus"),  # SCD sirolimus 2 MG Oral Tablet
        ("404432", "sirolimus"),  # SBD [Rapamune]
    ],
)
def test_mtor_inhibitor_recognised_by_rxnorm_code_alone(rxnorm, drug):
    assert mtor_drug_of(med(rxnorm=rxnorm)) == drug


@pytest.mark.parametrize(
    "text, drug",
    [
        ("Afinitor Disperz 2 mg tablet for oral suspension", "everolimus"),
        ("Zortress 0.75 mg tablet", "everolimus"),
        ("Rapamune 1 mg/mL oral solution", "sirolimus"),
        ("Fyarro 100 mg powder for injectable suspension", "sirolimus"),
        ("AFINITOR 10MG TAB", "everolimus"),
    ],
)
def test_mtor_inhibitor_recognised_by_brand_name_text_only(text, drug):
    assert mtor_drug_of(med(text)) == drug


def test_rxnorm_code_in_another_system_is_not_read_as_rxnorm():
    assert mtor_drug_of(med(None, id="mr-local", medicationCodeableConcept={"coding": [{"system": "urn:local", "code": "845507"}]})) is None


def test_everolimus_eluting_stent_is_not_an_mtor_inhibitor():
    assert mtor_drug_of(med("XIENCE everolimus-eluting coronary stent system")) is None


def test_sirolimus_topical_gel_is_not_an_mtor_inhibitor():
    assert mtor_drug_of(med("Hyftor (sirolimus topical gel) 0.2%")) is None


@pytest.mark.parametrize("text", ["sirolimus 0.1% ointment (compounded), apply to face", "sirolimus 0.2% cream", "sirolimus ophthalmic eye drops"])
def test_topical_and_eye_forms_of_sirolimus_are_not_mtor_therapy(text):
    assert mtor_drug_of(med(text)) is None


def test_sirolimus_oral_solution_stays_an_mtor_inhibitor():
    assert mtor_drug_of(med("sirolimus 1 MG/ML Oral Solution")) == "sirolimus"


def test_unrelated_drug_is_recognised_as_nothing():
    [order] = orders_of(med("levetiracetam 500 MG Oral Tablet", rxnorm="311289"))
    assert order.mtor_drug is None and order.concepts == ()


# --- medicationReference -----------------------------------------------------------------------


def test_medication_reference_to_contained_medication():
    request = med(
        None,
        medicationCodeableConcept=None,
        medicationReference={"reference": "#eve"},
        contained=[medication("eve", "Afinitor 5 mg tablet", rxnorm="845518")],
    )
    del request["medicationCodeableConcept"]
    assert mtor_drug_of(request) == "everolimus"


def test_medication_reference_to_medication_included_in_the_same_bundle():
    request = _by_reference("Medication/rapa-1")
    assert mtor_drug_of(request, medication("rapa-1", rxnorm="360110")) == "sirolimus"


def test_medication_reference_as_absolute_url_resolves_to_the_included_medication():
    request = _by_reference("https://ehr.example.org/fhir/Medication/rapa-2")
    assert mtor_drug_of(request, medication("rapa-2", rxnorm="360110")) == "sirolimus"


def test_medication_reference_by_ingredient_of_the_medication():
    ingredient_only = {
        "resourceType": "Medication",
        "id": "compounded-1",
        "ingredient": [{"itemCodeableConcept": {"coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "35302"}]}}],
    }
    assert mtor_drug_of(_by_reference("Medication/compounded-1"), ingredient_only) == "sirolimus"


def test_unresolvable_medication_reference_falls_back_to_its_display():
    assert mtor_drug_of(_by_reference("Medication/missing", display="everolimus 5 mg tablet")) == "everolimus"


def test_unresolvable_medication_reference_without_display_is_not_a_crash():
    [order] = orders_of(_by_reference("Medication/missing"))
    assert order.mtor_drug is None


def _by_reference(reference, display=None):
    request = med(None)
    del request["medicationCodeableConcept"]
    request["medicationReference"] = {"reference": reference, **({"display": display} if display else {})}
    return request


# --- which orders count ------------------------------------------------------------------------


@pytest.mark.parametrize("status", ["active", "on-hold"])
def test_current_orders_are_active_or_on_hold(status):
    assert [o.mtor_drug for o in orders_of(everolimus(status=status))] == ["everolimus"]


@pytest.mark.parametrize("status", ["stopped", "completed", "cancelled", "entered-in-error", "draft"])
def test_prefetched_orders_with_other_statuses_are_not_current(status):
    assert orders_of(everolimus(status=status)) == ()


def test_draft_orders_come_from_context_draft_orders():
    draft = everolimus(draft=True)
    [order] = orders_of(drafts=[draft])
    assert order.ref == ref(draft) and order.is_draft


def test_selected_draft_is_marked_selected_on_order_select():
    chosen, other = everolimus(draft=True), med("clarithromycin 500 MG Oral Tablet", draft=True)
    orders = {o.ref: o for o in orders_of(drafts=[chosen, other], hook="order-select", selections=[ref(chosen)])}
    assert orders[ref(chosen)].is_selected and not orders[ref(other)].is_selected


def test_draft_immunization_is_read_from_its_vaccine_code():
    vaccine = immunization("MMR", cvx="03")
    [order] = orders_of(drafts=[vaccine])
    assert order.ref == ref(vaccine) and order.is_draft
    assert [c.key for c in order.concepts] == ["mmr"]


def test_resigned_draft_replaces_its_prefetched_twin():
    current = everolimus(id="mr-same")
    resigned = everolimus(draft=True, id="mr-same")
    [order] = orders_of(current, drafts=[resigned])
    assert order.is_draft


@pytest.mark.parametrize("status", ["cancelled", "stopped", "completed", "entered-in-error"])
def test_a_draft_order_that_is_cancelled_or_stopped_orders_nothing_and_takes_its_prefetched_twin(status):
    """An EHR signing a discontinuation sends the order cancelled or stopped: nothing is being ordered."""
    clarithromycin = med("clarithromycin 500 MG Oral Tablet", rxnorm="197517", id="mr-clari")
    discontinued = med("clarithromycin 500 MG Oral Tablet", rxnorm="197517", id="mr-clari", status=status)
    never_started = everolimus(id="mr-eve-new", status=status)
    orders = orders_of(everolimus(id="mr-eve"), clarithromycin, drafts=[discontinued, never_started])
    assert [o.ref for o in orders] == ["MedicationRequest/mr-eve"]


def test_a_do_not_perform_medication_request_is_never_a_medication():
    """FHIR R4 MedicationRequest.doNotPerform: "do not give clarithromycin" or "do not give MMR" prohibits the drug;
    weighing it as given would fire the very card the prohibition already answers."""
    prohibition = med("clarithromycin 500 MG Oral Tablet", rxnorm="197517", id="mr-clari", doNotPerform=True)
    assert [o.ref for o in orders_of(everolimus(id="mr-eve"), prohibition)] == ["MedicationRequest/mr-eve"]
    no_mmr = med("measles, mumps and rubella virus vaccine", cvx="03", draft=True, doNotPerform=True)
    prefetched_twin = {**med("clarithromycin 500 MG Oral Tablet", rxnorm="197517", id="mr-clari")}
    signed_prohibition = {**prefetched_twin, "status": "draft", "doNotPerform": True}
    orders = orders_of(everolimus(id="mr-eve"), prefetched_twin, drafts=[no_mmr, signed_prohibition])
    assert [o.ref for o in orders] == ["MedicationRequest/mr-eve"]
    assert [o.ref for o in orders_of(everolimus(id="mr-eve"), {**prefetched_twin, "doNotPerform": False})] == [
        "MedicationRequest/mr-eve", "MedicationRequest/mr-clari"]


def test_a_do_not_perform_service_request_is_neither_a_procedure_nor_a_vaccination():
    no_surgery = service_request("Left partial nephrectomy", 4, status="draft", doNotPerform=True)
    no_vaccine = service_request("MMR vaccination", 0, status="draft", doNotPerform=True)
    snapshot = snapshot_of(hook="order-sign", medications=[everolimus()], drafts=[no_surgery, no_vaccine],
                           service_requests=[service_request("Nephrectomy", 5, doNotPerform=True)])
    assert snapshot.procedures == () and [o.mtor_drug for o in snapshot.medications] == ["everolimus"]


def test_the_readme_says_which_orders_order_nothing():
    from pathlib import Path

    readme = " ".join((Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8").split())
    assert ("A MedicationRequest or ServiceRequest with `doNotPerform: true` (a request that it *not* happen, such as "
            "\"do not give MMR\") is never read as an order, a medication or a procedure; a draft order that is cancelled, "
            "stopped, completed or entered in error orders nothing.") in readme
    assert ENDED_DRAFT_STATUSES["MedicationRequest"] == {"cancelled", "stopped", "completed", "entered-in-error"}


def test_a_draft_immunization_entered_in_error_orders_nothing_but_one_not_done_yet_is_weighed():
    """Immunization has no draft status: an EHR may send the vaccination about to be given as "not-done"."""
    in_error = {**immunization("MMR", cvx="03"), "status": "entered-in-error"}
    assert [o.mtor_drug for o in orders_of(everolimus(), drafts=[in_error])] == ["everolimus"]
    not_given_yet = immunization("MMR", cvx="03")
    assert not_given_yet["status"] == "not-done" and len(orders_of(everolimus(), drafts=[not_given_yet])) == 2


def test_a_draft_immunization_not_done_for_a_reason_orders_nothing():
    """not-done with a statusReason (immunity, medical precaution, refusal) records a vaccine not given."""
    not_given = {**immunization("MMR", cvx="03"), "statusReason": {"coding": [
        {"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "MEDPREC", "display": "medical precaution"}]}}
    assert [o.mtor_drug for o in orders_of(everolimus(), drafts=[not_given])] == ["everolimus"]


def test_draft_service_request_becomes_a_planned_procedure():
    draft = service_request("Nephrectomy", 3, status="draft")
    [event] = snapshot_of(hook="order-sign", drafts=[draft]).procedures
    assert event.ref == ref(draft) and event.is_planned and event.is_surgery and event.is_draft


# --- another patient's data, garbage ----------------------------------------------------------


def test_resources_of_another_patient_are_dropped_and_counted():
    snapshot = snapshot_of(
        hook="patient-view",
        medications=[everolimus(), everolimus(patient="someone-else")],
        observations=[level("everolimus", 30, subject={"reference": "Patient/someone-else"})],
        conditions=[condition(SNOMED, "77386006", "Pregnant", subject={"reference": "Patient/someone-else"})],
    )
    assert len(snapshot.medications) == 1
    assert snapshot.labs == () and snapshot.conditions == ()
    assert snapshot.skipped_resources == 3
    # a medication of another patient may be this patient's own under a wrong reference: the medications are not
    # complete (a robustness audit found an answer with none left reading as an all-clear)
    assert snapshot.unavailable == ("medications",)


def test_a_record_of_only_another_patients_medications_is_never_an_all_clear(client):
    body = hook_request("patient-view", medications=[everolimus(patient="someone-else")])
    response = client.post("/cds-services/mtor-safety-patient-view", json=body)
    assert response.status_code == 200
    [card] = response.get_json()["cards"]
    assert card["source"]["topic"]["code"] == "checks-incomplete"
    assert "1 resource about another patient: left out" in card["detail"] and "current medications" in card["detail"]


def test_absolute_patient_reference_of_this_patient_is_kept():
    mine = everolimus(subject={"reference": f"https://ehr.example.org/fhir/Patient/{PATIENT_ID}"})
    assert len(orders_of(mine)) == 1


def test_garbage_resources_are_skipped_and_counted_while_the_rest_is_read():
    broken_service_request = service_request("Nephrectomy", 3, category=None)
    broken_service_request["category"] = 5
    broken_hcg = hcg("positive", 2)
    broken_hcg["interpretation"] = 7
    broken_order = med(None, medicationReference={"reference": "#x"}, contained=5)
    del broken_order["medicationCodeableConcept"]
    snapshot = snapshot_of(
        hook="patient-view",
        medications=[everolimus(), broken_order],
        observations=[broken_hcg, level("everolimus", 20)],
        service_requests=[broken_service_request],
    )
    assert snapshot.skipped_resources == 3
    assert [o.mtor_drug for o in snapshot.medications] == ["everolimus"]
    assert len(snapshot.labs) == 1


def test_non_resource_entries_are_ignored_without_a_crash():
    request = hook_request(medications=[everolimus()])
    request["prefetch"]["observations"] = {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": "nonsense"}, 42, {}]}
    snapshot = snapshot_of(request)
    assert snapshot.labs == ()


# --- patient and what could not be had ---------------------------------------------------------


def test_patient_demographics_are_read():
    snapshot = snapshot_of(hook="patient-view")
    assert snapshot.gender == "female" and snapshot.birth_date.isoformat() == "1994-03-02"


def test_missing_prefetch_key_without_a_server_is_unavailable():
    request = hook_request(medications=[everolimus()])
    del request["prefetch"]["observations"]
    assert snapshot_of(request).unavailable == ("observations",)


def test_null_prefetch_means_no_data_not_unavailable():
    request = hook_request(medications=[everolimus()])
    request["prefetch"]["observations"] = None
    assert snapshot_of(request).unavailable == ()


def test_operation_outcome_prefetch_without_a_server_is_unavailable():
    request = hook_request(medications=[everolimus()])
    request["prefetch"]["conditions"] = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "timeout"}]}
    assert snapshot_of(request).unavailable == ("conditions",)


def test_paginated_prefetch_without_a_server_is_partly_unavailable():
    request = hook_request(medications=[everolimus()])
    request["prefetch"]["observations"] = bundle(level("everolimus", 9), next_url="https://ehr.example.org/fhir/Observation?page=2")
    snapshot = snapshot_of(request)
    assert snapshot.unavailable == ("observations",)
    assert len(snapshot.labs) == 1  # the first page is still read


def test_versioned_reference_to_this_patient_is_kept():
    mine = everolimus(subject={"reference": f"Patient/{PATIENT_ID}/_history/3"})
    assert len(orders_of(mine)) == 1


def test_patient_resource_of_another_patient_is_not_read():
    request = hook_request(medications=[everolimus()])
    request["prefetch"]["patient"] = {"resourceType": "Patient", "id": "someone-else", "gender": "male", "birthDate": "2020-01-01"}
    snapshot = snapshot_of(request)
    assert snapshot.gender is None and snapshot.birth_date is None
