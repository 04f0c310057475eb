"""Trough levels of the mTOR inhibitor the patient takes: too high, too low, or not checked when due."""

from __future__ import annotations

import dataclasses
from datetime import date, timedelta

from cds_service.findings import (
    DoseProposal,
    Indication,
    Severity,
    TroughHighFinding,
    TroughLowFinding,
    TroughMonitoringFinding,
)
from cds_service.knowledge import DrugRole, Knowledge, Source
from cds_service.knowledge.records import TroughLimit, TroughTarget, TroughTiming
from cds_service.patient import LOWER_BOUNDS, UPPER_BOUNDS, LabResult, MedicationOrder, PatientSnapshot
from cds_service.rules.common import (
    TRANSPLANT_PRODUCTS,
    achievable_doses,
    drug_of,
    product_label,
    product_strengths,
    proportional_dose,
    round_down_to,
    round_to_nearest,
    trough_target,
    trough_timing,
)
from cds_service.rules.indication import infer_indication
from cds_service.rules.treatment_context import TSC_LAM_USES, TreatmentContext, regimen_for, treatment_context


def check_trough_high(snapshot: PatientSnapshot, knowledge: Knowledge) -> list[TroughHighFinding]:
    findings = []
    for mtor in _one_order_per_drug(snapshot):
        drug = drug_of(mtor)
        latest = snapshot.latest_lab("drug-level", drug)
        if latest is None:
            continue
        context = treatment_context(snapshot, knowledge, mtor)
        if not context.allows_tsc_lam_rules:
            tsc_on_record = bool(snapshot.active_conditions("tsc") or snapshot.active_conditions("lam"))
            found = _context_trough_high(knowledge, mtor, latest, context, tsc_on_record)
            if found and _is_stale(snapshot, knowledge, latest):  # an old level: a recheck, nothing more
                found = dataclasses.replace(found, severity=Severity.INFO, stale=True)
            findings += [found] if found else []
            continue
        limit = knowledge.trough_limits[drug]
        if latest.value is None:
            severity = Severity.INFO  # a level we cannot read must not pass as normal
        elif latest.value > limit.upper_ng_per_ml and latest.comparator not in UPPER_BOUNDS:
            severity = Severity.WARNING  # "< 20 ng/mL" may be 3: not known to be above the limit, no card
        else:
            continue
        indication = infer_indication(snapshot, knowledge, drug)
        proposal, assumed_display, target = None, None, trough_target(knowledge, drug, indication.key)
        unsteady, stale = _drawn_before_steady_state(snapshot, knowledge, mtor, latest), _is_stale(snapshot, knowledge, latest)
        not_steady = unsteady[0] if unsteady else None
        if stale:
            severity = Severity.INFO  # an old level does not describe today: ask for a recheck, nothing more
        if latest.value is not None and indication.dosing != "fixed" and not (not_steady or stale or context.implied_only):
            # Indication unknown: propose the trough-guided dose and say so (the card names the assumption).
            assumed = indication.key or _trough_guided_indication(knowledge, drug, indication)
            proposal = _dose_proposal(mtor, latest, assumed, knowledge, lower=True)
            target = trough_target(knowledge, drug, assumed)
            if assumed != indication.key and assumed:
                assumed_display = knowledge.indications[assumed].display
        findings.append(
            TroughHighFinding(
                severity=severity, mtor=mtor, evidence=(latest,), source=limit.source, section=limit.section,
                limit=limit, indication=indication, target=target, proposal=proposal, assumed_indication=assumed_display,
                recheck=trough_timing(knowledge, drug, "dose-change"), not_steady_until=not_steady, stale=stale,
                not_steady_after=unsteady[1] if unsteady else None, context=context if context.implied_only else None,
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
        context = treatment_context(snapshot, knowledge, mtor)
        target = trough_target(knowledge, drug, indication.key) if context.allows_tsc_lam_rules else None
        if not context.allows_tsc_lam_rules and context.use == "transplant":
            target = _verified_target(knowledge, context, drug)  # Zortress kidney 3-8 ng/mL; no computed dose
        if latest is None or latest.value is None or target is None or latest.value >= target.low_ng_per_ml:
            continue
        if latest.comparator in LOWER_BOUNDS:
            continue  # "> 3 ng/mL" may be 10: not known to be below the target
        if _is_stale(snapshot, knowledge, latest):
            continue  # an old low level says nothing about today; trough-monitoring asks for a new one
        # The steady-state intervals (monitoring.json trough_timing) are the TSC/LAM labels' (Afinitor ~2 weeks, Rapamune
        # 7-14 days): never a recheck date for a transplant use, whose label sets none here (as for a high transplant level)
        unsteady = _drawn_before_steady_state(snapshot, knowledge, mtor, latest) if context.allows_tsc_lam_rules else None
        not_steady = unsteady[0] if unsteady else None
        tsc = context.allows_tsc_lam_rules and not not_steady
        findings.append(
            TroughLowFinding(
                severity=Severity.INFO, mtor=mtor, evidence=(latest,), source=target.source, section=target.section,
                target=target, indication=indication,
                proposal=_dose_proposal(mtor, latest, indication.key, knowledge, lower=False) if tsc else None,
                recheck=trough_timing(knowledge, drug, "dose-change") if context.allows_tsc_lam_rules else None,
                context=None if context.allows_tsc_lam_rules else context, not_steady_until=not_steady,
                not_steady_after=unsteady[1] if unsteady else None,
                label=_other_products_label(knowledge, target, context),
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
        if not treatment_context(snapshot, knowledge, mtor).allows_tsc_lam_rules:
            continue  # transplant/oncology: the schedule is the transplant protocol's (or none: Fyarro), not TSC/LAM's
        timing = {t.event: t for t in knowledge.trough_timing if t.drug == drug}
        latest = snapshot.latest_lab("drug-level", drug)
        due = _due_event(snapshot, mtor, timing, latest)
        if due is None:
            continue
        event, event_date, due_date, rule = due
        if not mtor.is_draft and due_date > snapshot.today:
            continue  # not due yet; a draft order gets the card now so the trough can be booked with it
        start = timing.get("start")
        ambiguous = event == "start or dose change" and start is not None and start.days_text != rule.days_text
        findings.append(
            TroughMonitoringFinding(
                severity=Severity.INFO, mtor=mtor, evidence=tuple(e for e in (latest,) if e), source=rule.source,
                section=rule.section, event=event, event_date=event_date, due_date=due_date, timing=rule,
                latest=latest, indication=indication, level_test=knowledge.level_tests[drug],
                start_timing=start if ambiguous else None,
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


def _context_trough_high(
    knowledge: Knowledge, mtor: MedicationOrder, latest: LabResult, context: TreatmentContext, tsc_on_record: bool = False
) -> TroughHighFinding | None:
    """A transplant or oncology use is plausible: the level is judged against each plausible use's own label and
    fires only when it is above every one of them. No computed dose (the Zortress and Rapamune transplant labels
    leave dose steps to the protocol), no TSC wording. A use with no known limit (Rapamune renal transplant,
    oncology, transplant of another organ) means no card."""
    drug = drug_of(mtor)
    if latest.value is None:
        return None
    candidates = context.candidates or (context.use,)
    bounds: list[tuple[float, TroughLimit, TroughTarget | None]] = []
    if tsc_on_record and not TSC_LAM_USES & set(candidates):
        # TSC or LAM on record beside the transplant: a level within the TSC/LAM limit is not called too high either
        limit = knowledge.trough_limits[drug]
        bounds.append((limit.upper_ng_per_ml, limit, None))
    unverified: TroughTarget | None = None
    for candidate in candidates:
        if candidate in TSC_LAM_USES:
            limit = knowledge.trough_limits[drug]
            bounds.append((limit.upper_ng_per_ml, limit, None))
            continue
        target, verified = _candidate_target(knowledge, context, candidate, drug)
        if target is None:
            return None  # a plausible use whose target is unknown: the level cannot be called too high
        if not verified:
            unverified = target
            continue
        bounds.append((target.high_ng_per_ml, TroughLimit(upper_ng_per_ml=target.high_ng_per_ml, source=target.source,
                                                          section=target.section), target))
    if unverified is not None:
        # The liver target (3-8 ng/mL) was read only in secondary sources: never a number on the card; above it,
        # an info card asks the transplant team to review. Only when it is the sole plausible use.
        if len(candidates) > 1 or latest.value <= unverified.high_ng_per_ml or latest.comparator in UPPER_BOUNDS:
            return None
        limit = TroughLimit(upper_ng_per_ml=unverified.high_ng_per_ml, source=unverified.source, section=unverified.section)
        return TroughHighFinding(severity=Severity.INFO, mtor=mtor, evidence=(latest,), source=unverified.source,
                                 section=unverified.section, limit=limit, indication=Indication(None, None),
                                 context=context, target_unverified=True)
    upper, limit, target = max(bounds, key=lambda b: b[0])
    if latest.value <= upper or latest.comparator in UPPER_BOUNDS:
        return None
    return TroughHighFinding(severity=Severity.WARNING, mtor=mtor, evidence=(latest,), source=limit.source,
                             section=limit.section, limit=limit, indication=Indication(None, None), target=target,
                             context=context, label=_other_products_label(knowledge, target, context))


def _other_products_label(knowledge: Knowledge, target: TroughTarget | None, context: TreatmentContext) -> Source | None:
    """The label of the product whose target judged the level, when it is not the ordered product's (Afinitor after a
    kidney transplant: Zortress's target): the card names that label. None: the usual governing label."""
    if target is None or target.product in (None, context.product):
        return None
    return product_label(knowledge, target.product)


def _candidate_target(
    knowledge: Knowledge, context: TreatmentContext, candidate: str, drug: str
) -> tuple[TroughTarget | None, bool]:
    """The governing label's trough target for one transplant use (regimens.json), and whether it is verified. Another
    product of the drug taken after a transplant (Afinitor, everolimus 10 mg) is judged by the drug's transplant label,
    as its card names that label (rules.governing_label)."""
    entry = regimen_for(knowledge, context, candidate, drug)
    if entry is None and candidate.startswith("transplant-") and drug in TRANSPLANT_PRODUCTS:
        entry = regimen_for(knowledge, context, candidate, drug, product=TRANSPLANT_PRODUCTS[drug])
    fact = (entry or {}).get("trough_target_ng_per_ml") or {}
    value = fact.get("value")
    if entry is None or not isinstance(value, dict):
        return None, False
    target = TroughTarget(drug=drug, indication=candidate, low_ng_per_ml=value["low"], high_ng_per_ml=value["high"],
                          source=fact["source"], section=fact.get("section", ""), product=entry.get("product"))
    return target, bool(fact.get("verified"))


def _verified_target(knowledge: Knowledge, context: TreatmentContext, drug: str) -> TroughTarget | None:
    """The target of a single transplant use when its label text was verified (Zortress kidney)."""
    if len(context.candidates) != 1:
        return None
    target, verified = _candidate_target(knowledge, context, context.candidates[0], drug)
    return target if verified else None


def _drawn_before_steady_state(snapshot: PatientSnapshot, knowledge: Knowledge, mtor: MedicationOrder,
                               level: LabResult) -> tuple[date, MedicationOrder] | None:
    """When the level was drawn before it could reflect the current regimen: the first day a trough does, and the
    order that sets it (the mTOR order for its start or dose change, else the interacting drug, perhaps a draft)."""
    found = _steady_state_from(snapshot, knowledge, mtor)
    return found if found and level.effective and level.effective.date() < found[0] else None


def _steady_state_from(snapshot: PatientSnapshot, knowledge: Knowledge, mtor: MedicationOrder) -> tuple[date, MedicationOrder] | None:
    """The first day a trough reflects the current regimen, and the order that sets it: the label's interval
    (monitoring.json trough_timing dose-change / interacting-drug-change) after the last start or dose change of this
    drug (a renewal at the same daily dose is not a change) or the last start of an interacting drug. None when no such
    event is dated."""
    drug = drug_of(mtor)
    events: list[tuple[date, MedicationOrder]] = []
    change = trough_timing(knowledge, drug, "dose-change")
    started = _regimen_started(snapshot, mtor)
    if change and started:
        events.append((started + timedelta(days=change.days_after), mtor))
    interacting = trough_timing(knowledge, drug, "interacting-drug-change") or change
    if interacting:
        events += [
            (o.authored_on.date() + timedelta(days=interacting.days_after), o)
            for o in snapshot.medications if o.concepts_with(DrugRole.CYP3A_PERPETRATOR) and o.authored_on
        ]
    return max(events, key=lambda event: event[0]) if events else None


def _regimen_started(snapshot: PatientSnapshot, mtor: MedicationOrder) -> date | None:
    """When the current daily dose began: follow priorPrescription, else earlier orders of the same drug by date,
    back through orders at the same daily dose (a renewal is not a change; an unknown dose counts as a change)."""
    if mtor.authored_on is None:
        return None
    orders = [o for o in (*snapshot.mtor_orders, *snapshot.order_history)
              if o.mtor_drug == mtor.mtor_drug and not o.is_draft and o.authored_on]
    by_ref = {o.ref: o for o in orders}
    started, current = mtor.authored_on, mtor
    while True:
        prior = by_ref.get(current.prior_prescription or "") or max(
            (o for o in orders if o.authored_on and started and o.authored_on < started and o is not current),
            key=lambda o: o.authored_on or started, default=None,
        )
        if prior is None or prior.authored_on is None or prior.authored_on >= started or not _same_dose(prior, mtor):
            return started.date()
        started, current = prior.authored_on, prior


def _same_dose(a: MedicationOrder, b: MedicationOrder) -> bool:
    return a.daily_dose_mg is not None and b.daily_dose_mg is not None and abs(a.daily_dose_mg - b.daily_dose_mg) < 1e-9


def _is_stale(snapshot: PatientSnapshot, knowledge: Knowledge, latest: LabResult) -> bool:
    """Older than the trough look-back window (lookback.json, project policy)."""
    window = next((w for w in knowledge.files["lookback.json"]["windows"] if w.get("evidence") == "trough"), None)
    if window is None or latest.effective is None:
        return False
    return (snapshot.today - latest.effective.date()).days > window["max_age_days"]


def _trough_guided_indication(knowledge: Knowledge, drug: str, indication: Indication) -> str | None:
    """The trough-guided indication to assume: one of several on record, else the drug's first with a target."""
    keys = [c for e in indication.evidence for c in e.kinds if c in knowledge.indications]
    candidates = [*keys, *(t.indication for t in knowledge.trough_targets if t.drug == drug)]
    return next((k for k in candidates if trough_target(knowledge, drug, k)), None)


def _dose_proposal(
    mtor: MedicationOrder, level: LabResult, indication: str | None, knowledge: Knowledge, lower: bool
) -> DoseProposal | None:
    """New daily dose by the label's proportional formula, rounded to doses the product's strengths can make. None
    when the level is a bound ("> 20 ng/mL": the formula needs the level itself) or the daily dose is unknown.

    The per-step cap and the formula's citation are the drug's own: the +5 mg cap is the Afinitor label's
    (everolimus); a drug with no titration entry cites its trough target's label section and has no cap."""
    target = trough_target(knowledge, drug_of(mtor), indication)
    strengths = product_strengths(mtor, knowledge)
    current, measured = mtor.daily_dose_mg, level.value
    if target is None or strengths is None or current is None or measured is None or measured <= 0 or level.comparator:
        return None
    if mtor.doses_per_day not in (None, 1):
        return None  # proposals are once-daily doses (the TSC/LAM labels' schedule); never change the schedule
    titration = knowledge.titrations.get(drug_of(mtor))
    cap = titration.max_increment_mg if titration else None
    aim = (target.low_ng_per_ml + target.high_ng_per_ml) / 2
    formula = raw = proportional_dose(current, aim, measured)
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
        formula_dose_mg=formula, unit_strength_mg=knowledge.mtor_products.get(mtor.product_rxnorm or "", {}).get("strength_mg"),
    )


def _one_order_per_drug(snapshot: PatientSnapshot) -> list[MedicationOrder]:
    """The order each drug's findings are about: the current one if any (a level reflects it), else the draft."""
    chosen: dict[str, MedicationOrder] = {}
    for order in sorted(snapshot.mtor_orders, key=lambda m: m.is_draft):
        chosen.setdefault(order.mtor_drug or "", order)
    return list(chosen.values())
