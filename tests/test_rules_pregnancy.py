"""check_pregnancy in isolation: evidence of a current pregnancy while taking or starting an mTOR inhibitor."""

from __future__ import annotations

import dataclasses

import pytest

from cds_service.findings import Severity, Topic
from cds_service.rules.pregnancy import check_pregnancy
from snapshots import (
    ICD10CM,
    INTERPRETATION,
    LOINC,
    SNOMED,
    coding,
    concept,
    condition,
    date,
    everolimus,
    hcg,
    hook_request,
    knowledge,
    observation,
    order,
    patient_resource,
    plain_snapshot,
    pregnancy_status,
    procedure,
    ref,
    rule_findings,
    sirolimus,
    snapshot_of,
)


def pregnancy(*, observations=(), conditions=(), medications=None, drafts=()):
    medications = [everolimus()] if medications is None else medications
    return rule_findings(
        check_pregnancy, hook="order-sign", medications=medications, observations=observations, conditions=conditions, drafts=drafts
    )


# --- conditions ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "system, code",
    [
        (SNOMED, "77386006"),  # Pregnant
        (SNOMED, "72892002"),  # Normal pregnancy (what Synthea writes)
        (ICD10CM, "Z33.1"),  # Pregnant state, incidental
        (ICD10CM, "Z32.01"),  # Encounter for pregnancy test, result positive
        (ICD10CM, "Z34.00"),  # prefix Z34
        (ICD10CM, "O09.511"),  # prefix O09
        (ICD10CM, "Z3A.12"),  # prefix Z3A
    ],
)
def test_active_pregnancy_condition_is_critical(system, code):
    pregnant = condition(system, code, "pregnancy")
    [finding] = pregnancy(conditions=[pregnant])
    assert finding.topic is Topic.PREGNANCY
    assert finding.severity is Severity.CRITICAL
    assert finding.evidence[0].ref == ref(pregnant)


def test_icd10_z33_is_not_a_prefix_so_elective_termination_z33_2_does_not_fire():
    assert pregnancy(conditions=[condition(ICD10CM, "Z33.2", "Encounter for elective termination of pregnancy")]) == []


def test_pregnancy_code_in_another_system_does_not_fire():
    assert pregnancy(conditions=[condition("http://example.org/local", "77386006", "local code")]) == []


@pytest.mark.parametrize(
    "status_fields",
    [
        {"clinical": "resolved"},
        {"clinical": "inactive"},
        {"clinical": None, "abatementDateTime": date(-200)},
        {"clinical": "active", "verification": "refuted"},
        {"clinical": "active", "verification": "entered-in-error"},
    ],
    ids=["resolved", "inactive", "abated-no-status", "refuted", "entered-in-error"],
)
def test_pregnancy_condition_that_is_not_current_does_not_fire(status_fields):
    assert pregnancy(conditions=[condition(SNOMED, "72892002", "Normal pregnancy", **status_fields)]) == []


@pytest.mark.parametrize("verification", ["unconfirmed", "provisional", "differential"])
def test_an_unconfirmed_pregnancy_condition_asks_to_confirm_and_offers_no_removal(client, verification):
    """FHIR R4 condition-ver-status: unconfirmed (and provisional, differential) is not sufficient evidence to treat as
    confirmed: a warning to confirm pregnancy status, never the critical card with "remove the order"."""
    possible = condition(SNOMED, "72892002", "Normal pregnancy", verification=verification)
    [finding] = pregnancy(conditions=[possible], medications=[], drafts=[everolimus(draft=True)])
    assert finding.severity is Severity.WARNING and finding.unconfirmed and finding.hcg_cutoff_iu_per_l is None
    body = hook_request("order-sign", drafts=[everolimus(draft=True)], conditions=[possible])
    [card] = [c for c in client.post("/cds-services/mtor-safety-order-sign", json=body).get_json()["cards"]
              if c["source"]["topic"]["code"] == "pregnancy"]
    assert card["indicator"] == "warning" and card["summary"].startswith("Possible pregnancy (unconfirmed)")
    assert "recorded as not confirmed" in card["detail"] and "suggestions" not in card
    confirmed = condition(SNOMED, "72892002", "Normal pregnancy", verification="confirmed")
    assert pregnancy(conditions=[confirmed], medications=[], drafts=[everolimus(draft=True)])[0].severity is Severity.CRITICAL


