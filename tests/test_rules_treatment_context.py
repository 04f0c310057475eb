"""Treatment context (issue 10 §1): which use an mTOR order serves and which label governs it
(treatment_contexts.json: product_implies, contexts, calcineurin_inhibitors, resolution)."""

from __future__ import annotations

from cds_service.rules.treatment_context import treatment_context
from snapshots import (
    AML_RECORD,
    ICD10CM,
    SEGA_RECORD,
    TSC_RECORD,
    condition_record,
    knowledge,
    mtor_order,
    order,
    record_snapshot,
)

KIDNEY_TX = condition_record("Z94.0", ICD10CM, ref="Condition/ktx")
LIVER_TX = condition_record("Z94.4", ICD10CM, ref="Condition/ltx")
CORNEA_TX = condition_record("Z94.7", ICD10CM, ref="Condition/cornea")
LAM = condition_record("J84.81", ICD10CM, ref="Condition/lam")
BREAST = condition_record("C50.911", ICD10CM, ref="Condition/breast")

ZORTRESS = dict(ref="MedicationRequest/zor", text="Zortress 0.75 MG Oral Tablet", code="977440", dose=0.75)
RAPAMUNE = dict(ref="MedicationRequest/rapa", text="Rapamune 2 MG Oral Tablet", code="404432", dose=2.0)
GENERIC_SIROLIMUS = dict(ref="MedicationRequest/siro", text="sirolimus 1 MG Oral Tablet", code="349208", dose=1.0)
FYARRO = dict(ref="MedicationRequest/fy", text="Fyarro 100 MG injectable suspension", code=None, dose=None)


def context_of(drug_order, *conditions, meds=()):
    mtor = mtor_order(**drug_order) if isinstance(drug_order, dict) else drug_order
    snapshot = record_snapshot(meds=[mtor, *meds], conditions=conditions)
    return treatment_context(snapshot, knowledge(), mtor)


def test_zortress_with_kidney_transplant_status_is_kidney_transplant_under_the_zortress_label():
    ctx = context_of(ZORTRESS, KIDNEY_TX)  # product_implies Zortress (ZORTRESS-2010), Z94.0 (ICD10CM)
    assert (ctx.use, ctx.organ, ctx.product, ctx.regimen) == ("transplant", "kidney", "Zortress", "zortress-kidney")
    assert ctx.label.key == "ZORTRESS-LABEL"
    assert "Condition/ktx" in ctx.evidence
    assert ctx.assumption is None
    assert not ctx.allows_tsc_lam_rules


def test_zortress_with_liver_transplant_is_liver():
    ctx = context_of(ZORTRESS, LIVER_TX)
    assert (ctx.use, ctx.organ, ctx.regimen) == ("transplant", "liver", "zortress-liver")


def test_zortress_alone_is_transplant_with_the_organ_unknown_and_says_so():
    ctx = context_of(ZORTRESS)
    assert (ctx.use, ctx.organ, ctx.regimen) == ("transplant", None, None)
    assert set(ctx.candidates) == {"transplant-kidney", "transplant-liver"}
    assert ctx.assumption and "kidney" in ctx.assumption and "liver" in ctx.assumption
    assert not ctx.allows_tsc_lam_rules


def test_zortress_is_never_read_as_tsc_even_with_tsc_on_record():
    ctx = context_of(ZORTRESS, TSC_RECORD, AML_RECORD)  # Zortress is exclusive to transplant
    assert ctx.use == "transplant" and not ctx.allows_tsc_lam_rules


def test_transplant_strength_generic_everolimus_is_read_as_zortress():
    ctx = context_of(dict(ref="MedicationRequest/e", text="everolimus 0.75 MG Oral Tablet", code="977438", dose=0.75), KIDNEY_TX)
    assert (ctx.use, ctx.product, ctx.regimen) == ("transplant", "Zortress", "zortress-kidney")


