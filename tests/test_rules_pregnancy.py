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
    knowledge,
    observation,
    order,
    plain_snapshot,
    pregnancy_status,
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


# --- hCG ---------------------------------------------------------------------------------------


def test_positive_hcg_within_30_days_by_result_code_fires():
    test = hcg("positive", days_ago=5)
    [finding] = pregnancy(observations=[test])
    assert finding.evidence[0].ref == ref(test)


def test_positive_hcg_older_than_30_days_does_not_fire():
    assert pregnancy(observations=[hcg("positive", days_ago=31)]) == []


def test_positive_hcg_by_loinc_answer_code_fires():
    value = concept(None, coding(LOINC, "LA6576-8", "Positive"))
    assert pregnancy(observations=[hcg(None, days_ago=2, valueCodeableConcept=value)])


def test_positive_hcg_by_interpretation_fires():
    interpretation = [concept(None, coding(INTERPRETATION, "POS", "Positive"))]
    assert pregnancy(observations=[hcg(None, days_ago=2, interpretation=interpretation)])


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
