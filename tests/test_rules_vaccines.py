"""check_live_vaccines in isolation: live attenuated vaccines for a patient on (or starting) an mTOR inhibitor."""

from __future__ import annotations

import pytest

from cds_service.findings import Severity, Topic
from cds_service.rules import evaluate
from cds_service.rules.vaccines import check_live_vaccines
from snapshots import (
    everolimus,
    immunization,
    knowledge,
    med,
    order,
    plain_snapshot,
    ref,
    rule_findings,
    sirolimus,
    snapshot_of,
)


def vaccine_findings(*drafts, medications=None):
    medications = [everolimus()] if medications is None else medications
    return rule_findings(check_live_vaccines, hook="order-sign", medications=medications, drafts=drafts)


def test_mmr_by_cvx_code_warns():
    mmr = med("MMR", cvx="03", draft=True)
    [finding] = vaccine_findings(mmr)
    assert finding.topic is Topic.LIVE_VACCINE
    assert finding.severity is Severity.WARNING
    assert finding.evidence[0].ref == ref(mmr)


def test_live_influenza_by_rxnorm_code_warns():
    [finding] = vaccine_findings(med(rxnorm="1801825", draft=True))  # FluMist, no text
    assert finding.severity is Severity.WARNING
    assert finding.vaccine


def test_varicella_by_brand_name_warns():
    [finding] = vaccine_findings(med("Varivax (varicella virus vaccine live) injection", draft=True))
    assert finding.severity is Severity.WARNING


def test_yellow_fever_as_draft_immunization_warns():
    [finding] = vaccine_findings(immunization("YF-Vax", cvx="37"))
    assert finding.severity is Severity.WARNING
    assert finding.evidence[0].ref.startswith("Immunization/")


def test_oral_typhoid_live_vaccine_is_live_not_ambiguous():
    [finding] = vaccine_findings(med("Typhoid vaccine live oral Ty21a capsule", draft=True))
    assert finding.severity is Severity.WARNING


@pytest.mark.parametrize(
    "vaccine",
    [
        med("Shingrix (zoster vaccine recombinant, adjuvanted)", cvx="187", draft=True),
        med("Shingrix", draft=True),
        med("influenza, injectable, quadrivalent, preservative free", cvx="150", draft=True),
        med("Fluzone High-Dose Quadrivalent", draft=True),
        med("VariZIG (varicella zoster immune globulin)", draft=True),
        med("varicella zoster immune globulin", cvx="36", draft=True),
        med("Typhim Vi typhoid vaccine", draft=True),
        immunization("JYNNEOS", cvx="206"),
        immunization("Smallpox and Monkeypox Vaccine, Live, Nonreplicating (JYNNEOS)"),
        med("Imvanex", draft=True),
    ],
    ids=["shingrix-cvx", "shingrix-name", "iiv-cvx", "fluzone-name", "varizig-name", "vzig-cvx", "typhim-vi",
         "jynneos-cvx", "jynneos-name", "imvanex-name"],
)
def test_non_live_vaccines_never_fire(vaccine):
    """JYNNEOS (MVA-BN) is replication-deficient and CDC's orthopoxvirus vaccine for the immunocompromised: it is no live
    vaccine of the labels' warning, and a record naming it does not leave the product unknown (audit 2026-12-01)."""
    assert vaccine_findings(vaccine) == []


def test_acam2000_the_replicating_smallpox_vaccine_still_warns():
    [finding] = vaccine_findings(immunization("ACAM2000", cvx="75"))
    assert finding.severity is Severity.WARNING


@pytest.mark.parametrize("text", ["Qdenga", "Qdenga powder and solvent for solution for injection", "dengue vaccine (TAK-003)"])
def test_qdenga_the_eu_live_dengue_vaccine_warns(text):
    """Qdenga (TAK-003) is a live attenuated dengue vaccine like Dengvaxia (EMA product information): it gave no card."""
    [finding] = vaccine_findings(med(text, draft=True))
    assert finding.severity is Severity.WARNING and not finding.ambiguous


def test_zoster_unspecified_cvx_188_is_only_info():
    [finding] = vaccine_findings(med("zoster vaccine, unspecified formulation", cvx="188", draft=True))
    assert finding.severity is Severity.INFO
    assert finding.ambiguous is True


def test_typhoid_vaccine_of_unknown_product_is_only_info():
    [finding] = vaccine_findings(med("typhoid vaccine", draft=True))
    assert finding.severity is Severity.INFO


