"""Hepatic impairment, severe infection and non-infectious pneumonitis on record with an mTOR inhibitor."""

from __future__ import annotations

from datetime import timedelta

import pytest

from cds_service.rules.conditions import check_hepatic_impairment, check_infection
from snapshots import (
    AML_RECORD,
    ICD10CM,
    NOW,
    SEGA_RECORD,
    SNOMED,
    TSC_RECORD,
    condition,
    condition_record,
    everolimus,
    knowledge,
    mtor_order,
    record_snapshot,
    rule_findings,
)

K = knowledge()
NOW_2 = NOW - timedelta(days=2)


def test_cirrhosis_with_fixed_dose_everolimus_lists_child_pugh_doses():
    [finding] = check_hepatic_impairment(record_snapshot([mtor_order()], [], [TSC_RECORD, AML_RECORD, condition_record("19943007")]), K)
    assert {d.child_pugh for d in finding.doses} == {"A", "B", "C"}
    assert all(d.dosing == "fixed" for d in finding.doses)


def test_icd10_cirrhosis_prefix_is_recognised():
    assert check_hepatic_impairment(record_snapshot([mtor_order()], [], [condition_record("K74.60", ICD10CM)]), K)


def test_resolved_sepsis_does_not_fire_but_active_sepsis_does():
    assert check_infection(record_snapshot([mtor_order()], [], [condition_record("91302008", active=False)]), K) == []
    [finding] = check_infection(record_snapshot([mtor_order()], [], [condition_record("91302008")]), K)
    assert finding.kind == "severe-infection"


@pytest.mark.parametrize("verification", ["unconfirmed", "provisional", "differential"])
def test_a_condition_not_confirmed_is_no_basis_for_the_hepatic_or_infection_card(verification):
    """FHIR R4 condition-ver-status: a candidate diagnosis must not set a dose or hold the drug; confirmed still does."""
    for rule, code in ((check_hepatic_impairment, "19943007"), (check_infection, "91302008")):  # cirrhosis, sepsis
        assert rule_findings(rule, hook="patient-view", medications=[everolimus()],
                             conditions=[condition(SNOMED, code, verification=verification)]) == []
        assert rule_findings(rule, hook="patient-view", medications=[everolimus()],
                             conditions=[condition(SNOMED, code, verification="confirmed")]) != []


def test_pneumonitis_fires_with_its_own_advice():
    [finding] = check_infection(record_snapshot([mtor_order()], [], [condition_record("205237003")]), K)
    assert finding.advice.topic == "pneumonitis"


def test_lam_is_not_taken_for_pneumonitis():
    assert check_infection(record_snapshot([mtor_order(code="360110", text="Sirolimus 2 MG Oral Tablet", dose=2)], [],
                                    [condition_record("277844007")]), K) == []


# --- issue 10 §4: sirolimus gets Rapamune's own advice, never Afinitor's table ---------------------------------

RAPAMUNE = ("MedicationRequest/rapa", "Rapamune 2 MG Oral Tablet", "404432")
CIRRHOSIS_C = condition_record("K74.60", ICD10CM)


def test_hepatic_impairment_with_sirolimus_gives_rapamunes_advice_and_no_afinitor_numbers():
    # Rapamune §2.7 (maintenance dose reduced; size unverified, so no number) and §2.1 (7 to 14 days)
    [finding] = check_hepatic_impairment(record_snapshot([mtor_order(*RAPAMUNE, dose=2)], [], [CIRRHOSIS_C]), K)
    assert finding.doses == ()  # the Afinitor Child-Pugh table is everolimus's
    assert finding.advice is not None and finding.advice.product == "Rapamune" and finding.source.key == "RAPAMUNE-DOSE"
    assert "7.5" not in finding.advice.text and "AFINITOR" not in finding.advice.text.upper()


def test_hepatic_impairment_with_zortress_gives_the_zortress_label_advice():
    # Zortress 2010 Highlights: moderate hepatic impairment, reduce the daily dose by one half
    zortress = mtor_order("MedicationRequest/zor", "Zortress 0.75 MG Oral Tablet", "977440", dose=0.75)
    [finding] = check_hepatic_impairment(record_snapshot([zortress], [], [CIRRHOSIS_C]), K)
    assert finding.doses == () and finding.advice.source.key == "ZORTRESS-2010"


def test_hepatic_impairment_with_fyarro_points_to_its_label_without_numbers():
    fyarro = mtor_order("MedicationRequest/fy", "Fyarro (sirolimus protein-bound particles) injectable suspension", None, dose=None)
    [finding] = check_hepatic_impairment(record_snapshot([fyarro], [], [CIRRHOSIS_C]), K)
    assert finding.advice.product == "Fyarro" and not any(ch.isdigit() for ch in finding.advice.text.replace("§2.4", ""))


