"""Live attenuated vaccines ordered for a patient taking or starting an mTOR inhibitor."""

from __future__ import annotations

from cds_service.findings import LiveVaccineFinding, Severity
from cds_service.knowledge import DrugConcept, DrugRole, Knowledge
from cds_service.knowledge.records import LabelStatement
from cds_service.patient import MedicationOrder, PatientSnapshot
from cds_service.rules.common import drug_of, mtor_product, preferred_mtor


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
    """The label's own words: Rapamune's immunisation warning for sirolimus (regimens.json, verified; Fyarro's own
    wording is not in the knowledge, so its card names the Rapamune text as such), else the drug's statement
    (vaccines.json: Afinitor for everolimus). The secondary TSC summary is never a card's citation."""
    own = next((a for a in knowledge.product_advice if a.topic == "vaccination" and a.product == "Rapamune"), None)
    if drug_of(mtor) == "sirolimus" and own is not None:
        product = mtor_product(mtor, knowledge, snapshot)
        text = own.text if product == "Rapamune" else f"(Rapamune, oral sirolimus) {own.text}"
        return LabelStatement(source=own.source, section="Immunizations", drug="sirolimus", text=text)
    return knowledge.live_vaccine_statements[drug_of(mtor)]


def _vaccine_in(order: MedicationOrder) -> tuple[DrugConcept, Severity] | tuple[None, None]:
    """One finding per order, however many live antigens its name matches (MMR names measles and rubella)."""
    for role, severity in ((DrugRole.LIVE_VACCINE, Severity.WARNING), (DrugRole.AMBIGUOUS_VACCINE, Severity.INFO)):
        found = order.concepts_with(role)
        if found:
            return found[0], severity
    return None, None
