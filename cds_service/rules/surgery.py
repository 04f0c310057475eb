"""Surgery near an mTOR inhibitor, judged by the label that governs the patient's use (issue 10 §1, §5; issue 16).

- Everolimus for TSC or oncology (Afinitor §5 wound healing): withhold at least 1 week before elective surgery,
  give none for at least 2 weeks after major surgery and until the wound has healed. Fires for surgery planned
  within the hold interval, surgery being booked (appointment-book) within the planning horizon, or surgery done
  within the interval after.
- Transplant (Zortress, Rapamune) and oral sirolimus for other uses (LAM): the labels warn of impaired wound
  healing but set no interval (sirolimus's 7/14 days are unverified): an info card with the warning and no
  computed dates, for planned or booked surgery within the planning horizon. A de novo transplant start after
  the transplant itself is what the label prescribes: recent surgery gives no card.
- IV sirolimus for PEComa (Fyarro): no surgery rule in the knowledge; no card.
"""

from __future__ import annotations

from cds_service.findings import Severity, SurgeryTiming
from cds_service.knowledge import Knowledge
from cds_service.patient import MedicationOrder, PatientSnapshot, ProcedureEvent
from cds_service.rules.common import TRANSPLANT_PRODUCTS, drug_of
from cds_service.rules.treatment_context import TreatmentContext, treatment_context


def check_surgery_timing(snapshot: PatientSnapshot, knowledge: Knowledge) -> list[SurgeryTiming]:
    findings = []
    for mtor in snapshot.mtor_orders:
        context = treatment_context(snapshot, knowledge, mtor)
        for event in snapshot.procedures:
            if not event.is_surgery or event.when is None:
                continue
            finding = _judge(event, mtor, context, snapshot, knowledge)
            if finding is not None:
                findings.append(finding)
    return findings


def _judge(
    event: ProcedureEvent, mtor: MedicationOrder, context: TreatmentContext, snapshot: PatientSnapshot, knowledge: Knowledge
) -> SurgeryTiming | None:
    assert event.when is not None
    surgery_date = event.when.date()
    today = snapshot.now.astimezone(event.when.tzinfo).date()  # days to surgery count on the hospital's calendar
    days = (surgery_date - today).days
    booking = event.is_draft and event.ref.startswith("Appointment/")  # appointment-book: being booked now
    transplant = "transplant" in context.kinds
    if mtor.mtor_drug == "everolimus" and not transplant:
        window = knowledge.surgery_windows["everolimus"]
        ahead = knowledge.surgery_planning_days if booking else window.withhold_before_days
        if event.is_planned and 0 <= days <= ahead:
            kind = "planned"
        elif not event.is_planned and 0 <= -days < window.avoid_after_major_days:
            kind = "recent"
        else:
            return None
        return SurgeryTiming(severity=Severity.WARNING, source=window.source, section=window.section,
                             label=context.label or window.source, kind=kind, days=abs(days), window=window,
                             mtor=mtor, evidence=(event,), surgery_date=surgery_date, today=today, use=context.use,
                             plausible_uses=context.kinds, assumption=context.assumption)
    product = TRANSPLANT_PRODUCTS[drug_of(mtor)]
    if mtor.mtor_drug == "sirolimus" and (context.product == "Fyarro" or "oncology" in context.kinds):
        return None  # Fyarro: no wound-healing interval or warning in the knowledge
    caution = knowledge.wound_healing_cautions.get(product)
    if caution is None or not event.is_planned or not 0 <= days <= knowledge.surgery_planning_days:
        return None
    return SurgeryTiming(severity=Severity.INFO, source=caution.source, section=caution.section,
                         label=context.label or caution.source, kind="planned", days=days, caution=caution,
                         mtor=mtor, evidence=(event,), surgery_date=surgery_date, today=today, use=context.use,
                         plausible_uses=context.kinds, assumption=context.assumption, implied_only=context.implied_only)