def test_pregnancy_condition_without_clinical_status_or_abatement_counts_as_active():
    [finding] = pregnancy(conditions=[condition(SNOMED, "72892002", "Normal pregnancy", clinical=None)])
    assert finding.severity is Severity.CRITICAL


# --- pregnancy status observation (LOINC 82810-3) --------------------------------------------------


def test_pregnant_status_within_280_days_fires():
    [finding] = pregnancy(observations=[pregnancy_status(True, days_ago=279)])
    assert finding.severity is Severity.CRITICAL


def test_pregnant_status_older_than_280_days_does_not_fire():
    assert pregnancy(observations=[pregnancy_status(True, days_ago=281)]) == []


def test_not_pregnant_status_does_not_fire():
    assert pregnancy(observations=[pregnancy_status(False, days_ago=3)]) == []


@pytest.mark.parametrize("snomed, loinc_answer, display", [("77386006", "LA15173-0", "Pregnant"), ("60001007", "LA26683-5", "Not pregnant")])
def test_the_loinc_answers_of_pregnancy_status_read_as_their_snomed_equivalents(snomed, loinc_answer, display):
    """The HL7 IPS value set for 82810-3 codes the answer in LOINC (LA15173-0 ~ 77386006, LA26683-5 ~ 60001007)."""
    as_loinc = pregnancy_status(display == "Pregnant", days_ago=1)
    as_loinc["valueCodeableConcept"] = concept(None, coding("http://loinc.org", loinc_answer, display))
    if display == "Pregnant":
        [finding] = pregnancy(observations=[as_loinc])
        assert finding.severity is Severity.CRITICAL and finding.evidence[0].ref == ref(as_loinc)
    else:  # a later "Not pregnant" outweighs an earlier positive test, as the SNOMED-coded answer does
        assert pregnancy(observations=[hcg("positive", days_ago=5), as_loinc]) == []
        assert pregnancy(observations=[hcg("positive", days_ago=5)]) != []


def test_a_pregnancy_status_coded_with_the_older_loinc_11449_6_is_read_like_82810_3():
    """EHRs and C-CDA still send pregnancy status as LOINC 11449-6: "Pregnant" fires, "Not pregnant" outweighs a
    positive test (a scenario audit: a 'Pregnant' status coded 11449-6 gave no pregnancy card)."""
    pregnant, not_pregnant = pregnancy_status(True, days_ago=2), pregnancy_status(False, days_ago=1)
    for status in (pregnant, not_pregnant):
        status["code"] = concept("Pregnancy status", coding("http://loinc.org", "11449-6", "Pregnancy status"))
    [finding] = pregnancy(observations=[pregnant])
    assert finding.severity is Severity.CRITICAL and finding.evidence[0].ref == ref(pregnant)
    assert pregnancy(observations=[hcg("positive", days_ago=5), not_pregnant]) == []


# --- hCG ---------------------------------------------------------------------------------------


def test_positive_hcg_within_30_days_by_result_code_fires():
    test = hcg("positive", days_ago=5)
    [finding] = pregnancy(observations=[test])
    assert finding.evidence[0].ref == ref(test)


def test_positive_hcg_dated_by_the_end_of_its_effective_period_fires():
    """Dates audit: an Observation dated by an effectivePeriod with only its end (R4 effective[x]) and no issued read
    as undated, so a positive hCG two days ago was never the newest result and gave no card."""
    test = hcg("positive", days_ago=2)
    test["effectivePeriod"] = {"end": test.pop("effectiveDateTime")}
    [finding] = pregnancy(observations=[test])
    assert finding.severity is Severity.CRITICAL and finding.evidence[0].ref == ref(test)


