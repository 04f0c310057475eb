"""Transplant uses the governing label advises against (issue 10 §1: apply the rules of the label that governs a use).

- Zortress after liver transplant: not earlier than 30 days after the transplant (FDA MedWatch, February 2013). Fires
  on a draft everolimus order, or on a current one while the 30 days are not over, when a completed liver-transplant
  Procedure (by code, or by name when uncoded) gives the date. A Condition's date is not used: its onset and
  recordedDate cannot be told apart in the record the rules read, and a recorded date is not the transplant date.
- Zortress in heart transplant: not recommended (increased mortality; FDA MedWatch, April 2012), for everolimus whose
  every plausible use is transplant (the Zortress label governs it).
- Rapamune (oral sirolimus) in liver or lung transplant: not recommended (boxed warning), whatever the use.
Only `verified: true` label facts are loaded (regimens.json label_restrictions, earliest_start_days_after_transplant).
"""

from __future__ import annotations

from datetime import timedelta

from cds_service.findings import LabelRestrictionFinding, Severity
from cds_service.knowledge import Knowledge
from cds_service.patient import ConditionRecord, MedicationOrder, PatientSnapshot, ProcedureEvent
from cds_service.rules.common import product_label
from cds_service.rules.treatment_context import NOT_CURRENT, procedure_transplant_contexts, treatment_context

TransplantEvidence = ConditionRecord | ProcedureEvent


def check_label_restrictions(snapshot: PatientSnapshot, knowledge: Knowledge) -> list[LabelRestrictionFinding]:
    orders = [m for m in snapshot.mtor_orders if m.status not in NOT_CURRENT]
    if not orders:
        return []
    transplants = _transplants_on_record(snapshot, knowledge)
    if not transplants:
        return []
    findings: list[LabelRestrictionFinding] = []
    for order in orders:
        findings += _not_recommended(snapshot, knowledge, order, transplants)
        findings += _too_early(snapshot, knowledge, order, transplants)
    return findings


def _not_recommended(
    snapshot: PatientSnapshot, knowledge: Knowledge, order: MedicationOrder, transplants: dict[str, list[TransplantEvidence]]
) -> list[LabelRestrictionFinding]:
    context = treatment_context(snapshot, knowledge, order)
    findings = []
    for restriction in knowledge.label_restrictions:
        if restriction.drug != order.mtor_drug or not _governed_by(restriction.product, context.use, context.product):
            continue
        for key in restriction.contexts:
            if key in transplants:
                findings.append(LabelRestrictionFinding(
                    severity=Severity.WARNING, mtor=order, evidence=tuple(transplants[key]), source=restriction.source,
                    section=restriction.section, context=key, organ=knowledge.treatment_contexts[key].organ or "",
                    today=snapshot.today, restriction=restriction,
                    label=product_label(knowledge, restriction.product),  # the card names the label it quotes
                ))
    return findings


def _governed_by(product: str, use: str, order_product: str | None) -> bool:
    """Zortress governs everolimus given for transplant; Rapamune governs oral sirolimus (not Fyarro) for any use."""
    if product == "Zortress":
        return use == "transplant"
    return order_product == product


def _too_early(
    snapshot: PatientSnapshot, knowledge: Knowledge, order: MedicationOrder, transplants: dict[str, list[TransplantEvidence]]
) -> list[LabelRestrictionFinding]:
    context = treatment_context(snapshot, knowledge, order)
    findings = []
    for earliest in knowledge.earliest_starts:
        organ = knowledge.treatment_contexts[earliest.context].organ
        if order.mtor_drug != earliest.drug or context.use != "transplant" or context.organ != organ:
            continue
        dated = [(e.when.date(), e) for e in transplants.get(earliest.context, ()) if isinstance(e, ProcedureEvent) and e.when]
        if not dated:
            continue  # no transplant date on record: no card
        transplant_day, latest = max(dated, key=lambda d: d[0])  # a re-transplant starts the count again
        allowed_from = transplant_day + timedelta(days=earliest.days)
        start = order.authored_on.date() if order.authored_on else snapshot.today
        if start >= allowed_from or (not order.is_draft and snapshot.today >= allowed_from):
            continue  # started late enough, or a current order whose first 30 days are over: nothing to act on
        findings.append(LabelRestrictionFinding(
            severity=Severity.WARNING, mtor=order, evidence=(latest,), source=earliest.source, section=earliest.section,
            context=earliest.context, organ=organ or "", today=snapshot.today, earliest=earliest, transplant=latest,
            start=start, label=product_label(knowledge, earliest.product),
        ))
    return findings


def _transplants_on_record(snapshot: PatientSnapshot, knowledge: Knowledge) -> dict[str, list[TransplantEvidence]]:
    """Transplant context key -> active Conditions and completed Procedures (each by code, or name when uncoded)
    that show it. Organ-specific contexts only: "transplant-other" (the Z94 category) names no organ."""
    found: dict[str, list[TransplantEvidence]] = {}
    wanted = {c for r in knowledge.label_restrictions for c in r.contexts} | {e.context for e in knowledge.earliest_starts}
    for condition in snapshot.conditions:
        if condition.is_active:
            for key in knowledge.transplant_or_oncology_contexts(condition.codes, condition.text) & wanted:
                found.setdefault(key, []).append(condition)
    for procedure in snapshot.procedures:
        for key in procedure_transplant_contexts(knowledge, procedure) & wanted:
            found.setdefault(key, []).append(procedure)
    return found
