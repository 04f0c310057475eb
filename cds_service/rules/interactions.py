"""CYP3A4/P-gp inhibitors and inducers (drugs, grapefruit, St John's wort) with an mTOR inhibitor."""

from __future__ import annotations

from cds_service.findings import Finding, Severity, Topic
from cds_service.knowledge import DrugRole, Knowledge
from cds_service.patient import PatientSnapshot

_DEFAULT_SEVERITY = {"strong": Severity.WARNING, "moderate": Severity.WARNING}


def check_cyp3a4_interactions(snapshot: PatientSnapshot, knowledge: Knowledge) -> list[Finding]:
    findings = []
    seen = set()
    for mtor in snapshot.mtor_orders:
        drug = mtor.mtor_drug
        for other in snapshot.medications:
            if other.ref == mtor.ref:
                continue
            for perpetrator in other.concepts_with(DrugRole.CYP3A_PERPETRATOR):
                if (mtor.ref, other.ref, perpetrator.key) in seen:
                    continue
                seen.add((mtor.ref, other.ref, perpetrator.key))
                entry = perpetrator.entry
                strength = knowledge.strength_for(entry, drug)
                advice = tuple(knowledge.advice_for(drug, entry["effect"], strength, perpetrator.key))
                severity = max(
                    (Severity[a["indicator"].upper()] for a in advice), default=_DEFAULT_SEVERITY[strength]
                )
                label = knowledge.mtor_drugs[drug]["label_source"]
                findings.append(
                    Finding(
                        topic=Topic.CYP3A4_INTERACTION,
                        severity=severity,
                        mtor=mtor,
                        evidence=(other,),
                        source=label,
                        section="Drug interactions",
                        facts={
                            "perpetrator": perpetrator.display,
                            "effect": entry["effect"],
                            "strength": strength,
                            "kind": entry.get("kind", "drug"),
                            "advice": advice,
                            "classification_source": entry["source"],
                        },
                    )
                )
    return findings
