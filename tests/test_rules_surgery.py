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
    concept,
    condition,
    everolimus,
    knowledge,
    med,
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
    [finding] = surgery(procedures=[done], medications=[everolimus()])
    assert finding.kind == "recent" and finding.days == 3


def test_sirolimus_surgery_finding_quotes_the_rapamune_warning_and_no_interval():
    # The 7/14 days of mtor_drugs.json sirolimus `surgery` are verified: false (a secondary summary), never shown.
    [finding] = surgery(service_requests=[service_request("Nephrectomy", 3)], medications=[sirolimus()])
    assert finding.source.key == "RAPAMUNE-MEDWATCH" and "5.6" in finding.section
    assert finding.window is None and finding.caution is not None and finding.caution.product == "Rapamune"
    assert finding.severity is Severity.INFO
    assert finding.hold_from is None and finding.last_dose is None and finding.earliest_restart is None


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


# --- issue 10 §5: surgery coding as real records carry it --------------------------------------

SERVICE_TYPE = "http://terminology.hl7.org/CodeSystem/service-type"
V2_0276 = "http://terminology.hl7.org/CodeSystem/v2-0276"
GENERAL_SURGERY_TYPE = coding(SERVICE_TYPE, "221", "Surgery - General")
GENERAL_SURGERY_SPECIALTY = coding(SNOMED, "394609007", "General surgery")


def coded_appointment(in_days, *, status="booked", **fields):
    """An Appointment whose text says nothing surgical: only its codes or basedOn can."""
    return appointment("Scheduled visit", in_days, status=status, **fields)


@pytest.mark.parametrize("name", ["Phlebotomy", "Therapeutic phlebotomy", "Venipuncture", "Blood draw", "Medication reconciliation"])
def test_non_operative_procedures_are_never_surgery(name):
    done = procedure(name, -2)
    planned = service_request(name, 2, category=SURGICAL_PROCEDURE)  # even miscategorised as surgical
    assert surgery(procedures=[done], service_requests=[planned]) == []


@pytest.mark.parametrize(("code", "display"), [("396540005", "Phlebotomy"), ("22778000", "Venipuncture"), ("430193006", "Medication reconciliation")])
def test_non_operative_snomed_codes_are_never_surgery_whatever_the_text(code, display):
    coded = procedure("Procedure (surgical suite)", -2, code=concept("Surgery suite slot", coding(SNOMED, code, display)))
    assert surgery(procedures=[coded]) == []


def test_the_otomy_ending_alone_does_not_make_surgery():
    assert surgery(service_requests=[service_request("Venotomy flush", 2)]) == []


def test_appointment_based_on_a_surgical_service_request_counts_on_the_appointments_date():
    order = service_request("Left partial nephrectomy", 20, category=SURGICAL_PROCEDURE)  # its own date is later
    booked = coded_appointment(4, basedOn=[{"reference": ref(order)}])
    [finding] = surgery(service_requests=[order], appointments=[booked])
    assert finding.evidence[0].ref == ref(booked) and finding.days == 4
    assert finding.evidence[0].surgery_evidence == "based-on" and finding.evidence[0].text == "Scheduled visit"


def test_appointment_based_on_an_undated_surgical_order_takes_the_orders_name_when_it_has_none():
    order = service_request("Laparoscopic cholecystectomy", None, category=SURGICAL_PROCEDURE)
    booked = coded_appointment(4, basedOn=[{"reference": ref(order)}])
    del booked["serviceType"]
    [finding] = surgery(service_requests=[order], appointments=[booked])
    assert finding.evidence[0].text == "Laparoscopic cholecystectomy"


@pytest.mark.parametrize("status", ["revoked", "completed", "entered-in-error"])
def test_appointment_based_on_a_revoked_or_completed_order_is_not_surgery(status):
    order = service_request("Left partial nephrectomy", 4, category=SURGICAL_PROCEDURE, status=status)
    booked = coded_appointment(4, basedOn=[{"reference": ref(order)}])
    assert surgery(service_requests=[order], appointments=[booked]) == []


def test_appointment_with_the_surgical_service_type_code_counts():
    [finding] = surgery(appointments=[coded_appointment(3, serviceType=[concept(None, GENERAL_SURGERY_TYPE)])])
    assert finding.evidence[0].surgery_evidence == "service-type"


