"""CYP3A4/P-gp inhibitors and inducers (drugs, grapefruit, St John's wort) with an mTOR inhibitor."""

from __future__ import annotations

from datetime import timedelta

from cds_service.findings import InteractionFinding, Severity, TroughRecheck
from cds_service.knowledge import DrugRole, Knowledge
from cds_service.patient import PatientSnapshot
from cds_service.rules.common import drug_of, trough_target
from cds_service.rules.indication import infer_indication

_DEFAULT_SEVERITY = {"strong": Severity.WARNING, "moderate": Severity.WARNING}
_ADVICE_SCOPE = {"fixed": "fixed-dose", "tdm": "tdm"}


def check_cyp3a4_interactions(snapshot: PatientSnapshot, knowledge: Knowledge) -> list[InteractionFinding]:
    findings = []
    seen = set()
    for mtor in snapshot.mtor_orders:
        drug = drug_of(mtor)
        indication = infer_indication(snapshot, knowledge, drug)
        for other in snapshot.medications:
            if other.ref == mtor.ref:
                continue
            for perpetrator in other.concepts_with(DrugRole.CYP3A_PERPETRATOR):
                if (mtor.ref, other.ref, perpetrator.key) in seen:
                    continue
                seen.add((mtor.ref, other.ref, perpetrator.key))
                entry = perpetrator.entry
                strength = knowledge.strength_for(entry, drug)
                advice = tuple(
                    knowledge.advice_for(drug, entry["effect"], strength, perpetrator.key, _ADVICE_SCOPE.get(indication.dosing or ""))
                )
                severity = max((Severity[a.indicator.upper()] for a in advice), default=_DEFAULT_SEVERITY[strength])
                findings.append(
                    InteractionFinding(
                        severity=severity,
                        mtor=mtor,
                        evidence=(other,),
                        source=knowledge.label_sources[drug],
                        section="Drug interactions",
                        perpetrator=perpetrator.display,
                        effect=entry["effect"],
                        strength=strength,
                        kind=entry.get("kind", "drug"),
                        advice=advice,
                        classification_source=entry["source"],
                        indication=indication,
                        trough_recheck=_trough_recheck(snapshot, knowledge, drug, indication.key, severity),
                        level_test=knowledge.level_tests[drug],
                    )
                )
    return findings


def _trough_recheck(
    snapshot: PatientSnapshot, knowledge: Knowledge, drug: str, indication_key: str | None, severity: Severity
) -> TroughRecheck | None:
    """When the label manages the combination by trough (not 'avoid'), the date the trough should be rechecked."""
    if severity is Severity.CRITICAL or trough_target(knowledge, drug, indication_key) is None:
        return None
    timing = next((t for t in knowledge.trough_timing if t.drug == drug and t.event == "interacting-drug-change"), None)
    return TroughRecheck(snapshot.today + timedelta(days=timing.days_after), timing) if timing else None
