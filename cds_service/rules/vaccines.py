"""Live attenuated vaccines ordered for a patient taking or starting an mTOR inhibitor."""

from __future__ import annotations

from cds_service.findings import LiveVaccineFinding, Severity
from cds_service.knowledge import DrugConcept, DrugRole, Knowledge
from cds_service.knowledge.records import LabelStatement
from cds_service.patient import MedicationOrder, PatientSnapshot
from cds_service.rules.common import drug_of, mtor_product, own_label_instead, preferred_mtor

LIVE_VACCINE_CLASS_FACT = ("mTOR inhibitors suppress the immune system, and their labels advise avoiding live vaccines "
                           "during treatment; check this product's label for its wording")


def check_live_vaccines(snapshot: PatientSnapshot, knowledge: Knowledge) -> list[LiveVaccineFinding]:
    if not snapshot.mtor_orders:
        return []
    mtor = preferred_mtor(snapshot, prefer_draft=False)
    statement = _statement(snapshot, knowledge, mtor)
    findings = []
    for order in snapshot.medications:
        if order.mtor_drug or not (order.is_draft or order.status in ("active", "on-hold")):
            continue
        vaccine, severity = _vaccine_in(order)
        if vaccine is None or severity is None:
            continue
        findings.append(
            LiveVaccineFinding(
                severity=severity,
                mtor=mtor,
                evidence=(order,),
                source=statement.source,
                section=statement.section,
                vaccine=vaccine.display,
                ambiguous=severity is Severity.INFO,
                statement=statement,
            )
        )
    return findings


def _statement(snapshot: PatientSnapshot, knowledge: Knowledge, mtor: MedicationOrder) -> LabelStatement:
    """The label's own words: Rapamune's immunisation warning for sirolimus (regimens.json, verified), else the
    drug's statement (vaccines.json: Afinitor for everolimus). Zortress and Fyarro: the class fact, citing the
    product's own label (their wording is not in the knowledge as verified). The secondary TSC summary is never a
    card's citation."""
    product_label = own_label_instead(mtor, knowledge, snapshot)
    if product_label is not None:  # Zortress, Fyarro: their own wording is not in the knowledge as verified
        return LabelStatement(source=product_label, drug=drug_of(mtor), quoted=False, text=LIVE_VACCINE_CLASS_FACT)
    own = next((a for a in knowledge.product_advice if a.topic == "vaccination" and a.product == "Rapamune"), None)
    if drug_of(mtor) == "sirolimus" and own is not None and mtor_product(mtor, knowledge, snapshot) == "Rapamune":
        return LabelStatement(source=own.source, section="Immunizations", drug="sirolimus", text=own.text)
    return knowledge.live_vaccine_statements[drug_of(mtor)]


def _vaccine_in(order: MedicationOrder) -> tuple[DrugConcept, Severity] | tuple[None, None]:
    """One finding per order, however many live antigens its name matches (MMR names measles and rubella)."""
    for role, severity in ((DrugRole.LIVE_VACCINE, Severity.WARNING), (DrugRole.AMBIGUOUS_VACCINE, Severity.INFO)):
        found = order.concepts_with(role)
        if found:
            return found[0], severity
    return None, None
