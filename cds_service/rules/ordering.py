"""Checks made when an mTOR inhibitor is ordered: contraception advice and the dose against the label."""

from __future__ import annotations

import functools

from cds_service.findings import BodySurface, ContraceptionFinding, DoseCheckFinding, Severity
from cds_service.knowledge import DrugRole, Knowledge
from cds_service.knowledge.records import PediatricNote
from cds_service.patient import PatientSnapshot
from cds_service.rules.common import drug_of, mosteller_bsa, within_reproductive_ages
from cds_service.rules.indication import infer_indication
from cds_service.rules.treatment_context import treatment_context

# dosing.json contraception cites the Afinitor (everolimus) and Rapamune (sirolimus) labels; the Zortress and Fyarro
# labels' own statements are not in the knowledge yet.
PRODUCTS_WITHOUT_OWN_ADVICE = frozenset({"Zortress", "Fyarro"})


def _drugs_taken(snapshot: PatientSnapshot) -> set[str | None]:
    """The mTOR drugs of the current (not draft) orders: a draft of one of them is a dose change or renewal, not a start,
    so the checks made when a drug is started (contraception advice, the label's starting dose) do not apply to it."""
    return {m.mtor_drug for m in snapshot.mtor_orders if not m.is_draft}


def check_contraception(snapshot: PatientSnapshot, knowledge: Knowledge) -> list[ContraceptionFinding]:
    """An mTOR inhibitor ordered for a patient of reproductive potential: the label's contraception advice."""
    age = snapshot.age_years
    if age is None or not within_reproductive_ages(knowledge, snapshot.gender, age):
        return []  # the knowledge defines reproductive potential by sex and age; outside it, no card
    findings = []
    taken = _drugs_taken(snapshot)
    for mtor in snapshot.mtor_orders:
        if not mtor.is_draft or drug_of(mtor) in taken:
            continue  # a dose change or renewal: counselled at the start
        if treatment_context(snapshot, knowledge, mtor).product in PRODUCTS_WITHOUT_OWN_ADVICE:
            continue  # the advice on file cites Afinitor/Rapamune: never another product's label on the card
        advice = next(
            (c for c in knowledge.contraception_advice if c.drug == drug_of(mtor) and c.sex == snapshot.gender), None
        )
        if advice:
            findings.append(
                ContraceptionFinding(severity=Severity.INFO, mtor=mtor, source=advice.source, section=advice.section,
                                     weeks=advice.weeks_after_last_dose, sex=advice.sex, age=age)
            )
    return findings


def check_dose(snapshot: PatientSnapshot, knowledge: Knowledge) -> list[DoseCheckFinding]:
    """An ordered dose that does not fit the indication's label dose (BSA-based for TSC-SEGA and seizures)."""
    findings = []
    taken = _drugs_taken(snapshot)
    for mtor in snapshot.mtor_orders:
        ordered = mtor.daily_dose_mg
        if not mtor.is_draft or ordered is None:
            continue
        drug = drug_of(mtor)
        if drug in taken:
            continue  # a titration or renewal, not a start
        if not treatment_context(snapshot, knowledge, mtor).allows_tsc_lam_rules:
            continue  # transplant/oncology: the TSC/LAM starting doses do not apply (Zortress 0.75 mg BID is a label start)
        indication = infer_indication(snapshot, knowledge, drug)
        start = next((s for s in knowledge.starting_doses if s.drug == drug and s.indication == indication.key), None)
        if start is None:
            continue
        pediatric = _pediatric_note(snapshot, knowledge, drug)
        finding = functools.partial(DoseCheckFinding, mtor=mtor, source=start.source, section=start.section,
                                    indication=indication, start=start, ordered_mg=ordered, pediatric=pediatric)
        age = snapshot.age_years
        if start.min_age_years is not None and age is not None and age < start.min_age_years:
            # The label dose is for older patients (TSC-AML: adults): never compared with a child's order, never "fits"
            findings.append(finding(severity=Severity.INFO, below_label_age_years=age))
            continue
        bsa = None
        if start.dose_mg_per_m2 is not None:
            height, weight = snapshot.latest_lab("height"), snapshot.latest_lab("weight")
            if not (height and weight and height.value and weight.value):
                findings.append(finding(severity=Severity.INFO))
                continue
            bsa = BodySurface(mosteller_bsa(height.value, weight.value), height, weight, knowledge.bsa_source)
            expected = start.dose_mg_per_m2 * bsa.bsa_m2
        else:
            assert start.dose_mg is not None  # a StartingDose has exactly one of the two (checked at load)
            expected = start.dose_mg
        evidence = (bsa.height, bsa.weight) if bsa else ()
        tolerance = knowledge.dosing["dose_check_tolerance"]["fraction"]
        fits = abs(ordered - expected) <= tolerance * expected
        if not fits and any(abs(ordered - d) <= tolerance * d for d in _adjusted_starts(snapshot, knowledge, drug, bsa)):
            continue  # a label-adjusted start with a CYP3A4 inhibitor or inducer is a label dose: never "too high"
        if fits and not pediatric:
            continue
        severity = Severity.WARNING if not fits and ordered > expected else Severity.INFO
        findings.append(finding(severity=severity, evidence=evidence, expected_mg=expected, fits=fits, bsa=bsa))
    return findings


