"""Valid FHIR R4 an EHR may send, read as the spec means it (found by a review of the readers): a Quantity.comparator
outside R4's four, an upper bound on a lipid, an OperationOutcome issue of any JSON, a dosage of any JSON, a schedule
that cannot be read, a vaccine ordered for a negative serology, several requested windows, a result dated ahead."""

from __future__ import annotations

import copy

import pytest

from cds_assertions import assert_valid_cds_response, topics_of
from cds_service.findings import Severity
from cds_service.rules.lipids import check_lipids
from cds_service.rules.trough import check_trough_high
from conftest import load_fixture
from snapshots import UCUM, everolimus, hcg, level, observation, ref, rule_findings, service_request, sirolimus

PATIENT_VIEW = "/cds-services/mtor-safety-patient-view"


def triglycerides(value: float, days_ago: float, comparator: str | None = None) -> dict:
    quantity = {"value": value, "unit": "mg/dL", "system": UCUM, "code": "mg/dL", **({"comparator": comparator} if comparator else {})}
    return observation("2571-8", days_ago, text="Triglyceride [Mass/volume] in Serum or Plasma", valueQuantity=quantity)


@pytest.mark.parametrize("comparator", ["~", "ca", "ad", 5, {"x": 1}])
def test_a_level_with_a_comparator_outside_r4_stays_the_newest_and_reads_as_unreadable(comparator):
    """Read as no value (its meaning is unknown), it still stands as the newest: the older 18.2 must not speak for it."""
    older_high = level("everolimus", 18.2, days_ago=5)
    newer = level("everolimus", 6, days_ago=1)
    newer["valueQuantity"]["comparator"] = comparator
    [finding] = rule_findings(check_trough_high, hook="patient-view", medications=[everolimus()], observations=[older_high, newer])
    assert finding.evidence[0].ref == ref(newer) and finding.severity is Severity.INFO


def test_a_negative_hcg_with_a_comparator_outside_r4_still_outweighs_an_older_positive():
    from cds_service.rules.pregnancy import check_pregnancy

    negative = hcg("negative", days_ago=1, loinc="2106-3")
    negative["valueQuantity"] = {"value": 2, "unit": "mIU/mL", "comparator": "~"}
    assert rule_findings(check_pregnancy, hook="order-sign", medications=[everolimus()],
                         observations=[hcg("positive", days_ago=10), negative]) == []


@pytest.mark.parametrize("comparator, value", [("<", 1200), ("<=", 600), ("<", 320)])
def test_a_lipid_reported_below_a_bound_is_given_no_grade(comparator, value):
    """"< 1200 mg/dL" may be 90: no CTCAE grade (and no "discontinue") rests on it; the exact value still grades."""
    assert rule_findings(check_lipids, hook="patient-view", medications=[everolimus()],
                         observations=[triglycerides(value, 10, comparator)]) == []
    [graded] = rule_findings(check_lipids, hook="patient-view", medications=[everolimus()], observations=[triglycerides(value, 10)])
    assert graded.grade >= 1


def test_a_lipid_dated_ahead_is_not_a_recent_panel():
    old = triglycerides(120, 400)
    [missing] = rule_findings(check_lipids, hook="patient-view", medications=[everolimus()], observations=[old])
    [still_missing] = rule_findings(check_lipids, hook="patient-view", medications=[everolimus()],
                                    observations=[old, triglycerides(120, -200)])
    assert type(missing) is type(still_missing) and still_missing.missing_panel_days == missing.missing_panel_days


@pytest.mark.parametrize("value", [{}, [], [1], {"a": 1}, 5, None, True])
def test_an_operation_outcome_issue_of_any_json_never_breaks_the_answer(client, value):
    body = load_fixture("fires-trough-high-patient-view.json")
    body["prefetch"]["observations"]["entry"].append(
        {"resource": {"resourceType": "OperationOutcome", "issue": [{"severity": value, "code": value}, value]}})
    response = client.post(PATIENT_VIEW, json=body)
    assert response.status_code == 200 and "trough-high" in topics_of(response.get_json())
    assert_valid_cds_response(response.get_json())


