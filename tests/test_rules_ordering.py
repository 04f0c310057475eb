"""Checks made when an mTOR inhibitor is ordered: contraception advice, the dose against the label, dose arithmetic."""

from __future__ import annotations

import dataclasses
from datetime import date, datetime, timedelta

import pytest

from cds_service.cards import render_cards
from cds_service.findings import Severity, Topic
from cds_service.patient import LabResult
from cds_service.rules import evaluate
from cds_service.rules.common import achievable_doses, mosteller_bsa, round_down_to
from cds_service.rules.ordering import check_contraception, check_dose
from snapshots import (
    AML_RECORD,
    NOW,
    SEGA_RECORD,
    TSC_RECORD,
    body_measurements,
    knowledge,
    lipid_result,
    mtor_order,
    record_snapshot,
)

K = knowledge()

SEGA_CHILD = [TSC_RECORD, SEGA_RECORD]
RECENT_LIPIDS = (lipid_result("triglycerides", 120), lipid_result("cholesterol", 170))


def test_achievable_doses_combine_one_products_strengths():
    doses = achievable_doses([2.5, 5, 7.5, 10])
    assert {2.5, 7.5, 12.5, 40} <= set(doses) and 1 not in doses


def test_mosteller_bsa_of_a_child():
    assert mosteller_bsa(128, 26) == pytest.approx(0.9614, abs=1e-3)


def test_round_down_never_exceeds_the_computed_dose():
    assert round_down_to([2.5, 5, 7.5, 10], 5.6) == 5 and round_down_to([2.5, 5], 1.0) is None


def test_contraception_advice_when_everolimus_is_ordered_for_a_woman_of_30():
    [finding] = check_contraception(record_snapshot([mtor_order(draft=True)], birth=date(1996, 5, 1)), K)
    assert finding.weeks == 8


def test_no_contraception_card_for_a_current_order_or_a_woman_of_70():
    assert check_contraception(record_snapshot([mtor_order()], birth=date(1996, 5, 1)), K) == []
    assert check_contraception(record_snapshot([mtor_order(draft=True)], birth=date(1956, 5, 1)), K) == []


def test_no_contraception_card_for_a_dose_change_of_a_drug_already_taken():
    """Found by a whole-response audit: a woman of 30 on Afinitor whose dose was being changed got "confirm pregnancy
    status before starting"; the reminder is for a start (a different mTOR drug is one)."""
    current = mtor_order("MedicationRequest/evero", dose=10.0)
    change = mtor_order("MedicationRequest/new", dose=5.0, draft=True)
    assert check_contraception(record_snapshot([current, change], birth=date(1996, 5, 1)), K) == []
    sirolimus = mtor_order("MedicationRequest/rapa", "sirolimus 2 MG Oral Tablet [Rapamune]", "404432", dose=2.0, draft=True)
    [switch] = check_contraception(record_snapshot([current, sirolimus], birth=date(1996, 5, 1)), K)
    assert switch.weeks == 12


def test_the_readme_says_the_contraception_card_is_for_a_start():
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    assert "as a start (not a dose change or renewal beside a current order of the same drug)" in readme


def test_pregnancy_card_supersedes_contraception():
    hcg = LabResult("Observation/hcg", "hcg", NOW - timedelta(days=2), "hCG", result="positive")
    topics = [f.topic for f in evaluate(record_snapshot([mtor_order(draft=True)], [hcg, *RECENT_LIPIDS], birth=date(1996, 5, 1)), K)]
    assert Topic.PREGNANCY in topics and Topic.CONTRACEPTION not in topics


def test_sega_dose_above_the_bsa_dose_warns():
    [finding] = check_dose(record_snapshot([mtor_order(draft=True, dose=10)], body_measurements(), SEGA_CHILD, birth=date(2018, 4, 1), gender="male"), K)
    assert finding.severity is Severity.WARNING and finding.expected_mg == pytest.approx(4.5 * 0.9614, abs=0.01)


def test_sega_dose_within_tolerance_is_quiet():
    assert check_dose(record_snapshot([mtor_order(draft=True, dose=5, code="845515")], body_measurements(), SEGA_CHILD, birth=date(2018, 4, 1)), K) == []


def test_sega_dose_without_height_and_weight_says_it_cannot_check():
    [finding] = check_dose(record_snapshot([mtor_order(draft=True, dose=5, code="845515")], [], SEGA_CHILD, birth=date(2018, 4, 1)), K)
    assert finding.missing_measurements and finding.severity is Severity.INFO


