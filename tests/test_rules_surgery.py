"""check_surgery_timing in isolation: surgery planned within the withhold window, or performed recently."""

from __future__ import annotations

import pytest

from cds_service.findings import Severity, Topic
from cds_service.rules.surgery import check_surgery_timing
from snapshots import (
    SNOMED,
    SURGICAL_PROCEDURE,
    appointment,
    coding,
    everolimus,
    knowledge,
    procedure,
    ref,
    rule_findings,
    service_request,
    sirolimus,
    snapshot_of,
)


def surgery(*, service_requests=(), procedures=(), appointments=(), medications=None, drafts=()):
    medications = [everolimus()] if medications is None else medications
    return rule_findings(
        check_surgery_timing,
        hook="order-sign",
        medications=medications,
        service_requests=service_requests,
        procedures=procedures,
        appointments=appointments,
        drafts=drafts,
    )


# --- planned surgery: 0..7 days ahead ----------------------------------------------------------


@pytest.mark.parametrize("in_days", [0, 1, 4, 7])
def test_surgery_planned_within_7_days_warns(in_days):
    planned = service_request("Partial nephrectomy", in_days)
    [finding] = surgery(service_requests=[planned])
    assert finding.topic is Topic.SURGERY_TIMING
    assert finding.severity is Severity.WARNING
    assert finding.kind == "planned" and finding.days == in_days
    assert finding.evidence[0].ref == ref(planned)


@pytest.mark.parametrize("in_days", [8, 30, -1, -10])
def test_surgery_planned_8_or_more_days_ahead_or_in_the_past_does_not_fire(in_days):
    assert surgery(service_requests=[service_request("Partial nephrectomy", in_days)]) == []


def test_procedure_in_preparation_counts_as_planned():
    [finding] = surgery(procedures=[procedure("Laparoscopic cholecystectomy", 3, status="preparation")])
    assert finding.kind == "planned"


def test_booked_appointment_for_surgery_counts_as_planned():
    [finding] = surgery(appointments=[appointment("Knee arthroplasty", 5)])
    assert finding.kind == "planned"


def test_cancelled_appointment_does_not_fire():
    assert surgery(appointments=[appointment("Knee arthroplasty", 5, status="cancelled")]) == []


def test_revoked_service_request_does_not_fire():
    assert surgery(service_requests=[service_request("Partial nephrectomy", 3, status="revoked")]) == []


def test_draft_service_request_for_surgery_in_draft_orders_fires():
    draft = service_request("Craniotomy for tumour resection", 2, status="draft")
    [finding] = surgery(drafts=[draft])
    assert finding.evidence[0].ref == ref(draft)


# --- what counts as surgery --------------------------------------------------------------------


def test_surgical_category_387713003_marks_surgery_whatever_the_name():
    coded = service_request("Procedure 44950", 3, category=SURGICAL_PROCEDURE)
    assert surgery(service_requests=[coded])


def test_surgical_category_on_a_procedure_marks_surgery():
    assert surgery(procedures=[procedure("Procedure X", 2, status="preparation", category=SURGICAL_PROCEDURE)])


@pytest.mark.parametrize("name", ["Appendectomy", "Total hip arthroplasty", "Exploratory laparotomy", "Kidney transplant", "Hernia surgery", "Orchiopexy"])
def test_surgery_recognised_by_words_and_suffixes(name):
    assert surgery(service_requests=[service_request(name, 3)])


@pytest.mark.parametrize("name", ["MRI brain with contrast", "Physiotherapy referral", "Echocardiogram", "Colonoscopy"])
def test_non_surgical_requests_do_not_fire(name):
    assert surgery(service_requests=[service_request(name, 3)]) == []


def test_non_surgical_snomed_code_without_surgical_words_does_not_fire():
    mri = service_request("Imaging", 2, code=coding(SNOMED, "113091000", "Magnetic resonance imaging"))
    assert surgery(service_requests=[mri]) == []


# --- recent surgery: performed in the last 14 days ---------------------------------------------


@pytest.mark.parametrize("days_ago", [0, 1, 13])
def test_recent_completed_surgery_with_a_draft_mtor_order_warns(days_ago):
    draft = everolimus(draft=True)
    [finding] = surgery(procedures=[procedure("Nephrectomy", -days_ago)], medications=[], drafts=[draft])
    assert finding.kind == "recent"
    assert finding.mtor.ref == ref(draft)


@pytest.mark.parametrize("days_ago", [14, 30])
def test_surgery_14_or_more_days_ago_does_not_fire(days_ago):
    assert surgery(procedures=[procedure("Nephrectomy", -days_ago)], medications=[], drafts=[everolimus(draft=True)]) == []


def test_recent_surgery_uses_the_end_of_the_performed_period():
    done = procedure("Craniotomy", None, performedPeriod={"start": "2026-10-01", "end": "2026-11-20"})
    [finding] = surgery(procedures=[done], medications=[sirolimus()])
    assert finding.kind == "recent" and finding.days == 3


def test_sirolimus_surgery_finding_cites_the_tsc_summary():
    [finding] = surgery(service_requests=[service_request("Nephrectomy", 3)], medications=[sirolimus()])
    assert finding.source.key == "TSC-SUMMARY"


def test_everolimus_surgery_finding_cites_afinitor_section_5_7():
    [finding] = surgery(service_requests=[service_request("Nephrectomy", 3)])
    assert finding.source.key == "AFINITOR-PI" and "5.7" in finding.section


def test_surgery_without_an_mtor_inhibitor_gives_no_finding():
    assert surgery(service_requests=[service_request("Nephrectomy", 3)], medications=[]) == []


# --- unknown dates -----------------------------------------------------------------------------


def test_planned_surgery_with_no_date_does_not_fire_or_crash():
    assert surgery(service_requests=[service_request("Nephrectomy", None)]) == []


def test_planned_surgery_with_an_unreadable_date_does_not_fire_or_crash():
    odd = service_request("Nephrectomy", None, occurrenceDateTime="next Tuesday")
    snapshot = snapshot_of(hook="patient-view", medications=[everolimus()], service_requests=[odd])
    assert check_surgery_timing(snapshot, knowledge()) == []
    assert snapshot.skipped_resources == 0  # an unknown date is not a broken resource


def test_planned_surgery_with_only_a_month_counts_from_the_first_of_the_month():
    december = service_request("Nephrectomy", None, occurrenceDateTime="2026-12")  # 2026-12-01: 8 days after NOW
    assert surgery(service_requests=[december]) == []
    november = service_request("Nephrectomy", None, occurrenceDateTime="2026-11-30")
    assert surgery(service_requests=[november])


def test_evening_surgery_seven_local_days_ahead_in_california_warns():
    # NOW is 2026-11-23 04:00 in California; the appointment is 2026-11-30 18:00 local (2026-12-01 02:00 UTC).
    evening = appointment("Nephrectomy", 7, start="2026-11-30T18:00:00-08:00", end="2026-11-30T21:00:00-08:00")
    assert surgery(appointments=[evening])
