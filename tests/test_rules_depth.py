"""The clinical-depth rules in isolation: snapshots built directly, knowledge from the real data files."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

import pytest

from cds_service.findings import Severity, Topic
from cds_service.knowledge import load_knowledge
from cds_service.patient import ConditionRecord, LabResult, MedicationOrder, PatientSnapshot
from cds_service.rules import evaluate
from cds_service.rules.angioedema import check_angioedema
from cds_service.rules.common import achievable_doses, mosteller_bsa, round_down_to
from cds_service.rules.conditions import check_hepatic_impairment, check_infection
from cds_service.rules.indication import infer_indication
from cds_service.rules.lipids import check_lipids
from cds_service.rules.ordering import check_contraception, check_dose
from cds_service.rules.trough import check_trough_high, check_trough_low, check_trough_monitoring

NOW = datetime(2026, 11, 23, 12, tzinfo=timezone.utc)
K = load_knowledge()
SNOMED, ICD10 = "http://snomed.info/sct", "http://hl7.org/fhir/sid/icd-10-cm"


def order(ref="MedicationRequest/eve", text="everolimus 10 MG Oral Tablet", code="845507", draft=False, dose=10.0,
          authored=NOW - timedelta(days=200), resource=None):
    concepts = K.recognize_medication([{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": code}] if code else [], [text])
    return MedicationOrder(ref, text, concepts, "draft" if draft else "active", is_draft=draft, authored_on=authored,
                           dose_mg=dose, product_rxnorm=code if code in K.mtor_products else None, resource=resource or {})


def condition(kind_code, system=SNOMED, text="", ref=None, active=True, asserted=NOW - timedelta(days=400)):
    codes = frozenset({(system, kind_code)}) if kind_code else frozenset()
    return ConditionRecord(ref or f"Condition/{kind_code or 'text'}", text or kind_code, codes, active, asserted,
                           K.condition_kinds(codes, text))


TSC = condition("7199000")
SEGA = condition(None, text="Subependymal giant cell astrocytoma")
AML = condition("D17.71", ICD10)


def level(value, days_ago=3, drug="everolimus", ref="Observation/lvl", written=None):
    return LabResult(ref, "drug-level", NOW - timedelta(days=days_ago), "level", analyte=drug, value=value,
                     value_as_written=written or f"{value} ng/mL")


def lipid(analyte, mg_dl, days_ago=10):
    return LabResult(f"Observation/{analyte}", "lipid", NOW - timedelta(days=days_ago), analyte, analyte=analyte, value=mg_dl,
                     value_as_written=f"{mg_dl} mg/dL")


def snapshot(meds=(), labs=(), conditions=(), birth=date(1990, 1, 1), gender="female", unavailable=()):
    return PatientSnapshot(NOW, "p1", birth, gender, tuple(meds), tuple(labs), tuple(conditions), (), tuple(unavailable))


RECENT_LIPIDS = (lipid("triglycerides", 120), lipid("cholesterol", 170))


# --- indication -------------------------------------------------------------------------------


def test_indication_is_tsc_sega_from_a_text_only_condition_with_tsc_on_record():
    found = infer_indication(snapshot(conditions=[TSC, SEGA]), K, "everolimus")
    assert (found.key, found.dosing) == ("tsc-sega", "tdm")


def test_angiomyolipoma_without_tsc_on_record_is_not_the_tsc_indication():
    assert infer_indication(snapshot(conditions=[AML]), K, "everolimus").key is None


def test_two_indications_with_different_dosing_leave_the_indication_unknown():
    found = infer_indication(snapshot(conditions=[TSC, SEGA, AML]), K, "everolimus")
    assert found.key is None and found.dosing is None and len(found.evidence) == 2


# --- dose arithmetic --------------------------------------------------------------------------


def test_achievable_doses_combine_one_products_strengths():
    doses = achievable_doses([2.5, 5, 7.5, 10])
    assert {2.5, 7.5, 12.5, 40} <= set(doses) and 1 not in doses


def test_mosteller_bsa_of_a_child():
    assert mosteller_bsa(128, 26) == pytest.approx(0.9614, abs=1e-3)


def test_round_down_never_exceeds_the_computed_dose():
    assert round_down_to([2.5, 5, 7.5, 10], 5.6) == 5 and round_down_to([2.5, 5], 1.0) is None


# --- trough -----------------------------------------------------------------------------------


def test_high_trough_for_sega_proposes_the_label_formula_dose_rounded_down_to_a_strength():
    mtor = order(dose=10)
    [finding] = check_trough_high(snapshot([mtor], [level(18)], [TSC, SEGA]), K)
    # 10 mg x 10 / 18 = 5.56 mg -> 5 mg with Afinitor tablets
    assert finding.proposal.proposed_dose_mg == 5 and finding.severity is Severity.WARNING


def test_trough_of_exactly_15_is_not_high():
    assert check_trough_high(snapshot([order()], [level(15)], [TSC, SEGA]), K) == []


def test_low_trough_for_sega_proposes_an_increase_capped_at_5_mg():
    [finding] = check_trough_low(snapshot([order(dose=5, code="845515")], [level(2)], [TSC, SEGA]), K)
    assert finding.topic is Topic.TROUGH_LOW
    assert finding.proposal.raw_dose_mg == pytest.approx(10)  # 5 x 10/2 = 25, capped at 5 + 5
    assert finding.proposal.proposed_dose_mg == 10


def test_low_trough_for_fixed_dose_aml_does_not_fire():
    assert check_trough_low(snapshot([order()], [level(2)], [TSC, AML]), K) == []


def test_low_trough_at_the_lower_bound_does_not_fire():
    assert check_trough_low(snapshot([order()], [level(5)], [TSC, SEGA]), K) == []


def test_trough_due_two_weeks_after_a_dose_change_with_no_trough_since():
    mtor = order(authored=NOW - timedelta(days=20))
    [finding] = check_trough_monitoring(snapshot([mtor], [level(8, days_ago=60)], [TSC, SEGA]), K)
    assert finding.due_date == (NOW - timedelta(days=6)).date()


def test_trough_not_yet_due_ten_days_after_a_change():
    mtor = order(authored=NOW - timedelta(days=10))
    assert check_trough_monitoring(snapshot([mtor], [level(8, days_ago=60)], [TSC, SEGA]), K) == []


def test_trough_after_the_change_means_nothing_is_due():
    mtor = order(authored=NOW - timedelta(days=30))
    assert check_trough_monitoring(snapshot([mtor], [level(8, days_ago=5)], [TSC, SEGA]), K) == []


def test_draft_order_for_sega_plans_a_trough_two_weeks_out():
    mtor = order(draft=True, authored=NOW)
    [finding] = check_trough_monitoring(snapshot([mtor], [], [TSC, SEGA]), K)
    assert finding.due_date == (NOW + timedelta(days=14)).date()


def test_no_trough_claim_when_observations_could_not_be_fetched():
    mtor = order(authored=NOW - timedelta(days=30))
    assert check_trough_monitoring(snapshot([mtor], [], [TSC, SEGA], unavailable=["observations"]), K) == []


# --- lipids -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("analyte", "mg_dl", "grade", "severity"),
    [("triglycerides", 301, 2, Severity.INFO), ("triglycerides", 501, 3, Severity.WARNING),
     ("triglycerides", 1001, 4, Severity.CRITICAL), ("cholesterol", 401, 3, Severity.WARNING)],
)
def test_lipid_grade_sets_the_label_action(analyte, mg_dl, grade, severity):
    labs = [lipid(a, 100) for a in ("triglycerides", "cholesterol") if a != analyte] + [lipid(analyte, mg_dl)]
    [finding] = check_lipids(snapshot([order()], labs), K)
    assert (finding.grade, finding.severity) == (grade, severity)


def test_triglycerides_at_exactly_300_are_not_grade_2():
    assert check_lipids(snapshot([order()], [lipid("triglycerides", 300), lipid("cholesterol", 150)]), K) == []


def test_no_lipid_panel_within_the_interval_gives_an_info_card():
    days = K.lipids["panel_interval_days"]
    [finding] = check_lipids(snapshot([order()], [lipid("triglycerides", 120, days_ago=days + 5)]), K)
    assert finding.severity is Severity.INFO and finding.missing_panel_days == days


def test_missing_panel_is_not_claimed_when_observations_were_unavailable():
    assert check_lipids(snapshot([order()], [], unavailable=["observations"]), K) == []


# --- hepatic, infection, angioedema -------------------------------------------------------------


def test_cirrhosis_with_fixed_dose_everolimus_lists_child_pugh_doses():
    [finding] = check_hepatic_impairment(snapshot([order()], [], [TSC, AML, condition("19943007")]), K)
    assert {d.child_pugh for d in finding.doses} == {"A", "B", "C"}
    assert all(d.dosing == "fixed" for d in finding.doses)


def test_icd10_cirrhosis_prefix_is_recognised():
    assert check_hepatic_impairment(snapshot([order()], [], [condition("K74.60", ICD10)]), K)


def test_resolved_sepsis_does_not_fire_but_active_sepsis_does():
    assert check_infection(snapshot([order()], [], [condition("91302008", active=False)]), K) == []
    [finding] = check_infection(snapshot([order()], [], [condition("91302008")]), K)
    assert finding.kind == "severe-infection"


def test_pneumonitis_fires_with_its_own_advice():
    [finding] = check_infection(snapshot([order()], [], [condition("205237003")]), K)
    assert finding.advice.topic == "pneumonitis"


def test_lam_is_not_taken_for_pneumonitis():
    assert check_infection(snapshot([order(code="360110", text="Sirolimus 2 MG Oral Tablet", dose=2)], [],
                                    [condition("277844007")]), K) == []


def test_everolimus_with_ace_inhibitor_warns_of_angioedema():
    lisinopril = order("MedicationRequest/lis", "Lisinopril 10 MG Oral Tablet", "314076", draft=True, dose=10)
    [finding] = check_angioedema(snapshot([order(), lisinopril]), K)
    assert finding.severity is Severity.WARNING and finding.evidence == (lisinopril,)


def test_sirolimus_with_ace_inhibitor_has_no_angioedema_card():
    lisinopril = order("MedicationRequest/lis", "Lisinopril 10 MG Oral Tablet", "314076", dose=10)
    sirolimus = order("MedicationRequest/rapa", "Sirolimus 2 MG Oral Tablet", "360110", dose=2)
    assert check_angioedema(snapshot([sirolimus, lisinopril]), K) == []


# --- ordering: contraception and dose ---------------------------------------------------------


def test_contraception_advice_when_everolimus_is_ordered_for_a_woman_of_30():
    [finding] = check_contraception(snapshot([order(draft=True)], birth=date(1996, 5, 1)), K)
    assert finding.weeks == 8


def test_no_contraception_card_for_a_current_order_or_a_woman_of_70():
    assert check_contraception(snapshot([order()], birth=date(1996, 5, 1)), K) == []
    assert check_contraception(snapshot([order(draft=True)], birth=date(1956, 5, 1)), K) == []


def test_pregnancy_card_supersedes_contraception():
    hcg = LabResult("Observation/hcg", "hcg", NOW - timedelta(days=2), "hCG", result="positive")
    topics = [f.topic for f in evaluate(snapshot([order(draft=True)], [hcg, *RECENT_LIPIDS], birth=date(1996, 5, 1)), K)]
    assert Topic.PREGNANCY in topics and Topic.CONTRACEPTION not in topics


def _child(height_cm=128, weight_kg=26):
    return (LabResult("Observation/h", "height", NOW - timedelta(days=20), "Body height", value=height_cm),
            LabResult("Observation/w", "weight", NOW - timedelta(days=20), "Body weight", value=weight_kg))


def test_sega_dose_above_the_bsa_dose_warns():
    [finding] = check_dose(snapshot([order(draft=True, dose=10)], _child(), [TSC, SEGA], birth=date(2018, 4, 1), gender="male"), K)
    assert finding.severity is Severity.WARNING and finding.expected_mg == pytest.approx(4.5 * 0.9614, abs=0.01)


def test_sega_dose_within_tolerance_is_quiet():
    assert check_dose(snapshot([order(draft=True, dose=5, code="845515")], _child(), [TSC, SEGA], birth=date(2018, 4, 1)), K) == []


def test_sega_dose_without_height_and_weight_says_it_cannot_check():
    [finding] = check_dose(snapshot([order(draft=True, dose=5, code="845515")], [], [TSC, SEGA], birth=date(2018, 4, 1)), K)
    assert finding.missing_measurements and finding.severity is Severity.INFO


def test_aml_fixed_dose_of_10_mg_fits():
    assert check_dose(snapshot([order(draft=True, dose=10)], [], [TSC, AML]), K) == []


def test_child_under_the_label_age_gets_the_infection_note_even_when_the_dose_fits():
    height, weight = 95, 14  # BSA ~0.61 m2 -> 4.5 x 0.61 = 2.7 mg
    [finding] = check_dose(
        snapshot([order(draft=True, dose=2.5, code="998189", text="everolimus 2.5 MG Oral Tablet")], _child(height, weight),
                 [TSC, SEGA], birth=date(2024, 3, 1)),
        K,
    )
    assert finding.fits and finding.pediatric.below_age_years == 3


def test_high_trough_with_no_indication_on_record_proposes_a_dose_and_names_the_assumption():
    [finding] = check_trough_high(snapshot([order(dose=10)], [level(20)], [TSC]), K)
    assert finding.assumed_indication == K.indications["tsc-sega"]["display"]
    assert finding.proposal.proposed_dose_mg == 5


def test_high_trough_for_fixed_dose_aml_proposes_no_formula_dose():
    [finding] = check_trough_high(snapshot([order(dose=10)], [level(20)], [TSC, AML]), K)
    assert finding.proposal is None or finding.proposal.proposed_dose_mg is None
