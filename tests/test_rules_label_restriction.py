"""check_label_restrictions: transplant uses the governing label advises against (issue 10 §1).

Sources (verified, /work/shared/clinical/primary-sources.md §1a/§1b):
- FDA MedWatch, Zortress safety labeling changes, February 2013 (ZORTRESS-MEDWATCH): "Zortress should not be
  administered earlier than 30 days after liver transplant" (hepatic artery thrombosis, mostly within 30 days).
- Same page, April 2012: increased mortality in de novo heart transplant; "Use of Zortress in heart transplantation
  is not recommended."
- Rapamune boxed warning on DailyMed (RAPAMUNE-DM): "use is not recommended in liver or lung transplant patients"
  (liver: excess mortality, graft loss, HAT, 5.2; lung: bronchial anastomotic dehiscence, 5.3).
"""

from __future__ import annotations

from cds_service.cards import TOPICS, render_cards
from cds_service.findings import LabelRestrictionFinding, Severity, Topic
from cds_service.rules.restrictions import check_label_restrictions
from snapshots import ICD10CM, SNOMED, coding, concept, condition, date, knowledge, med, procedure, rule_findings, snapshot_of

K = knowledge()
TACROLIMUS = med("tacrolimus (Prograf) 1 mg capsule twice daily", rxnorm="42316", dose_mg=1)


def zortress(*, draft: bool = False, **fields):
    return med("everolimus 0.5 MG Oral Tablet [Zortress]", rxnorm="977436", draft=draft, dose_mg=1.0, **fields)


def rapamune(*, draft: bool = False, **fields):
    return med("sirolimus 1 MG Oral Tablet [Rapamune]", rxnorm="351989", draft=draft, dose_mg=2, **fields)


def liver_transplant(days_ago: float):
    return procedure("Liver transplant", -days_ago)


def findings(hook: str = "order-sign", **resources) -> list[LabelRestrictionFinding]:
    return rule_findings(check_label_restrictions, hook=hook, **resources)


# --- Zortress: not earlier than 30 days after liver transplant (ZORTRESS-MEDWATCH, February 2013) -------------


def test_zortress_drafted_12_days_after_liver_transplant_is_too_early():
    [f] = findings(drafts=[zortress(draft=True)], medications=[TACROLIMUS],
                   conditions=[condition(ICD10CM, "Z94.4", "Liver transplant status", onset_days_ago=12)],
                   procedures=[liver_transplant(12)])
    assert f.severity is Severity.WARNING and f.source.key == "ZORTRESS-MEDWATCH"
    assert f.earliest is not None and f.earliest.days == 30 and f.restriction is None
    assert f.days_after == 12 and (f.earliest_start - f.transplant_date).days == 30


def test_zortress_drafted_45_days_after_liver_transplant_is_allowed():
    assert findings(drafts=[zortress(draft=True)], procedures=[liver_transplant(45)]) == []


def test_a_re_transplant_starts_the_30_days_again():
    [f] = findings(drafts=[zortress(draft=True)], procedures=[liver_transplant(400), liver_transplant(5)])
    assert f.days_after == 5


def coded_procedure(text: str, snomed: str, days_ago: float, system: str = SNOMED):
    return procedure(text, -days_ago, code=concept(text, coding(system, snomed)))


def test_a_liver_transplant_coded_but_not_named_gives_the_date():
    # SNOMED 18027006 Transplantation of liver (treatment_contexts.json); "OLT" names no organ in words
    for system in (SNOMED, "urn:oid:2.16.840.1.113883.6.96"):
        [f] = findings(drafts=[zortress(draft=True)], procedures=[coded_procedure("OLT", "18027006", 12, system)])
        assert f.earliest is not None and f.context == "transplant-liver" and f.days_after == 12


def test_a_procedure_coded_as_something_else_is_not_a_transplant_whatever_its_text():
    # SNOMED 386053000 Evaluation procedure: the words "liver transplant" in its text do not make it one
    evaluation = coded_procedure("Liver transplant evaluation", "386053000", 12)
    assert findings(drafts=[zortress(draft=True)], procedures=[evaluation]) == []


def test_no_transplant_date_on_record_means_no_timing_card():
    # the Condition alone: its onset and recorded date cannot be told apart, and a recorded date is not the transplant date
    conditions = [condition(ICD10CM, "Z94.4", "Liver transplant status", onset_days_ago=5)]
    assert findings(drafts=[zortress(draft=True)], conditions=conditions) == []