def test_fyarro_is_pecoma_oncology_under_its_own_label():
    ctx = context_of(FYARRO, TSC_RECORD)
    assert (ctx.use, ctx.product, ctx.regimen) == ("oncology", "Fyarro", "fyarro-pecoma")
    assert ctx.label.key == "FYARRO-LABEL"
    assert not ctx.allows_tsc_lam_rules


def test_rapamune_with_kidney_transplant_is_renal_transplant():
    ctx = context_of(RAPAMUNE, KIDNEY_TX)
    assert (ctx.use, ctx.organ, ctx.regimen) == ("transplant", "kidney", "rapamune-renal-transplant")
    assert ctx.label.key == "RAPAMUNE-DOSE"


def test_rapamune_with_lam_is_lam_and_tsc_lam_rules_apply():
    ctx = context_of(RAPAMUNE, LAM)
    assert (ctx.use, ctx.regimen) == ("lam", "rapamune-lam")
    assert ctx.allows_tsc_lam_rules


def test_generic_sirolimus_with_a_calcineurin_inhibitor_is_renal_transplant():
    tacrolimus = order("tacrolimus 1 MG Oral Capsule", ref="MedicationRequest/tac")
    ctx = context_of(GENERIC_SIROLIMUS, meds=[tacrolimus])  # calcineurin_inhibitors: supporting evidence
    assert (ctx.use, ctx.organ, ctx.regimen) == ("transplant", "kidney", "rapamune-renal-transplant")
    assert "MedicationRequest/tac" in ctx.evidence


def test_topical_tacrolimus_is_not_transplant_evidence():
    ointment = order("tacrolimus 0.1 % Topical Ointment", ref="MedicationRequest/oint")
    ctx = context_of(GENERIC_SIROLIMUS, LAM, meds=[ointment])
    assert ctx.use == "lam"


def test_ophthalmic_cyclosporine_is_not_transplant_evidence():
    drops = order("Restasis 0.05 % Ophthalmic Emulsion", ref="MedicationRequest/eye")
    assert context_of(RAPAMUNE, LAM, meds=[drops]).use == "lam"


def test_rapamune_with_no_indication_is_ambiguous_and_blocks_lam_targets():
    ctx = context_of(RAPAMUNE)
    assert ctx.use == "unknown"
    assert set(ctx.candidates) == {"transplant-kidney", "lam"}
    assert ctx.assumption and "Rapamune" in ctx.assumption
    assert not ctx.allows_tsc_lam_rules


def test_rapamune_with_both_lam_and_kidney_transplant_lists_both():
    ctx = context_of(RAPAMUNE, LAM, KIDNEY_TX)
    assert ctx.use == "unknown" and set(ctx.candidates) == {"lam", "transplant-kidney"}
    assert ctx.label is None


def test_afinitor_with_tsc_sega_is_tsc_sega_under_the_afinitor_label():
    ctx = context_of({}, TSC_RECORD, SEGA_RECORD)  # default: everolimus 10 mg (Afinitor strength, generic)
    assert ctx.use == "tsc-sega" and ctx.allows_tsc_lam_rules
    assert ctx.regimen == "afinitor-tsc-and-oncology"


def test_everolimus_with_tsc_and_a_kidney_transplant_checks_both():
    ctx = context_of({}, TSC_RECORD, AML_RECORD, KIDNEY_TX)
    assert ctx.use == "unknown" and set(ctx.candidates) == {"tsc-aml", "transplant-kidney"}
    assert not ctx.allows_tsc_lam_rules


def test_everolimus_with_breast_cancer_is_oncology():
    ctx = context_of({}, BREAST)
    assert ctx.use == "oncology" and not ctx.allows_tsc_lam_rules


def test_corneal_graft_is_not_a_transplant_context():
    ctx = context_of({}, TSC_RECORD, AML_RECORD, CORNEA_TX)  # exclude_codes Z94.5-Z94.7
    assert ctx.use == "tsc-aml"