def test_mmr_named_with_several_antigens_gives_one_finding_per_order():
    mmr = med("measles, mumps and rubella virus vaccine, live", draft=True)
    assert len(knowledge().recognize_medication([], [mmr["medicationCodeableConcept"]["text"]])) > 1  # precondition
    [finding] = vaccine_findings(mmr)
    assert finding.severity is Severity.WARNING


def test_two_live_vaccine_orders_give_two_findings():
    findings = vaccine_findings(med("MMR", cvx="03", draft=True), med("Varivax", cvx="21", draft=True))
    assert len(findings) == 2


def test_live_vaccine_for_a_patient_starting_sirolimus_cites_rapamunes_own_immunisation_warning():
    # regimens.json rapamune-renal-transplant vaccination (verified): never the secondary TSC summary
    [finding] = vaccine_findings(med("MMR II", cvx="03", draft=True), sirolimus(draft=True), medications=[])
    assert finding.mtor.mtor_drug == "sirolimus"
    assert finding.source.key == "RAPAMUNE-FDA-2008"
    assert "live vaccines" in finding.statement.text


def test_live_vaccine_for_a_patient_on_everolimus_cites_the_afinitor_label():
    [finding] = vaccine_findings(med("MMR", cvx="03", draft=True))
    assert finding.source.key == "AFINITOR-HL"
    assert "live vaccines" in finding.statement.text


def test_stopped_live_vaccine_order_is_ignored():
    stopped = med("Varivax", cvx="21", status="stopped")
    assert vaccine_findings(medications=[everolimus(), stopped]) == []


def test_live_vaccine_without_an_mtor_inhibitor_gives_no_finding_from_evaluate():
    snapshot = snapshot_of(hook="order-sign", drafts=[med("MMR", cvx="03", draft=True)])
    assert evaluate(snapshot, knowledge()) == []


def test_live_vaccine_rule_alone_is_total_on_a_patient_without_mtor_inhibitor():
    snapshot = plain_snapshot(order("MMR", draft=True))
    assert check_live_vaccines(snapshot, knowledge()) == []


def test_fyarro_live_vaccine_card_states_the_class_fact_and_cites_fyarros_own_label():
    """Fyarro's own immunisation wording is not in the knowledge as verified: no Rapamune quote, never the secondary
    summary; the class fact, citing the Fyarro label."""
    fyarro = med("Fyarro (sirolimus protein-bound particles) 100 MG injectable suspension")
    [finding] = vaccine_findings(med("MMR II", cvx="03", draft=True), medications=[fyarro])
    assert finding.source.key == "FYARRO-LABEL" and not finding.statement.quoted
    assert "Rapamune" not in finding.statement.text and "live vaccines" in finding.statement.text


# --- a vaccine ordered as a ServiceRequest (a scenario audit: an MMR ServiceRequest gave no card) -------------------


def vaccine_service_request(text: str | None, cvx: str | None = None, status: str = "draft") -> dict:
    codings = [{"system": "http://hl7.org/fhir/sid/cvx", "code": cvx}] if cvx else []
    return {"resourceType": "ServiceRequest", "id": "sr-vaccine", "status": status, "intent": "order",
            "subject": {"reference": "Patient/pt-1"}, "code": {**({"text": text} if text else {}), "coding": codings}}


@pytest.mark.parametrize("text, cvx", [(None, "03"), ("MMR vaccine", None), ("Yellow fever vaccine (YF-Vax) vaccination", None)])
def test_a_live_vaccine_ordered_as_a_service_request_warns(text, cvx):
    [finding] = vaccine_findings(vaccine_service_request(text, cvx))
    assert finding.severity is Severity.WARNING and "ServiceRequest/sr-vaccine" in finding.refs


@pytest.mark.parametrize("text", ["MMR immunity panel", "Varicella zoster virus IgG antibody", "Yellow fever antibody titer"])
def test_a_lab_service_request_naming_a_vaccine_is_never_read_as_one(text):
    assert vaccine_findings(vaccine_service_request(text)) == []


def test_a_revoked_vaccine_service_request_orders_nothing():
    assert vaccine_findings(vaccine_service_request(None, "03", status="revoked")) == []