@pytest.mark.parametrize("value", [True, 1, {"timing": {}}, "10 mg daily", [None], [1]])
def test_a_dosage_of_any_json_never_breaks_the_trough_card(client, value):
    body = load_fixture("fires-trough-high-patient-view.json")
    for entry in body["prefetch"]["medications"]["entry"]:
        entry["resource"]["dosageInstruction"] = copy.deepcopy(value)
    response = client.post(PATIENT_VIEW, json=body)
    assert response.status_code == 200
    assert_valid_cds_response(response.get_json())


def test_an_mtor_draft_whose_schedule_cannot_be_read_says_its_daily_dose_was_not_checked(client):
    from snapshots import hook_request

    draft = everolimus(draft=True)
    draft["dosageInstruction"][0]["timing"] = {"code": {"coding": [{"system": "http://snomed.info/sct", "code": "229797004"}],
                                                        "text": "Once daily"}}
    answer = client.post("/cds-services/mtor-safety-order-sign", json=hook_request("order-sign", drafts=[draft])).get_json()
    [incomplete] = [c for c in answer["cards"] if c["source"]["topic"]["code"] == "checks-incomplete"]
    # notes are escaped as Markdown (one may quote the record): "order\\(s\\)" renders as "order(s)"
    assert "the daily dose of 1 mTOR inhibitor order\\(s\\): its schedule could not be read" in incomplete["detail"]


@pytest.mark.parametrize("text", ["Varicella vaccine (non-immune: VZV IgG negative)", "MMR vaccine - no immunity on serology",
                                  "Yellow fever vaccination, antibody negative"])
def test_a_vaccine_ordered_for_a_negative_serology_is_a_vaccine(text):
    from cds_service.rules.vaccines import check_live_vaccines

    order = service_request(text, 0, status="draft")
    [finding] = rule_findings(check_live_vaccines, hook="order-sign", medications=[sirolimus()], drafts=[order])
    assert finding.severity is Severity.WARNING
    lab = service_request("Yellow fever vaccine antibody titer", 0, status="draft")
    assert rule_findings(check_live_vaccines, hook="order-sign", medications=[sirolimus()], drafts=[lab]) == []


def test_an_appointment_with_several_requested_windows_is_dated_by_the_earliest():
    from snapshots import snapshot_of
    from test_appointment_book import surgical

    waiting = surgical(12, status="waitlist")
    soon = {"start": waiting.pop("start"), "end": waiting.pop("end")}
    waiting["requestedPeriod"] = [{"start": "2027-06-01T08:00:00Z", "end": "2027-06-02T08:00:00Z"}, soon, {"end": "2027-01-01"}, 5]
    [event] = snapshot_of(hook="appointment-book", medications=[everolimus()], booking=[waiting]).procedures
    assert event.when is not None and event.when.isoformat().startswith(soon["start"][:10])



@pytest.mark.parametrize("order", ["old first", "correction first"])
def test_a_result_that_comes_twice_is_read_once_in_its_newest_version(order):
    """A resource updated between two page reads comes twice: the superseded 18.2 must not speak for its correction."""
    old = {**level("everolimus", 18.2, days_ago=3, id="lvl-1"), "meta": {"versionId": "1"}}
    corrected = {**level("everolimus", 9, days_ago=3, id="lvl-1"), "status": "corrected", "meta": {"versionId": "2"}}
    twice = [old, corrected] if order == "old first" else [corrected, old]
    assert rule_findings(check_trough_high, hook="patient-view", medications=[everolimus()], observations=twice) == []
    unversioned = [level("everolimus", 18.2, days_ago=3, id="lvl-2"), level("everolimus", 9, days_ago=3, id="lvl-2")]
    assert rule_findings(check_trough_high, hook="patient-view", medications=[everolimus()], observations=unversioned) == []
    [finding] = rule_findings(check_trough_high, hook="patient-view", medications=[everolimus()], observations=unversioned[::-1])
    assert finding.evidence[0].ref == "Observation/lvl-2"  # no versions: the later copy wins