# --- issue 10 §5: severe infection value sets; §2: look-back windows -----------------------------------------------


def test_sepsis_coded_only_in_icd10_fires():
    # clinical_conditions.json severe_infections A41 (prefix), set sepsis
    [finding] = check_infection(record_snapshot([mtor_order()], [], [condition_record("A41.9", ICD10CM, asserted=NOW_2)]), K)
    assert finding.kind == "severe-infection" and finding.severity.name == "WARNING"


@pytest.mark.parametrize("code, system", [("R65.21", ICD10CM), ("76571007", SNOMED), ("B59", ICD10CM), ("J18.9", ICD10CM),
                                          ("B44.0", ICD10CM), ("A15.0", ICD10CM), ("B25.9", ICD10CM), ("B16.9", ICD10CM)])
def test_broadened_severe_infection_value_sets_fire(code, system):
    [finding] = check_infection(record_snapshot([mtor_order()], [], [condition_record(code, system, asserted=NOW_2)]), K)
    assert finding.kind == "severe-infection"


def test_uncoded_septic_shock_is_recognised_by_name():
    [finding] = check_infection(record_snapshot([mtor_order()], [], [condition_record(None, text="Septic shock", asserted=NOW_2)]), K)
    assert finding.kind == "severe-infection"


def test_infection_older_than_the_look_back_window_gives_only_an_info_card():
    # lookback.json severe-infection-condition: 30 days (policy)
    [finding] = check_infection(record_snapshot([mtor_order()], [], [condition_record("A41.9", ICD10CM)]), K)  # 400 days old
    assert finding.severity.name == "INFO" and finding.stale_after_days == 30


def test_sirolimus_infection_card_quotes_rapamune():
    [finding] = check_infection(record_snapshot([mtor_order(*RAPAMUNE, dose=2)], [], [condition_record("A41.9", ICD10CM, asserted=NOW_2)]), K)
    assert finding.source.key == "RAPAMUNE-WP" and "AFINITOR" not in finding.advice.text.upper()


ZORTRESS = ("MedicationRequest/zor", "Zortress 0.75 MG Oral Tablet", "977440")
FYARRO = ("MedicationRequest/fy", "Fyarro (sirolimus protein-bound particles) injectable suspension", None)
ZORTRESS_BOXED_WARNING = ("WARNING: MALIGNANCIES and SERIOUS INFECTIONS; KIDNEY GRAFT THROMBOSIS; NEPHROTOXICITY; "
                          "and MORTALITY IN HEART TRANSPLANTATION")


def test_zortress_with_active_sepsis_gives_its_own_boxed_warning():
    # Zortress label (DailyMed set e082a024-7850-400b-a5c2-2a140612562a), Boxed Warning heading, verified via openFDA
    snapshot = record_snapshot([mtor_order(*ZORTRESS, dose=0.75)], [], [condition_record("A41.9", ICD10CM, asserted=NOW_2)])
    [finding] = check_infection(snapshot, K)
    assert finding.severity.name == "WARNING" and finding.kind == "severe-infection"
    assert finding.advice.product == "Zortress" and finding.source.key == "ZORTRESS-LABEL"
    assert ZORTRESS_BOXED_WARNING in finding.advice.text and "AFINITOR" not in finding.advice.text.upper()


def test_zortress_infection_past_the_look_back_window_gives_only_an_info_card():
    snapshot = record_snapshot([mtor_order(*ZORTRESS, dose=0.75)], [], [condition_record("A41.9", ICD10CM)])  # 400 days old
    [finding] = check_infection(snapshot, K)
    assert finding.severity.name == "INFO" and finding.advice.product == "Zortress"


def test_zortress_pneumonitis_and_fyarro_infection_give_no_card_without_their_own_label_statement():
    # no verified Zortress statement on non-infectious pneumonitis; no Fyarro infection advice in the knowledge
    assert check_infection(record_snapshot([mtor_order(*ZORTRESS, dose=0.75)], [], [condition_record("205237003")]), K) == []
    assert check_infection(record_snapshot([mtor_order(*FYARRO, dose=None)], [],
                                           [condition_record("A41.9", ICD10CM, asserted=NOW_2)]), K) == []


# --- cards (issue 13): the concrete next step, the governing product's words only --------------------------------


def card_for(findings, snapshot):
    from cds_service.cards import render_cards
    [card] = render_cards(findings, snapshot)
    return card


def test_sirolimus_hepatic_card_names_no_afinitor_and_says_the_next_step():
    snapshot = record_snapshot([mtor_order(*RAPAMUNE, dose=2)], [], [CIRRHOSIS_C])
    card = card_for(check_hepatic_impairment(snapshot, K), snapshot)
    assert "afinitor" not in (card.summary + card.detail).lower() and "Next step:" in card.detail
    assert "Child-Pugh A" not in card.detail and "Rapamune" in card.detail