def test_the_readme_card_table_states_which_service_requests_are_vaccines():
    from pathlib import Path

    readme = " ".join((Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8").split())
    assert "as a MedicationRequest, an Immunization or a ServiceRequest (one coded in CVX or named a vaccine: a lab order never counts)" in readme


# --- a live vaccine written as a vaccination or immunization (a scenario audit: "Yellow fever vaccination" as the
# whole order text gave no card; the knowledge names it "yellow fever vaccine") -------------------------------------


def _display(key: str) -> str:
    return next(e["display"] for e in knowledge().files["vaccines.json"]["live_vaccines"] if e["key"] == key)


@pytest.mark.parametrize(
    "text, key",
    [
        ("Yellow fever vaccination", "yellow-fever"),
        ("Yellow fever immunization", "yellow-fever"),
        ("Yellow Fever Immunisation 0.5 mL SC", "yellow-fever"),
        ("YF-Vax", "yellow-fever"),
        ("Measles vaccination", "measles"),
        ("Mumps immunization", "mumps"),
        ("Rubella vaccine", "rubella"),
        ("Measles and rubella vaccination", "measles-rubella"),
        ("Rubella and mumps vaccination", "rubella-mumps"),
        ("MMR vaccination", "mmr"),
        ("Varicella vaccination", "varicella"),
        ("Chickenpox immunisation", "varicella"),
        ("Rotavirus vaccination (oral)", "rotavirus"),
        ("BCG vaccination", "bcg"),
        ("Oral typhoid vaccination", "typhoid-oral"),
        ("Nasal influenza vaccination", "influenza-live"),
        ("Intranasal influenza vaccine", "influenza-live"),
        ("Oral polio vaccination", "opv"),
    ],
)
def test_a_live_vaccine_written_as_a_vaccination_or_immunization_warns(text, key):
    [finding] = vaccine_findings(med(text, draft=True))
    assert finding.severity is Severity.WARNING
    assert finding.vaccine == _display(key)


def test_a_live_vaccine_written_as_a_vaccination_warns_for_sirolimus_too():
    [finding] = vaccine_findings(med("Yellow fever vaccination", draft=True), medications=[sirolimus()])
    assert finding.severity is Severity.WARNING and finding.mtor.mtor_drug == "sirolimus"


def test_an_immunization_named_only_as_a_vaccination_warns():
    [finding] = vaccine_findings(immunization("Yellow fever vaccination"))
    assert finding.severity is Severity.WARNING and finding.evidence[0].ref.startswith("Immunization/")


def test_a_vaccine_service_request_named_only_as_an_immunisation_warns():
    [finding] = vaccine_findings(vaccine_service_request("Yellow fever immunisation"))
    assert finding.severity is Severity.WARNING and "ServiceRequest/sr-vaccine" in finding.refs


@pytest.mark.parametrize("text", ["Typhoid vaccination", "Cholera vaccination", "Dengue vaccination"])
def test_a_vaccination_of_a_product_the_record_does_not_name_stays_only_info(text):
    [finding] = vaccine_findings(med(text, draft=True))
    assert finding.severity is Severity.INFO


@pytest.mark.parametrize(
    "text",
    [
        "Shingrix zoster vaccination",
        "Recombinant zoster vaccination",
        "Typhoid Vi vaccination",
        "Inactivated influenza vaccination",
        "Influenza vaccination",
        "Measles immune globulin",
    ],
)
def test_a_non_live_vaccination_never_fires(text):
    assert vaccine_findings(med(text, draft=True)) == []


@pytest.mark.parametrize(
    "text", ["Yellow fever vaccine antibody titer", "Varicella immunization status IgG", "Measles vaccination immunity screen"]
)
def test_a_lab_service_request_naming_a_vaccination_is_never_read_as_one(text):
    assert vaccine_findings(vaccine_service_request(text)) == []


def test_a_history_of_yellow_fever_vaccination_as_a_condition_is_no_vaccine_order():
    history = {"resourceType": "Condition", "id": "yf-history", "subject": {"reference": "Patient/pt-1"},
               "code": {"text": "History of yellow fever vaccination"}}
    current = everolimus()
    snapshot = snapshot_of(hook="order-sign", medications=[current], conditions=[history])
    assert [m.ref for m in snapshot.medications] == [ref(current)]  # the condition is no medication
    assert [f for f in evaluate(snapshot, knowledge()) if f.topic is Topic.LIVE_VACCINE] == []


def test_a_vaccination_word_alone_names_no_live_vaccine():
    """'vaccination' reads as 'vaccine' only inside a listed name: it never makes a name of its own."""
    assert knowledge().recognize_medication([], ["Vaccination"]) == ()
    assert knowledge().recognize_medication([], ["Yellow fever"]) == ()


def test_the_readme_card_table_states_that_a_vaccination_wording_reads_as_the_vaccine():
    from pathlib import Path

    readme = " ".join((Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8").split())
    assert ('a name written as a vaccination or immunization, as in "Yellow fever vaccination", reads as that vaccine'
            in readme)
    [finding] = vaccine_findings(med("Yellow fever vaccination", draft=True))
    assert finding.severity is Severity.WARNING
