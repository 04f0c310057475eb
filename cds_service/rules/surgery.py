"""Surgery within the label's withhold window: planned soon while on treatment, or recent when ordering."""

from __future__ import annotations

from cds_service.findings import Finding, Severity, Topic
from cds_service.knowledge import Knowledge
from cds_service.patient import PatientSnapshot


def check_surgery_timing(snapshot: PatientSnapshot, knowledge: Knowledge) -> list[Finding]:
    findings = []
    for mtor in snapshot.mtor_orders:
        window = knowledge.mtor_drugs[mtor.mtor_drug]["surgery"]
        for event in snapshot.procedures:
            if not event.is_surgery or event.when is None:
                continue
            days = (event.when.date() - snapshot.now.astimezone(event.when.tzinfo).date()).days
            if event.is_planned and 0 <= days <= window["withhold_before_days"]:
                kind = "planned"
            elif not event.is_planned and 0 <= -days < window["avoid_after_major_days"]:
                kind = "recent"
            else:
                continue
            findings.append(
                Finding(
                    topic=Topic.SURGERY_TIMING,
                    severity=Severity.WARNING,
                    mtor=mtor,
                    evidence=(event,),
                    source=window["source"],
                    section=window.get("section", ""),
                    facts={
                        "kind": kind,
                        "days": abs(days),
                        "withhold_before_days": window["withhold_before_days"],
                        "avoid_after_major_days": window["avoid_after_major_days"],
                    },
                )
            )
    return findings
