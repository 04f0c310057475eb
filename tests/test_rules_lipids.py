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
    days = K.lipids["panel_interval_days"]
    [finding] = check_lipids(record_snapshot([mtor_order()], [lipid_result("triglycerides", 120, days_ago=days + 5)]), K)
    assert finding.severity is Severity.INFO and finding.missing_panel_days == days


def test_missing_panel_is_not_claimed_when_observations_were_unavailable():
    assert check_lipids(record_snapshot([mtor_order()], [], unavailable=["observations"]), K) == []
