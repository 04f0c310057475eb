"""Evidence that the patient is pregnant now, while taking or being ordered an mTOR inhibitor."""

from __future__ import annotations

from datetime import timedelta

from cds_service.findings import PregnancyFinding, Severity
from cds_service.knowledge import Knowledge
from cds_service.patient import ConditionRecord, LabResult, PatientSnapshot
from cds_service.rules.common import drug_of, preferred_mtor


def check_pregnancy(snapshot: PatientSnapshot, knowledge: Knowledge) -> list[PregnancyFinding]:
    if not snapshot.mtor_orders:
        return []
    evidence = current_pregnancy_evidence(snapshot, knowledge)
    if evidence is None:
        return []
    mtor = preferred_mtor(snapshot, prefer_draft=True)
    pregnancy = knowledge.pregnancy_advice[drug_of(mtor)]
    return [
        PregnancyFinding(
            severity=Severity.CRITICAL,
            mtor=mtor,
            evidence=(evidence,),
            source=pregnancy.source,
            section=pregnancy.section,
            contraception_weeks=pregnancy.contraception_weeks_after_last_dose,
        )
    ]


def current_pregnancy_evidence(snapshot: PatientSnapshot, knowledge: Knowledge) -> ConditionRecord | LabResult | None:
    """The newest evidence of pregnancy, unless a later negative test or 'not pregnant' status outweighs it."""
    now = snapshot.now
    status_days = knowledge.pregnancy_status["valid_days"]
    hcg_days = knowledge.hcg_tests["recent_days"]
    negatives = [
        lab.effective
        for lab in snapshot.labs
        if lab.effective and lab.result in ("negative", "not-pregnant") and lab.kind in ("hcg", "pregnancy-status")
    ]
    latest_negative = max(negatives, default=None)
    candidates: list[tuple] = []
    for lab in snapshot.labs:
        if lab.effective is None or lab.effective > now + timedelta(days=1):
            continue
        if lab.kind == "pregnancy-status" and lab.result == "pregnant" and lab.effective >= now - timedelta(days=status_days):
            candidates.append((lab.effective, lab))
        if lab.kind == "hcg" and lab.result == "positive" and lab.effective >= now - timedelta(days=hcg_days):
            candidates.append((lab.effective, lab))
    for condition in snapshot.active_conditions("pregnancy"):
        candidates.append((condition.asserted, condition))
    for when, item in sorted(candidates, key=lambda c: c[0] or now, reverse=True):
        if latest_negative is None or when is None or when > latest_negative:
            return item
    return None

