"""An audit of one realistic patient per labelled use through the hooks (2026-12, branch uses8): each test is a
defect it found, pinned on the response an EHR would get."""

from __future__ import annotations

from snapshots import ICD10CM, SNOMED, SURGICAL_PROCEDURE, coding, condition, hook_request, level, med, service_request


def cards_of(client, request):
    response = client.post(f"/cds-services/mtor-safety-{request['hook']}", json=request)
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_json()["cards"]


def topics(cards):
    return [c["source"]["topic"]["code"] for c in cards]


def afinitor_10():
    return med("everolimus 10 MG Oral Tablet [Afinitor]", rxnorm="845512", dose_mg=10)


def test_pancreatic_net_coded_c25_4_is_oncology_so_a_trough_gives_no_tsc_card(client):
    # Afinitor for a pancreatic NET is a fixed 10 mg dose with no trough target; C25.4 was not read, so the
    # patient was taken for a use-unknown one and got "above the 15 ng/mL limit: review the dose".
    pnet = condition(ICD10CM, "C25.4", "Malignant neoplasm of endocrine pancreas")
    pnet["code"]["coding"].append(coding(SNOMED, "253027008", "Malignant neuroendocrine tumor of pancreas"))
    request = hook_request(medications=[afinitor_10()], observations=[level("everolimus", 18)], conditions=[pnet])
    assert "trough-high" not in topics(cards_of(client, request))


def test_surgery_with_oral_sirolimus_and_no_use_on_record_is_planned_with_the_prescriber(client):
    # generic sirolimus, nothing on record says transplant: the card sent the clinician to "the transplant team"
    # (Rapamune's labelled kidney use was taken as the patient's); README: LAM or an unknown use -> the prescriber
    siro = med("sirolimus 1 MG Oral Tablet", rxnorm="349208", dose_mg=2)
    surgery = service_request("Laparoscopic cholecystectomy", 5, category=SURGICAL_PROCEDURE)
    hypertension = condition(ICD10CM, "I10", "Essential (primary) hypertension")
    [card] = [c for c in cards_of(client, hook_request(medications=[siro], service_requests=[surgery], conditions=[hypertension]))
              if c["source"]["topic"]["code"] == "surgery-timing"]
    assert "transplant team" not in card["summary"] + card["detail"] and "the prescriber" in card["summary"]
    # with a kidney transplant on record it is still the transplant team
    ktx = condition(ICD10CM, "Z94.0", "Kidney transplant status")
    [card] = [c for c in cards_of(client, hook_request(medications=[siro], service_requests=[surgery], conditions=[ktx]))
              if c["source"]["topic"]["code"] == "surgery-timing"]
    assert "the transplant team" in card["summary"]


def test_high_trough_for_fixed_dose_tsc_aml_does_not_send_to_the_tdm_formula(client):
    # Afinitor 10 mg for TSC with a renal angiomyolipoma: the label sets no trough target for it (mtor_drugs.json
    # note: "the card says so"); the card said "Reduce the dose as the label's therapeutic drug monitoring guidance
    # says (new dose = current dose x target trough / measured trough)" and "The label's upper trough limit is 15"
    tsc = condition(ICD10CM, "Q85.1", "Tuberous sclerosis")
    aml = condition(ICD10CM, "D17.71", "Benign lipomatous neoplasm of kidney")
    request = hook_request(medications=[afinitor_10()], observations=[level("everolimus", 18)], conditions=[tsc, aml])
    [card] = [c for c in cards_of(client, request) if c["source"]["topic"]["code"] == "trough-high"]
    assert "×" not in card["detail"] and "guidance says" not in card["detail"] and not card.get("suggestions")
    assert "sets no trough target" in card["detail"] and "No dose is computed" in card["detail"]
