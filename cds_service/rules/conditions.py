"""Conditions that change what the label advises: hepatic impairment, severe infection, non-infectious pneumonitis."""

from __future__ import annotations

from cds_service.findings import HepaticFinding, InfectionFinding, Severity
from cds_service.knowledge import Knowledge
from cds_service.knowledge.records import ConditionAdvice
from cds_service.patient import PatientSnapshot
from cds_service.rules.common import drug_of, preferred_mtor
from cds_service.rules.indication import infer_indication


def check_hepatic_impairment(snapshot: PatientSnapshot, knowledge: Knowledge) -> list[HepaticFinding]:
    conditions = snapshot.active_conditions("hepatic-impairment")
    if not conditions or not snapshot.mtor_orders:
        return []
    mtor = preferred_mtor(snapshot, prefer_draft=True)
    drug = drug_of(mtor)
    classes = sorted({k[-1] for c in conditions for k in c.kinds if k.startswith("child-pugh-")})
    child_pugh = classes[-1] if classes else None  # the worst class on record
    indication = infer_indication(snapshot, knowledge, drug)
    doses = tuple(
        d for d in knowledge.hepatic_doses
        if d.drug == drug and (indication.dosing is None or d.dosing in (None, indication.dosing))
        and (child_pugh is None or d.child_pugh == child_pugh)
    )
    advice = _advice(knowledge, "hepatic-impairment", drug)
    source = doses[0].source if doses else (advice.source if advice else knowledge.label_sources[drug])
    return [
        HepaticFinding(
            severity=Severity.WARNING,
            mtor=mtor,
            evidence=tuple(conditions),
            source=source,
            section=doses[0].section if doses else "",
            child_pugh=child_pugh,
            doses=doses,
            indication=indication,
            advice=advice,
        )
    ]


def check_infection(snapshot: PatientSnapshot, knowledge: Knowledge) -> list[InfectionFinding]:
    if not snapshot.mtor_orders:
        return []
    findings = []
    mtor = preferred_mtor(snapshot, prefer_draft=False)
    for kind in ("severe-infection", "pneumonitis"):
        conditions = snapshot.active_conditions(kind)
        advice = _advice(knowledge, "pneumonitis" if kind == "pneumonitis" else "infection", drug_of(mtor))
        if not conditions or advice is None:
            continue
        findings.append(
            InfectionFinding(severity=Severity.WARNING, mtor=mtor, evidence=tuple(conditions), source=advice.source,
                             section=advice.section, kind=kind, advice=advice)
        )
    return findings


def _advice(knowledge: Knowledge, topic: str, drug: str) -> ConditionAdvice | None:
    return next((a for a in knowledge.condition_advice if a.topic == topic and a.drug == drug), None)