def test_current_zortress_started_early_fires_only_while_the_30_days_last():
    started_early = zortress(authoredOn=date(-8))
    [f] = findings("patient-view", medications=[started_early], procedures=[liver_transplant(10)])
    assert f.days_after == 2
    old_start = zortress(authoredOn=date(-100))
    assert findings("patient-view", medications=[old_start], procedures=[liver_transplant(110)]) == []


def test_kidney_and_liver_both_on_record_leave_the_organ_unknown_and_give_no_timing_card():
    kidney = condition(ICD10CM, "Z94.0", "Kidney transplant status")
    assert findings(drafts=[zortress(draft=True)], conditions=[kidney], procedures=[liver_transplant(10)]) == []


def test_a_planned_liver_transplant_is_not_a_transplant_date():
    planned = procedure("Liver transplant", 10, status="preparation")
    assert findings(drafts=[zortress(draft=True)], procedures=[planned]) == []


# --- Zortress in heart transplantation: not recommended (ZORTRESS-MEDWATCH, April 2012) -------------------------


def test_zortress_in_a_heart_transplant_recipient_is_not_recommended():
    [f] = findings("patient-view", medications=[zortress(), TACROLIMUS],
                   conditions=[condition(ICD10CM, "Z94.1", "Heart transplant status")])
    assert f.restriction is not None and f.restriction.product == "Zortress" and f.organ == "heart"
    assert f.source.key == "ZORTRESS-MEDWATCH" and "heart transplantation is not recommended" in f.restriction.statement


def test_afinitor_for_breast_cancer_in_a_heart_transplant_recipient_is_not_judged_by_the_zortress_label():
    afinitor = med("everolimus 10 MG Oral Tablet [Afinitor]", rxnorm="845512", dose_mg=10)
    conditions = [condition(ICD10CM, "Z94.1", "Heart transplant status"), condition(ICD10CM, "C50.911", "Breast cancer")]
    assert findings("patient-view", medications=[afinitor], conditions=conditions) == []


def test_zortress_in_a_kidney_transplant_recipient_is_quiet():
    conditions = [condition(ICD10CM, "Z94.0", "Kidney transplant status")]
    assert findings("patient-view", medications=[zortress()], conditions=conditions) == []


# --- Rapamune: not recommended in liver or lung transplant (RAPAMUNE-DM, boxed warning) -------------------------


def test_rapamune_in_a_lung_transplant_recipient_is_not_recommended():
    [f] = findings(drafts=[rapamune(draft=True)], conditions=[condition(ICD10CM, "Z94.2", "Lung transplant status")])
    assert f.restriction is not None and f.restriction.product == "Rapamune" and f.organ == "lung"
    assert f.source.key == "RAPAMUNE-DM" and "anastomotic" in f.restriction.reason_for(f.context)


def test_rapamune_in_a_liver_transplant_recipient_is_not_recommended():
    [f] = findings("patient-view", medications=[rapamune()],
                   conditions=[condition(ICD10CM, "Z94.4", "Liver transplant status")])
    assert f.organ == "liver" and "hepatic artery thrombosis" in f.restriction.reason_for(f.context)


def test_rapamune_for_lam_after_a_lung_transplant_still_gets_the_boxed_warning():
    conditions = [condition(ICD10CM, "J84.81", "Lymphangioleiomyomatosis"), condition(ICD10CM, "Z94.2", "Lung transplant status")]
    assert [f.organ for f in findings("patient-view", medications=[rapamune()], conditions=conditions)] == ["lung"]


def test_rapamune_in_a_kidney_transplant_recipient_is_quiet():
    conditions = [condition(ICD10CM, "Z94.0", "Kidney transplant status")]
    assert findings("patient-view", medications=[rapamune(), TACROLIMUS], conditions=conditions) == []


def test_fyarro_is_not_rapamune():
    fyarro = med("Fyarro (sirolimus protein-bound particles) 100 mg vial", dose_mg=100)
    conditions = [condition(ICD10CM, "Z94.4", "Liver transplant status")]
    assert findings("patient-view", medications=[fyarro], conditions=conditions) == []


def test_a_resolved_transplant_status_is_not_evidence():
    conditions = [condition(ICD10CM, "Z94.2", "Lung transplant status", clinical="resolved")]
    assert findings("patient-view", medications=[rapamune()], conditions=conditions) == []


