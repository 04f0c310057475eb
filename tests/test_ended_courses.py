"""An order left "active" after its course ended: a MedicationRequest whose every dosage line is bounded by a
boundsPeriod.end now past is not a current medication (as a MedicationStatement whose effectivePeriod.end has passed),
except the mTOR inhibitor itself, whose cards must never be lost to stale bounds."""

from __future__ import annotations

import pytest

from snapshots import core_topics, everolimus, hook_request, med, snapshot_of

PATIENT_VIEW = "/cds-services/mtor-safety-patient-view"


def clarithromycin(*ends: str | None) -> dict:
    """Clarithromycin 500 mg twice daily, one dosage line per end given (None: a line with no bounds)."""
    lines = [{"text": "500 mg twice daily", **({"timing": {"repeat": {"boundsPeriod": {"start": "2026-09-10", "end": end}}}}
                                                 if end is not None else {})} for end in ends]
    return med("clarithromycin 500 MG Oral Tablet", rxnorm="197517", dosageInstruction=lines)


@pytest.mark.parametrize(("ends", "current"), [
    (("2026-09-24",), False),  # a 14-day course two months ago (NOW is 2026-11-23 12:00)
    (("2026-11-22T23:00:00Z",), False),
    (("2026-10",), False),
    (("2026-11-23",), True),  # ends with today
    (("2026-12-01",), True),
    (("2026-09-24", None), True),  # one line has no end: not known to have ended
    (("2026-09-24", "2026-12-01"), True),
    (("not a date",), True),  # unreadable: current
    ((), True),  # no dosage
])
def test_an_active_order_whose_course_has_ended_is_not_a_current_medication(ends, current):
    order = clarithromycin(*ends)
    snapshot = snapshot_of(hook="patient-view", medications=[everolimus(), order])
    assert any("clarithromycin" in m.text for m in snapshot.medications) is current


def test_a_course_ended_two_months_ago_gives_no_interaction_card(client):
    """Dates audit: clarithromycin 'active' with boundsPeriod.end two months past gave the critical 'avoid the
    combination' card on every chart opening; the EHR had not completed the order."""
    ended = hook_request("patient-view", medications=[everolimus(), clarithromycin("2026-09-24")])
    assert "cyp3a4-interaction" not in core_topics(client.post(PATIENT_VIEW, json=ended).get_json())
    ongoing = hook_request("patient-view", medications=[everolimus(), clarithromycin("2026-12-01")])
    assert "cyp3a4-interaction" in core_topics(client.post(PATIENT_VIEW, json=ongoing).get_json())


def test_an_mtor_order_with_stale_bounds_still_counts():
    stale = everolimus(dosageInstruction=[{"text": "10 mg daily", "timing": {"repeat": {"boundsPeriod": {"end": "2025-01-01"}}}}])
    snapshot = snapshot_of(hook="patient-view", medications=[stale])
    assert [m.mtor_drug for m in snapshot.mtor_orders] == ["everolimus"]


def test_the_readme_says_an_ended_course_is_not_current():
    from pathlib import Path

    readme = " ".join((Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8").split())
    assert ("a MedicationRequest other than the mTOR inhibitor whose every dosage line's `timing.repeat.boundsPeriod.end` "
            "has passed is a course that ended, not a current medication") in readme
