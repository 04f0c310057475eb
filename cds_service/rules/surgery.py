"""Surgery within the label's withhold window: planned soon while on treatment, or recent when ordering."""

from __future__ import annotations

from cds_service.findings import Severity, SurgeryTiming
from cds_service.knowledge import Knowledge
from cds_service.patient import PatientSnapshot
from cds_service.rules.common import drug_of


def check_surgery_timing(snapshot: PatientSnapshot, knowledge: Knowledge) -> list[SurgeryTiming]:
    findings = []
    for mtor in snapshot.mtor_orders:
        window = knowledge.surgery_windows[drug_of(mtor)]
        for event in snapshot.procedures:
            if not event.is_surgery or event.when is None:
                continue
            days = (event.when.date() - snapshot.now.astimezone(event.when.tzinfo).date()).days
            if event.is_planned and 0 <= days <= window.withhold_before_days:
                kind = "planned"
            elif not event.is_planned and 0 <= -days < window.avoid_after_major_days:
                kind = "recent"
            else:
                continue
            findings.append(
                SurgeryTiming(
                    severity=Severity.WARNING,
                    mtor=mtor,
                    evidence=(event,),
                    source=window.source,
                    section=window.section,
                    kind=kind,
                    days=abs(days),
                    window=window,
                )
            )
    return findings
