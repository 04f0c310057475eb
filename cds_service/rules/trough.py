"""Trough levels of the mTOR inhibitor the patient takes: too high, too low, or not checked when due."""

from __future__ import annotations

from datetime import date, timedelta

from cds_service.findings import (
    DoseProposal,
    Indication,
    Severity,
    TroughHighFinding,
    TroughLowFinding,
    TroughMonitoringFinding,
)
from cds_service.knowledge import DrugRole, Knowledge
from cds_service.knowledge.records import TroughTiming
from cds_service.patient import LabResult, MedicationOrder, PatientSnapshot
from cds_service.rules.common import (
    achievable_doses,
    drug_of,
    product_strengths,
    proportional_dose,
    round_down_to,
    round_to_nearest,
    trough_target,
    trough_timing,
)
from cds_service.rules.indication import infer_indication


def check_trough_high(snapshot: PatientSnapshot, knowledge: Knowledge) -> list[TroughHighFinding]:
    findings = []
    for mtor in _one_order_per_drug(snapshot):
        drug = drug_of(mtor)
        latest = snapshot.latest_lab("drug-level", drug)
        if latest is None:
            continue
        limit = knowledge.trough_limits[drug]
        if latest.value is None:
            severity = Severity.INFO  # a level we cannot read must not pass as normal
        elif latest.value > limit.upper_ng_per_ml:
            severity = Severity.WARNING
        else:
            continue
        indication = infer_indication(snapshot, knowledge, drug)
        proposal, assumed_display, target = None, None, trough_target(knowledge, drug, indication.key)
        if latest.value is not None and indication.dosing != "fixed":
            # Indication unknown: propose the trough-guided dose and say so (the card names the assumption).
            assumed = indication.key or _trough_guided_indication(knowledge, drug, indication)
            proposal = _dose_proposal(mtor, latest.value, assumed, knowledge, lower=True)
            target = trough_target(knowledge, drug, assumed)
            if assumed != indication.key and assumed:
                assumed_display = knowledge.indications[assumed]["display"]
        findings.append(
            TroughHighFinding(
                severity=severity, mtor=mtor, evidence=(latest,), source=limit.source, section=limit.section,
                limit=limit, indication=indication, target=target, proposal=proposal, assumed_indication=assumed_display,
                recheck=trough_timing(knowledge, drug, "dose-change"),
            )
        )
    return findings


def check_trough_low(snapshot: PatientSnapshot, knowledge: Knowledge) -> list[TroughLowFinding]:
    """Below the target range of a trough-guided indication on record (fixed-dose use has no target)."""
    findings = []
    for mtor in _one_order_per_drug(snapshot):
        drug = drug_of(mtor)
        latest = snapshot.latest_lab("drug-level", drug)
        indication = infer_indication(snapshot, knowledge, drug)
        target = trough_target(knowledge, drug, indication.key)
        if latest is None or latest.value is None or target is None or latest.value >= target.low_ng_per_ml:
            continue
        findings.append(
            TroughLowFinding(
                severity=Severity.INFO, mtor=mtor, evidence=(latest,), source=target.source, section=target.section,
                target=target, indication=indication,
                proposal=_dose_proposal(mtor, latest.value, indication.key, knowledge, lower=False),
                recheck=trough_timing(knowledge, drug, "dose-change"),
            )
        )
    return findings


def check_trough_monitoring(snapshot: PatientSnapshot, knowledge: Knowledge) -> list[TroughMonitoringFinding]:
    """A trough is due: after a start, dose change or interacting-drug change with none since (as long after as the
    label says); or routinely."""
    if "observations" in snapshot.unavailable:
        return []  # we cannot tell "no trough" from "could not look"; the incomplete-checks card says so
    findings = []
    for mtor in _one_order_per_drug(snapshot):
        drug = drug_of(mtor)
        indication = infer_indication(snapshot, knowledge, drug)
        if trough_target(knowledge, drug, indication.key) is None:
            continue  # fixed-dose or unknown use: the label sets no trough schedule
        timing = {t.event: t for t in knowledge.trough_timing if t.drug == drug}
        latest = snapshot.latest_lab("drug-level", drug)
        due = _due_event(snapshot, mtor, timing, latest)
        if due is None:
            continue
        event, event_date, due_date, rule = due
        if not mtor.is_draft and due_date > snapshot.today:
            continue  # not due yet; a draft order gets the card now so the trough can be booked with it
        findings.append(
            TroughMonitoringFinding(
                severity=Severity.INFO, mtor=mtor, evidence=tuple(e for e in (latest,) if e), source=rule.source,
                section=rule.section, event=event, event_date=event_date, due_date=due_date, timing=rule,
                latest=latest, indication=indication, level_test=knowledge.level_tests[drug],
            )
        )
    return findings