def test_positive_hcg_older_than_30_days_gives_only_an_info_recheck():
    # lookback.json hcg-test 30 days (policy): stale evidence never drives the critical card
    [finding] = pregnancy(observations=[hcg("positive", days_ago=31)])
    assert finding.severity is Severity.INFO and finding.stale_after_days == 30


def test_positive_hcg_older_than_a_pregnancy_says_nothing():
    assert pregnancy(observations=[hcg("positive", days_ago=300)]) == []


def test_pregnancy_condition_older_than_280_days_gives_only_an_info_recheck():
    # lookback.json pregnancy-condition 280 days (ACOG Committee Opinion 700)
    [finding] = pregnancy(conditions=[condition(SNOMED, "77386006", "Pregnant", onset_days_ago=300)])
    assert finding.severity is Severity.INFO and finding.stale_after_days == 280


def test_pregnancy_condition_within_280_days_is_critical():
    [finding] = pregnancy(conditions=[condition(SNOMED, "77386006", "Pregnant", onset_days_ago=200)])
    assert finding.severity is Severity.CRITICAL and finding.stale_after_days is None


# --- quantitative hCG (lookback.json hcg_quantitative: interpretation, then referenceRange, then 5 IU/L) -------


def quantitative(value, days_ago, *, unit="m[IU]/mL", loinc="21198-7", high=None, interpretation=None):
    fields = {"valueQuantity": {"value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit}}
    if high is not None:
        fields["referenceRange"] = [{"high": {"value": high, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit}}]
    if interpretation:
        fields["interpretation"] = [concept(None, coding(INTERPRETATION, interpretation))]
    return observation(loinc, days_ago, text="hCG quantitative", **fields)


def test_later_negative_quantitative_hcg_outweighs_an_earlier_positive():
    assert pregnancy(observations=[hcg("positive", days_ago=13), quantitative(2, 5, high=5, interpretation="N")]) == []


def test_quantitative_interpretation_high_is_positive_even_below_the_fallback_cutoff():
    [finding] = pregnancy(observations=[quantitative(3, 2, interpretation="H")])
    assert finding.severity is Severity.CRITICAL


def test_quantitative_value_above_the_labs_reference_range_is_positive():
    assert pregnancy(observations=[quantitative(40, 2, high=5)])


def test_quantitative_value_within_the_labs_reference_range_is_negative():
    assert pregnancy(observations=[hcg("positive", days_ago=10), quantitative(6, 2, high=8.3)]) == []


def test_quantitative_serum_value_below_5_iu_per_l_with_no_range_is_negative():
    assert pregnancy(observations=[hcg("positive", days_ago=10), quantitative(4, 2, unit="IU/L")]) == []


def test_quantitative_value_between_5_and_the_unknown_upper_limit_is_indeterminate_not_negative():
    # No referenceRange and no interpretation: 5-25 IU/L is indeterminate (MERITER-HCG: retest in 48 h), so the
    # earlier positive still stands.
    [finding] = pregnancy(observations=[hcg("positive", days_ago=10), quantitative(12, 2)])
    assert finding.evidence[0].result == "positive"


def test_urine_quantitative_hcg_has_no_fallback_cutoff():
    [finding] = pregnancy(observations=[hcg("positive", days_ago=10), quantitative(1, 2, loinc="25372-4")])
    assert finding.evidence[0].result == "positive"


def test_positive_hcg_by_loinc_answer_code_fires():
    value = concept(None, coding(LOINC, "LA6576-8", "Positive"))
    assert pregnancy(observations=[hcg(None, days_ago=2, valueCodeableConcept=value)])


def test_positive_hcg_by_interpretation_fires():
    interpretation = [concept(None, coding(INTERPRETATION, "POS", "Positive"))]
    assert pregnancy(observations=[hcg(None, days_ago=2, interpretation=interpretation)])


def test_hcg_reported_as_a_boolean_is_read():
    """FHIR R4 Observation.valueBoolean: a qualitative test reported as detected (true) or not (false)."""
    [finding] = pregnancy(observations=[hcg(None, days_ago=2, valueBoolean=True)])
    assert finding.severity is Severity.CRITICAL
    assert pregnancy(observations=[hcg("positive", days_ago=5), hcg(None, days_ago=1, valueBoolean=False)]) == []


def test_positive_hcg_by_value_string_fires():
    assert pregnancy(observations=[hcg(None, days_ago=2, valueString="Positive")])


def test_quantitative_hcg_with_positive_interpretation_fires():
    interpretation = [concept(None, coding(INTERPRETATION, "POS"))]
    quantity = {"value": 1200, "unit": "m[IU]/mL"}
    assert pregnancy(observations=[hcg(None, days_ago=2, loinc="21198-7", valueQuantity=quantity, interpretation=interpretation)])


def test_negative_hcg_does_not_fire():
    assert pregnancy(observations=[hcg("negative", days_ago=2)]) == []
    assert pregnancy(observations=[hcg(None, days_ago=2, valueString="negative")]) == []


def test_later_negative_hcg_outweighs_earlier_positive():
    assert pregnancy(observations=[hcg("positive", days_ago=10), hcg("negative", days_ago=2)]) == []


def test_earlier_negative_does_not_outweigh_later_positive():
    assert pregnancy(observations=[hcg("negative", days_ago=10), hcg("positive", days_ago=2)])


def test_later_not_pregnant_status_outweighs_pregnant_status():
    assert pregnancy(observations=[pregnancy_status(True, days_ago=100), pregnancy_status(False, days_ago=10)]) == []


def test_later_negative_test_outweighs_an_older_pregnancy_condition():
    old = condition(SNOMED, "72892002", "Normal pregnancy", onset_days_ago=400)
    assert pregnancy(conditions=[old], observations=[hcg("negative", days_ago=3)]) == []


def test_cdc_race_code_2106_3_white_is_not_an_hcg_test():
    race = observation(
        "2106-3",
        days_ago=2,
        system="urn:oid:2.16.840.1.113883.6.238",
        text="White",
        valueCodeableConcept=concept("Positive", coding(SNOMED, "10828004", "Positive")),
    )
    assert pregnancy(observations=[race]) == []


def test_hcg_2106_3_with_loinc_system_is_an_hcg_test():
    assert pregnancy(observations=[hcg("positive", days_ago=2, loinc="2106-3")])


def test_future_dated_positive_test_is_ignored():
    assert pregnancy(observations=[hcg("positive", days_ago=-5)]) == []


# --- which mTOR order, which source ------------------------------------------------------------


def test_pregnancy_finding_prefers_the_draft_mtor_order():
    draft = everolimus(draft=True)
    [finding] = pregnancy(observations=[hcg("positive", 1)], medications=[everolimus()], drafts=[draft])
    assert finding.mtor.ref == ref(draft)


def test_pregnancy_with_sirolimus_cites_rapamune_and_12_weeks_contraception():
    [finding] = pregnancy(observations=[hcg("positive", 1)], medications=[sirolimus()])
    assert finding.source.key == "RAPAMUNE-POP"
    assert finding.contraception_weeks == 12


def test_pregnancy_with_everolimus_cites_afinitor_and_8_weeks_contraception():
    [finding] = pregnancy(observations=[hcg("positive", 1)])
    assert finding.source.key == "AFINITOR-PI"
    assert finding.contraception_weeks == 8


def test_pregnancy_without_any_evidence_gives_no_finding():
    assert pregnancy() == []


def test_pregnancy_rule_alone_is_total_on_a_patient_without_mtor_inhibitor():
    with_evidence = snapshot_of(hook="patient-view", medications=[everolimus()], observations=[hcg("positive", 1)])
    no_mtor = dataclasses.replace(with_evidence, medications=())
    assert check_pregnancy(no_mtor, knowledge()) == []


def test_pregnancy_rule_accepts_a_hand_built_snapshot_with_no_evidence():
    assert check_pregnancy(plain_snapshot(order("Rapamune 1 mg tablet")), knowledge()) == []


def test_stale_pregnancy_card_is_info_asks_for_a_recheck_and_offers_no_deletion():
    from cds_service.cards import render_cards
    snapshot = snapshot_of(hook="order-sign", drafts=[everolimus(draft=True)], observations=[hcg("positive", days_ago=40)])
    [card] = render_cards(check_pregnancy(snapshot, knowledge()), snapshot)
    assert card.indicator == "info" and "confirm" in card.summary and not card.suggestions


# --- a quantitative hCG at or above the cut-off that the lab did not interpret (a scenario audit: 1500 mIU/mL gave no
# pregnancy card): no positive cut-off is sourced, so it is not read as positive; it asks to confirm ------------------


@pytest.mark.parametrize("unit", ["m[IU]/mL", "mIU/mL", "IU/L"])
def test_an_uninterpreted_quantitative_hcg_at_or_above_the_cutoff_warns_and_asks_to_confirm(unit):
    [finding] = pregnancy(observations=[quantitative(1500, 3, unit=unit)])
    assert finding.severity is Severity.WARNING and finding.hcg_cutoff_iu_per_l == 5
    assert finding.evidence[0].result == "indeterminate" and finding.evidence[0].value_as_written == f"1500 {unit}"


def test_definite_evidence_wins_over_an_uninterpreted_result():
    [finding] = pregnancy(observations=[hcg("positive", days_ago=10), quantitative(1500, 2)])
    assert finding.severity is Severity.CRITICAL and finding.evidence[0].result == "positive"


def test_an_uninterpreted_result_is_outweighed_by_a_later_negative():
    assert pregnancy(observations=[quantitative(1500, 10), hcg("negative", days_ago=2)]) == []


@pytest.mark.parametrize("gender, birth_date", [("male", "1994-03-02"), ("female", "1950-01-01")])
def test_an_uninterpreted_result_says_nothing_for_a_man_or_outside_reproductive_potential(gender, birth_date):
    body = hook_request("order-sign", medications=[everolimus()], observations=[quantitative(12, 2)],
                        prefetch={"patient": patient_resource(gender=gender, birth_date=birth_date)})
    assert check_pregnancy(snapshot_of(body), knowledge()) == []


def test_the_unconfirmed_card_asks_to_confirm_and_offers_no_removal(client):
    body = hook_request("order-select", drafts=[everolimus(draft=True)], observations=[quantitative(1500, 3)])
    [card] = [c for c in client.post("/cds-services/mtor-safety-order-select", json=body).get_json()["cards"]
              if c["source"]["topic"]["code"] == "pregnancy"]
    assert card["indicator"] == "warning" and "confirm pregnancy status" in card["summary"]
    assert "1500 m\\[IU\\]/mL" in card["detail"] and "cut-off of 5 IU/L" in card["detail"]
    assert "suggestions" not in card


def test_the_readme_card_table_states_the_unconfirmed_hcg_warning():
    from pathlib import Path

    readme = " ".join((Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8").split())
    assert "A serum quantitative hCG at or above 5 IU/L that the lab neither interpreted nor gave a range for is not read as positive" in readme
    assert knowledge().quantitative_hcg.negative_below_iu_per_l == 5
    assert ("So does a pregnancy Condition whose verificationStatus is unconfirmed, provisional or differential (no card of any "
            "topic rests on a diagnosis recorded so)") in readme
    assert "`warning` for an uninterpreted quantitative hCG or an unconfirmed pregnancy Condition;" in readme


# --- a recorded outcome ends a pregnancy ------------------------------------------------------------


def _outcome_findings(*, observations=(), conditions=(), procedures=()):
    return rule_findings(check_pregnancy, hook="order-sign", medications=[everolimus()], observations=observations,
                         conditions=conditions, procedures=procedures)


@pytest.mark.parametrize(("code", "display"), [
    ("Z39.2", "Encounter for routine postpartum follow-up"), ("Z37.0", "Single live birth"), ("O80", "Full-term uncomplicated delivery"),
    ("O03.9", "Complete or unspecified spontaneous abortion without complication"),
    ("Z33.2", "Encounter for elective termination of pregnancy"),
])
def test_a_recorded_outcome_after_the_pregnancy_outweighs_it(code, display):
    """Found by an audit: a pregnancy left open on the problem list (Z34.00, 200 days ago) and a positive hCG (20 days
    ago: hCG stays positive for weeks after a delivery) gave the critical card to a woman who had since delivered."""
    outcome = condition(ICD10CM, code, display, clinical="resolved", onset_days_ago=10)
    open_pregnancy = condition(ICD10CM, "Z34.00", "Supervision of normal first pregnancy", onset_days_ago=200)
    assert _outcome_findings(conditions=[open_pregnancy, outcome]) == []
    assert _outcome_findings(observations=[hcg("positive", 20)], conditions=[outcome]) == []


def test_a_caesarean_section_done_after_a_positive_hcg_ends_it_and_a_later_positive_test_counts_again():
    caesarean = procedure("Cesarean section", -5, code=concept("Cesarean section", coding(SNOMED, "11466000", "Cesarean section")))
    assert _outcome_findings(observations=[hcg("positive", 20)], procedures=[caesarean]) == []
    [finding] = _outcome_findings(observations=[hcg("positive", 2)], procedures=[caesarean])
    assert finding.severity is Severity.CRITICAL  # a new pregnancy after the outcome
    planned = procedure("Cesarean section", 5, status="preparation", code=caesarean["code"])
    assert [f.severity for f in _outcome_findings(observations=[hcg("positive", 20)], procedures=[planned])] == [Severity.CRITICAL]


@pytest.mark.parametrize("fields", [{"code": "O07.4", "clinical": "resolved"}, {"code": "O00.10"}, {"code": "O02.1"},
                                    {"code": "Z37.0", "verification": "entered-in-error"},
                                    {"code": "Z37.0", "verification": "refuted"}])
def test_a_failed_termination_or_a_refuted_outcome_does_not_end_it(fields):
    outcome = condition(ICD10CM, fields.pop("code"), "outcome", onset_days_ago=10, **fields)
    [finding] = _outcome_findings(observations=[hcg("positive", 20)], conditions=[outcome])
    assert finding.severity is Severity.CRITICAL


def test_the_readme_says_a_recorded_outcome_outweighs_earlier_evidence():
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    assert ("not outweighed by a later negative test or a later recorded outcome (delivery, caesarean, abortive outcome, "
            "postpartum care: ICD-10-CM O03, O04, O08, O80, O82, Z33.2, Z37, Z39; active or resolved)") in readme
    assert {c["code"] for c in knowledge().files["conditions.json"]["pregnancy_ended"]} == {
        "O03", "O04", "O08", "O80", "O82", "Z33.2", "Z37", "Z39", "11466000"}


@pytest.mark.parametrize(("birth_date", "age"), [("2020-05-01", 6), ("1965-01-01", 61)])
def test_a_positive_hcg_outside_the_reproductive_ages_asks_to_confirm_and_offers_no_removal(client, birth_date, age):
    """Found by the per-use audit: a positive urine hCG for a 6-year-old on Afinitor Disperz gave the critical
    "pregnancy on record: remove the order" card. Outside dosing.json's reproductive-potential ages (12-55, policy) a
    positive hCG asks to confirm (warning, no removal); a pregnancy diagnosis or status still gives the critical card."""
    patient = {"resourceType": "Patient", "id": "pt-1", "gender": "female", "birthDate": birth_date}
    body = hook_request("order-sign", drafts=[everolimus(draft=True)], observations=[hcg("positive", 3)],
                        prefetch={"patient": patient})
    answer = client.post("/cds-services/mtor-safety-order-sign", json=body).get_json()
    [card] = [c for c in answer["cards"] if c["source"]["topic"]["code"] == "pregnancy"]
    assert card["indicator"] == "warning" and not card.get("suggestions")
    assert card["summary"].startswith(f"Positive pregnancy test at age {age} while ordering everolimus: confirm")
    assert "hCG is also a tumour marker" in card["detail"]
    condition_body = hook_request("order-sign", drafts=[everolimus(draft=True)], prefetch={"patient": patient},
                                  conditions=[condition(ICD10CM, "Z33.1", "Pregnant state, incidental", onset_days_ago=10)])
    answer = client.post("/cds-services/mtor-safety-order-sign", json=condition_body).get_json()
    assert [c["indicator"] for c in answer["cards"] if c["source"]["topic"]["code"] == "pregnancy"] == ["critical"]


def test_the_readme_says_a_positive_hcg_outside_the_ages_asks_to_confirm():
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    assert ("a positive hCG for a patient aged under 12 or over 55 (policy) asks to confirm (`warning`, no removal: hCG is "
            "also a tumour marker)") in readme
    potential = knowledge().dosing["reproductive_potential"]
    assert (potential["female_min_age_years"], potential["female_max_age_years"]) == (12, 55)


def test_a_positive_hcg_for_a_patient_recorded_as_male_asks_to_confirm_and_offers_no_removal(client):
    """A positive hCG for a man gave the critical "pregnancy on record: remove the order" card (a leftover of the
    per-use audit): hCG is also a tumour marker (germ cell tumours). Administrative gender is not read as the capacity
    to be pregnant either way, so it asks to confirm (warning, no removal); a recorded pregnancy status still gives the
    critical card."""
    patient = {"resourceType": "Patient", "id": "pt-1", "gender": "male", "birthDate": "1994-03-02"}
    body = hook_request("order-sign", drafts=[everolimus(draft=True)], observations=[hcg("positive", 3)],
                        prefetch={"patient": patient})
    answer = client.post("/cds-services/mtor-safety-order-sign", json=body).get_json()
    [card] = [c for c in answer["cards"] if c["source"]["topic"]["code"] == "pregnancy"]
    assert card["indicator"] == "warning" and not card.get("suggestions")
    assert card["summary"] == "Positive hCG for a patient recorded as male while ordering everolimus: confirm pregnancy status"
    assert "hCG is also a tumour marker" in card["detail"] and "recorded gender is male" in card["detail"]
    status = hook_request("order-sign", drafts=[everolimus(draft=True)], prefetch={"patient": patient},
                          observations=[pregnancy_status(True, days_ago=3)])
    answer = client.post("/cds-services/mtor-safety-order-sign", json=status).get_json()
    assert [c["indicator"] for c in answer["cards"] if c["source"]["topic"]["code"] == "pregnancy"] == ["critical"]
    female = {**patient, "gender": "female"}
    answer = client.post("/cds-services/mtor-safety-order-sign", json={**body, "prefetch": {**body["prefetch"], "patient": female}}).get_json()
    assert [c["indicator"] for c in answer["cards"] if c["source"]["topic"]["code"] == "pregnancy"] == ["critical"]


def test_the_readme_says_a_positive_hcg_for_a_man_asks_to_confirm():
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    assert ("and so does a positive hCG for a patient recorded as male (a pregnancy status or diagnosis still gives the "
            "critical card);") in readme