def test_afinitor_hepatic_card_without_child_pugh_asks_for_it_instead_of_repeating_the_table():
    snapshot = record_snapshot([mtor_order()], [], [TSC_RECORD, AML_RECORD, condition_record("19943007")])
    card = card_for(check_hepatic_impairment(snapshot, K), snapshot)
    assert "Child-Pugh class" in card.detail and "7.5 mg" not in card.detail


def test_infection_card_says_the_next_step_and_shows_no_resource_ids():
    snapshot = record_snapshot([mtor_order()], [], [condition_record("A41.9", ICD10CM, text="Sepsis", asserted=NOW_2)])
    card = card_for(check_infection(snapshot, K), snapshot)
    assert "Next step:" in card.detail and "Condition/" not in card.detail and "MedicationRequest/" not in card.detail
    assert len(card.summary) < 140 and "more)" not in card.summary


def test_zortress_infection_card_asks_for_a_transplant_team_review_and_gives_no_hold_instruction():
    snapshot = record_snapshot([mtor_order(*ZORTRESS, dose=0.75)], [], [condition_record("A41.9", ICD10CM, text="Sepsis", asserted=NOW_2)])
    card = card_for(check_infection(snapshot, K), snapshot)
    text = card.summary + card.detail
    assert "transplant team now" in card.summary and len(card.summary) < 140
    assert ZORTRESS_BOXED_WARNING in card.detail and "Zortress" in card.detail
    assert "afinitor" not in text.lower() and "rapamune" not in text.lower()
    assert "hold" not in text.lower() and "interrupt" not in text.lower() and " mg" not in card.detail.split("Next step")[1]


@pytest.mark.parametrize("code, text", [("Z22.7", "Latent tuberculosis"), (None, "Latent tuberculosis infection"),
                                        (None, "History of sepsis"), (None, "Tuberculosis screening"), (None, "Exposure to tuberculosis")])
def test_latent_past_screened_or_exposure_infections_are_not_active_severe_infections(code, text):
    """clinical_conditions.json: latent TB (Z22.7) is not active infection; a name beside these words is no infection."""
    record = condition_record(code, ICD10CM, text=text, asserted=NOW_2)
    assert "severe-infection" not in record.kinds
    assert check_infection(record_snapshot([mtor_order()], [], [record]), K) == []
    assert "severe-infection" in condition_record(None, text="Pulmonary tuberculosis", asserted=NOW_2).kinds


# --- the hepatic card cites the label section that holds its advice (a clinical audit: §12.3 for a TSC patient with
# SEGA, §2 for renal angiomyolipoma). The dose for hepatic impairment is Dosage and Administration (§2): the older
# Afinitor label's §12.3 restates it and points there ("[see Dosage and Administration (2.2)]", "(2.4, 2.5)") -------

AFINITOR_HEPATIC_SECTION = "§2 Dosage and Administration: hepatic impairment"


@pytest.mark.parametrize(
    "indication",
    [[TSC_RECORD, SEGA_RECORD], [TSC_RECORD, AML_RECORD], [TSC_RECORD]],
    ids=["sega-trough-guided", "angiomyolipoma-fixed-dose", "use-unknown"],
)
def test_afinitor_hepatic_card_cites_dosage_and_administration_whatever_the_use(indication):
    snapshot = record_snapshot([mtor_order()], [], [*indication, condition_record("19943007")])
    [finding] = check_hepatic_impairment(snapshot, K)
    card = card_for([finding], snapshot)
    assert finding.section == AFINITOR_HEPATIC_SECTION
    assert card.detail.rstrip().endswith(f", {AFINITOR_HEPATIC_SECTION}")
    assert "12.3" not in card.detail and "Pharmacokinetics" not in card.detail


def test_every_afinitor_hepatic_dose_and_its_advice_cite_one_section():
    sections = {d.section for d in K.hepatic_doses if d.drug == "everolimus"}
    sections |= {a.section for a in K.condition_advice if a.topic == "hepatic-impairment" and a.product == "Afinitor"}
    assert sections == {AFINITOR_HEPATIC_SECTION}


@pytest.mark.parametrize(
    "order, section",
    [
        (mtor_order(*RAPAMUNE, dose=2), "§2.7 Hepatic impairment; §2.1"),
        (mtor_order("MedicationRequest/zor", "Zortress 0.75 MG Oral Tablet", "977440", dose=0.75), "Highlights: Dosage and Administration"),
    ],
    ids=["rapamune", "zortress"],
)
def test_rapamune_and_zortress_hepatic_cards_cite_their_own_dosing_section(order, section):
    snapshot = record_snapshot([order], [], [CIRRHOSIS_C])
    card = card_for(check_hepatic_impairment(snapshot, K), snapshot)
    assert card.detail.rstrip().endswith(f", {section}") and "12.3" not in card.detail
