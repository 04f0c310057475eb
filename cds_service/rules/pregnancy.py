"""Evidence that the patient is pregnant now, while taking or being ordered an mTOR inhibitor.

Each kind of evidence has a look-back window (lookback.json): a pregnancy Condition or status for 280 days, a
positive hCG for 30 days. A quantitative hCG at or above the non-pregnant cut-off with no interpretation or reference
range from the lab is not proof (no positive cut-off is sourced): it gives a warning asking to confirm, when nothing
definite is on record. The newest evidence wins: a later negative test (qualitative or quantitative), a
'not pregnant' status or a recorded outcome (delivery, abortive outcome, postpartum care) outweighs an earlier
positive. Evidence past its window never drives the critical card: a positive hCG or a pregnancy still open on the
problem list past its window gives an info card asking to recheck.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from cds_service.findings import PregnancyFinding, Severity
from cds_service.knowledge import Knowledge
from cds_service.patient import RESULT_CLOCK_SKEW, ConditionRecord, LabResult, PatientSnapshot
from cds_service.rules.common import drug_of, own_label_instead, preferred_mtor, within_reproductive_ages

Evidence = ConditionRecord | LabResult


def check_pregnancy(snapshot: PatientSnapshot, knowledge: Knowledge) -> list[PregnancyFinding]:
    if not snapshot.mtor_orders:
        return []
    found = current_pregnancy_evidence(snapshot, knowledge)
    if found is None:
        return []
    evidence, current = found
    mtor = preferred_mtor(snapshot, prefer_draft=True)
    pregnancy = knowledge.pregnancy_advice[drug_of(mtor)]
    own_label = own_label_instead(mtor, knowledge, snapshot)  # Zortress, Fyarro: no Afinitor/Rapamune weeks or section
    window = knowledge.lookback[_window_of(evidence)]
    uninterpreted_hcg = isinstance(evidence, LabResult) and evidence.result == "indeterminate"
    # A positive hCG for a child, a woman past the reproductive-potential ages (dosing.json, policy) or a patient
    # recorded as male is more likely something else (hCG is also a tumour marker): it asks to confirm, never "remove
    # the order". A pregnancy diagnosis or status stands whoever it is recorded for.
    hcg_alone = isinstance(evidence, LabResult) and evidence.kind == "hcg"
    recorded_male = hcg_alone and snapshot.gender == "male"
    outside_ages = (hcg_alone and snapshot.gender != "male"
                    and within_reproductive_ages(knowledge, "female", snapshot.age_years) is False)
    unconfirmed = (uninterpreted_hcg or outside_ages or recorded_male
                   or (isinstance(evidence, ConditionRecord) and evidence.is_unconfirmed))
    return [
        PregnancyFinding(
            severity=Severity.INFO if not current else Severity.WARNING if unconfirmed else Severity.CRITICAL,
            mtor=mtor,
            evidence=(evidence,),
            source=own_label or pregnancy.source,
            section="" if own_label else pregnancy.section,
            contraception_weeks=None if own_label else pregnancy.contraception_weeks_after_last_dose,
            stale_after_days=None if current else window.max_age_days,
            hcg_cutoff_iu_per_l=knowledge.quantitative_hcg.negative_below_iu_per_l if uninterpreted_hcg else None,
            unconfirmed=unconfirmed,
            outside_ages_years=snapshot.age_years if outside_ages else None,
            recorded_male=recorded_male,
        )
    ]


def current_pregnancy_evidence(snapshot: PatientSnapshot, knowledge: Knowledge) -> tuple[Evidence, bool] | None:
    """The newest evidence of pregnancy not outweighed by a later negative, and whether it is inside its window."""
    now = snapshot.now
    latest_negative = max(
        (lab.effective for lab in snapshot.labs
         if lab.effective and lab.effective <= now + RESULT_CLOCK_SKEW
         and lab.result in ("negative", "not-pregnant") and lab.kind in ("hcg", "pregnancy-status")),
        default=None,
    )
    ended = _latest_outcome(snapshot, knowledge)  # a delivery or abortive outcome outweighs what came before it, too
    if ended is not None and (latest_negative is None or ended > latest_negative):
        latest_negative = ended
    candidates: list[tuple[datetime | None, Evidence]] = []
    # quantitative hCG not below the cut-off, uninterpreted; a pregnancy Condition recorded as unconfirmed
    unconfirmed: list[tuple[datetime | None, Evidence]] = []
    for lab in snapshot.labs:
        if lab.effective is None or lab.effective > now + RESULT_CLOCK_SKEW:
            continue
        if (lab.kind, lab.result) in (("pregnancy-status", "pregnant"), ("hcg", "positive")):
            candidates.append((lab.effective, lab))
        elif (lab.kind, lab.result) == ("hcg", "indeterminate"):
            unconfirmed.append((lab.effective, lab))
    for condition in snapshot.active_conditions("pregnancy"):
        candidates.append((condition.asserted, condition))
    unconfirmed += [(c.asserted, c) for c in snapshot.conditions if c.is_unconfirmed and "pregnancy" in c.kinds]
    pregnancy_days = knowledge.lookback["pregnancy-condition"].max_age_days or 0
    # Definite evidence first; an unconfirmed result speaks only when nothing definite does (then it asks to confirm),
    # and not for a patient known to be outside reproductive potential (postmenopausal limits reach 7-8 IU/L).
    for group in (candidates, unconfirmed if _may_be_of_reproductive_potential(snapshot, knowledge) else []):
        for when, item in sorted(group, key=lambda c: c[0] or now, reverse=True):
            if latest_negative is not None and when is not None and when <= latest_negative:
                continue
            if when is not None and when < now - timedelta(days=pregnancy_days) and isinstance(item, LabResult):
                continue  # a test older than a whole pregnancy says nothing about today
            current = when is None or when >= knowledge.lookback_start(_window_of(item), now)
            return item, current
    return None


def _latest_outcome(snapshot: PatientSnapshot, knowledge: Knowledge) -> datetime | None:
    """When a pregnancy last ended on record (conditions.json pregnancy_ended): a delivery, an abortive outcome or
    postpartum care as a Condition (active or resolved, not refuted), or a caesarean section done. None when none is."""
    latest_possible = snapshot.now + RESULT_CLOCK_SKEW
    dates = [c.asserted for c in snapshot.conditions
             if "pregnancy-ended" in c.kinds and not (c.is_refuted or c.is_unconfirmed) and c.asserted]
    dates += [p.when for p in snapshot.procedures
              if not p.is_planned and p.when and "pregnancy-ended" in knowledge.condition_kinds(p.codes, "")]
    return max((d for d in dates if d <= latest_possible), default=None)


def _window_of(evidence: Evidence) -> str:
    if isinstance(evidence, ConditionRecord):
        return "pregnancy-condition"
    return "hcg-test" if evidence.kind == "hcg" else "pregnancy-status-observation"


def _may_be_of_reproductive_potential(snapshot: PatientSnapshot, knowledge: Knowledge) -> bool:
    """Could be pregnant: not recorded as male (hCG is also a tumour marker), and not known to be outside the
    reproductive-potential ages of dosing.json (unknown sex or age: could be)."""
    return snapshot.gender != "male" and within_reproductive_ages(knowledge, "female", snapshot.age_years) is not False
