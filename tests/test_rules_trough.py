"""Trough rules in isolation: the latest blood level against the 15 ng/mL limit (from FHIR JSON), and the dose proposals,
low troughs and due troughs of the clinical depth (from plain records)."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import pytest

from cds_service.cards import render_cards
from cds_service.findings import Severity, Topic
from cds_service.rules.trough import check_trough_high, check_trough_low, check_trough_monitoring
from snapshots import (
    AML_RECORD,
    ICD10CM,
    NOW,
    SEGA_RECORD,
    TSC_RECORD,
    condition,
    drug_level,
    everolimus,
    knowledge,
    level,
    mtor_order,
    observation,
    order,
    record_snapshot,
    ref,
    sirolimus,
    snapshot_of,
)


def trough(*observations, medications=None, conditions=()):
    medications = [everolimus()] if medications is None else medications
    snapshot = snapshot_of(hook="patient-view", medications=medications, observations=observations, conditions=conditions)
    return check_trough_high(snapshot, knowledge()), snapshot


def findings_for(*observations, medications=None, conditions=()):
    return trough(*observations, medications=medications, conditions=conditions)[0]


# Oral sirolimus with no use on record may be for renal transplant (no knowable target): these tests record LAM.
LAM_CONDITION = condition(ICD10CM, "J84.81", "Lymphangioleiomyomatosis")


def summary_for(*observations, medications=None):
    findings, snapshot = trough(*observations, medications=medications)
    [card] = render_cards(findings, snapshot)
    return card.summary


def test_level_above_15_ng_per_ml_warns():
    high = level("everolimus", 15.1)
    [finding] = findings_for(high)
    assert finding.topic is Topic.TROUGH_HIGH
    assert finding.severity is Severity.WARNING
    assert finding.evidence[0].ref == ref(high)
    assert finding.limit.upper_ng_per_ml == 15


def test_level_of_exactly_15_does_not_fire():
    assert findings_for(level("everolimus", 15)) == []


def test_level_in_range_does_not_fire():
    assert findings_for(level("everolimus", 8.4)) == []


@pytest.mark.parametrize("unit", ["ug/L", "µg/L", "μg/L", "mcg/L", "ng/mL", "ng/ml"])
def test_units_equal_to_ng_per_ml_are_read_one_to_one(unit):
    assert findings_for(level("everolimus", 18.2, unit))
    assert findings_for(level("everolimus", 14.9, unit)) == []


def test_micrograms_per_litre_shown_converted_in_the_summary():
    assert "18.2 ng/mL" in summary_for(level("everolimus", 18.2, "ug/L"))


def test_nmol_per_l_converted_with_everolimus_molar_mass():
    # 16 nmol/L x 958.2 g/mol = 15.33 ng/mL (above); 15.6 nmol/L = 14.95 ng/mL (not above)
    assert "15.3 ng/mL" in summary_for(level("everolimus", 16, "nmol/L"))
    assert findings_for(level("everolimus", 15.6, "nmol/L")) == []


def test_nmol_per_l_converted_with_sirolimus_molar_mass():
    # 16.5 nmol/L x 914.2 g/mol = 15.08 ng/mL (above); 16.3 nmol/L = 14.90 ng/mL (not above)
    assert findings_for(level("sirolimus", 16.5, "nmol/L"), medications=[sirolimus()], conditions=[LAM_CONDITION])
    assert findings_for(level("sirolimus", 16.3, "nmol/L"), medications=[sirolimus()], conditions=[LAM_CONDITION]) == []


def test_unit_text_read_when_the_ucum_code_is_unknown():
    assert findings_for(level("everolimus", 20, "ug/L", code="local-ugl"))


def test_latest_level_by_date_wins_over_an_older_high_one():
    assert findings_for(level("everolimus", 22, days_ago=30), level("everolimus", 9, days_ago=2)) == []


@pytest.mark.parametrize("pending", [
    {"status": "registered", "valueQuantity": None},  # ordered, no result yet
    {"status": "final", "valueQuantity": None,
     "dataAbsentReason": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/data-absent-reason", "code": "error"}]}},
], ids=["registered", "data-absent"])
def test_a_level_with_no_result_never_hides_the_latest_one(pending):
    """FHIR R4: a registered Observation has no result yet; one with dataAbsentReason has none. Neither is the newest level."""
    high = level("everolimus", 18.2, days_ago=3)
    no_result = {k: v for k, v in {**level("everolimus", 0, days_ago=0.5), **pending}.items() if v is not None}
    [finding] = findings_for(high, no_result)
    assert finding.evidence[0].ref == ref(high) and finding.severity is Severity.WARNING


def test_a_future_dated_level_is_never_the_latest():
    """A result dated weeks ahead is a data error: it must not hide the real latest level (as pregnancy evidence does)."""
    high = level("everolimus", 18.2, days_ago=3)
    [finding] = findings_for(high, level("everolimus", 9, days_ago=-20))
    assert finding.evidence[0].ref == ref(high)
    assert findings_for(high, level("everolimus", 9, days_ago=-0.5)) == []  # later today in another time zone still counts


@pytest.mark.parametrize("drug, loinc", [("everolimus", "77349-9"), ("sirolimus", "115766-8")])
def test_a_level_coded_with_the_trough_specific_loinc_code_is_read(drug, loinc):
    high = level(drug, 18.2, days_ago=2)
    high["code"]["coding"][0]["code"] = loinc
    medications = [everolimus()] if drug == "everolimus" else [sirolimus()]
    conditions = () if drug == "everolimus" else (LAM_CONDITION,)
    [finding] = findings_for(high, medications=medications, conditions=conditions)
    assert finding.evidence[0].ref == ref(high)
    assert loinc in services_prefetch_observations_query()


def services_prefetch_observations_query() -> str:
    from cds_service.services import build_services

    return next(iter(build_services(knowledge()).values())).prefetch["observations"]


def test_latest_high_level_wins_over_an_older_normal_one():
    latest = level("everolimus", 19, days_ago=2)
    [finding] = findings_for(level("everolimus", 9, days_ago=30), latest)
    assert finding.evidence[0].ref == ref(latest)


def test_order_of_the_observations_does_not_matter():
    older, newer = level("everolimus", 9, days_ago=30), level("everolimus", 19, days_ago=2)
    assert findings_for(newer, older) and findings_for(older, newer)


def test_unreadable_unit_gives_info_not_silence():
    [finding] = findings_for(level("everolimus", 18, "mg/dL/h"))
    assert finding.severity is Severity.INFO


def test_missing_unit_gives_info():
    [finding] = findings_for(level("everolimus", 18, None))
    assert finding.severity is Severity.INFO


def test_non_numeric_value_gives_info():
    [finding] = findings_for(level("everolimus", "high"))
    assert finding.severity is Severity.INFO


def test_unreadable_older_level_does_not_hide_a_newer_high_one():
    [finding] = findings_for(level("everolimus", 18, "furlongs", days_ago=10), level("everolimus", 17, days_ago=1))
    assert finding.severity is Severity.WARNING


def test_sirolimus_level_does_not_count_for_an_everolimus_patient():
    assert findings_for(level("sirolimus", 25)) == []


def test_everolimus_level_does_not_count_for_a_sirolimus_patient():
    assert findings_for(level("everolimus", 25), medications=[sirolimus()]) == []


def test_high_sirolimus_level_for_sirolimus_patient_cites_rapamune():
    [finding] = findings_for(level("sirolimus", 17), medications=[sirolimus()], conditions=[LAM_CONDITION])
    assert finding.source.key == "RAPAMUNE-PI"
    assert finding.drug == "sirolimus"


def test_level_with_a_local_code_named_after_the_drug_counts():
    local = observation(None, 1, text="EVEROLIMUS TROUGH", valueQuantity={"value": 21, "unit": "ng/mL"})
    assert findings_for(local)


def test_above_the_upper_reporting_limit_is_high():
    above = level("everolimus", 30)
    above["valueQuantity"]["comparator"] = ">"
    [finding] = findings_for(above)
    assert finding.severity is Severity.WARNING


def test_no_level_on_record_gives_no_finding():
    assert findings_for() == []


def test_no_mtor_inhibitor_gives_no_finding():
    assert findings_for(level("everolimus", 30), medications=[]) == []


def test_entered_in_error_level_is_ignored():
    wrong = level("everolimus", 40, days_ago=1, status="entered-in-error")
    assert findings_for(level("everolimus", 9, days_ago=5), wrong) == []


# --- dose proposals, low troughs and due troughs (plain records) ---------------------------------

K = knowledge()


def test_high_trough_for_sega_proposes_the_label_formula_dose_rounded_down_to_a_strength():
    mtor = mtor_order(dose=10)
    [finding] = check_trough_high(record_snapshot([mtor], [drug_level(18)], [TSC_RECORD, SEGA_RECORD]), K)
    # 10 mg x 10 / 18 = 5.56 mg -> 5 mg with Afinitor tablets
    assert finding.proposal.proposed_dose_mg == 5 and finding.severity is Severity.WARNING


def test_trough_of_exactly_15_is_not_high():
    assert check_trough_high(record_snapshot([mtor_order()], [drug_level(15)], [TSC_RECORD, SEGA_RECORD]), K) == []


def test_low_trough_for_sega_proposes_an_increase_capped_at_5_mg():
    [finding] = check_trough_low(record_snapshot([mtor_order(dose=5, code="845515")], [drug_level(2)], [TSC_RECORD, SEGA_RECORD]), K)
    assert finding.topic is Topic.TROUGH_LOW
    assert finding.proposal.raw_dose_mg == pytest.approx(10)  # 5 x 10/2 = 25, capped at 5 + 5
    assert finding.proposal.proposed_dose_mg == 10


def test_low_trough_for_fixed_dose_aml_does_not_fire():
    assert check_trough_low(record_snapshot([mtor_order()], [drug_level(2)], [TSC_RECORD, AML_RECORD]), K) == []


def test_low_trough_at_the_lower_bound_does_not_fire():
    assert check_trough_low(record_snapshot([mtor_order()], [drug_level(5)], [TSC_RECORD, SEGA_RECORD]), K) == []


def test_trough_due_two_weeks_after_a_dose_change_with_no_trough_since():
    mtor = mtor_order(authored=NOW - timedelta(days=20))
    [finding] = check_trough_monitoring(record_snapshot([mtor], [drug_level(8, days_ago=60)], [TSC_RECORD, SEGA_RECORD]), K)
    assert finding.due_date == (NOW - timedelta(days=6)).date()


def test_trough_not_yet_due_ten_days_after_a_change():
    mtor = mtor_order(authored=NOW - timedelta(days=10))
    assert check_trough_monitoring(record_snapshot([mtor], [drug_level(8, days_ago=60)], [TSC_RECORD, SEGA_RECORD]), K) == []


def test_trough_after_the_change_means_nothing_is_due():
    mtor = mtor_order(authored=NOW - timedelta(days=30))
    assert check_trough_monitoring(record_snapshot([mtor], [drug_level(8, days_ago=5)], [TSC_RECORD, SEGA_RECORD]), K) == []


def test_draft_order_for_sega_plans_a_trough_two_weeks_out():
    mtor = mtor_order(draft=True, authored=NOW)
    [finding] = check_trough_monitoring(record_snapshot([mtor], [], [TSC_RECORD, SEGA_RECORD]), K)
    assert finding.due_date == (NOW + timedelta(days=14)).date()


def test_no_trough_claim_when_observations_could_not_be_fetched():
    mtor = mtor_order(authored=NOW - timedelta(days=30))
    assert check_trough_monitoring(record_snapshot([mtor], [], [TSC_RECORD, SEGA_RECORD], unavailable=["observations"]), K) == []


def test_high_trough_with_no_indication_on_record_proposes_a_dose_and_names_the_assumption():
    [finding] = check_trough_high(record_snapshot([mtor_order(dose=10)], [drug_level(20)], [TSC_RECORD]), K)
    assert finding.assumed_indication == K.indications["tsc-sega"].display
    assert finding.proposal.proposed_dose_mg == 5


def test_high_trough_for_fixed_dose_aml_proposes_no_formula_dose():
    [finding] = check_trough_high(record_snapshot([mtor_order(dose=10)], [drug_level(20)], [TSC_RECORD, AML_RECORD]), K)
    assert finding.proposal is None or finding.proposal.proposed_dose_mg is None


# --- issue 10: treatment context, steady state, look-back -------------------------------------------------

from datetime import timedelta as _td  # noqa: E402

from snapshots import condition_record  # noqa: E402

KIDNEY_TX = condition_record("Z94.0", ICD10CM, ref="Condition/ktx")
LIVER_TX = condition_record("Z94.4", ICD10CM, ref="Condition/ltx")
LAM = condition_record("J84.81", ICD10CM, ref="Condition/lam")


def zortress(dose=0.75):
    return mtor_order("MedicationRequest/zor", "everolimus 0.75 MG Oral Tablet [Zortress]", "977440", dose=dose)


def rapamune():
    return mtor_order("MedicationRequest/rapa", "sirolimus 2 MG Oral Tablet [Rapamune]", "404432", dose=2.0)


def test_zortress_kidney_above_3_to_8_warns_with_the_zortress_target_and_no_dose():
    # regimens.json zortress-kidney trough_target 3-8 ng/mL (ZORTRESS-2010 Highlights §2, verified)
    snap = record_snapshot([zortress()], [drug_level(9.5)], [KIDNEY_TX])
    [finding] = check_trough_high(snap, knowledge())
    assert finding.severity is Severity.WARNING and finding.proposal is None
    assert (finding.target.low_ng_per_ml, finding.target.high_ng_per_ml) == (3, 8)
    [card] = render_cards([finding], snap)
    text = card.summary + card.detail
    assert "Zortress" in card.summary and "3-8 ng/mL" in card.summary
    assert "AFINITOR" not in text.upper() and "TSC" not in text and "+5" not in text and "once daily" not in text


def test_zortress_kidney_in_range_for_tsc_but_not_transplant_is_judged_by_the_transplant_target():
    assert check_trough_high(record_snapshot([zortress()], [drug_level(5.4)], [KIDNEY_TX]), knowledge()) == []
    assert len(check_trough_high(record_snapshot([zortress()], [drug_level(12)], [KIDNEY_TX]), knowledge())) == 1


def test_zortress_kidney_below_3_is_a_low_card_without_a_dose():
    snap = record_snapshot([zortress()], [drug_level(2.1)], [KIDNEY_TX])
    [finding] = check_trough_low(snap, knowledge())
    assert finding.proposal is None and finding.context is not None
    [card] = render_cards([finding], snap)
    assert "below the Zortress target of 3-8 ng/mL" in card.summary


def test_zortress_kidney_low_level_after_a_new_interacting_drug_gets_no_afinitor_recheck_date():
    """Found by a whole-response audit: a Zortress kidney patient, stable for 90 days, with a fluconazole draft got a
    trough-low card saying "drawn before steady state: recheck on or after <today + 14 days>": Afinitor's TSC
    interval (monitoring.json, ~2 weeks, tsc-sega/tsc-seizures) applied to a transplant use, whose label sets none here.
    A high transplant level never carried one."""
    stable = mtor_order("MedicationRequest/zor", "everolimus 0.75 MG Oral Tablet [Zortress]", "977440", dose=0.75,
                        authored=NOW - _td(days=90))
    fluconazole = dataclasses.replace(order("fluconazole 200 MG Oral Tablet", draft=True), authored_on=NOW)
    snap = record_snapshot([stable, fluconazole], [drug_level(2.1, days_ago=2)], [KIDNEY_TX])
    [finding] = check_trough_low(snap, knowledge())
    assert finding.not_steady_until is None and finding.context is not None
    [card] = render_cards([finding], snap)
    assert "steady state" not in card.detail and "below the Zortress target of 3-8 ng/mL" in card.summary
    recent = mtor_order("MedicationRequest/zor", "everolimus 0.75 MG Oral Tablet [Zortress]", "977440", dose=0.75,
                        authored=NOW - _td(days=3))
    [finding] = check_trough_low(record_snapshot([recent], [drug_level(2.1, days_ago=1)], [KIDNEY_TX]), knowledge())
    assert finding.not_steady_until is None


def test_zortress_liver_target_unverified_gives_info_without_a_number():
    # regimens.json zortress-liver trough_target verified=false: never a number on the card
    snap = record_snapshot([zortress(1.0)], [drug_level(11.8)], [LIVER_TX])
    [finding] = check_trough_high(snap, knowledge())
    assert finding.severity is Severity.INFO and finding.target_unverified
    [card] = render_cards([finding], snap)
    assert "transplant team" in card.summary
    assert "3-8" not in card.detail and "target of" not in card.summary
    assert check_trough_low(record_snapshot([zortress(1.0)], [drug_level(1.5)], [LIVER_TX]), knowledge()) == []


def test_rapamune_renal_transplant_gets_no_trough_card_against_lam_targets():
    # regimens.json rapamune-renal-transplant trough_target null (protocol-dependent; RAPAMUNE-DOSE §2.1-2.3)
    snap = record_snapshot([rapamune()], [drug_level(19, drug="sirolimus")], [KIDNEY_TX])
    assert check_trough_high(snap, knowledge()) == []
    assert check_trough_low(record_snapshot([rapamune()], [drug_level(2, drug="sirolimus")], [KIDNEY_TX]), knowledge()) == []
    assert check_trough_monitoring(snap, knowledge()) == []


def test_rapamune_lam_keeps_todays_lam_rules():
    snap = record_snapshot([rapamune()], [drug_level(19, drug="sirolimus")], [LAM])
    [finding] = check_trough_high(snap, knowledge())
    assert finding.context is None and finding.severity is Severity.WARNING


def test_rapamune_with_no_indication_is_quiet_because_the_transplant_target_is_unknown():
    snap = record_snapshot([rapamune()], [drug_level(19, drug="sirolimus")])
    assert check_trough_high(snap, knowledge()) == []


def test_tsc_and_kidney_transplant_fires_only_above_every_plausible_limit():
    # candidates tsc-sega (Afinitor 15 ng/mL) and transplant-kidney: generic everolimus 10 mg (read as Afinitor) after a
    # kidney transplant is judged by the drug's transplant label, Zortress (3-8 ng/mL); until 2026-12-01 no card at all
    within_tsc = record_snapshot([mtor_order()], [drug_level(14)], [TSC_RECORD, SEGA_RECORD, KIDNEY_TX])
    assert check_trough_high(within_tsc, knowledge()) == []  # above 8, within 15: not above every plausible limit
    snap = record_snapshot([mtor_order()], [drug_level(16)], [TSC_RECORD, SEGA_RECORD, KIDNEY_TX])
    [finding] = check_trough_high(snap, knowledge())
    assert finding.severity is Severity.WARNING and finding.limit.upper_ng_per_ml == 15 and finding.proposal is None
    [card] = render_cards([finding], snap)
    assert "above the limit of every use on record" in card.summary and not card.suggestions


def test_afinitor_after_a_kidney_transplant_is_judged_by_the_zortress_target_and_says_so():
    """Found by an audit: Afinitor (or everolimus 10 mg) with only a kidney transplant on record gave no card even at
    25 ng/mL, because Afinitor's label has no transplant target. The drug's transplant label (Zortress) is the one."""
    snap = record_snapshot([mtor_order()], [drug_level(12)], [KIDNEY_TX])
    [finding] = check_trough_high(snap, knowledge())
    assert finding.target.product == "Zortress" and finding.target.high_ng_per_ml == 8
    [card] = render_cards([finding], snap)
    assert card.summary.endswith("is above the Zortress target of 3-8 ng/mL: review the dose")
    assert "The order is for Afinitor, whose label gives no target for this use" in card.detail
    assert card.source.label.startswith("Zortress") and not card.suggestions
    assert check_trough_high(record_snapshot([mtor_order()], [drug_level(7)], [KIDNEY_TX]), knowledge()) == []


def test_trough_drawn_before_steady_state_gives_no_dose_and_a_recheck_date():
    # monitoring.json everolimus dose-change: about 14 days (Afinitor §2 TDM)
    order = mtor_order(authored=NOW - _td(days=5))
    snap = record_snapshot([order], [drug_level(20, days_ago=1)], [TSC_RECORD, SEGA_RECORD])
    [finding] = check_trough_high(snap, knowledge())
    assert finding.proposal is None
    assert finding.not_steady_until == (NOW - _td(days=5)).date() + _td(days=14)
    [card] = render_cards([finding], snap)
    assert "steady state" in card.summary and not card.suggestions


def test_renewal_at_the_same_dose_is_not_a_dose_change():
    first = mtor_order("MedicationRequest/old", authored=NOW - _td(days=60))
    renewal = mtor_order("MedicationRequest/new", authored=NOW - _td(days=5))
    snap = record_snapshot([renewal, first], [drug_level(20, days_ago=1)], [TSC_RECORD, SEGA_RECORD])
    [finding] = check_trough_high(snap, knowledge())
    assert finding.not_steady_until is None and finding.proposal is not None


def test_dose_change_in_the_order_history_restarts_steady_state():
    first = mtor_order("MedicationRequest/old", dose=5.0, authored=NOW - _td(days=60))
    changed = mtor_order("MedicationRequest/new", dose=10.0, authored=NOW - _td(days=5))
    snap = record_snapshot([changed, first], [drug_level(20, days_ago=1)], [TSC_RECORD, SEGA_RECORD])
    [finding] = check_trough_high(snap, knowledge())
    assert finding.not_steady_until is not None and finding.proposal is None


def test_trough_older_than_the_lookback_window_is_info_and_asks_for_a_recheck():
    # lookback.json windows trough max_age_days 90 (project policy)
    snap = record_snapshot([mtor_order()], [drug_level(20, days_ago=120)], [TSC_RECORD, SEGA_RECORD])
    [finding] = check_trough_high(snap, knowledge())
    assert finding.severity is Severity.INFO and finding.stale and finding.proposal is None
    [card] = render_cards([finding], snap)
    assert "recheck now" in card.summary
    assert check_trough_low(record_snapshot([mtor_order()], [drug_level(2, days_ago=120)], [TSC_RECORD, SEGA_RECORD]), knowledge()) == []


def test_afinitor_with_no_use_on_record_keeps_the_tsc_limit_but_computes_no_dose():
    # treatment_contexts.json product_implies Afinitor: oncology or TSC; the label's only trough limit is TSC's 15 ng/mL
    afinitor = mtor_order(text="everolimus 10 MG Oral Tablet [Afinitor]", code="845512")
    snap = record_snapshot([afinitor], [drug_level(20)])
    [finding] = check_trough_high(snap, K)
    assert finding.severity is Severity.WARNING and finding.proposal is None
    [card] = render_cards([finding], snap)
    assert "No dose is computed" in card.detail and "×" not in card.detail and not card.suggestions


def test_everolimus_for_breast_cancer_gets_no_trough_card():
    # Afinitor oncology dosing is fixed; its label has no trough target for cancer
    snap = record_snapshot([mtor_order()], [drug_level(20)], [condition_record("C50.911", "http://hl7.org/fhir/sid/icd-10-cm")])
    assert check_trough_high(snap, K) == [] and check_trough_low(snap, K) == []


def test_prior_prescription_at_the_same_dose_is_followed_back_to_the_regimen_start():
    # a renewal (priorPrescription) of an ended order at the same dose: steady state counts from the first order
    import dataclasses as _dc
    june = _dc.replace(mtor_order("MedicationRequest/june", authored=NOW - _td(days=170)), status="completed")
    renewal = _dc.replace(mtor_order("MedicationRequest/now", authored=NOW - _td(days=5)), prior_prescription="MedicationRequest/june")
    snap = _dc.replace(record_snapshot([renewal], [drug_level(20, days_ago=1)], [TSC_RECORD, SEGA_RECORD]), order_history=(june,))
    [finding] = check_trough_high(snap, K)
    assert finding.not_steady_until is None and finding.proposal is not None
    lower = _dc.replace(june, dose_mg=5.0)
    snap = _dc.replace(snap, order_history=(lower,))
    [finding] = check_trough_high(snap, K)
    assert finding.not_steady_until is not None and finding.proposal is None


def test_sirolimus_oral_solution_gets_no_tablet_dose():
    # dosing.json strengths: Rapamune oral solution has no tablet strengths; a tablet dose would name the wrong form
    solution = mtor_order("MedicationRequest/sol", "sirolimus 1 MG/ML Oral Solution", "314230", dose=2.0)
    lam = condition_record("J84.81", "http://hl7.org/fhir/sid/icd-10-cm")
    [finding] = check_trough_high(record_snapshot([solution], [drug_level(20, drug="sirolimus")], [lam]), K)
    assert finding.proposal is None


def test_sirolimus_increase_is_not_capped_at_plus_5_mg():
    # dosing.json titration: the +5 mg cap is Afinitor §2.8 (everolimus); Rapamune §2 states no maximum increment
    lam = condition_record("J84.81", "http://hl7.org/fhir/sid/icd-10-cm")
    rapa = mtor_order("MedicationRequest/rapa", "sirolimus 2 MG Oral Tablet [Rapamune]", "404432", dose=2.0)
    [finding] = check_trough_low(record_snapshot([rapa], [drug_level(2, drug="sirolimus")], [lam]), K)
    assert finding.proposal.max_increment_mg is None and finding.proposal.raw_dose_mg == 10


def test_old_zortress_trough_is_info_asking_for_a_recheck():
    # lookback.json trough max_age_days 90 (policy): stale evidence gives at most an info card
    snap = record_snapshot([zortress()], [drug_level(12, days_ago=120)], [KIDNEY_TX])
    [finding] = check_trough_high(snap, K)
    assert finding.severity is Severity.INFO and finding.stale
    [card] = render_cards([finding], snap)
    assert "recheck now" in card.summary


def test_twice_daily_order_gets_no_once_daily_dose():
    # keep the regimen's schedule: a proposal is a once-daily dose (Afinitor §2), never offered for a BID order
    import dataclasses as _dc
    bid = _dc.replace(mtor_order(dose=5.0, code="845515"), doses_per_day=2)
    [finding] = check_trough_high(record_snapshot([bid], [drug_level(20)], [TSC_RECORD, SEGA_RECORD]), K)
    assert finding.proposal is None


def _coded_order(dose: float, code: str = "845515"):
    resource = {"resourceType": "MedicationRequest", "id": "mr-eve", "status": "active", "intent": "order",
                "subject": {"reference": "Patient/pt-1"},
                "medicationCodeableConcept": {"coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": code}]},
                "dosageInstruction": [{"text": f"{dose:g} mg once daily", "doseAndRate": [{"doseQuantity": {"value": dose, "unit": "mg"}}]}]}
    return mtor_order(text="everolimus 5 MG Oral Tablet", code=code, dose=dose, resource=resource)


def test_a_new_dose_the_ordered_tablet_cannot_make_whole_is_not_a_one_click_change():
    """products.json dispensing_rules: never a fraction of a swallow-whole tablet (a scenario audit: 7.5 mg on the 5 mg
    tablet, trough 18, was offered as 2.5 mg on the same 5 mg tablet: half a tablet)."""
    snap = record_snapshot([_coded_order(7.5)], [drug_level(18)], [TSC_RECORD, SEGA_RECORD])
    [finding] = check_trough_high(snap, K)
    assert finding.proposal.proposed_dose_mg == 2.5 and finding.proposal.unit_strength_mg == 5
    assert not finding.proposal.fits_the_ordered_unit
    [card] = render_cards([finding], snap)
    assert not card.suggestions and "cannot make 2.5 mg whole" in card.detail


def test_a_new_dose_in_whole_ordered_tablets_is_offered_as_an_update():
    snap = record_snapshot([_coded_order(10)], [drug_level(18)], [TSC_RECORD, SEGA_RECORD])
    [finding] = check_trough_high(snap, K)
    assert finding.proposal.proposed_dose_mg == 5 and finding.proposal.fits_the_ordered_unit
    [card] = render_cards([finding], snap)
    [suggestion] = card.suggestions
    [action] = suggestion["actions"]
    assert action["type"] == "update" and action["resource"]["dosageInstruction"][0]["doseAndRate"][0]["doseQuantity"]["value"] == 5


def test_a_lam_order_that_may_be_a_start_or_a_dose_change_gives_both_of_the_labels_intervals():
    """Rapamune: a trough 10 to 20 days after a LAM start (§2.3), 7 to 14 after a dose change (§2.1). When the record
    cannot tell which, the card gives both and is due by the sooner (a scenario audit found only '7 to 14 days')."""
    rapa = mtor_order("MedicationRequest/rapa", "sirolimus 2 MG Oral Tablet [Rapamune]", "404432", dose=2.0,
                      authored=NOW - timedelta(days=60))
    snap = record_snapshot([rapa], [], [LAM])
    [finding] = check_trough_monitoring(snap, K)
    assert finding.event == "start or dose change" and finding.start_timing is not None
    assert finding.timing.days_text == "7 to 14 days" and finding.start_timing.days_text == "10 to 20 days"
    [card] = render_cards([finding], snap)
    assert "10 to 20 days after a start (§2.3" in card.detail and "7 to 14 days after a dose change (§2.1)" in card.detail


def test_an_everolimus_order_whose_start_and_change_intervals_agree_gives_one():
    mtor = mtor_order(authored=NOW - timedelta(days=20))
    [finding] = check_trough_monitoring(record_snapshot([mtor], [drug_level(8, days_ago=60)], [TSC_RECORD, SEGA_RECORD]), K)
    assert finding.start_timing is None


def test_the_readme_says_other_everolimus_after_a_kidney_transplant_is_judged_by_zortress():
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    assert ("other everolimus (Afinitor, 10 mg) after a kidney transplant is judged by the same Zortress target, and the card "
            "says so") in readme


def test_a_low_level_of_afinitor_after_a_kidney_transplant_is_judged_by_zortress_and_the_readme_says_so():
    from pathlib import Path

    [finding] = check_trough_low(record_snapshot([mtor_order()], [drug_level(2)], [KIDNEY_TX]), knowledge())
    assert finding.target.product == "Zortress" and finding.label is not None and finding.label.label.startswith("Zortress")
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    assert "Zortress kidney transplant (and other everolimus after a kidney transplant, judged by the same target): below 3-8 ng/mL" in readme


def test_a_recheck_card_names_what_sets_steady_state_and_a_draft_interacting_drug_is_not_yet_taken():
    """Found by the whole-response audit: with a clarithromycin draft, a high trough on a dose stable for months said
    "drawn before steady state on the current dose or interacting drugs": neither had changed, and the drug had not
    started. The card names the draft being ordered; a real change names its date."""
    stable = mtor_order(authored=NOW - _td(days=200))
    draft = mtor_order("MedicationRequest/clari", "clarithromycin 500 MG Oral Tablet", "197517", dose=None, draft=True, authored=NOW)
    snap = record_snapshot([stable, draft], [drug_level(20, days_ago=1)], [TSC_RECORD, SEGA_RECORD])
    [finding] = check_trough_high(snap, knowledge())
    assert finding.not_steady_after is not None and finding.not_steady_after.ref == "MedicationRequest/clari"
    [card] = render_cards([finding], snap)
    assert "a new interacting drug will change it: recheck from" in card.summary and "drawn before steady state" not in card.summary
    assert "**clarithromycin 500 MG Oral Tablet** is being ordered now" in card.detail
    changed = mtor_order(authored=NOW - _td(days=5))
    snap = record_snapshot([changed], [drug_level(20, days_ago=1)], [TSC_RECORD, SEGA_RECORD])
    [card] = render_cards(check_trough_high(snap, knowledge()), snap)
    day = (NOW - _td(days=5)).date()
    assert f"drawn before steady state on the current dose, started or changed on {day.day} {day:%b %Y}" in card.detail
    started = mtor_order("MedicationRequest/clari", "clarithromycin 500 MG Oral Tablet", "197517", dose=None, authored=NOW - _td(days=3))
    snap = record_snapshot([stable, started], [drug_level(20, days_ago=1)], [TSC_RECORD, SEGA_RECORD])
    [card] = render_cards(check_trough_high(snap, knowledge()), snap)
    assert "on **clarithromycin 500 MG Oral Tablet**, started on" in card.detail
