"""Findings -> CDS Hooks cards. All wording lives here: summaries, Markdown details, suggestions, override reasons.

One card per topic per call, the most severe finding first; a card's details list every finding of its topic.
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Callable, Iterable
from datetime import timedelta
from typing import Any

from cds_service.findings import TOPIC_SYSTEM, Finding, Severity, Topic
from cds_service.knowledge import Source
from fhir.resources.R4B.medicationrequest import MedicationRequest
from fhir.resources.R4B.servicerequest import ServiceRequest

from cds_service.patient import LabResult, MedicationOrder, PatientSnapshot, ProcedureEvent

OVERRIDE_SYSTEM = "https://mtor-cds.org/fhir/CodeSystem/override-reason"
SUMMARY_MAX = 139
_DATA_LABELS = {
    "patient": "demographics (Patient)",
    "medications": "current medications (all, or some that could not be identified or fetched)",
    "observations": "lab results (trough levels, pregnancy tests, lipids, height and weight)",
    "conditions": "conditions (pregnancy, indication, hepatic impairment, infection)",
    "procedures": "procedures (recent or planned surgery)",
    "serviceRequests": "service requests (planned surgery)",
    "appointments": "appointments (planned surgery)",
}
_TOPIC_TITLES = {
    Topic.CYP3A4_INTERACTION: "CYP3A4/P-gp interaction",
    Topic.LIVE_VACCINE: "Live vaccine",
    Topic.PREGNANCY: "Pregnancy",
    Topic.SURGERY_TIMING: "Surgery timing",
    Topic.TROUGH_HIGH: "Trough level above target",
    Topic.TROUGH_LOW: "Trough level below target",
    Topic.TROUGH_MONITORING: "Trough level due",
    Topic.LIPIDS: "Lipids",
    Topic.HEPATIC_IMPAIRMENT: "Hepatic impairment",
    Topic.INFECTION: "Infection or pneumonitis",
    Topic.ANGIOEDEMA: "Angioedema risk (ACE inhibitor)",
    Topic.CONTRACEPTION: "Contraception",
    Topic.DOSE_CHECK: "Dose check",
    Topic.CHECKS_INCOMPLETE: "Safety checks incomplete",
}
_OVERRIDE_REASONS = {
    Topic.CYP3A4_INTERACTION: [
        ("benefit-outweighs-risk", "Benefit outweighs risk; trough levels will be monitored"),
        ("dose-adjusted", "Dose already adjusted as the label advises"),
        ("not-taking", "Patient no longer takes the interacting product"),
    ],
    Topic.LIVE_VACCINE: [
        ("benefit-outweighs-risk", "Benefit outweighs risk after specialist review"),
        ("mtor-stopped", "mTOR inhibitor has been stopped"),
    ],
    Topic.PREGNANCY: [
        ("not-pregnant", "Patient is not pregnant (record out of date)"),
        ("specialist-decision", "Continued after specialist review of risks"),
    ],
    Topic.SURGERY_TIMING: [
        ("already-held", "mTOR inhibitor already withheld"),
        ("minor-procedure", "Minor procedure; wound-healing risk accepted"),
        ("surgery-rescheduled", "Surgery cancelled or rescheduled"),
    ],
    Topic.TROUGH_HIGH: [
        ("dose-adjusted", "Dose already adjusted"),
        ("not-a-trough", "Sample was not a trough (timed after the dose)"),
    ],
    Topic.TROUGH_LOW: [
        ("dose-adjusted", "Dose already adjusted"),
        ("not-a-trough", "Sample was not a trough (timed after the dose)"),
        ("adequate-response", "Adequate clinical response at this level"),
    ],
    Topic.TROUGH_MONITORING: [
        ("already-ordered", "Trough level already ordered"),
        ("drawn-elsewhere", "Trough measured at another laboratory"),
    ],
    Topic.LIPIDS: [
        ("being-managed", "Lipids already being managed"),
        ("already-ordered", "Lipid panel already ordered"),
    ],
    Topic.HEPATIC_IMPAIRMENT: [
        ("dose-adjusted", "Dose already adjusted for hepatic function"),
        ("resolved", "Hepatic impairment has resolved"),
    ],
    Topic.INFECTION: [
        ("already-held", "mTOR inhibitor already held"),
        ("resolved", "Infection or pneumonitis has resolved"),
        ("specialist-decision", "Continued after specialist review"),
    ],
    Topic.ANGIOEDEMA: [
        ("benefit-outweighs-risk", "Benefit outweighs risk; patient counselled"),
        ("tolerated", "Combination already tolerated"),
    ],
    Topic.CONTRACEPTION: [
        ("counselled", "Patient already counselled"),
        ("not-of-reproductive-potential", "Patient is not of reproductive potential"),
    ],
    Topic.DOSE_CHECK: [
        ("intended", "Dose intended (e.g. interaction, tolerability)"),
        ("measurements-outdated", "Height or weight on record is out of date"),
    ],
}


def render_cards(findings: list[Finding], snapshot: PatientSnapshot, unchecked_note: str | None = None) -> list[dict]:
    """One card per topic, most severe first; plus an info card when some checks could not run."""
    by_topic: dict[Topic, list[Finding]] = {}
    for finding in findings:
        by_topic.setdefault(finding.topic, []).append(finding)
    cards = []
    for topic, topic_findings in by_topic.items():
        topic_findings.sort(key=lambda f: f.severity, reverse=True)
        cards.append(_RENDERERS[topic](topic_findings, snapshot))
    if unchecked_note:
        cards.append(_incomplete_card(unchecked_note))
    order = {indicator: i for i, indicator in enumerate(("critical", "warning", "info"))}
    cards.sort(key=lambda c: order[c["indicator"]])
    return [_without_empty(card) for card in cards]


def unchecked_note(snapshot: PatientSnapshot, fhir_server_refused: bool) -> str | None:
    """Markdown naming what could not be checked, or None when every check ran on complete data."""
    lines = [f"- {_DATA_LABELS.get(key, key)}" for key in snapshot.unavailable]
    if snapshot.skipped_resources:
        lines.append(f"- {snapshot.skipped_resources} resource(s) that are not valid FHIR were skipped")
    if not lines:
        return None
    why = " The EHR's FHIR server is not on this service's allowlist." if fhir_server_refused else ""
    return (
        "These data could not be obtained or read, so the checks that need them did not run:" + why + "\n\n"
        + "\n".join(lines)
        + "\n\nA missing card is **not** an all-clear for these checks: review them in the chart."
    )


# --- one renderer per topic ---------------------------------------------------------------------


def _interaction_card(findings: list[Finding], snapshot: PatientSnapshot) -> dict:
    top = findings[0]
    facts = top.facts
    verb = "raises" if facts["effect"] == "inhibitor" else "lowers"
    summary = (
        f"{_cap(facts['perpetrator'])} with {top.mtor.mtor_drug}: {facts['strength']} CYP3A4/P-gp "
        f"{facts['effect']}, {verb} {top.mtor.mtor_drug} levels"
    )
    lines = []
    for f in findings:
        o: MedicationOrder = f.evidence[0]
        lines.append(
            f"- **{o.text}** ({_order_state(o)}, `{o.ref}`) is a **{f.facts['strength']} CYP3A4/P-gp "
            f"{f.facts['effect']}**; with **{f.mtor.text}** ({_order_state(f.mtor)}, `{f.mtor.ref}`) it "
            f"{'raises' if f.facts['effect'] == 'inhibitor' else 'lowers'} {f.mtor.mtor_drug} exposure."
        )
        for advice in f.facts["advice"]:
            scope = _INDICATION_SCOPE.get(advice.get("indication"), "")
            lines.append(f"  - {scope}{advice['action']} _({_cite(advice['source'], advice.get('section'))})_")
        if not f.facts["advice"]:
            lines.append("  - The label gives no specific dose advice for this combination; check the trough level.")
        lines.append(f"  - Classification: {_cite(f.facts['classification_source'])}.")
    suggestions = _removal_suggestions(
        [f.evidence[0] for f in findings if f.evidence[0].is_draft]
        + [f.mtor for f in findings if f.mtor.is_draft and not f.evidence[0].is_draft]
    )
    due = next((f for f in findings if f.facts.get("trough_due")), None)
    if due is not None:
        when, rule = due.facts["trough_due"]
        lines.append(f"\nIf the combination is kept, recheck the {due.mtor.mtor_drug} trough on or after **{when.isoformat()}** "
                     f"_({_cite(rule['source'], rule.get('section'))})_.")
        suggestions.append(_trough_order_suggestion(snapshot, due.mtor, due.mtor.mtor_drug, when, due.facts["level_test"]))
        for s in suggestions[:-1]:
            s["isRecommended"] = False  # removing the drug and rechecking the trough are alternatives
    return _card(Topic.CYP3A4_INTERACTION, top, _summary(summary, len(findings)), "\n".join(lines), suggestions)


_INDICATION_SCOPE = {
    "fixed-dose": "TSC-AML and other fixed-dose use: ",
    "tdm": "TSC-SEGA and TSC seizures (trough-guided dosing): ",
}


def _live_vaccine_card(findings: list[Finding], snapshot: PatientSnapshot) -> dict:
    top = findings[0]
    drug = top.mtor.mtor_drug
    if top.facts["ambiguous"]:
        summary = f"{_cap(top.facts['vaccine'])} may be a live vaccine; patient on {drug}: check the product"
    else:
        summary = f"Live vaccine ({top.facts['vaccine']}) ordered for a patient on {drug}: avoid"
    lines = []
    for f in findings:
        order: MedicationOrder = f.evidence[0]
        kind = "may be a live vaccine (the record does not say which product)" if f.facts["ambiguous"] else "is a live attenuated vaccine"
        lines.append(f"- **{order.text}** ({_order_state(order)}, `{order.ref}`) {kind}.")
    lines.append(
        f"\nPatient is taking or being started on **{top.mtor.text}** (`{top.mtor.ref}`). "
        f"Label: \"{top.facts['statement']}\" _({_cite(top.source, top.section)})_"
    )
    lines.append("\nCancel the live vaccine order, or confirm with the prescriber of the mTOR inhibitor first.")
    suggestions = _removal_suggestions([f.evidence[0] for f in findings if f.evidence[0].is_draft])
    return _card(Topic.LIVE_VACCINE, top, _summary(summary, len(findings)), "\n".join(lines), suggestions)


def _pregnancy_card(findings: list[Finding], snapshot: PatientSnapshot) -> dict:
    top = findings[0]
    drug = top.mtor.mtor_drug
    evidence = top.evidence[0]
    summary = f"Pregnancy on record while {'ordering' if top.mtor.is_draft else 'taking'} {drug}: it can cause fetal harm"
    lines = [f"- Evidence of pregnancy: {_describe(evidence)}.",
             f"- mTOR inhibitor: **{top.mtor.text}** ({_order_state(top.mtor)}, `{top.mtor.ref}`)."]
    lines.append(f"\nThe label warns that {drug} can cause fetal harm _({_cite(top.source, top.section)})_.")
    weeks = top.facts.get("contraception_weeks")
    if weeks:
        lines.append(f"Females of reproductive potential should use effective contraception during treatment and for {weeks} weeks after the last dose.")
    lines.append("\nConfirm pregnancy status and review whether to start or continue the mTOR inhibitor with the patient and prescriber.")
    suggestions = _removal_suggestions([top.mtor] if top.mtor.is_draft else [])
    return _card(Topic.PREGNANCY, top, _summary(summary, 1), "\n".join(lines), suggestions)


def _surgery_card(findings: list[Finding], snapshot: PatientSnapshot) -> dict:
    top = findings[0]
    drug = top.mtor.mtor_drug
    facts = top.facts
    if facts["kind"] == "planned":
        summary = f"Surgery in {facts['days']} day(s): withhold {drug} at least {facts['withhold_before_days']} days before"
    else:
        summary = f"{_cap(drug)} within {facts['avoid_after_major_days']} days of surgery: wait for wound healing"
    lines = []
    for f in findings:
        e: ProcedureEvent = f.evidence[0]
        d = e.when.date()
        hold_from = d - timedelta(days=f.facts["withhold_before_days"])
        resume = d + timedelta(days=f.facts["avoid_after_major_days"])
        if f.facts["kind"] == "planned":
            lines.append(f"- **{e.text}** (`{e.ref}`) is planned for **{d.isoformat()}**: hold {f.mtor.mtor_drug} from "
                         f"**{hold_from.isoformat()}**; after major surgery resume no earlier than **{resume.isoformat()}** and only once the wound has healed.")
        else:
            lines.append(f"- **{e.text}** (`{e.ref}`) was performed on **{d.isoformat()}**; if it was major surgery, do not give "
                         f"{f.mtor.mtor_drug} before **{resume.isoformat()}** and until the wound has healed.")
    lines.append(f"\nmTOR inhibitor: **{top.mtor.text}** ({_order_state(top.mtor)}, `{top.mtor.ref}`). "
                 f"Impaired wound healing: {top.section} _({_cite(top.source)})_.")
    suggestions = _removal_suggestions([top.mtor] if top.mtor.is_draft and facts["kind"] == "recent" else [])
    return _card(Topic.SURGERY_TIMING, top, _summary(summary, len(findings)), "\n".join(lines), suggestions)


def _trough_card(findings: list[Finding], snapshot: PatientSnapshot) -> dict:
    top = findings[0]
    lab: LabResult = top.evidence[0]
    drug = top.facts["drug"]
    limit = top.facts["limit_ng_per_ml"]
    date = lab.effective.date().isoformat()
    if lab.value is None:
        summary = f"Latest {drug} level ({date}) could not be read: unit {lab.unreadable_unit}"
        lines = [f"- The most recent {drug} level, `{lab.ref}` on {date}, reads **{lab.value_as_written or lab.unreadable_unit}**, "
                 f"which cannot be converted to ng/mL. Check it against the {limit} ng/mL limit by hand."]
        return _card(Topic.TROUGH_HIGH, top, _summary(summary, 1), "\n".join(lines), [])
    summary = f"{_cap(drug)} trough {lab.value:.3g} ng/mL on {date} is above the {limit:g} ng/mL limit"
    lines = [_level_line(lab, drug), f"- Order: **{top.mtor.text}** ({_order_state(top.mtor)}, `{top.mtor.ref}`).",
             f"\nThe label's trough target is 5-{limit:g} ng/mL ({top.section}; {_cite(top.source)})."]
    assumed = top.facts.get("assumed_indication")
    if assumed and "proposed_dose_mg" in top.facts:
        lines.append(f"Indication: {_indication_text(top.facts['indication'])}. The dose below assumes trough-guided use "
                     f"({assumed}); it does not apply to fixed-dose TSC-AML, where the label sets no trough target.")
    lines += _dose_lines(top, "reduce")
    lines.append("Recheck the trough about 2 weeks after the change; confirm the sample was drawn just before a dose.")
    return _card(Topic.TROUGH_HIGH, top, _summary(summary, 1), "\n".join(lines), _dose_suggestions(top))


def _trough_low_card(findings: list[Finding], snapshot: PatientSnapshot) -> dict:
    top = findings[0]
    lab: LabResult = top.evidence[0]
    drug, target = top.facts["drug"], top.facts["target"]
    low, high = target["low_ng_per_ml"], target["high_ng_per_ml"]
    summary = f"{_cap(drug)} trough {lab.value:.3g} ng/mL ({lab.effective.date().isoformat()}) is below the {low:g}-{high:g} ng/mL target"
    lines = [_level_line(lab, drug), f"- Order: **{top.mtor.text}** ({_order_state(top.mtor)}, `{top.mtor.ref}`).",
             f"- Indication: {_indication_text(top.facts['indication'])}; target {low:g}-{high:g} ng/mL "
             f"({_cite(top.source, top.section)}).", ""]
    lines += _dose_lines(top, "increase")
    lines.append("Check adherence and interacting drugs first; recheck the trough about 2 weeks after any change.")
    return _card(Topic.TROUGH_LOW, top, _summary(summary, 1), "\n".join(lines), _dose_suggestions(top))


def _trough_monitoring_card(findings: list[Finding], snapshot: PatientSnapshot) -> dict:
    top = findings[0]
    facts = top.facts
    drug, due = facts["drug"], facts["due_date"]
    latest: LabResult | None = facts["latest"]
    if due > snapshot.today:
        summary = f"Plan a trough level of {drug} around {due.isoformat()}, about 2 weeks after starting"
    else:
        summary = f"{_cap(drug)} trough due since {due.isoformat()} ({facts['event']} on {facts['event_date'].isoformat()})"
    last = (f"the last trough was on {latest.effective.date().isoformat()} (`{latest.ref}`)" if latest else "no trough is on record")
    lines = [f"- **{top.mtor.text}** ({_order_state(top.mtor)}, `{top.mtor.ref}`); {last}.",
             f"- Event: {facts['event']} on {facts['event_date'].isoformat()}; the label asks for a trough about "
             f"{(due - facts['event_date']).days} days later _({_cite(top.source, top.section)})_.",
             f"- Indication: {_indication_text(facts['indication'])}."]
    order_date = max(due, snapshot.today)
    suggestion = _trough_order_suggestion(snapshot, top.mtor, drug, order_date, facts["level_test"])
    return _card(Topic.TROUGH_MONITORING, top, _summary(summary, 1), "\n".join(lines), [suggestion])


def _lipids_card(findings: list[Finding], snapshot: PatientSnapshot) -> dict:
    top = findings[0]
    drug = top.mtor.mtor_drug
    if "missing_panel_days" in top.facts:
        last = top.facts["last"]
        when = f"the last one was on {last.effective.date().isoformat()}" if last else "none is on record"
        summary = f"No lipid panel in the last {top.facts['missing_panel_days']} days while on {drug}"
        detail = (f"The label asks to monitor lipids before and periodically during treatment; {when}. "
                  f"Order a fasting lipid panel. _(Interval: {_cite(top.source)})_")
        return _card(Topic.LIPIDS, top, _summary(summary, 1), detail, [])
    lab: LabResult = top.evidence[0]
    summary = (f"{_cap(top.facts['analyte'])} {lab.value:.0f} mg/dL ({lab.effective.date().isoformat()}) on {drug}: "
               f"CTCAE grade {top.facts['grade']}")
    lines = []
    for f in findings:
        lab = f.evidence[0]
        written = f" (reported as {lab.value_as_written})" if not lab.value_as_written.lower().endswith("mg/dl") else ""
        lines.append(f"- Latest {f.facts['analyte']}: **{lab.value:.0f} mg/dL**{written} on {lab.effective.date().isoformat()} "
                     f"(`{lab.ref}`): CTCAE v5 grade {f.facts['grade']} _({_cite(f.facts['grade_source'])})_.")
        lines.append(f"  - {f.facts['action']} _({_cite(f.source, f.section)})_")
    return _card(Topic.LIPIDS, top, _summary(summary, len(findings)), "\n".join(lines), [])


def _hepatic_card(findings: list[Finding], snapshot: PatientSnapshot) -> dict:
    top = findings[0]
    drug = top.mtor.mtor_drug
    cp = top.facts["child_pugh"]
    summary = f"Hepatic impairment{f' (Child-Pugh {cp})' if cp else ''} on record: {drug} dose needs adjusting"
    conditions = ", ".join(f"**{c.text}** (`{c.ref}`)" for c in top.evidence)
    lines = [f"- On record: {conditions}.", f"- Order: **{top.mtor.text}** ({_order_state(top.mtor)}, `{top.mtor.ref}`)"
             + (f", {top.mtor.daily_dose_mg:g} mg/day." if top.mtor.daily_dose_mg else "."),
             f"- Indication: {_indication_text(top.facts['indication'])}.", "", "Label dose:"]
    for d in top.facts["doses"]:
        dose = (f"{d['dose_mg']:g} mg daily" if "dose_mg" in d
                else f"{d['dose_mg_per_m2']:g} mg/m² daily" if "dose_mg_per_m2" in d else d.get("action", "see the label"))
        scope = {"fixed": " (fixed-dose use)", "tdm": " (trough-guided use)"}.get(d.get("dosing"), "")
        note = f"; {d['note']}" if d.get("note") and "UNVERIFIED" not in d["note"] else ""
        lines.append(f"- Child-Pugh {d['child_pugh']}{scope}: {dose}{note} _({_cite(d['source'], d.get('section'))})_")
    if not top.facts["doses"]:
        lines.append("- The knowledge base has no label dose for this case; review the label.")
    if not cp:
        lines.append("\nThe Child-Pugh class is not on record: the dose depends on it.")
    if top.facts["advice"]:
        lines.append(f"\n{top.facts['advice']['text']} _({_cite(top.facts['advice']['source'], top.facts['advice'].get('section'))})_")
    return _card(Topic.HEPATIC_IMPAIRMENT, top, _summary(summary, 1), "\n".join(lines), [])


def _infection_card(findings: list[Finding], snapshot: PatientSnapshot) -> dict:
    top = findings[0]
    drug = top.mtor.mtor_drug
    what = "Non-infectious pneumonitis" if top.facts["kind"] == "pneumonitis" else "Active severe infection"
    summary = f"{what} on record while on {drug}: review whether to hold it"
    lines = []
    for f in findings:
        conditions = ", ".join(f"**{c.text}** (`{c.ref}`)" for c in f.evidence)
        lines.append(f"- {conditions}: {f.facts['advice']['text']} _({_cite(f.source, f.section)})_")
    lines.append(f"\nOrder: **{top.mtor.text}** ({_order_state(top.mtor)}, `{top.mtor.ref}`).")
    return _card(Topic.INFECTION, top, _summary(summary, len(findings)), "\n".join(lines), [])


def _angioedema_card(findings: list[Finding], snapshot: PatientSnapshot) -> dict:
    top = findings[0]
    summary = f"{_cap(top.facts['ace_inhibitor'])} with everolimus: higher risk of angioedema"
    lines = [f"- **{f.evidence[0].text}** ({_order_state(f.evidence[0])}, `{f.evidence[0].ref}`) with **{f.mtor.text}** "
             f"({_order_state(f.mtor)}, `{f.mtor.ref}`)." for f in findings]
    lines.append(f"\n{top.facts['statement']} _({_cite(top.source, top.section)})_")
    lines.append("Tell the patient to report swelling of the face, lips, tongue or throat at once.")
    suggestions = _removal_suggestions([f.evidence[0] for f in findings if f.evidence[0].is_draft])
    return _card(Topic.ANGIOEDEMA, top, _summary(summary, len(findings)), "\n".join(lines), suggestions)


def _contraception_card(findings: list[Finding], snapshot: PatientSnapshot) -> dict:
    top = findings[0]
    drug, weeks = top.mtor.mtor_drug, top.facts["weeks"]
    who = "Females" if top.facts["sex"] == "female" else "Males with female partners"
    summary = f"{_cap(drug)} ordered: effective contraception during treatment and {weeks} weeks after the last dose"
    detail = (f"{who} of reproductive potential should use effective contraception during treatment with {drug} and for "
              f"**{weeks} weeks** after the last dose _({_cite(top.source, top.section)})_. The patient is "
              f"{top.facts['age']:.0f} years old. Confirm pregnancy status before starting and discuss contraception.")
    return _card(Topic.CONTRACEPTION, top, _summary(summary, 1), detail, [])


def _dose_card(findings: list[Finding], snapshot: PatientSnapshot) -> dict:
    top = findings[0]
    facts = top.facts
    drug, start = top.mtor.mtor_drug, facts["start"]
    label_dose = (f"{start['dose_mg_per_m2']:g} mg/m² once daily" if "dose_mg_per_m2" in start else f"{start['dose_mg']:g} mg once daily")
    lines = [f"- Ordered: **{top.mtor.text}** (`{top.mtor.ref}`), **{facts['ordered_mg']:g} mg/day**.",
             f"- Indication: {_indication_text(facts['indication'])}; label starting dose {label_dose} "
             f"_({_cite(top.source, top.section)})_."]
    if facts.get("missing_measurements"):
        summary = f"Cannot check the {drug} starting dose: no recent height and weight on record"
        lines.append("- The dose is per m² of body surface area: record height and weight to check it.")
    else:
        if "bsa_m2" in facts:
            h, w = facts["height"], facts["weight"]
            lines.append(f"- Body surface area (Mosteller) **{facts['bsa_m2']:.2f} m²** from height {h.value:.0f} cm "
                         f"({h.effective.date().isoformat()}) and weight {w.value:.1f} kg ({w.effective.date().isoformat()}) "
                         f"_({_cite(facts['bsa_source'])})_.")
        lines.append(f"- Label dose for this patient: about **{facts['expected_mg']:.1f} mg/day**, then adjust by trough where the label says so.")
        if facts["fits"]:
            summary = f"{_cap(drug)} dose fits the label; note the infection risk in young children"
        elif facts["ordered_mg"] > facts["expected_mg"]:
            summary = f"{_cap(drug)} {facts['ordered_mg']:g} mg/day is above the label dose (~{facts['expected_mg']:.1f} mg/day)"
        else:
            summary = f"{_cap(drug)} {facts['ordered_mg']:g} mg/day is below the label dose (~{facts['expected_mg']:.1f} mg/day)"
    if facts.get("pediatric"):
        p = facts["pediatric"]
        lines.append(f"\nPatient is under {p['below_age_years']:g}: {p['note_text']} _({_cite(p['source'], p.get('section'))})_")
    return _card(Topic.DOSE_CHECK, top, _summary(summary, 1), "\n".join(lines), [])


def _incomplete_card(note: str) -> dict:
    return {
        "uuid": _new_uuid(),
        "summary": "Some mTOR inhibitor safety checks could not be run: data unavailable",
        "detail": note,
        "indicator": "info",
        "source": {
            "label": "mtor-cds data access (CDS Hooks 2.0: providing FHIR resources to a CDS service)",
            "url": "https://cds-hooks.hl7.org/2.0/#providing-fhir-resources-to-a-cds-service",
            "topic": {"system": TOPIC_SYSTEM, "code": Topic.CHECKS_INCOMPLETE.value, "display": _TOPIC_TITLES[Topic.CHECKS_INCOMPLETE]},
        },
    }


_RENDERERS: dict[Topic, Callable[[list[Finding], PatientSnapshot], dict]] = {
    Topic.CYP3A4_INTERACTION: _interaction_card,
    Topic.LIVE_VACCINE: _live_vaccine_card,
    Topic.PREGNANCY: _pregnancy_card,
    Topic.SURGERY_TIMING: _surgery_card,
    Topic.TROUGH_HIGH: _trough_card,
    Topic.TROUGH_LOW: _trough_low_card,
    Topic.TROUGH_MONITORING: _trough_monitoring_card,
    Topic.LIPIDS: _lipids_card,
    Topic.HEPATIC_IMPAIRMENT: _hepatic_card,
    Topic.INFECTION: _infection_card,
    Topic.ANGIOEDEMA: _angioedema_card,
    Topic.CONTRACEPTION: _contraception_card,
    Topic.DOSE_CHECK: _dose_card,
}


# --- suggestions that create or update FHIR resources (validated with fhir.resources) -----------


def _trough_order_suggestion(snapshot: PatientSnapshot, mtor: MedicationOrder, drug: str, when, test) -> dict:
    """A draft ServiceRequest for the drug's blood level on the date it is due; `test` = (LOINC code, display)."""
    resource = ServiceRequest.model_validate({
        "resourceType": "ServiceRequest",
        "status": "draft",
        "intent": "order",
        "category": [{"coding": [{"system": "http://snomed.info/sct", "code": "108252007", "display": "Laboratory procedure"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": test[0], "display": test[1]}], "text": f"{drug} trough level"},
        "subject": {"reference": f"Patient/{snapshot.patient_id}"},
        "occurrenceDateTime": when.isoformat(),
        "reasonReference": [{"reference": mtor.ref}] if "/" in mtor.ref and not mtor.ref.endswith("/None") else None,
        "note": [{"text": "Trough: draw just before the next dose."}],
    }).model_dump(mode="json", exclude_none=True)
    return {
        "label": f"Order a trough level of {drug} for {when.isoformat()}",
        "uuid": _new_uuid(),
        "isRecommended": True,
        "actions": [{"type": "create", "description": f"Order a trough level of {drug} ({test[1]}) for {when.isoformat()}", "resource": resource}],
    }


def _dose_suggestions(finding: Finding) -> list[dict]:
    """An update of the MedicationRequest to the proposed dose, when the order states its dose in mg."""
    proposed = finding.facts.get("proposed_dose_mg")
    order = finding.mtor
    dosage = (order.resource.get("dosageInstruction") or [None])[0]
    if proposed is None or not isinstance(dosage, dict) or not order.resource.get("id") or order.doses_per_day not in (None, 1):
        return []
    updated = copy.deepcopy(dict(order.resource))
    new_dosage = updated["dosageInstruction"][0]
    rate = (new_dosage.get("doseAndRate") or [{}])[0]
    if not isinstance(rate, dict) or not isinstance(rate.get("doseQuantity"), dict):
        return []
    rate["doseQuantity"]["value"] = proposed
    new_dosage["text"] = f"{proposed:g} mg once daily"
    try:
        resource = MedicationRequest.model_validate(updated).model_dump(mode="json", exclude_none=True)
    except ValueError:
        return []  # the EHR's resource does not validate: offer no one-click change rather than a broken one
    return [{
        "label": f"Change the dose to {proposed:g} mg once daily",
        "uuid": _new_uuid(),
        "isRecommended": True,
        "actions": [{"type": "update", "description": f"Change {order.text} to {proposed:g} mg once daily", "resource": resource}],
    }]


def _dose_lines(finding: Finding, verb: str) -> list[str]:
    facts = finding.facts
    if "proposed_dose_mg" not in facts:
        if "raw_dose_mg" in facts:
            return [f"The label's formula gives {facts['raw_dose_mg']:.2f} mg/day, which the product's strengths cannot "
                    f"make better than the current dose; adjust by clinical judgement."]
        return [f"{_cap(verb)} the dose as the label's therapeutic drug monitoring guidance says "
                "(new dose = current dose × target trough / measured trough)."]
    cap = " (an increase is capped at +5 mg per step)" if verb == "increase" else ""
    return [f"Label formula: new dose = current dose × target / measured = {facts['current_dose_mg']:g} mg × "
            f"{facts['aim_ng_per_ml']:g} / {finding.evidence[0].value:.3g} = {facts['raw_dose_mg']:.2f} mg/day{cap}; "
            f"with {facts['product']} strengths: **{facts['proposed_dose_mg']:g} mg once daily** "
            f"_({_cite(facts['titration_source'])}; aiming at the middle of the target range is this service's choice)_."]


def _level_line(lab: LabResult, drug: str) -> str:
    written = f" (reported as {lab.value_as_written})" if lab.value_as_written and not lab.value_as_written.endswith("ng/mL") else ""
    return f"- Most recent {drug} level: **{lab.value:.3g} ng/mL**{written} on **{lab.effective.date().isoformat()}** (`{lab.ref}`, {lab.text})."


def _indication_text(indication) -> str:
    if indication is None or not indication.evidence:
        return "not on record"
    names = ", ".join(f"{c.text} (`{c.ref}`)" for c in indication.evidence)
    if indication.key is None:
        return f"more than one on record ({names}); the card lists the advice for each"
    return names


# --- shared pieces ------------------------------------------------------------------------------


def _card(topic: Topic, top: Finding, summary: str, detail: str, suggestions: list[dict]) -> dict:
    cited = top.label or top.source  # the card rests on the drug's label; details cite each fact's own source
    source: dict[str, Any] = {
        "label": cited.label,
        "topic": {"system": TOPIC_SYSTEM, "code": topic.value, "display": _TOPIC_TITLES[topic]},
    }
    if cited.url:
        source["url"] = cited.url
    card: dict[str, Any] = {
        "uuid": _new_uuid(),
        "summary": summary,
        "detail": detail,
        "indicator": top.severity.indicator,
        "source": source,
        "overrideReasons": [
            {"system": OVERRIDE_SYSTEM, "code": code, "display": display} for code, display in _OVERRIDE_REASONS[topic]
        ],
    }
    if suggestions:
        card["suggestions"] = suggestions
        card["selectionBehavior"] = "at-most-one" if len(suggestions) == 1 else "any"
    return card


def _removal_suggestions(orders: Iterable[MedicationOrder]) -> list[dict]:
    suggestions, seen = [], set()
    for order in orders:
        if order.ref in seen or order.ref.endswith("/None"):
            continue
        seen.add(order.ref)
        suggestions.append({
            "label": f"Remove the draft order for {order.text}"[:SUMMARY_MAX],
            "uuid": _new_uuid(),
            "isRecommended": len(seen) == 1,
            "actions": [{"type": "delete", "description": f"Remove the draft order for {order.text}", "resourceId": order.ref}],
        })
    if len(suggestions) > 1:
        for s in suggestions:
            s["isRecommended"] = True
    return suggestions


def _new_uuid() -> str:
    # uuid4 reads os.urandom on every call: no generator state is created at import and copied by gunicorn's fork.
    return str(uuid.uuid4())


def _summary(text: str, count: int) -> str:
    if count > 1:
        text = f"{text} (+{count - 1} more)"
    return text if len(text) <= SUMMARY_MAX else text[: SUMMARY_MAX - 1].rstrip() + "…"


def _cite(source: Source, section: str | None = None) -> str:
    label = f"[{source.label}]({source.url})" if source.url else source.label
    return f"{label}, {section}" if section else label


def _order_state(order: MedicationOrder) -> str:
    if order.is_draft:
        return "draft order"
    return "on hold" if order.status == "on-hold" else "active"


def _describe(evidence) -> str:
    if isinstance(evidence, LabResult):
        when = evidence.effective.date().isoformat() if evidence.effective else "date unknown"
        what = {"positive": "positive", "pregnant": "pregnant"}.get(evidence.result or "", evidence.result or "")
        return f"**{evidence.text}**: {what} on {when} (`{evidence.ref}`)"
    when = evidence.asserted.date().isoformat() if getattr(evidence, "asserted", None) else "date unknown"
    return f"active condition **{evidence.text}** since {when} (`{evidence.ref}`)"


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _without_empty(value: Any) -> Any:
    """CDS Hooks forbids null, "", [] and {}: drop them wherever they would appear."""
    if isinstance(value, dict):
        cleaned = {k: _without_empty(v) for k, v in value.items()}
        return {k: v for k, v in cleaned.items() if v not in (None, "", [], {})}
    if isinstance(value, list):
        cleaned = [_without_empty(v) for v in value]
        return [v for v in cleaned if v not in (None, "", [], {})]
    return value


__all__ = ["render_cards", "unchecked_note", "Severity"]