def test_appointment_with_a_surgical_specialty_counts_and_says_so():
    [finding] = surgery(appointments=[coded_appointment(3, specialty=[concept(None, GENERAL_SURGERY_SPECIALTY)])])
    assert finding.evidence[0].surgery_evidence == "specialty"


@pytest.mark.parametrize("kind", ["FOLLOWUP", "CHECKUP", "WALKIN"])
def test_clinic_visit_with_the_surgeon_is_not_surgery(kind):
    visit = coded_appointment(3, serviceType=[concept(None, GENERAL_SURGERY_TYPE)], specialty=[concept(None, GENERAL_SURGERY_SPECIALTY)],
                              appointmentType=concept(None, coding(V2_0276, kind)))
    assert surgery(appointments=[visit]) == []


def test_stu3_uri_of_the_appointment_type_is_read_too():
    visit = coded_appointment(3, specialty=[concept(None, GENERAL_SURGERY_SPECIALTY)],
                              appointmentType=concept(None, coding("http://hl7.org/fhir/v2/0276", "FOLLOWUP")))
    assert surgery(appointments=[visit]) == []


@pytest.mark.parametrize("status", ["cancelled", "entered-in-error", "noshow", "fulfilled"])
def test_cancelled_no_show_or_past_appointments_never_count(status):
    assert surgery(appointments=[coded_appointment(3, status=status, serviceType=[concept(None, GENERAL_SURGERY_TYPE)])]) == []


def test_clinic_infusion_and_lab_appointments_are_not_surgery():
    visits = [appointment(text, 3) for text in ("Oncology clinic review", "Infusion chair", "Laboratory blood test")]
    assert surgery(appointments=visits) == []


# --- issue 10 §1: the label of the patient's use decides --------------------------------------

KIDNEY_TRANSPLANT = ("http://hl7.org/fhir/sid/icd-10-cm", "Z94.0", "Kidney transplant status")


def zortress(**kwargs):
    return med("everolimus 0.75 MG Oral Tablet [Zortress]", rxnorm="977440", dose_mg=0.75, **kwargs)


def test_zortress_gets_the_zortress_wound_healing_warning_never_the_afinitor_hold():
    [finding] = surgery(service_requests=[service_request("Hernia repair surgery", 5)], medications=[zortress()])
    assert finding.window is None and finding.caution is not None and finding.caution.product == "Zortress"
    assert finding.source.key == "ZORTRESS-LABEL" and finding.severity is Severity.INFO
    assert "transplant" in finding.plausible_uses


def test_de_novo_zortress_start_after_the_transplant_gets_no_surgery_card():
    transplant = procedure("Kidney transplant", -3)
    assert surgery(procedures=[transplant], medications=[], drafts=[zortress(draft=True)]) == []


def test_rapamune_after_kidney_transplant_is_planned_with_the_transplant_team():
    findings = rule_findings(check_surgery_timing, medications=[sirolimus()], service_requests=[service_request("Nephrectomy", 5)],
                             conditions=[condition(*KIDNEY_TRANSPLANT)])
    [finding] = findings
    assert finding.use == "transplant" and finding.caution is not None and finding.caution.product == "Rapamune"


def test_everolimus_with_a_transplant_on_record_gets_no_afinitor_hold():
    findings = rule_findings(check_surgery_timing, medications=[everolimus()], service_requests=[service_request("Nephrectomy", 5)],
                             conditions=[condition(*KIDNEY_TRANSPLANT)])
    [finding] = findings
    assert finding.window is None and finding.caution is not None and finding.caution.product == "Zortress"


def test_fyarro_gets_no_surgery_card():
    fyarro = med("sirolimus protein-bound particles 100 MG Injectable Suspension [Fyarro]", dose_mg=None)
    assert surgery(service_requests=[service_request("Nephrectomy", 5)], medications=[fyarro]) == []


def test_sirolimus_caution_is_shown_for_surgery_within_the_planning_horizon_but_not_after_surgery():
    assert surgery(service_requests=[service_request("Nephrectomy", 30)], medications=[sirolimus()])
    assert surgery(service_requests=[service_request("Nephrectomy", 31)], medications=[sirolimus()]) == []
    assert surgery(procedures=[procedure("Nephrectomy", -3)], medications=[sirolimus()]) == []