def test_aml_fixed_dose_of_10_mg_fits():
    assert check_dose(record_snapshot([mtor_order(draft=True, dose=10)], [], [TSC_RECORD, AML_RECORD]), K) == []


@pytest.mark.parametrize("dose", [10, 5, 2.5])
def test_a_childs_tsc_aml_order_is_never_compared_with_the_adult_fixed_dose(dose):
    """The label's 10 mg TSC-AML dose is for adults (§1.4): for a 5-year-old it neither fits nor is "below" it (audit:
    10 mg read as fitting, 5 mg as below the 10 mg label dose)."""
    snapshot = record_snapshot([mtor_order(draft=True, dose=dose)], body_measurements(110, 19), [TSC_RECORD, AML_RECORD],
                               birth=date(2021, 6, 1))
    [finding] = check_dose(snapshot, K)
    assert finding.below_label_age and finding.expected_mg is None and not finding.fits
    assert finding.severity is Severity.INFO and not finding.missing_measurements
    [card] = render_cards([finding], snapshot)
    assert "for adults" in card.summary and "5 years" in card.summary and "10 mg once daily is for adults" in card.detail
    assert "above the label dose" not in card.detail and "below the label dose" not in card.summary


def test_an_adult_tsc_aml_order_is_still_checked_against_the_fixed_dose():
    snapshot = record_snapshot([mtor_order(draft=True, dose=20)], [], [TSC_RECORD, AML_RECORD], birth=date(1990, 1, 1))
    [finding] = check_dose(snapshot, K)
    assert finding.severity is Severity.WARNING and finding.expected_mg == 10 and not finding.below_label_age


def test_a_sega_order_for_an_infant_under_the_labels_one_year_is_not_given_a_bsa_dose():
    snapshot = record_snapshot([mtor_order(draft=True, dose=2)], body_measurements(70, 8), SEGA_CHILD, birth=date(2026, 3, 1))
    [finding] = check_dose(snapshot, K)
    assert finding.below_label_age and finding.expected_mg is None
    [card] = render_cards([finding], snapshot)
    assert "8 months" in card.summary and "patients 1 year and older" in card.summary


@pytest.mark.parametrize(("birth", "below"), [
    (date(2008, 11, 23), False),  # the 18th birthday (NOW is 2026-11-23): 6574 days, under 18 x 365.25 before the audit
    (date(2008, 11, 24), True),  # one day short of 18
])
def test_age_is_counted_by_the_calendar_an_adult_on_the_18th_birthday(birth, below):
    """Dates audit: age was days / 365.25, so on an 18th birthday after 4 leap days the patient read as 17 and the
    TSC-AML order got the 'dose is for adults' card."""
    snapshot = record_snapshot([mtor_order(draft=True, dose=10)], [], [TSC_RECORD, AML_RECORD], birth=birth)
    assert [f.below_label_age for f in check_dose(snapshot, K)] == ([True] if below else [])


@pytest.mark.parametrize(("birth", "today", "age"), [
    (date(2025, 11, 23), date(2026, 11, 23), 1),  # a first birthday: 365 days, under 365.25 before the audit
    (date(2008, 2, 29), date(2026, 2, 28), 17),  # born on a leap day: a year older on 1 March in a common year
    (date(2008, 2, 29), date(2026, 3, 1), 18),
    (date(2008, 2, 29), date(2028, 2, 29), 20),
])
def test_age_in_whole_years_on_and_around_birthdays(birth, today, age):
    snapshot = dataclasses.replace(record_snapshot(birth=birth), now=datetime.combine(today, NOW.timetz()))
    assert int(snapshot.age_years) == age


def test_child_under_the_label_age_gets_the_infection_note_even_when_the_dose_fits():
    height, weight = 95, 14  # BSA ~0.61 m2 -> 4.5 x 0.61 = 2.7 mg
    [finding] = check_dose(
        record_snapshot([mtor_order(draft=True, dose=2.5, code="998189", text="everolimus 2.5 MG Oral Tablet")], body_measurements(height, weight),
                 [TSC_RECORD, SEGA_RECORD], birth=date(2024, 3, 1)),
        K,
    )
    assert finding.fits and finding.pediatric.below_age_years == 3


# --- issue 10: dose check by treatment context and label-adjusted starts -----------------------------

from snapshots import ICD10CM, condition_record  # noqa: E402


