"""Checks made when an mTOR inhibitor is ordered: contraception advice and the dose against the label."""

from __future__ import annotations

from cds_service.findings import Finding, Severity, Topic
from cds_service.knowledge import Knowledge
from cds_service.patient import PatientSnapshot
from cds_service.rules.common import mosteller_bsa
from cds_service.rules.indication import infer_indication


def check_contraception(snapshot: PatientSnapshot, knowledge: Knowledge) -> list[Finding]:
    """An mTOR inhibitor ordered for a patient of reproductive potential: the label's contraception advice."""
    potential = knowledge.dosing["reproductive_potential"]
    age = snapshot.age_years
    low, high = potential.get(f"{snapshot.gender}_min_age_years"), potential.get(f"{snapshot.gender}_max_age_years")
    if age is None or low is None or high is None or not low <= age <= high:
        return []  # the knowledge defines reproductive potential by sex and age; outside it, no card
    findings = []
    for mtor in snapshot.mtor_orders:
        if not mtor.is_draft:
            continue
        advice = next(
            (c for c in knowledge.dosing["contraception"] if c["drug"] == mtor.mtor_drug and c["sex"] == snapshot.gender),
            None,
        )
        if advice:
            findings.append(
                Finding(Topic.CONTRACEPTION, Severity.INFO, mtor, (), advice["source"], advice.get("section", ""),
                        {"weeks": advice["weeks_after_last_dose"], "sex": snapshot.gender, "age": age})
            )
    return findings


def check_dose(snapshot: PatientSnapshot, knowledge: Knowledge) -> list[Finding]:
    """An ordered dose that does not fit the indication's label dose (BSA-based for TSC-SEGA and seizures)."""
    findings = []
    for mtor in snapshot.mtor_orders:
        if not mtor.is_draft or mtor.daily_dose_mg is None:
            continue
        indication = infer_indication(snapshot, knowledge, mtor.mtor_drug)
        start = next(
            (s for s in knowledge.dosing["starting_doses"] if s["drug"] == mtor.mtor_drug and s["indication"] == indication.key),
            None,
        )
        if start is None:
            continue
        facts = {"indication": indication, "start": start, "ordered_mg": mtor.daily_dose_mg, "pediatric": _pediatric_note(snapshot, knowledge, mtor.mtor_drug)}
        evidence = ()
        if "dose_mg_per_m2" in start:
            height, weight = snapshot.latest_lab("height"), snapshot.latest_lab("weight")
            if not (height and weight and height.value and weight.value):
                findings.append(Finding(Topic.DOSE_CHECK, Severity.INFO, mtor, (), start["source"], start.get("section", ""),
                                        facts | {"missing_measurements": True}))
                continue
            bsa = mosteller_bsa(height.value, weight.value)
            expected = start["dose_mg_per_m2"] * bsa
            facts |= {"bsa_m2": bsa, "height": height, "weight": weight, "bsa_source": knowledge.dosing["bsa"]["source"]}
            evidence = (height, weight)
        else:
            expected = start["dose_mg"]
        tolerance = knowledge.dosing["dose_check_tolerance"]["fraction"]
        if abs(mtor.daily_dose_mg - expected) <= tolerance * expected:
            if facts["pediatric"]:
                findings.append(Finding(Topic.DOSE_CHECK, Severity.INFO, mtor, evidence, start["source"], start.get("section", ""),
                                        facts | {"expected_mg": expected, "fits": True}))
            continue
        severity = Severity.WARNING if mtor.daily_dose_mg > expected else Severity.INFO
        findings.append(Finding(Topic.DOSE_CHECK, severity, mtor, evidence, start["source"], start.get("section", ""),
                                facts | {"expected_mg": expected, "fits": False}))
    return findings


def _pediatric_note(snapshot: PatientSnapshot, knowledge: Knowledge, drug: str):
    age = snapshot.age_years
    if age is None:
        return None
    return next((p for p in knowledge.dosing["pediatric"] if p["drug"] == drug and age < p["below_age_years"]), None)