def test_everolimus_hold_dates_follow_the_afinitor_label():
    [finding] = surgery(service_requests=[service_request("Nephrectomy", 7)])
    assert (finding.hold_from - finding.today).days == 0 and finding.hold_is_due
    assert (finding.surgery_date - finding.last_dose).days == 8
    assert (finding.earliest_restart - finding.surgery_date).days == 14


@pytest.mark.parametrize("text", ["Transplant clinic follow-up", "Referral to surgical oncology consult", "Referral to kidney transplant evaluation",
                                  "Surgical consultation", "Post-operative check-up with the surgeon"])
def test_visits_and_referrals_about_surgery_are_not_surgery(text):
    """procedures.json non_surgical_words: a visit or referral names surgical words but is no operation on its date."""
    assert surgery(service_requests=[service_request(text, 3)], appointments=[appointment(text, 3)]) == []


def test_an_operation_is_still_surgery_when_its_text_says_nothing_of_a_visit():
    assert surgery(service_requests=[service_request("Kidney transplant", 3)]) != []


# --- a major operation by its SNOMED CT code alone (a scenario audit: CABG, caesarean section and total hip
# replacement ordered by code, with no surgical category and no surgical word, gave no surgery card) -------------

MAJOR_OPERATIONS = [
    ("232717009", "Coronary artery bypass grafting"),
    ("11466000", "Cesarean section"),
    ("52734007", "Total replacement of hip"),
]


@pytest.mark.parametrize("code, name", MAJOR_OPERATIONS, ids=[n for _, n in MAJOR_OPERATIONS])
def test_a_major_operation_ordered_by_its_snomed_code_alone_warns(code, name):
    planned = service_request(None, 4, code=coding(SNOMED, code))  # no text, no display, no category
    [finding] = surgery(service_requests=[planned])
    assert finding.severity is Severity.WARNING and finding.kind == "planned" and finding.days == 4
    assert finding.evidence[0].surgery_evidence == "code"
    assert finding.evidence[0].text == name  # the card names the operation, not "ServiceRequest"


@pytest.mark.parametrize("code, name", MAJOR_OPERATIONS, ids=[n for _, n in MAJOR_OPERATIONS])
def test_a_major_operation_coded_with_its_display_but_no_surgical_word_warns(code, name):
    [finding] = surgery(service_requests=[service_request(None, 3, code=coding(SNOMED, code, name))])
    assert finding.severity is Severity.WARNING and finding.evidence[0].text == name


def test_a_completed_caesarean_section_by_code_is_recent_surgery():
    done = procedure(None, -5, code=concept(None, coding(SNOMED, "11466000", "Cesarean section (procedure)")))
    [finding] = surgery(procedures=[done])
    assert finding.kind == "recent" and finding.days == 5


def test_a_major_operation_by_code_for_a_transplant_patient_gives_the_label_warning_only():
    planned = service_request(None, 10, code=coding(SNOMED, "52734007"))
    [finding] = surgery(service_requests=[planned], medications=[zortress()])
    assert finding.severity is Severity.INFO and finding.caution is not None and finding.caution.product == "Zortress"


def test_the_oid_form_of_snomed_is_read_like_its_uri():
    planned = service_request(None, 4, code=coding("urn:oid:2.16.840.1.113883.6.96", "232717009"))
    [finding] = surgery(service_requests=[planned])
    assert finding.evidence[0].surgery_evidence == "code"


@pytest.mark.parametrize(
    "code",
    [
        "1260009003",  # Removal of supragingival plaque and calculus from all teeth (dental cleaning)
        "34043003",  # Dental consultation and report
        "22778000",  # Venipuncture
        "399208008",  # Plain X-ray of chest
        "73761001",  # Colonoscopy
        "171207006",  # Depression screening
        "10383002",  # Counseling for termination of pregnancy
        "399014008",  # Administration of vaccine product (DTaP)
        "85548006",  # Episiotomy
        "65200003",  # Insertion of intrauterine contraceptive device
        "236974004",  # Instrumental delivery
    ],
)
def test_a_minor_procedure_by_code_alone_is_never_surgery(code):
    """Synthea R4 codes (where they were seen): minor procedures, screening, counselling, imaging, vaccination."""
    planned = service_request(None, 3, code=coding(SNOMED, code))
    done = procedure(None, -3, code=concept(None, coding(SNOMED, code)))
    assert surgery(service_requests=[planned], procedures=[done]) == []