def test_inactive_transplant_condition_does_not_count():
    resolved = condition_record("Z94.0", ICD10CM, active=False)
    assert context_of({}, TSC_RECORD, AML_RECORD, resolved).use == "tsc-aml"


def test_everolimus_with_nothing_on_record_is_unknown_without_candidates_from_the_tsc_uses():
    ctx = context_of({})
    assert ctx.use == "unknown" and ctx.allows_tsc_lam_rules  # today's behaviour: TSC rules decide by indication


def test_a_completed_kidney_transplant_procedure_is_transplant_evidence_a_planned_one_is_not():
    from cds_service.patient import ProcedureEvent
    from snapshots import NOW
    done = ProcedureEvent("Procedure/ktx", "Kidney transplant", NOW, is_planned=False, is_surgery=True)
    planned = ProcedureEvent("ServiceRequest/ktx", "Kidney transplant", NOW, is_planned=True, is_surgery=True)
    mtor = mtor_order(**GENERIC_SIROLIMUS)
    ctx = treatment_context(_with_procedures(record_snapshot(meds=[mtor]), done), knowledge(), mtor)
    assert (ctx.use, ctx.organ) == ("transplant", "kidney") and "Procedure/ktx" in ctx.evidence
    ctx = treatment_context(_with_procedures(record_snapshot(meds=[mtor], conditions=[LAM]), planned), knowledge(), mtor)
    assert ctx.use == "lam"


def test_evaluation_for_transplant_written_on_a_coded_condition_is_not_read_by_name():
    evaluation = condition_record("Z76.82", ICD10CM, text="Awaiting kidney transplant")
    assert context_of(RAPAMUNE, LAM, evaluation).use == "lam"


# SNOMED CT procedure codes: 18027006 Transplantation of liver, 70536003 Transplant of kidney (treatment_contexts.json,
# from the HL7 Europe transplant IG ConceptMap); 386053000 Evaluation procedure (a code no transplant context lists).
SNOMED_LIVER_TX = frozenset({("http://snomed.info/sct", "18027006")})
SNOMED_EVALUATION = frozenset({("http://snomed.info/sct", "386053000")})
AFINITOR_10 = dict(ref="MedicationRequest/afi", text="everolimus 10 MG Oral Tablet", code="845507", dose=10.0)


def _done(text, codes=frozenset(), *, planned=False, draft=False):
    from cds_service.patient import ProcedureEvent
    from snapshots import NOW
    return ProcedureEvent("Procedure/p", text, NOW, is_planned=planned, is_surgery=True, is_draft=draft, codes=codes)


def test_a_procedure_coded_liver_transplant_counts_whatever_its_text_says():
    mtor = mtor_order(**AFINITOR_10)
    ctx = treatment_context(_with_procedures(record_snapshot(meds=[mtor]), _done("OLT", SNOMED_LIVER_TX)), knowledge(), mtor)
    assert (ctx.use, ctx.organ) == ("transplant", "liver") and "Procedure/p" in ctx.evidence
    assert not ctx.allows_tsc_lam_rules


def test_a_planned_or_draft_coded_transplant_procedure_is_not_evidence():
    mtor = mtor_order(**GENERIC_SIROLIMUS)
    for procedure in (_done("OLT", SNOMED_LIVER_TX, planned=True), _done("OLT", SNOMED_LIVER_TX, draft=True)):
        ctx = treatment_context(_with_procedures(record_snapshot(meds=[mtor], conditions=[LAM]), procedure), knowledge(), mtor)
        assert ctx.use == "lam"


