"""A quantity whose printed unit and UCUM code both convert, but to different values, is never read as either.

Found by an audit: the code alone was read, so triglycerides printed "600 mg/dL" over the code "mmol/L" read as
53,142 mg/dL (a critical "discontinue" card), and "6 mmol/L" over the code "mg/dL" read as 6 mg/dL (normal: the
grade 3 value went unsaid). Which unit the number is in is unknown: the value is unreadable and the card says so.
"""

from __future__ import annotations

import pytest

from cds_service.findings import Severity
from cds_service.rules.trough import check_trough_high
from snapshots import LOINC, UCUM, everolimus, knowledge, level, observation, snapshot_of


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