def test_an_appointment_whose_reason_is_a_major_operation_is_not_itself_surgery():
    """A follow-up for a past hip replacement is no operation: only a ServiceRequest's or Procedure's own code counts."""
    visit = appointment("Orthopaedic clinic", 3, reasonCode=[concept(None, coding(SNOMED, "52734007", "Total replacement of hip"))])
    assert surgery(appointments=[visit]) == []


def test_the_major_operations_recognised_by_code_are_the_knowledge_list():
    listed = {code for (_, code) in knowledge().surgical_procedures}
    assert listed == {code for code, _ in MAJOR_OPERATIONS}
    assert all(display.endswith(" (procedure)") for display in knowledge().surgical_procedures.values())


def test_the_readme_card_table_states_that_a_major_operation_is_recognised_by_its_snomed_code():
    from pathlib import Path

    readme = " ".join((Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8").split())
    assert ("a ServiceRequest or Procedure with the surgical category, a surgical name, or the SNOMED CT code of a listed "
            "major operation (coronary artery bypass grafting, caesarean section, total hip replacement; `procedures.json`)"
            in readme)
    [finding] = surgery(service_requests=[service_request(None, 2, code=coding(SNOMED, "11466000"))])
    assert finding.severity is Severity.WARNING


def test_the_known_gaps_the_readme_states_are_still_gaps():
    """README "Not read yet": change the README when one of these is closed."""
    from pathlib import Path

    readme = " ".join((Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8").split())
    assert "a Procedure `stopped` (begun, then abandoned) is neither surgery done nor a transplant" in readme
    stopped = procedure("Laparoscopic cholecystectomy", -5, status="stopped")
    assert surgery(procedures=[procedure("Laparoscopic cholecystectomy", -5)]) != []  # the same one completed: a card
    assert surgery(procedures=[stopped]) == []
    assert "a date given only to the month or year (`2026-10`) is read as its first day" in readme
    from cds_service.fhir.read import _datetime

    assert _datetime("2026-10").isoformat() == "2026-10-01T00:00:00+00:00"
    assert "a ServiceRequest dated only by `occurrencePeriod.end` has no date" in readme
    by_a_day = service_request("Left partial nephrectomy", None, category=SURGICAL_PROCEDURE,
                               occurrencePeriod={"end": "2026-11-26"})
    [event] = snapshot_of(hook="patient-view", medications=[everolimus()], service_requests=[by_a_day]).procedures
    assert event.when is None and event.is_surgery


@pytest.mark.parametrize("timing", [
    {"event": ["2026-11-30", "2026-11-26"]},  # events in any order: the earliest
    {"repeat": {"boundsPeriod": {"start": "2026-11-26"}}},
])
def test_surgery_dated_only_by_occurrence_timing_warns(timing):
    """Dates audit: a ServiceRequest dated by occurrenceTiming (an R4 occurrence[x] choice) had no date, and surgery
    in 3 days gave no hold card."""
    timed = service_request("Left partial nephrectomy", None, category=SURGICAL_PROCEDURE, occurrenceTiming=timing)
    [finding] = surgery(service_requests=[timed])
    assert finding.kind == "planned" and finding.days == 3


def test_recent_surgery_not_known_to_be_major_says_the_interval_as_a_condition():
    """Found by an audit: a skin biopsy the EHR categorised as a surgical procedure was told "no everolimus before ...
    (14 days after major surgery)": the label's interval is for major surgery, which only a code here can tell."""
    from cds_service.cards import render_cards
    from snapshots import snapshot_of

    biopsy = procedure("Excision of skin lesion", -3)
    snapshot = snapshot_of(procedures=[biopsy], medications=[everolimus()])
    [card] = render_cards(surgery(procedures=[biopsy]), snapshot)
    assert ": if it was major, no everolimus before " in card.summary and len(card.summary) < 140
    assert "- If it was major surgery, give no everolimus before " in card.detail
    caesarean = procedure(None, -5, code=concept(None, coding(SNOMED, "11466000", "Cesarean section (procedure)")))
    snapshot = snapshot_of(procedures=[caesarean], medications=[everolimus()])
    [card] = render_cards(surgery(procedures=[caesarean]), snapshot)
    assert "if it was major" not in card.summary and "- Give no everolimus before " in card.detail


def test_the_readme_says_recent_surgery_is_conditional_unless_coded_major():
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    assert ('(for surgery done, said as "if it was major" unless a listed major operation\'s code says so: the 14 days are '
            "for major surgery)") in readme