def test_the_code_wins_over_the_words_of_a_coded_procedure():
    mtor = mtor_order(**GENERIC_SIROLIMUS)
    evaluation = _done("Kidney transplant evaluation", SNOMED_EVALUATION)
    ctx = treatment_context(_with_procedures(record_snapshot(meds=[mtor], conditions=[LAM]), evaluation), knowledge(), mtor)
    assert ctx.use == "lam" and "Procedure/p" not in ctx.evidence
    uncoded = _done("Kidney transplant evaluation")  # no code: read by name, as before
    ctx = treatment_context(_with_procedures(record_snapshot(meds=[mtor], conditions=[LAM]), uncoded), knowledge(), mtor)
    assert "transplant-kidney" in ctx.candidates


def test_a_procedure_coded_only_in_cpt_or_a_local_system_is_read_by_its_name():
    # US EHRs often code procedures in CPT only (50360 renal allotransplantation): the contexts are written in
    # SNOMED CT and ICD-10-CM, so such a record is read by its name, as an uncoded one is.
    mtor = mtor_order(**GENERIC_SIROLIMUS)
    cpt = _done("Kidney transplant", frozenset({("http://www.ama-assn.org/go/cpt", "50360")}))
    ctx = treatment_context(_with_procedures(record_snapshot(meds=[mtor]), cpt), knowledge(), mtor)
    assert (ctx.use, ctx.organ) == ("transplant", "kidney")
    local = _done("OLT", frozenset({("https://ehr.example.org/procedure-codes", "TX-LIV")}))
    ctx = treatment_context(_with_procedures(record_snapshot(meds=[mtor], conditions=[LAM]), local), knowledge(), mtor)
    assert ctx.use == "lam"  # neither a known code nor a known name: no transplant evidence


def test_an_uncoded_procedure_is_still_read_by_name():
    mtor = mtor_order(**GENERIC_SIROLIMUS)
    ctx = treatment_context(_with_procedures(record_snapshot(meds=[mtor]), _done("Kidney transplant")), knowledge(), mtor)
    assert (ctx.use, ctx.organ) == ("transplant", "kidney")


def test_the_fhir_reader_gives_a_procedure_its_codes_with_oid_systems_mapped():
    from snapshots import coding, concept, med, procedure, snapshot_of
    coded = procedure("OLT", -200, code=concept("OLT", coding("urn:oid:2.16.840.1.113883.6.96", "18027006")))
    snapshot = snapshot_of(medications=[med("everolimus 10 MG Oral Tablet", rxnorm="845507", dose_mg=10)], procedures=[coded])
    [event] = snapshot.procedures
    assert event.codes == SNOMED_LIVER_TX and event.text == "OLT"
    ctx = treatment_context(snapshot, knowledge(), snapshot.mtor_orders[0])
    assert (ctx.use, ctx.organ) == ("transplant", "liver")


def _with_procedures(snapshot, *procedures):
    import dataclasses
    return dataclasses.replace(snapshot, procedures=tuple(procedures))


def test_contexts_shown_by_a_record_are_remembered_within_a_bound(monkeypatch):
    """The reader and several rules ask the same (codes, name) on every call: the answer is remembered, never grows
    without bound, and stays what the knowledge says."""
    from cds_service.knowledge import load_knowledge, loader

    fresh = load_knowledge()
    kidney = frozenset({("http://hl7.org/fhir/sid/icd-10-cm", "Z94.0")})
    first = fresh.transplant_or_oncology_contexts(kidney, "Kidney transplant status")
    assert "transplant-kidney" in first
    assert fresh.transplant_or_oncology_contexts(kidney, "Kidney transplant status") is first
    assert "transplant-kidney" in fresh.transplant_or_oncology_contexts(frozenset(), "kidney transplant")  # by name when uncoded
    monkeypatch.setattr(loader, "MEMO_LIMIT", 5)
    for n in range(20):
        fresh.transplant_or_oncology_contexts(frozenset(), f"unrelated finding {n}")
    assert len(fresh._memo["contexts"]) <= 5
    assert fresh.transplant_or_oncology_contexts(kidney, "Kidney transplant status") == first