def _due_event(
    snapshot: PatientSnapshot, mtor: MedicationOrder, timing: dict[str, TroughTiming], latest: LabResult | None
) -> tuple[str, date, date, TroughTiming] | None:
    today = snapshot.today
    last_trough = latest.effective.date() if latest and latest.effective else None
    events: list[tuple[str, date, TroughTiming]] = []
    if mtor.is_draft and "start" in timing:
        events.append(("start", today, timing["start"]))
    elif mtor.authored_on and "start" in timing:
        events.append(("start or dose change", mtor.authored_on.date(), timing.get("dose-change", timing["start"])))
    change = timing.get("interacting-drug-change")
    if change:
        for order in snapshot.medications:
            if order.concepts_with(DrugRole.CYP3A_PERPETRATOR) and order.authored_on:
                events.append((f"{order.text} started", order.authored_on.date(), change))
    hepatic = timing.get("hepatic-change")
    if hepatic:
        for condition in snapshot.active_conditions("hepatic-impairment"):
            if condition.asserted:
                events.append(("hepatic impairment recorded", condition.asserted.date(), hepatic))
    for event, when, rule in sorted(events, key=lambda e: e[1], reverse=True):
        if last_trough is None or last_trough < when:
            return event, when, when + timedelta(days=rule.days_after), rule
    routine = timing.get("routine")
    if routine and routine.interval_days and last_trough and (today - last_trough).days > routine.interval_days:
        return "routine", last_trough, last_trough + timedelta(days=routine.interval_days), routine
    return None


def _trough_guided_indication(knowledge: Knowledge, drug: str, indication: Indication) -> str | None:
    """The trough-guided indication to assume: one of several on record, else the drug's first with a target."""
    keys = [c for e in indication.evidence for c in e.kinds if c in knowledge.indications]
    candidates = [*keys, *(t.indication for t in knowledge.trough_targets if t.drug == drug)]
    return next((k for k in candidates if trough_target(knowledge, drug, k)), None)


def _dose_proposal(
    mtor: MedicationOrder, measured: float, indication: str | None, knowledge: Knowledge, lower: bool
) -> DoseProposal | None:
    """New daily dose by the label's proportional formula, rounded to doses the product's strengths can make.

    The per-step cap and the formula's citation are the drug's own: the +5 mg cap is the Afinitor label's
    (everolimus); a drug with no titration entry cites its trough target's label section and has no cap."""
    target = trough_target(knowledge, drug_of(mtor), indication)
    strengths = product_strengths(mtor, knowledge)
    current = mtor.daily_dose_mg
    if target is None or strengths is None or current is None or measured <= 0:
        return None
    titration = knowledge.titrations.get(drug_of(mtor))
    cap = titration.max_increment_mg if titration else None
    aim = (target.low_ng_per_ml + target.high_ng_per_ml) / 2
    raw = proportional_dose(current, aim, measured)
    if not lower and cap is not None:
        raw = min(raw, current + cap)
    doses = achievable_doses(strengths.strengths_mg)
    proposed = round_down_to(doses, raw) if lower else round_to_nearest(doses, raw)
    if proposed is not None and abs(proposed - current) < 1e-9:
        proposed = None
    return DoseProposal(
        current_dose_mg=current, aim_ng_per_ml=aim, raw_dose_mg=raw,
        formula_source=titration.source if titration else target.source,
        max_increment_mg=cap if not lower else None, proposed_dose_mg=proposed, product=strengths.product,
    )


def _one_order_per_drug(snapshot: PatientSnapshot) -> list[MedicationOrder]:
    """The order each drug's findings are about: the current one if any (a level reflects it), else the draft."""
    chosen: dict[str, MedicationOrder] = {}
    for order in sorted(snapshot.mtor_orders, key=lambda m: m.is_draft):
        chosen.setdefault(order.mtor_drug or "", order)
    return list(chosen.values())
