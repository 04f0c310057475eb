"""Reading what the EHR says exactly: a lab value reported as a bound (Quantity.comparator) and how often a dose is
taken (Dosage.timing: repeat, timeOfDay, when, a GTSAbbreviation timing.code, several dosage lines). Found by a FHIR
audit: "> 1000 mg/dL" triglycerides graded 3 (grade 4 is above 1000), a "> 20 ng/mL" trough got a one-click dose
computed as if it were 20, "> 4 mIU/mL" hCG cancelled a positive test, and a 5 mg BID order with a low trough was offered
"10 mg once daily" (no increase at all). When the data cannot be read with confidence the card says "review the dose"
and offers no number."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from cds_service.cards import render_cards
from cds_service.findings import Severity
from cds_service.rules.lipids import check_lipids
from cds_service.rules.pregnancy import check_pregnancy
from cds_service.rules.trough import check_trough_high, check_trough_low
from snapshots import (
    INTERPRETATION,
    SNOMED,
    UCUM,
    coding,
    concept,
    condition,
    everolimus,
    hcg,
    knowledge,
    level,
    med,
    observation,
    snapshot_of,
)

K = knowledge()
TSC = condition(SNOMED, "7199000", "Tuberous sclerosis")
SEGA = condition(SNOMED, "254942002", "Subependymal giant cell astrocytoma")
GTS_ABBREVIATION = "http://terminology.hl7.org/CodeSystem/v3-GTSAbbreviation"  # HL7 v3 code system (timing.code)
ONCE_DAILY = {"repeat": {"frequency": 1, "period": 1, "periodUnit": "d"}}


def eve(dose_mg: float, timing: dict | None = None, *, rxnorm: str = "845515", lines: int = 1) -> dict:
    """Everolimus (5 mg tablet by default) with `lines` identical dosage lines of this dose and timing."""
    order = med("everolimus 5 MG Oral Tablet", rxnorm=rxnorm, dose_mg=dose_mg)
    dosage = order["dosageInstruction"][0]
    if timing is not None:
        dosage["timing"] = timing
    order["dosageInstruction"] = [{**copy.deepcopy(dosage), "sequence": 1} for _ in range(lines)] if lines > 1 else [dosage]
    return order


def bid_code(*codes: str, system: str = GTS_ABBREVIATION) -> dict:
    return {"code": concept(None, *(coding(system, c) for c in codes))}


def the_order(medication: dict):
    [order] = snapshot_of(hook="patient-view", medications=[medication]).medications
    return order


def trough_cards(medication: dict, trough: dict, rule):
    snapshot = snapshot_of(hook="patient-view", medications=[medication], observations=[trough], conditions=[TSC, SEGA])
    findings = rule(snapshot, K)
    return findings, render_cards(findings, snapshot)


def bound(value: float, comparator: str, **kwargs) -> dict:
    trough = level("everolimus", value, **kwargs)
    trough["valueQuantity"]["comparator"] = comparator
    return trough


# --- A. Quantity.comparator on labs ---------------------------------------------------------------------------------


def test_a_trough_above_a_bound_warns_but_gives_no_dose_from_the_bound():
    """L5: "> 20 ng/mL" on 10 mg was offered "Change the dose to 5 mg once daily", computed as if the level were 20."""
    [finding], [card] = trough_cards(eve(10, ONCE_DAILY), bound(20, ">", days_ago=2), check_trough_high)
    assert finding.severity is Severity.WARNING and finding.proposal is None
    assert not card.suggestions
    assert card.summary.startswith("Everolimus trough > 20 ng/mL on ") and card.summary.endswith(": review the dose")
    assert "**> 20 ng/mL**" in card.detail
    assert "- Reported as > 20 ng/mL: the dose cannot be computed from a bound; review the dose." in card.detail
    assert "Label formula" not in card.detail


def test_a_plain_trough_on_a_once_daily_order_still_gets_its_dose_and_one_click_change():
    """Control: frequency 1 per 1 d is once daily; 10 mg x 10 / 20 = 5 mg."""
    assert the_order(eve(10, ONCE_DAILY)).doses_per_day == 1
    [finding], [card] = trough_cards(eve(10, ONCE_DAILY), level("everolimus", 20, days_ago=2), check_trough_high)
    assert finding.proposal.proposed_dose_mg == 5
    assert [s["label"] for s in card.suggestions] == ["Change the dose to 5 mg once daily"]


def test_a_trough_below_a_bound_is_low_with_no_dose_and_keeps_its_comparator():
    """L4: "< 3 ng/mL" showed as "3 ng/mL" and was offered a computed 10 mg."""
    [finding], [card] = trough_cards(eve(5, ONCE_DAILY), bound(3, "<", days_ago=2), check_trough_low)
    assert finding.proposal is None and not card.suggestions
    assert "trough < 3 ng/mL on" in card.summary and "**< 3 ng/mL**" in card.detail
    assert "- Reported as < 3 ng/mL: the dose cannot be computed from a bound; review the dose." in card.detail


@pytest.mark.parametrize(("trough", "rule"), [(bound(20, "<", days_ago=2), check_trough_high),
                                             (bound(3, ">", days_ago=2), check_trough_low)], ids=["below-20", "above-3"])
def test_a_bound_that_may_lie_on_either_side_of_the_limit_gives_no_trough_card(trough, rule):
    """"< 20 ng/mL" may be 3 (not above the 15 limit), "> 3 ng/mL" may be 10 (not below the 5-15 target)."""
    assert trough_cards(eve(10, ONCE_DAILY), trough, rule)[0] == []


def test_a_plain_low_trough_still_gets_its_increase():
    [finding], [card] = trough_cards(eve(5, ONCE_DAILY), level("everolimus", 3, days_ago=2), check_trough_low)
    assert finding.proposal.proposed_dose_mg == 10 and card.suggestions


@pytest.mark.parametrize("comparator", ["<", "<=", ">=", ">"])
def test_every_comparator_is_kept_as_written_and_marks_the_value_a_bound(comparator):
    [lab] = snapshot_of(hook="patient-view", observations=[bound(20, comparator, unit="ug/L")]).labs
    assert lab.comparator == comparator and lab.value_as_written == f"{comparator} 20 ug/L"


def test_an_exact_value_has_no_comparator():
    [lab] = snapshot_of(hook="patient-view", observations=[level("everolimus", 20)]).labs
    assert lab.comparator is None and lab.value_as_written == "20 ng/mL"


def test_a_comparator_that_is_not_a_fhir_r4_code_makes_the_value_unreadable_not_exact():
    """Read as no value, never as exact; the result still stands as the newest of its kind (see test_fhir_edge_semantics)."""
    [lab] = snapshot_of(hook="patient-view", observations=[bound(20, "ad")]).labs
    assert lab.value is None and lab.unreadable_unit and lab.value_as_written == "~20 ng/mL"


def lipid(loinc: str, value: float, comparator: str | None = None, unit: str = "mg/dL") -> dict:
    quantity = {"value": value, "unit": unit, "system": UCUM, "code": unit, **({"comparator": comparator} if comparator else {})}
    return observation(loinc, 10, valueQuantity=quantity)


def lipid_findings(*observations):
    snapshot = snapshot_of(hook="patient-view", medications=[everolimus()], observations=observations)
    findings = check_lipids(snapshot, K)
    return findings, render_cards(findings, snapshot)


TG, CHOL = "2571-8", "2093-3"


def test_triglycerides_above_1000_are_grade_4_and_shown_as_a_bound():
    """L6: "> 1000 mg/dL" gave grade 3; CTCAE v5 grade 4 is > 1000 mg/dL."""
    [finding], [card] = lipid_findings(lipid(TG, 1000, ">"), lipid(CHOL, 150))
    assert (finding.grade, finding.severity) == (4, Severity.CRITICAL)
    assert card.summary.startswith("Triglycerides > 1000 mg/dL on ") and "**> 1000 mg/dL**" in card.detail


def test_cholesterol_above_500_is_grade_4():
    """L7: cholesterol "> 500 mg/dL" (grade 4 is > 500)."""
    [finding], _ = lipid_findings(lipid(TG, 100), lipid(CHOL, 500, ">"))
    assert (finding.analyte, finding.grade, finding.severity) == ("cholesterol", 4, Severity.CRITICAL)


@pytest.mark.parametrize(("value", "grade"), [(1001, 4), (1000, 3)])
def test_plain_triglycerides_keep_their_grade(value, grade):
    [finding], _ = lipid_findings(lipid(TG, value), lipid(CHOL, 150))
    assert finding.grade == grade


def test_triglycerides_above_a_bound_in_mmol_per_l_show_the_bound_and_the_lab_value():
    [finding], [card] = lipid_findings(lipid(TG, 11.3, ">", unit="mmol/L"), lipid(CHOL, 150))
    assert "**> 11.3 mmol/L** (> 1001 mg/dL)" in card.detail and "CTCAE v5 grade 3 (its mmol/L scale)" in card.detail
    assert finding.grade == 3  # known to be above 5.7 mmol/L (grade 3); whether above 11.4 (grade 4) is not known


def serum_hcg(value: float, comparator: str | None, days_ago: float = 1, *, high: float | None = None,
              interpretation: str | None = None) -> dict:
    quantity = {"value": value, "unit": "m[IU]/mL", "system": UCUM, "code": "m[IU]/mL", **({"comparator": comparator} if comparator else {})}
    fields: dict = {"valueQuantity": quantity}
    if high is not None:
        fields["referenceRange"] = [{"high": {"value": high, "unit": "m[IU]/mL", "system": UCUM, "code": "m[IU]/mL"}}]
    if interpretation:
        fields["interpretation"] = [concept(None, coding(INTERPRETATION, interpretation))]
    return observation("21198-7", days_ago, text="hCG beta, serum", **fields)


def pregnancy_findings(*observations):
    return check_pregnancy(snapshot_of(hook="order-sign", medications=[everolimus()], observations=observations), K)


def test_an_hcg_above_a_bound_below_the_cutoff_never_cancels_an_earlier_positive():
    """H13: a serum hCG "> 4 mIU/mL" (cut-off 5 IU/L) read as negative and cancelled a positive urine test."""
    [finding] = pregnancy_findings(hcg("positive", days_ago=5), serum_hcg(4, ">"))
    assert finding.severity is Severity.CRITICAL and finding.evidence[0].result == "positive"


def test_a_plain_hcg_below_the_cutoff_still_cancels_an_earlier_positive():
    assert pregnancy_findings(hcg("positive", days_ago=5), serum_hcg(4, None)) == []


@pytest.mark.parametrize("comparator", [">", ">="])
@pytest.mark.parametrize("evidence", [{"interpretation": "N"}, {"high": 5}, {}])
def test_a_lower_bound_hcg_is_never_negative_whatever_the_lab_adds(comparator, evidence):
    [lab] = snapshot_of(hook="patient-view", observations=[serum_hcg(4, comparator, **evidence)]).labs
    assert lab.result != "negative" and lab.value_as_written == f"{comparator} 4 m[IU]/mL"


def test_an_hcg_above_a_bound_at_or_over_the_cutoff_asks_to_confirm():
    [lab] = snapshot_of(hook="patient-view", observations=[serum_hcg(6, ">")]).labs
    assert lab.result == "indeterminate"


@pytest.mark.parametrize(("value", "comparator", "result"), [(5, "<", "negative"), (10, "<", None), (4, "<=", "negative")])
def test_an_hcg_below_a_bound_is_negative_only_when_the_bound_is_below_the_cutoff(value, comparator, result):
    [lab] = snapshot_of(hook="patient-view", observations=[serum_hcg(value, comparator)]).labs
    assert lab.result == result


def test_the_readme_says_a_lower_bound_hcg_is_never_negative():
    readme = " ".join((Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8").split())
    assert "a value reported as above a bound (`> 4 mIU/mL`) is never negative" in readme


# --- B. how often a dose is taken -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("code", "per_day"), [("QD", 1), ("AM", 1), ("PM", 1), ("BID", 2), ("TID", 3), ("QID", 4),
                                               ("QOD", 0.5), ("Q4H", 6), ("Q6H", 4), ("Q8H", 3)])
def test_a_gts_abbreviation_timing_code_gives_the_doses_a_day(code, per_day):
    order = the_order(eve(5, bid_code(code)))
    assert order.doses_per_day == per_day and not order.frequency_unknown
    assert order.daily_dose_mg == 5 * per_day


@pytest.mark.parametrize("timing", [
    bid_code("Q12H"), bid_code("BED"), bid_code("WK"), bid_code("BID", system="http://example.org/local-frequency"),
    {"code": {"text": "BID"}}, bid_code("BID", "TID"),
], ids=["Q12H-not-in-the-code-system", "BED", "WK", "local-system", "text-only", "two-codes-that-disagree"])
def test_a_timing_code_this_service_does_not_read_makes_the_daily_dose_unknown(timing):
    order = the_order(eve(5, timing))
    assert order.frequency_unknown and order.daily_dose_mg is None and order.dose_mg == 5


def test_a_timing_code_that_contradicts_repeat_makes_the_daily_dose_unknown():
    order = the_order(eve(5, {**bid_code("BID"), **ONCE_DAILY}))
    assert order.frequency_unknown and order.daily_dose_mg is None


def test_a_timing_code_that_agrees_with_repeat_is_read():
    order = the_order(eve(5, {**bid_code("BID"), "repeat": {"frequency": 2, "period": 1, "periodUnit": "d"}}))
    assert order.doses_per_day == 2 and order.daily_dose_mg == 10


def test_an_unread_code_with_a_full_repeat_is_read_by_its_repeat():
    """R4 Timing.code: the code is a complete statement of the structured data; either may be read."""
    order = the_order(eve(5, {"code": {"text": "once daily"}, **ONCE_DAILY}))
    assert order.doses_per_day == 1 and order.daily_dose_mg == 5


def test_a_bid_timing_code_with_a_low_trough_gets_no_once_daily_dose():
    """T5: 5 mg BID (timing.code only) with a low trough was offered "Change the dose to 10 mg once daily"."""
    [finding], [card] = trough_cards(eve(5, bid_code("BID")), level("everolimus", 3.1, days_ago=7), check_trough_low)
    assert finding.proposal is None and not card.suggestions
    assert card.summary.endswith("check adherence, then review the dose")


def test_a_bid_timing_code_with_a_high_trough_gets_no_once_daily_dose():
    """T1/T4: 10 mg BID by timing.code, trough 18.2, was offered 5 mg once daily (a quarter of the daily dose)."""
    [finding], [card] = trough_cards(eve(10, bid_code("BID"), rxnorm="845507"), level("everolimus", 18.2, days_ago=2),
                                     check_trough_high)
    assert finding.proposal is None and not card.suggestions and card.summary.endswith("review the dose")


@pytest.mark.parametrize(("repeat", "per_day"), [
    ({"timeOfDay": ["08:00:00", "20:00:00"]}, 2),
    ({"timeOfDay": ["08:00:00", "20:00:00"], "period": 1, "periodUnit": "d"}, 2),
    ({"when": ["MORN", "EVE"]}, 2),
    ({"when": ["ACM", "ACD", "ACV"]}, 3),
    ({"when": ["MORN"], "frequency": 1, "period": 1, "periodUnit": "d"}, 1),
    ({"when": ["HS"]}, 1),
    ({"when": ["AC"], "frequency": 3, "period": 1, "periodUnit": "d"}, 3),
])
def test_times_of_day_and_events_give_one_dose_at_each(repeat, per_day):
    """T2: R4 timeOfDay "the action happens every day ... on the specified times"; when: "the union of the specified
    events"."""
    order = the_order(eve(5, {"repeat": repeat}))
    assert order.doses_per_day == per_day and order.daily_dose_mg == 5 * per_day


