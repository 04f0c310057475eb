"""A quantity whose printed unit and UCUM code both convert, but to different values, is never read as either.

Found by an audit: the code alone was read, so triglycerides printed "600 mg/dL" over the code "mmol/L" read as
53,142 mg/dL (a critical "discontinue" card), and "6 mmol/L" over the code "mg/dL" read as 6 mg/dL (normal: the
grade 3 value went unsaid). Which unit the number is in is unknown: the value is unreadable and the card says so.
"""

from __future__ import annotations

import pytest

from cds_service.findings import Severity
from cds_service.rules.trough import check_trough_high
from snapshots import LOINC, PATIENT_ID, UCUM, everolimus, knowledge, level, observation, snapshot_of


def _triglycerides(value: float, unit: str, code: str) -> dict:
    return observation("2571-8", 5, text="Triglycerides", valueQuantity={"value": value, "unit": unit, "system": UCUM, "code": code})


@pytest.mark.parametrize(("value", "unit", "code"), [(600, "mg/dL", "mmol/L"), (6, "mmol/L", "mg/dL")])
def test_lipid_whose_unit_and_code_disagree_is_not_graded_and_is_said(value, unit, code):
    snapshot = snapshot_of(medications=[everolimus()], observations=[_triglycerides(value, unit, code)])
    [lab] = [lab for lab in snapshot.labs if lab.kind == "lipid"]
    assert lab.value is None and lab.unreadable_unit == f"{unit}, coded {code}"
    assert any("latest triglycerides result" in item for item in snapshot.unavailable)


def test_lipid_unit_only_in_the_printed_unit_is_still_read():
    snapshot = snapshot_of(medications=[everolimus()], observations=[_triglycerides(6, "mmol/L", "mmol/L{TG}")])
    [lab] = [lab for lab in snapshot.labs if lab.kind == "lipid"]
    assert round(lab.value) == 531  # 6 x 88.57: the code is not UCUM that this service reads, the printed unit is
    assert not any("triglycerides" in item for item in snapshot.unavailable)


def test_trough_whose_unit_and_code_disagree_gives_only_the_check_by_hand_card():
    high = level("everolimus", 20, "nmol/L", code="ng/mL")
    snapshot = snapshot_of(medications=[everolimus()], observations=[high])
    [lab] = [lab for lab in snapshot.labs if lab.kind == "drug-level"]
    assert lab.value is None
    assert [f.severity for f in check_trough_high(snapshot, knowledge())] == [Severity.INFO]


def test_a_unit_and_code_that_agree_are_read():
    snapshot = snapshot_of(medications=[everolimus()], observations=[level("everolimus", 18.2, "µg/L", code="ug/L")])
    [lab] = [lab for lab in snapshot.labs if lab.kind == "drug-level"]
    assert lab.value == pytest.approx(18.2)
    assert LOINC  # the builders code the level in LOINC


def _hcg(value: float, unit: str, days_ago: float = 2, **more) -> dict:
    return observation("21198-7", days_ago, text="hCG beta, serum", valueQuantity={"value": value, "unit": unit, "code": unit}, **more)


def test_a_recent_hcg_that_cannot_be_read_either_way_is_said_not_taken_as_no_pregnancy():
    """1500 mU/mL with no interpretation flag or reference range: the unit has no sourced cut-off, so neither positive nor
    negative can be read. It used to give no card at all, as if no test were on record."""
    snapshot = snapshot_of(medications=[everolimus()], observations=[_hcg(1500, "mU/mL")])
    [note] = [item for item in snapshot.unavailable if "hCG" in item]
    assert "(1500 mU/mL)" in note and "pregnancy was not checked" in note
    flagged = _hcg(1500, "mU/mL", interpretation=[{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation", "code": "H"}]}])
    assert not any("hCG" in item for item in snapshot_of(medications=[everolimus()], observations=[flagged]).unavailable)
    assert not any("hCG" in item for item in snapshot_of(medications=[everolimus()], observations=[_hcg(1500, "mU/mL", days_ago=40)]).unavailable)
    assert not any("hCG" in item for item in snapshot_of(medications=[everolimus()], observations=[_hcg(3, "mIU/mL")]).unavailable)
    male = {"patient": {"resourceType": "Patient", "id": PATIENT_ID, "gender": "male", "birthDate": "1990-01-01"}}
    assert not any("hCG" in item for item in snapshot_of(medications=[everolimus()], observations=[_hcg(1500, "mU/mL")], prefetch=male).unavailable)


def test_the_readme_says_unread_latest_lipids_and_hcg_are_named():
    from pathlib import Path

    readme = " ".join((Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8").split())
    assert ("A latest lipid result whose unit cannot be converted to mg/dL, and a recent hCG that reads neither positive nor "
            "negative (no interpretation flag, no reference range, a unit with no sourced cut-off such as \"1500 mU/mL\"), are "
            "named there too") in readme


def test_results_dated_more_than_a_day_ahead_are_named_not_silently_left_out():
    """Dates audit: a positive hCG dated 3 days ahead (a date entered wrongly) was never the newest result and gave no
    card of any kind; it is now named on the checks-incomplete card. Within a day ahead it counts as a result."""
    from snapshots import hcg

    snapshot = snapshot_of(medications=[everolimus()], observations=[hcg("positive", -3)])
    assert "a result dated more than a day ahead (hCG): not used; check its date" in snapshot.unavailable
    two = snapshot_of(medications=[everolimus()], observations=[hcg("positive", -3), _hcg(3, "mIU/mL", days_ago=-5)])
    assert "2 results dated more than a day ahead (hCG): not used; check their dates" in two.unavailable
    assert not any("ahead" in item for item in snapshot_of(medications=[everolimus()], observations=[hcg("positive", 0)]).unavailable)


def test_the_readme_says_results_dated_ahead_are_named():
    from pathlib import Path

    readme = " ".join((Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8").split())
    assert "So are results dated more than a day ahead, which are never taken as the newest (a date entered wrongly)." in readme
