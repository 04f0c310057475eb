"""Findings -> CDS Hooks cards. All wording lives here: summaries, Markdown details, suggestions, override reasons.

One card per topic per call, the most severe finding first; a card's details list every finding of its topic.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from datetime import timedelta
from typing import Any

from cds_service.findings import TOPIC_SYSTEM, Finding, Severity, Topic
from cds_service.knowledge import Source
from cds_service.patient import LabResult, MedicationOrder, PatientSnapshot, ProcedureEvent

OVERRIDE_SYSTEM = "https://mtor-cds.org/fhir/CodeSystem/override-reason"
SUMMARY_MAX = 139
_DATA_LABELS = {
    "patient": "demographics (Patient)",
    "medications": "current medications",
    "observations": "lab results (trough levels, pregnancy tests)",
    "conditions": "conditions (pregnancy)",
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
    other: MedicationOrder = top.evidence[0]
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
    if lab.value_ng_per_ml is None:
        summary = f"Latest {drug} level ({date}) could not be read: unit {lab.unreadable_unit}"
        lines = [f"- The most recent {drug} level, `{lab.ref}` on {date}, reads **{lab.value_as_written or lab.unreadable_unit}**, "
                 f"which cannot be converted to ng/mL. Check it against the {limit} ng/mL limit by hand."]
    else:
        value = f"{lab.value_ng_per_ml:.3g}"
        summary = f"{_cap(drug)} trough {value} ng/mL on {date} is above the {limit:g} ng/mL limit"
        written = f" (reported as {lab.value_as_written})" if lab.value_as_written and not lab.value_as_written.endswith("ng/mL") else ""
        lines = [f"- Most recent {drug} level: **{value} ng/mL**{written} on **{date}** (`{lab.ref}`, {lab.text}).",
                 f"- Patient's order: **{top.mtor.text}** ({_order_state(top.mtor)}, `{top.mtor.ref}`).",
                 f"\nThe label's trough target is 5-{limit:g} ng/mL ({top.section}; {_cite(top.source)}). "
                 "Reduce the dose as the label's therapeutic drug monitoring guidance says and recheck the trough; "
                 "confirm the sample was taken just before a dose."]
    return _card(Topic.TROUGH_HIGH, top, _summary(summary, 1), "\n".join(lines), [])


def _incomplete_card(note: str) -> dict:
    return {
        "uuid": str(uuid.uuid4()),
        "summary": "Some mTOR inhibitor safety checks could not be run: data unavailable",
        "detail": note,
        "indicator": "info",
        "source": {
            "label": "mtor-cds: data access",
            "topic": {"system": TOPIC_SYSTEM, "code": Topic.CHECKS_INCOMPLETE.value, "display": _TOPIC_TITLES[Topic.CHECKS_INCOMPLETE]},
        },
    }


_RENDERERS: dict[Topic, Callable[[list[Finding], PatientSnapshot], dict]] = {
    Topic.CYP3A4_INTERACTION: _interaction_card,
    Topic.LIVE_VACCINE: _live_vaccine_card,
    Topic.PREGNANCY: _pregnancy_card,
    Topic.SURGERY_TIMING: _surgery_card,
    Topic.TROUGH_HIGH: _trough_card,
}


# --- shared pieces ------------------------------------------------------------------------------


def _card(topic: Topic, top: Finding, summary: str, detail: str, suggestions: list[dict]) -> dict:
    source: dict[str, Any] = {
        "label": top.source.label,
        "topic": {"system": TOPIC_SYSTEM, "code": topic.value, "display": _TOPIC_TITLES[topic]},
    }
    if top.source.url:
        source["url"] = top.source.url
    card: dict[str, Any] = {
        "uuid": str(uuid.uuid4()),
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
            "uuid": str(uuid.uuid4()),
            "isRecommended": len(seen) == 1,
            "actions": [{"type": "delete", "description": f"Remove the draft order for {order.text}", "resourceId": order.ref}],
        })
    if len(suggestions) > 1:
        for s in suggestions:
            s["isRecommended"] = True
    return suggestions


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