def test_zortress_label_start_is_never_compared_with_a_tsc_dose():
    # regimens.json zortress-kidney start 0.75 mg twice daily (ZORTRESS-2010 Highlights §2)
    from cds_service.rules.ordering import check_dose
    from snapshots import SEGA_RECORD, TSC_RECORD, knowledge
    draft = mtor_order("MedicationRequest/zor", "everolimus 0.75 MG Oral Tablet [Zortress]", "977440", draft=True, dose=0.75)
    snap = record_snapshot([draft], body_measurements(), [TSC_RECORD, SEGA_RECORD, condition_record("Z94.0", ICD10CM)])
    assert check_dose(snap, knowledge()) == []


def test_a_higher_dose_with_a_strong_inducer_is_not_called_too_high():
    # regimens.json afinitor strong_inducer_fixed_dose (10 -> 20 mg) / AFINITOR §2 dose modifications
    from cds_service.rules.ordering import check_dose
    from snapshots import AML_RECORD, TSC_RECORD, knowledge, order
    draft = mtor_order(draft=True, dose=20.0)
    snap = record_snapshot([draft], (), [TSC_RECORD, AML_RECORD])
    [too_high] = check_dose(snap, knowledge())
    assert too_high.severity.name == "WARNING"
    rifampin = order("rifampin 300 MG Oral Capsule", ref="MedicationRequest/rif")
    assert check_dose(record_snapshot([draft, rifampin], (), [TSC_RECORD, AML_RECORD]), knowledge()) == []


def test_far_above_the_inducer_adjusted_start_is_still_too_high():
    from cds_service.rules.ordering import check_dose
    from snapshots import AML_RECORD, TSC_RECORD, knowledge, order
    rifampin = order("rifampin 300 MG Oral Capsule", ref="MedicationRequest/rif")
    [finding] = check_dose(record_snapshot([mtor_order(draft=True, dose=40.0), rifampin], (), [TSC_RECORD, AML_RECORD]), knowledge())
    assert finding.severity.name == "WARNING"


def test_moderate_inhibitor_fixed_dose_of_2_5_mg_is_a_label_dose():
    # regimens.json afinitor moderate_inhibitor_fixed_dose 2.5 mg (AFINITOR-2012 Highlights §2, verified)
    from cds_service.rules.ordering import check_dose
    from snapshots import AML_RECORD, TSC_RECORD, knowledge, order
    verapamil = order("verapamil 80 MG Oral Tablet", ref="MedicationRequest/ver")
    snap = record_snapshot([mtor_order(draft=True, dose=2.5), verapamil], (), [TSC_RECORD, AML_RECORD])
    assert check_dose(snap, knowledge()) == []
    assert check_dose(record_snapshot([mtor_order(draft=True, dose=2.5)], (), [TSC_RECORD, AML_RECORD]), knowledge())


def test_contraception_card_never_cites_afinitor_for_a_zortress_order():
    # dosing.json contraception: everolimus advice is the Afinitor SmPC's; Zortress's own statement is not on file
    from cds_service.rules.ordering import check_contraception
    from snapshots import knowledge
    zortress = mtor_order("MedicationRequest/zor", "everolimus 0.75 MG Oral Tablet [Zortress]", "977440", draft=True, dose=0.75)
    assert check_contraception(record_snapshot([zortress]), knowledge()) == []
    assert check_contraception(record_snapshot([mtor_order(draft=True)]), knowledge())


def test_a_draft_beside_a_current_order_of_the_drug_is_a_titration_not_a_start():
    """Found by a whole-response audit: a LAM patient on Rapamune 2 mg with a trough of 17 ng/mL, whose trough card
    proposes 1 mg, got a dose-check card on the draft 1 mg order ("below the label dose (~2.0 mg/day): review the
    order"): the label's starting dose (Rapamune §2.3, 2 mg) was held against a trough-guided titration."""
    from snapshots import ICD10CM, condition_record

    lam = [condition_record("J84.81", ICD10CM)]
    current = mtor_order("MedicationRequest/rapa", "sirolimus 2 MG Oral Tablet [Rapamune]", "404432", dose=2.0)
    titrated = mtor_order("MedicationRequest/new", "sirolimus 1 MG Oral Tablet [Rapamune]", "351989", dose=1.0, draft=True)
    assert check_dose(record_snapshot([current, titrated], (), lam), K) == []
    [start] = check_dose(record_snapshot([titrated], (), lam), K)  # the same draft as a start is still checked
    assert start.severity is Severity.INFO and start.expected_mg == 2