# --- knowledge and card -------------------------------------------------------------------------------------------


def test_only_verified_facts_are_loaded():
    entries = K.files["regimens.json"]["label_restrictions"]
    assert {r.key for r in K.label_restrictions} == {e["key"] for e in entries if e["verified"] is True}
    [earliest] = K.earliest_starts
    assert (earliest.product, earliest.context, earliest.days) == ("Zortress", "transplant-liver", 30)


def test_timing_card_names_the_transplant_date_the_earliest_start_and_the_fda_page():
    snapshot = snapshot_of(hook="order-sign", drafts=[zortress(draft=True)], procedures=[liver_transplant(12)])
    [card] = render_cards(check_label_restrictions(snapshot, K), snapshot)
    f = check_label_restrictions(snapshot, K)[0]
    assert card.topic is Topic.LABEL_RESTRICTION and card.indicator == "warning" and len(card.summary) < 140
    assert f"{f.earliest_start.day} {f.earliest_start:%b %Y}" in card.summary
    assert f"{f.transplant_date.day} {f.transplant_date:%b %Y}" in card.detail
    assert "www.fda.gov" in card.detail and "Afinitor" not in card.detail
    assert [a["type"] for s in card.suggestions for a in s["actions"]] == ["delete"]


def test_restriction_card_on_a_current_order_offers_no_deletion():
    snapshot = snapshot_of(medications=[zortress()], conditions=[condition(ICD10CM, "Z94.1", "Heart transplant status")])
    [card] = render_cards(check_label_restrictions(snapshot, K), snapshot)
    assert card.suggestions == () and "heart" in card.summary and "Zortress label" in card.summary
    assert TOPICS[Topic.LABEL_RESTRICTION].override_reasons


def test_generic_oral_sirolimus_is_read_as_rapamune_in_a_liver_transplant_recipient():
    conditions = [condition(ICD10CM, "Z94.4", "Liver transplant status")]
    [f] = findings("patient-view", medications=[med("sirolimus 2 MG Oral Tablet", rxnorm="360110", dose_mg=2)], conditions=conditions)
    assert f.restriction is not None and f.restriction.product == "Rapamune"


def test_a_completed_heart_transplant_procedure_shows_a_heart_recipient():
    [f] = findings("patient-view", medications=[zortress()], procedures=[procedure("Heart transplant", -200)])
    assert f.organ == "heart" and f.restriction is not None


def test_heart_transplant_status_is_the_heart_context_not_other_transplant():
    from cds_service.rules.treatment_context import treatment_context

    snapshot = snapshot_of(medications=[med("everolimus 10 MG Oral Tablet", rxnorm="845507", dose_mg=10)],
                           conditions=[condition(ICD10CM, "Z94.1", "Heart transplant status")])
    context = treatment_context(snapshot, K, snapshot.mtor_orders[0])
    assert (context.use, context.organ, context.candidates) == ("transplant", "heart", ("transplant-heart",))
    sirolimus = snapshot_of(medications=[med("sirolimus 2 MG Oral Tablet", rxnorm="360110", dose_mg=2)],
                            conditions=[condition(ICD10CM, "Z94.2", "Lung transplant status")])
    context = treatment_context(sirolimus, K, sirolimus.mtor_orders[0])
    assert (context.use, context.organ, context.candidates) == ("transplant", "lung", ("transplant-lung",))


def test_the_card_names_the_label_whose_restriction_it_states_even_for_a_10_mg_everolimus_order():
    """Everolimus 10 mg (an Afinitor strength) with a heart transplant on record is read as a transplant use (Zortress
    label): the card quotes the Zortress restriction, so its source must name Zortress, never Afinitor (a scenario
    audit: source.label said Afinitor while the detail cited the Zortress MedWatch page)."""
    request = dict(hook="order-sign", drafts=[med("everolimus 10 MG Oral Tablet", rxnorm="845507", draft=True, dose_mg=10)],
                   conditions=[condition(ICD10CM, "Z94.1", "Heart transplant status")])
    snapshot = snapshot_of(**request)
    [card] = render_cards(check_label_restrictions(snapshot, K), snapshot)
    assert "Zortress label" in card.summary
    assert card.source.label.startswith("Zortress") and "e082a024" in (card.source.url or "")
