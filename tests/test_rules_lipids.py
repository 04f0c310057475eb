"""check_lipids: CTCAE grade of the latest triglycerides and cholesterol, or no recent panel."""

from __future__ import annotations

import pytest

from cds_service.findings import Severity
from cds_service.rules.lipids import check_lipids
from snapshots import (
    knowledge,
    lipid_result,
    mtor_order,
    record_snapshot,
)

K = knowledge()


@pytest.mark.parametrize(
    ("analyte", "mg_dl", "grade", "severity"),
    [("triglycerides", 301, 2, Severity.INFO), ("triglycerides", 501, 3, Severity.WARNING),
     ("triglycerides", 1001, 4, Severity.CRITICAL), ("cholesterol", 401, 3, Severity.WARNING)],
)
def test_lipid_grade_sets_the_label_action(analyte, mg_dl, grade, severity):
    labs = [lipid_result(a, 100) for a in ("triglycerides", "cholesterol") if a != analyte] + [lipid_result(analyte, mg_dl)]
    [finding] = check_lipids(record_snapshot([mtor_order()], labs), K)
    assert (finding.grade, finding.severity) == (grade, severity)


def test_triglycerides_at_exactly_300_are_not_grade_2():
    assert check_lipids(record_snapshot([mtor_order()], [lipid_result("triglycerides", 300), lipid_result("cholesterol", 150)]), K) == []


def test_no_lipid_panel_within_the_interval_gives_an_info_card():
    days = K.lipid_panel_interval_days
    [finding] = check_lipids(record_snapshot([mtor_order()], [lipid_result("triglycerides", 120, days_ago=days + 5)]), K)
    assert finding.severity is Severity.INFO and finding.missing_panel_days == days


def test_missing_panel_is_not_claimed_when_observations_were_unavailable():
    assert check_lipids(record_snapshot([mtor_order()], [], unavailable=["observations"]), K) == []


# --- issue 10 §2: look-back window (lookback.json lipids, 90 days, policy) -----------------------------------------


def test_grade_4_on_an_old_panel_gives_an_info_recheck_never_discontinue():
    [finding] = check_lipids(record_snapshot([mtor_order()], [lipid_result("triglycerides", 1001, days_ago=120)]), K)
    assert finding.grade == 4 and finding.severity is Severity.INFO and finding.stale_after_days == 90


def test_grade_4_on_a_current_panel_stays_critical():
    [finding] = check_lipids(record_snapshot([mtor_order()], [lipid_result("triglycerides", 1001, days_ago=80)]), K)
    assert finding.severity is Severity.CRITICAL and finding.stale_after_days is None


# --- issue 10 §4: the grade actions are Afinitor's (monitoring.json lipids.actions cite the Afinitor label) --------


def test_sirolimus_grade_4_shows_the_grade_without_afinitors_discontinue_action():
    rapamune = mtor_order("MedicationRequest/rapa", "Rapamune 2 MG Oral Tablet", "404432", dose=2)
    [finding] = check_lipids(record_snapshot([rapamune], [lipid_result("triglycerides", 1001)]), K)
    assert finding.grade == 4 and finding.severity is Severity.INFO and not finding.label_action


def test_stale_lipid_card_asks_for_a_new_panel_and_not_to_discontinue():
    from cds_service.cards import render_cards
    snapshot = record_snapshot([mtor_order()], [lipid_result("triglycerides", 1001, days_ago=120)])
    [card] = render_cards(check_lipids(snapshot, K), snapshot)
    assert card.indicator == "info" and "recheck" in card.summary and "discontinue" not in card.detail.lower()


@pytest.mark.parametrize(("loinc", "mmol_l", "grade"), [
    ("2571-8", 11.4, 3),  # 1009.7 mg/dL converted: grade 4 on the mg/dL scale, a "discontinue" card
    ("2571-8", 11.5, 4), ("2571-8", 5.7, 2), ("2571-8", 5.8, 3), ("2571-8", 3.42, None), ("2093-3", 7.75, None), ("2093-3", 10.35, 3),
])
def test_a_lipid_reported_in_mmol_per_l_is_graded_on_ctcaes_mmol_per_l_scale(loinc, mmol_l, grade):
    """Found by an audit: CTCAE's mmol/L limits are rounded, so a value reported in mmol/L and converted to mg/dL could
    land one grade up at a boundary (11.4 mmol/L triglycerides, CTCAE grade 3, got Afinitor's grade-4 'discontinue')."""
    from snapshots import everolimus, observation, snapshot_of

    result = observation(loinc, 5, text="lipid", valueQuantity={"value": mmol_l, "unit": "mmol/L", "system": "http://unitsofmeasure.org", "code": "mmol/L"})
    other = observation("2093-3" if loinc == "2571-8" else "2571-8", 5, text="lipid",
                        valueQuantity={"value": 100, "unit": "mg/dL", "system": "http://unitsofmeasure.org", "code": "mg/dL"})
    findings = check_lipids(snapshot_of(medications=[everolimus()], observations=[result, other]), K)
    assert [f.grade for f in findings] == ([grade] if grade else [])


def test_the_readme_says_each_unit_is_graded_on_its_own_scale():
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    assert "(mg/dL or mmol/L, each graded on CTCAE's own scale for its unit)" in readme


def test_a_lipid_graded_in_mmol_per_l_shows_the_value_it_was_graded_on():
    """Found by a review: 11.4 mmol/L triglycerides read "1010 mg/dL ... is CTCAE grade 3", which CTCAE's mg/dL scale
    calls grade 4. The card shows the value as reported, the scale it was graded on, then the mg/dL conversion."""
    from cds_service.cards import render_cards
    from snapshots import everolimus, observation, snapshot_of

    tg = observation("2571-8", 5, text="TG", valueQuantity={"value": 11.4, "unit": "mmol/L", "system": "http://unitsofmeasure.org", "code": "mmol/L"})
    snapshot = snapshot_of(medications=[everolimus()], observations=[tg])
    [card] = render_cards(check_lipids(snapshot, K), snapshot)
    assert card.summary.startswith("Triglycerides 11.4 mmol/L on ") and "CTCAE grade 3" in card.summary
    assert "**11.4 mmol/L** (1010 mg/dL)" in card.detail and "CTCAE v5 grade 3 (its mmol/L scale)" in card.detail
