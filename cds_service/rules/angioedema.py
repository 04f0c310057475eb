"""Everolimus with an ACE inhibitor: the label warns of a higher risk of angioedema."""

from __future__ import annotations

from cds_service.findings import Finding, Severity, Topic
from cds_service.knowledge import DrugRole, Knowledge
from cds_service.patient import PatientSnapshot


def check_angioedema(snapshot: PatientSnapshot, knowledge: Knowledge) -> list[Finding]:
    statement = knowledge.files["ace_inhibitors.json"]["label_statement"]
    findings = []
    for mtor in snapshot.mtor_orders:
        if mtor.mtor_drug != statement["drug"]:
            continue
        for order in snapshot.medications:
            ace = order.concepts_with(DrugRole.ACE_INHIBITOR)
            if ace:
                findings.append(
                    Finding(Topic.ANGIOEDEMA, Severity.WARNING, mtor, (order,), statement["source"],
                            statement.get("section", ""), {"ace_inhibitor": ace[0].display, "statement": statement["text"]})
                )
    return findings