def test_two_times_of_day_with_a_high_trough_get_no_once_daily_dose():
    """T2: timeOfDay 08:00 and 20:00, 5 mg each, trough 18.2: offered 2.5 mg once daily."""
    [finding], [card] = trough_cards(eve(5, {"repeat": {"timeOfDay": ["08:00:00", "20:00:00"], "period": 1, "periodUnit": "d"}}),
                                     level("everolimus", 18.2, days_ago=2), check_trough_high)
    assert finding.proposal is None and not card.suggestions


@pytest.mark.parametrize("repeat", [
    {"timeOfDay": ["08:00:00", "20:00:00"], "frequency": 1},
    {"when": ["MORN", "EVE"], "frequency": 1, "period": 1, "periodUnit": "d"},
    {"when": ["AC"]},
    {"when": ["MORN", "MORN.early"]},
    {"frequency": 1, "frequencyMax": 2, "period": 1, "periodUnit": "d"},
    {"frequency": 1, "period": 1, "periodMax": 2, "periodUnit": "d"},
    {"frequency": 1, "period": 1, "periodUnit": "d", "dayOfWeek": ["mon", "thu"]},
    {"frequency": 2},
    {"frequency": "2", "period": 1, "periodUnit": "d"},
    {"frequency": 1, "period": 1, "periodUnit": "a"},
], ids=["times-vs-frequency", "events-vs-frequency", "every-meal", "overlapping-events", "frequencyMax", "periodMax",
        "dayOfWeek", "no-period", "frequency-not-a-number", "unit-not-read"])