def _pediatric_note(snapshot: PatientSnapshot, knowledge: Knowledge, drug: str) -> PediatricNote | None:
    age = snapshot.age_years
    if age is None:
        return None
    return next((p for p in knowledge.pediatric_notes if p.drug == drug and age < p.below_age_years), None)


def _adjusted_starts(snapshot: PatientSnapshot, knowledge: Knowledge, drug: str, bsa: BodySurface | None) -> list[float]:
    """Daily doses the Afinitor label prescribes instead of the usual start when a CYP3A4/P-gp perpetrator is taken
    (regimens.json afinitor-tsc-and-oncology): moderate inhibitor 2.5 mg, may increase to 5 mg (fixed dose) or
    2.5 mg/m2 (trough-guided); strong inducer 10 -> 20 mg in 5 mg steps (fixed) or 9 mg/m2 (trough-guided). Used only
    to keep such a dose from being called wrong; the numbers never appear on a card."""
    if drug != "everolimus":
        return []  # the Rapamune label gives no adjusted starting dose for LAM
    entry = next((e for e in knowledge.files["regimens.json"]["uses"] if e["key"] == "afinitor-tsc-and-oncology"), None)
    if entry is None:
        return []
    strengths = _perpetrator_strengths(snapshot, knowledge, drug)
    doses: list[float] = []
    if ("inhibitor", "moderate") in strengths:
        fixed = entry["moderate_inhibitor_fixed_dose"]["value"]
        doses += [fixed["dose_mg"], fixed["may_increase_to_mg"]]
        if bsa:
            doses.append(entry["moderate_inhibitor_tdm_start_mg_per_m2"]["value"] * bsa.bsa_m2)
    if ("inducer", "strong") in strengths:
        step = entry["strong_inducer_fixed_dose"]["value"]
        doses += [float(d) for d in range(int(step["from_mg"]), int(step["to_mg"]) + 1, int(step["increment_mg"]))]
        if bsa:
            doses.append(entry["strong_inducer_tdm_start_mg_per_m2"]["value"] * bsa.bsa_m2)
    return doses


def _perpetrator_strengths(snapshot: PatientSnapshot, knowledge: Knowledge, drug: str) -> set[tuple[str, str]]:
    """(effect, strength) of every current CYP3A4/P-gp perpetrator, as the drug's own label classifies it."""
    found = set()
    for med in snapshot.medications:
        if med.status in ("stopped", "completed", "cancelled", "entered-in-error"):
            continue
        for concept in med.concepts_with(DrugRole.CYP3A_PERPETRATOR):
            entry = knowledge.perpetrators[concept.key]
            found.add((entry.effect, entry.strength_for(drug)))
    return found
