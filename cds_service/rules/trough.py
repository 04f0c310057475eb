"""The most recent blood level of the mTOR inhibitor the patient takes, against the label's limit."""

from __future__ import annotations

from cds_service.findings import Finding, Severity, Topic
from cds_service.knowledge import Knowledge
from cds_service.patient import PatientSnapshot


def check_trough_high(snapshot: PatientSnapshot, knowledge: Knowledge) -> list[Finding]:
    findings = []
    for drug in dict.fromkeys(m.mtor_drug for m in snapshot.mtor_orders):
        levels = [lab for lab in snapshot.labs if lab.kind == "drug-level" and lab.drug == drug and lab.effective]
        if not levels:
            continue
        latest = max(levels, key=lambda lab: lab.effective)
        limit = knowledge.mtor_drugs[drug]["trough_limit"]
        mtor = next(m for m in snapshot.mtor_orders if m.mtor_drug == drug)
        if latest.value_ng_per_ml is None:
            severity = Severity.INFO  # a level we cannot read must not pass as normal
        elif latest.value_ng_per_ml > limit["upper_ng_per_ml"]:
            severity = Severity.WARNING
        else:
            continue
        findings.append(
            Finding(
                topic=Topic.TROUGH_HIGH,
                severity=severity,
                mtor=mtor,
                evidence=(latest,),
                source=limit["source"],
                section=limit.get("section", ""),
                facts={"limit_ng_per_ml": limit["upper_ng_per_ml"], "drug": drug},
            )
        )
    return findings
