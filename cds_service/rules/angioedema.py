"""Everolimus with an ACE inhibitor: the label warns of a higher risk of angioedema."""

from __future__ import annotations

from cds_service.findings import AngioedemaFinding, Severity
from cds_service.knowledge import DrugRole, Knowledge
from cds_service.patient import PatientSnapshot
from cds_service.rules.common import drug_of


def check_angioedema(snapshot: PatientSnapshot, knowledge: Knowledge) -> list[AngioedemaFinding]:
    statement = knowledge.angioedema_statement
    findings = []
    for mtor in snapshot.mtor_orders:
        if drug_of(mtor) != statement.drug:
            continue
        for order in snapshot.medications:
            ace = order.concepts_with(DrugRole.ACE_INHIBITOR)
            if ace:
                findings.append(
                    AngioedemaFinding(severity=Severity.WARNING, mtor=mtor, evidence=(order,), source=statement.source,
                                      section=statement.section, ace_inhibitor=ace[0].display, statement=statement)
                )
    return findings