def test_a_repeat_that_cannot_be_read_with_confidence_makes_the_daily_dose_unknown(repeat):
    order = the_order(eve(5, {"repeat": repeat}))
    assert order.frequency_unknown and order.daily_dose_mg is None


@pytest.mark.parametrize("timing", [None, {}, {"repeat": {"boundsPeriod": {"start": "2026-01-01"}}}])
def test_a_dosage_that_says_nothing_of_how_often_is_still_once_daily(timing):
    order = the_order(eve(5, timing))
    assert order.doses_per_day is None and not order.frequency_unknown and order.daily_dose_mg == 5


def test_an_out_of_range_frequency_is_unknown_not_once_daily():
    order = the_order(eve(5, {"repeat": {"frequency": 1e300, "period": 1e-300, "periodUnit": "d"}}))
    assert order.frequency_unknown and order.daily_dose_mg is None


def test_two_dosage_lines_make_the_daily_dose_unknown_and_the_card_says_so():
    """T6: 5 mg in the morning and 5 mg in the evening as two concurrent lines: read from the first alone as 5 mg once
    daily, and a low trough was offered 10 mg once daily."""
    medication = eve(5, {"repeat": {"frequency": 1, "period": 1, "periodUnit": "d", "when": ["MORN"]}}, lines=2)
    order = the_order(medication)
    assert order.frequency_unknown and order.daily_dose_mg is None and order.dose_mg == 5
    [finding], [card] = trough_cards(medication, level("everolimus", 3.1, days_ago=7), check_trough_low)
    assert finding.proposal is None and not card.suggestions
    assert "- The order's daily dose cannot be read" in card.detail and "no dose is computed; review the dose." in card.detail


def test_two_dosage_lines_with_different_doses_give_no_dose_per_administration():
    medication = eve(5, ONCE_DAILY, lines=2)
    medication["dosageInstruction"][1]["doseAndRate"][0]["doseQuantity"]["value"] = 2.5
    order = the_order(medication)
    assert order.dose_mg is None and order.daily_dose_mg is None


def test_the_readme_says_no_dose_is_computed_from_a_bound_or_an_unread_schedule():
    readme = " ".join((Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8").split())
    assert ("never for a level reported as a bound (`> 20 ng/mL`) or an order whose daily dose cannot be read (a timing "
            "code other than QD, AM, PM, BID, TID, QID, QOD, Q4H, Q6H, Q8H, a code that contradicts its repeat, several "
            "dosage lines): the card says to review the dose") in readme
