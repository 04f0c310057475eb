"""An mTOR inhibitor with an ACE inhibitor: a higher risk of angioedema.

Everolimus: the Afinitor label (§5.4). Sirolimus: the Rapamune label's angioedema warning (W&P 5.5) with the
published kidney-transplant incidence (ace_inhibitors.json label_statements_by_drug), never everolimus wording.
Zortress and Fyarro: the class fact citing the product's own label (their wording is not in the knowledge as verified).
"""

from __future__ import annotations

from cds_service.findings import AngioedemaFinding, Severity
from cds_service.knowledge import DrugRole, Knowledge
from cds_service.knowledge.records import LabelStatement
from cds_service.patient import PatientSnapshot
from cds_service.rules.common import drug_of, own_label_instead

ANGIOEDEMA_CLASS_FACT = ("An ACE inhibitor taken with an mTOR inhibitor (everolimus or sirolimus) raises the risk of "
                         "angioedema; check this product's label for its advice.")


def check_angioedema(snapshot: PatientSnapshot, knowledge: Knowledge) -> list[AngioedemaFinding]:
    findings = []
    for mtor in snapshot.mtor_orders:
        statement = knowledge.angioedema_statements.get(drug_of(mtor))
        if statement is None:
            continue
        own_label = own_label_instead(mtor, knowledge, snapshot)
        if own_label is not None:  # Zortress, Fyarro: the class fact, citing the product's own label
            statement = LabelStatement(source=own_label, drug=drug_of(mtor), quoted=False, text=ANGIOEDEMA_CLASS_FACT)
        for order in snapshot.medications:
            ace = order.concepts_with(DrugRole.ACE_INHIBITOR)
            if ace:
                findings.append(
                    AngioedemaFinding(severity=Severity.WARNING, mtor=mtor, evidence=(order,), source=statement.source,
                                      section=statement.section, ace_inhibitor=ace[0].display, statement=statement)
                )
    return findings
