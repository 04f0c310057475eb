"""Findings -> CDS Hooks cards. All wording lives here: summaries, Markdown details, suggestions, override reasons.

One card per topic per call, the most severe finding first; a card's details list every finding of its topic.
TOPICS is the one registry: per topic its title, override reasons and renderer. A renderer reads its topic's
finding type (findings.py) and returns the card's text; every number it prints comes from the finding.
"""

from __future__ import annotations

import copy
import dataclasses
import re
import uuid
from collections.abc import Callable, Iterable, Sequence
from datetime import date, timedelta
from typing import Any

from fhir.resources.R4B.medicationrequest import MedicationRequest
from fhir.resources.R4B.servicerequest import ServiceRequest

from cds_service.findings import (
    TOPIC_SYSTEM,
    AngioedemaFinding,
    ChecksIncomplete,
    ContraceptionFinding,
    DoseCheckFinding,
    DoseProposal,
    Finding,
    HepaticFinding,
    Indication,
    InfectionFinding,
    InteractionFinding,
    LipidGradeFinding,
    LipidPanelMissing,
    LiveVaccineFinding,
    PregnancyFinding,
    Severity,
    SurgeryTiming,
    Topic,
    TroughHighFinding,
    TroughLowFinding,
    TroughMonitoringFinding,
)
from cds_service.knowledge import Source
from cds_service.knowledge.records import LevelTest, TroughTiming
from cds_service.patient import ConditionRecord, LabResult, MedicationOrder, PatientSnapshot, ProcedureEvent

OVERRIDE_SYSTEM = "https://mtor-cds.org/fhir/CodeSystem/override-reason"
SUMMARY_MAX = 139
FHIR_TEXT_MAX = 120  # characters of one FHIR text (drug name, display, note) a card prints
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\](){}#+\-!|<>~&])")
_ORDERED_LIST_START = re.compile(r"^(\d+)([.)])")  # "1. " at the start of a line would begin a list
_INDICATOR_ORDER = {"critical": 0, "warning": 1, "info": 2}


def _new_uuid() -> str:
    # uuid4 reads os.urandom on every call: no generator state is created at import and copied by gunicorn's fork.
    return str(uuid.uuid4())


@dataclasses.dataclass(frozen=True)
class Card:
    """One CDS Hooks card, with what the service needs to know about it (topic, triggering resources)."""

    topic: Topic
    indicator: str  # "info" | "warning" | "critical"
    summary: str
    detail: str
    source: Source  # what the card rests on: the drug's label, or for checks-incomplete the CDS Hooks spec
    trigger_key: str  # each finding's resources, sorted and joined: the card store's and suppression's key
    trigger_refs: frozenset[str] = frozenset()  # every resource the card rests on (mTOR orders included)
    suggestions: tuple[dict[str, Any], ...] = ()
    override_reasons: tuple[tuple[str, str], ...] = ()
    uuid: str = dataclasses.field(default_factory=_new_uuid)

    def to_json(self) -> dict[str, Any]:
        """The card as CDS Hooks 2.0 JSON; no null or empty values anywhere."""
        card: dict[str, Any] = {
            "uuid": self.uuid,
            "summary": self.summary,
            "detail": self.detail,
            "indicator": self.indicator,
            "source": {
                "label": self.source.label,
                "url": self.source.url,
                "topic": {"system": TOPIC_SYSTEM, "code": self.topic.value, "display": TOPICS[self.topic].title},
            },
            "overrideReasons": [
                {"system": OVERRIDE_SYSTEM, "code": code, "display": display} for code, display in self.override_reasons
            ],
        }
        if self.suggestions:
            card["suggestions"] = list(self.suggestions)
            card["selectionBehavior"] = "at-most-one" if len(self.suggestions) == 1 else "any"
        return _without_empty(card)


@dataclasses.dataclass(frozen=True)
class CardText:
    """What a renderer writes: the rest of the card (topic, indicator, source, reasons, trigger) is common."""

    summary: str
    detail: str
    suggestions: Sequence[dict[str, Any]] = ()


Renderer = Callable[[list[Any], PatientSnapshot], CardText]


@dataclasses.dataclass(frozen=True)
class TopicEntry:
    title: str
    render: Renderer  # reads the topic's findings, most severe first
    override_reasons: tuple[tuple[str, str], ...] = ()


def render_cards(findings: Sequence[Finding], snapshot: PatientSnapshot) -> list[Card]:
    """One card per topic, most severe first (critical, warning, info; otherwise in the order the rules ran)."""
    by_topic: dict[Topic, list[Finding]] = {}
    for finding in findings:
        by_topic.setdefault(finding.topic, []).append(finding)
    cards = []
    for topic, topic_findings in by_topic.items():
        topic_findings.sort(key=lambda f: f.severity, reverse=True)
        entry, top = TOPICS[topic], topic_findings[0]
        text = entry.render(topic_findings, snapshot)
        cards.append(Card(
            topic=topic,
            indicator=top.severity.indicator,
            summary=text.summary,
            detail=text.detail,
            source=top.label or top.source,  # the card rests on the drug's label; details cite each fact's own source
            trigger_key="|".join(sorted({f.trigger_key for f in topic_findings}))[:500],
            trigger_refs=frozenset().union(*(f.refs for f in topic_findings)),
            suggestions=tuple(text.suggestions),
            override_reasons=entry.override_reasons,
        ))
    cards.sort(key=lambda c: _INDICATOR_ORDER[c.indicator])
    return cards


# --- one renderer per topic ---------------------------------------------------------------------


def _interaction_card(findings: list[InteractionFinding], snapshot: PatientSnapshot) -> CardText:
    top = findings[0]
    verb = "raises" if top.effect == "inhibitor" else "lowers"
    summary = (
        f"{_cap(top.perpetrator)} with {top.drug}: {top.strength} CYP3A4/P-gp "
        f"{top.effect}, {verb} {top.drug} levels"
    )
    lines = []
    for f in findings:
        o: MedicationOrder = f.evidence[0]
        lines.append(
            f"- **{o.text}** ({_order_state(o)}, `{o.ref}`) is a **{f.strength} CYP3A4/P-gp "
            f"{f.effect}**; with **{_mtor(f).text}** ({_order_state(_mtor(f))}, `{_mtor(f).ref}`) it "
            f"{'raises' if f.effect == 'inhibitor' else 'lowers'} {f.drug} exposure."
        )
        for advice in f.advice:
            scope = _INDICATION_SCOPE.get(advice.indication or "", "")
            lines.append(f"  - {scope}{advice.action} _({_cite(advice.source, advice.section)})_")
        if not f.advice:
            lines.append("  - The label gives no specific dose advice for this combination; check the trough level.")
        lines.append(f"  - Classification: {_cite(f.classification_source)}.")
    suggestions = _removal_suggestions(
        [f.evidence[0] for f in findings if f.evidence[0].is_draft]
        + [_mtor(f) for f in findings if _mtor(f).is_draft and not f.evidence[0].is_draft]
    )
    due = next((f for f in findings if f.trough_recheck), None)
    if due is not None and due.trough_recheck is not None:
        when, rule = due.trough_recheck.due, due.trough_recheck.timing
        lines.append(f"\nIf the combination is kept, recheck the {due.drug} trough on or after **{when.isoformat()}** "
                     f"_({_cite(rule.source, rule.section)})_.")
        suggestions.append(_trough_order_suggestion(snapshot, _mtor(due), due.drug, when, due.level_test))
        for s in suggestions[:-1]:
            s["isRecommended"] = False  # removing the drug and rechecking the trough are alternatives
    return CardText(_summary(summary, len(findings)), "\n".join(lines), suggestions)


_INDICATION_SCOPE = {
    "fixed-dose": "TSC-AML and other fixed-dose use: ",
    "tdm": "TSC-SEGA and TSC seizures (trough-guided dosing): ",
}


def _live_vaccine_card(findings: list[LiveVaccineFinding], snapshot: PatientSnapshot) -> CardText:
    top = findings[0]
    drug, mtor = top.drug, _mtor(top)
    if top.ambiguous:
        summary = f"{_cap(top.vaccine)} may be a live vaccine; patient on {drug}: check the product"
    else:
        summary = f"Live vaccine ({top.vaccine}) ordered for a patient on {drug}: avoid"
    lines = []
    for f in findings:
        order: MedicationOrder = f.evidence[0]
        kind = "may be a live vaccine (the record does not say which product)" if f.ambiguous else "is a live attenuated vaccine"
        lines.append(f"- **{order.text}** ({_order_state(order)}, `{order.ref}`) {kind}.")
    lines.append(
        f"\nPatient is taking or being started on **{mtor.text}** (`{mtor.ref}`). "
        f"Label: \"{top.statement.text}\" _({_cite(top.statement.source, top.statement.section)})_"
    )
    lines.append("\nCancel the live vaccine order, or confirm with the prescriber of the mTOR inhibitor first.")
    suggestions = _removal_suggestions([f.evidence[0] for f in findings if f.evidence[0].is_draft])
    return CardText(_summary(summary, len(findings)), "\n".join(lines), suggestions)


def _pregnancy_card(findings: list[PregnancyFinding], snapshot: PatientSnapshot) -> CardText:
    top = findings[0]
    drug, mtor = top.drug, _mtor(top)
    evidence = top.evidence[0]
    summary = f"Pregnancy on record while {'ordering' if mtor.is_draft else 'taking'} {drug}: it can cause fetal harm"
    lines = [f"- Evidence of pregnancy: {_describe(evidence)}.",
             f"- mTOR inhibitor: **{mtor.text}** ({_order_state(mtor)}, `{mtor.ref}`)."]
    lines.append(f"\nThe label warns that {drug} can cause fetal harm _({_cite(top.source, top.section)})_.")
    if top.contraception_weeks:
        lines.append("Females of reproductive potential should use effective contraception during treatment and for "
                     f"{top.contraception_weeks} weeks after the last dose.")
    lines.append("\nConfirm pregnancy status and review whether to start or continue the mTOR inhibitor with the patient and prescriber.")
    suggestions = _removal_suggestions([mtor] if mtor.is_draft else [])
    return CardText(_summary(summary, 1), "\n".join(lines), suggestions)


def _surgery_card(findings: list[SurgeryTiming], snapshot: PatientSnapshot) -> CardText:
    top = findings[0]
    drug, mtor = top.drug, _mtor(top)
    if top.kind == "planned":
        summary = f"Surgery in {top.days} day(s): withhold {drug} at least {top.window.withhold_before_days} days before"
    else:
        summary = f"{_cap(drug)} within {top.window.avoid_after_major_days} days of surgery: wait for wound healing"
    lines = []
    for f in findings:
        e: ProcedureEvent = f.evidence[0]
        d = e.when.date() if e.when else snapshot.today
        hold_from = d - timedelta(days=f.window.withhold_before_days)
        resume = d + timedelta(days=f.window.avoid_after_major_days)
        if f.kind == "planned":
            lines.append(f"- **{e.text}** (`{e.ref}`) is planned for **{d.isoformat()}**: hold {f.drug} from "
                         f"**{hold_from.isoformat()}**; after major surgery resume no earlier than **{resume.isoformat()}** "
                         "and only once the wound has healed.")
        else:
            lines.append(f"- **{e.text}** (`{e.ref}`) was performed on **{d.isoformat()}**; if it was major surgery, do not give "
                         f"{f.drug} before **{resume.isoformat()}** and until the wound has healed.")
    lines.append(f"\nmTOR inhibitor: **{mtor.text}** ({_order_state(mtor)}, `{mtor.ref}`). "
                 f"Impaired wound healing: {top.section} _({_cite(top.source)})_.")
    suggestions = _removal_suggestions([mtor] if mtor.is_draft and top.kind == "recent" else [])
    return CardText(_summary(summary, len(findings)), "\n".join(lines), suggestions)


def _trough_card(findings: list[TroughHighFinding], snapshot: PatientSnapshot) -> CardText:
    top = findings[0]
    lab: LabResult = top.evidence[0]
    drug, mtor, limit = top.drug, _mtor(top), top.limit.upper_ng_per_ml
    when = _lab_date(lab)
    if lab.value is None:
        summary = f"Latest {drug} level ({when}) could not be read: unit {lab.unreadable_unit}"
        lines = [f"- The most recent {drug} level, `{lab.ref}` on {when}, reads **{lab.value_as_written or lab.unreadable_unit}**, "
                 f"which cannot be converted to ng/mL. Check it against the {limit} ng/mL limit by hand."]
        return CardText(_summary(summary, 1), "\n".join(lines))
    summary = f"{_cap(drug)} trough {lab.value:.3g} ng/mL on {when} is above the {limit:g} ng/mL limit"
    lines = [_level_line(lab, drug), f"- Order: **{mtor.text}** ({_order_state(mtor)}, `{mtor.ref}`).",
             f"\n{_target_range(top)} ({top.section}; {_cite(top.source)})."]
    if top.assumed_indication and top.proposal and top.proposal.proposed_dose_mg is not None:
        lines.append(f"Indication: {_indication_text(top.indication)}. The dose below assumes trough-guided use "
                     f"({top.assumed_indication}); it does not apply to fixed-dose TSC-AML, where the label sets no trough target.")
    lines += _dose_lines(top.proposal, lab, "reduce")
    lines.append(f"{_cap(_recheck_text(top.recheck, 'the change'))}; confirm the sample was drawn just before a dose.")
    return CardText(_summary(summary, 1), "\n".join(lines), _dose_suggestions(mtor, top.proposal))


def _target_range(finding: TroughHighFinding) -> str:
    """The target range of the indication on record (or assumed); with none, the label's upper limit."""
    if finding.target is not None and finding.target.high_ng_per_ml == finding.limit.upper_ng_per_ml:
        return f"The label's trough target is {finding.target.low_ng_per_ml:g}-{finding.target.high_ng_per_ml:g} ng/mL"
    return f"The label's upper trough limit is {finding.limit.upper_ng_per_ml:g} ng/mL"


def _trough_low_card(findings: list[TroughLowFinding], snapshot: PatientSnapshot) -> CardText:
    top = findings[0]
    lab: LabResult = top.evidence[0]
    drug, mtor = top.drug, _mtor(top)
    low, high = top.target.low_ng_per_ml, top.target.high_ng_per_ml
    summary = f"{_cap(drug)} trough {lab.value:.3g} ng/mL ({_lab_date(lab)}) is below the {low:g}-{high:g} ng/mL target"
    lines = [_level_line(lab, drug), f"- Order: **{mtor.text}** ({_order_state(mtor)}, `{mtor.ref}`).",
             f"- Indication: {_indication_text(top.indication)}; target {low:g}-{high:g} ng/mL "
             f"({_cite(top.source, top.section)}).", ""]
    lines += _dose_lines(top.proposal, lab, "increase")
    lines.append(f"Check adherence and interacting drugs first; {_recheck_text(top.recheck, 'any change')}.")
    return CardText(_summary(summary, 1), "\n".join(lines), _dose_suggestions(mtor, top.proposal))


def _trough_monitoring_card(findings: list[TroughMonitoringFinding], snapshot: PatientSnapshot) -> CardText:
    top = findings[0]
    drug, mtor, due, latest = top.drug, _mtor(top), top.due_date, top.latest
    after = _days_after_text(top.timing)
    if due > snapshot.today:
        event = "starting" if top.event == "start" else f"{top.event} ({top.event_date.isoformat()})"
        summary = f"Plan a trough level of {drug} around {due.isoformat()}, {after} after {event}"
    else:
        summary = f"{_cap(drug)} trough due since {due.isoformat()} ({top.event} on {top.event_date.isoformat()})"
    last = (f"the last trough was on {_lab_date(latest)} (`{latest.ref}`)" if latest else "no trough is on record")
    lines = [f"- **{mtor.text}** ({_order_state(mtor)}, `{mtor.ref}`); {last}.",
             f"- Event: {top.event} on {top.event_date.isoformat()}; the label asks for a trough {after} later "
             f"_({_cite(top.source, top.section)})_.",
             f"- Indication: {_indication_text(top.indication)}."]
    order_date = max(due, snapshot.today)
    suggestion = _trough_order_suggestion(snapshot, mtor, drug, order_date, top.level_test)
    return CardText(_summary(summary, 1), "\n".join(lines), [suggestion])


def _lipids_card(findings: list[LipidGradeFinding | LipidPanelMissing], snapshot: PatientSnapshot) -> CardText:
    top = findings[0]
    drug = top.drug
    if isinstance(top, LipidPanelMissing):
        when = f"the last one was on {_lab_date(top.last)}" if top.last else "none is on record"
        summary = f"No lipid panel in the last {top.missing_panel_days} days while on {drug}"
        detail = (f"The label asks to monitor lipids before and periodically during treatment; {when}. "
                  f"Order a fasting lipid panel. _(Interval: {_cite(top.source)})_")
        return CardText(_summary(summary, 1), detail)
    graded = [f for f in findings if isinstance(f, LipidGradeFinding)]
    lab: LabResult = top.evidence[0]
    summary = f"{_cap(top.analyte)} {lab.value:.0f} mg/dL ({_lab_date(lab)}) on {drug}: CTCAE grade {top.grade}"
    lines = []
    for f in graded:
        lab = f.evidence[0]
        written = f" (reported as {lab.value_as_written})" if not (lab.value_as_written or "").lower().endswith("mg/dl") else ""
        lines.append(f"- Latest {f.analyte}: **{lab.value:.0f} mg/dL**{written} on {_lab_date(lab)} "
                     f"(`{lab.ref}`): CTCAE v5 grade {f.grade} _({_cite(f.grade_source)})_.")
        lines.append(f"  - {f.action.action} _({_cite(f.source, f.section)})_")
    return CardText(_summary(summary, len(graded)), "\n".join(lines))


def _hepatic_card(findings: list[HepaticFinding], snapshot: PatientSnapshot) -> CardText:
    top = findings[0]
    drug, mtor, cp = top.drug, _mtor(top), top.child_pugh
    summary = f"Hepatic impairment{f' (Child-Pugh {cp})' if cp else ''} on record: {drug} dose needs adjusting"
    conditions = ", ".join(f"**{c.text}** (`{c.ref}`)" for c in top.evidence)
    lines = [f"- On record: {conditions}.", f"- Order: **{mtor.text}** ({_order_state(mtor)}, `{mtor.ref}`)"
             + (f", {mtor.daily_dose_mg:g} mg/day." if mtor.daily_dose_mg else "."),
             f"- Indication: {_indication_text(top.indication)}.", "", "Label dose:"]
    for d in top.doses:
        dose = (f"{d.dose_mg:g} mg daily" if d.dose_mg is not None
                else f"{d.dose_mg_per_m2:g} mg/m² daily" if d.dose_mg_per_m2 is not None else d.action or "see the label")
        scope = {"fixed": " (fixed-dose use)", "tdm": " (trough-guided use)"}.get(d.dosing or "", "")
        note = f"; {d.note}" if d.note and "UNVERIFIED" not in d.note else ""
        lines.append(f"- Child-Pugh {d.child_pugh}{scope}: {dose}{note} _({_cite(d.source, d.section)})_")
    if not top.doses:
        lines.append("- The knowledge base has no label dose for this case; review the label.")
    if not cp:
        lines.append("\nThe Child-Pugh class is not on record: the dose depends on it.")
    if top.advice:
        lines.append(f"\n{top.advice.text} _({_cite(top.advice.source, top.advice.section)})_")
    return CardText(_summary(summary, 1), "\n".join(lines))


def _infection_card(findings: list[InfectionFinding], snapshot: PatientSnapshot) -> CardText:
    top = findings[0]
    mtor = _mtor(top)
    what = "Non-infectious pneumonitis" if top.kind == "pneumonitis" else "Active severe infection"
    summary = f"{what} on record while on {top.drug}: review whether to hold it"
    lines = []
    for f in findings:
        conditions = ", ".join(f"**{c.text}** (`{c.ref}`)" for c in f.evidence)
        lines.append(f"- {conditions}: {f.advice.text} _({_cite(f.source, f.section)})_")
    lines.append(f"\nOrder: **{mtor.text}** ({_order_state(mtor)}, `{mtor.ref}`).")
    return CardText(_summary(summary, len(findings)), "\n".join(lines))


def _angioedema_card(findings: list[AngioedemaFinding], snapshot: PatientSnapshot) -> CardText:
    top = findings[0]
    summary = f"{_cap(top.ace_inhibitor)} with {top.drug}: higher risk of angioedema"
    lines = [f"- **{f.evidence[0].text}** ({_order_state(f.evidence[0])}, `{f.evidence[0].ref}`) with **{_mtor(f).text}** "
             f"({_order_state(_mtor(f))}, `{_mtor(f).ref}`)." for f in findings]
    lines.append(f"\n{top.statement.text} _({_cite(top.source, top.section)})_")
    lines.append("Tell the patient to report swelling of the face, lips, tongue or throat at once.")
    suggestions = _removal_suggestions([f.evidence[0] for f in findings if f.evidence[0].is_draft])
    return CardText(_summary(summary, len(findings)), "\n".join(lines), suggestions)


def _contraception_card(findings: list[ContraceptionFinding], snapshot: PatientSnapshot) -> CardText:
    top = findings[0]
    drug, weeks = top.drug, top.weeks
    who = "Females" if top.sex == "female" else "Males with female partners"
    summary = f"{_cap(drug)} ordered: effective contraception during treatment and {weeks} weeks after the last dose"
    detail = (f"{who} of reproductive potential should use effective contraception during treatment with {drug} and for "
              f"**{weeks} weeks** after the last dose _({_cite(top.source, top.section)})_. The patient is "
              f"{top.age:.0f} years old. Confirm pregnancy status before starting and discuss contraception.")
    return CardText(_summary(summary, 1), detail)


def _dose_card(findings: list[DoseCheckFinding], snapshot: PatientSnapshot) -> CardText:
    top = findings[0]
    drug, mtor, start = top.drug, _mtor(top), top.start
    label_dose = (f"{start.dose_mg_per_m2:g} mg/m² once daily" if start.dose_mg_per_m2 is not None else f"{start.dose_mg:g} mg once daily")
    lines = [f"- Ordered: **{mtor.text}** (`{mtor.ref}`), **{top.ordered_mg:g} mg/day**.",
             f"- Indication: {_indication_text(top.indication)}; label starting dose {label_dose} "
             f"_({_cite(top.source, top.section)})_."]
    if top.expected_mg is None:
        summary = f"Cannot check the {drug} starting dose: no recent height and weight on record"
        lines.append("- The dose is per m² of body surface area: record height and weight to check it.")
    else:
        if top.bsa:
            h, w = top.bsa.height, top.bsa.weight
            lines.append(f"- Body surface area (Mosteller) **{top.bsa.bsa_m2:.2f} m²** from height {h.value:.0f} cm "
                         f"({_lab_date(h)}) and weight {w.value:.1f} kg ({_lab_date(w)}) "
                         f"_({_cite(top.bsa.source)})_.")
        lines.append(f"- Label dose for this patient: about **{top.expected_mg:.1f} mg/day**, then adjust by trough where the label says so.")
        if top.fits:
            summary = f"{_cap(drug)} dose fits the label; note the infection risk in young children"
        elif top.ordered_mg > top.expected_mg:
            summary = f"{_cap(drug)} {top.ordered_mg:g} mg/day is above the label dose (~{top.expected_mg:.1f} mg/day)"
        else:
            summary = f"{_cap(drug)} {top.ordered_mg:g} mg/day is below the label dose (~{top.expected_mg:.1f} mg/day)"
    if top.pediatric:
        p = top.pediatric
        lines.append(f"\nPatient is under {p.below_age_years:g}: {p.note_text} _({_cite(p.source, p.section)})_")
    return CardText(_summary(summary, 1), "\n".join(lines))


_DATA_LABELS = {
    "patient": "demographics (Patient)",
    "medications": "current medications (all, or some that could not be identified or fetched)",
    "observations": "lab results (trough levels, pregnancy tests, lipids, height and weight)",
    "conditions": "conditions (pregnancy, indication, hepatic impairment, infection)",
    "procedures": "procedures (recent or planned surgery)",
    "serviceRequests": "service requests (planned surgery)",
    "appointments": "appointments (planned surgery)",
}


def _incomplete_card(findings: list[ChecksIncomplete], snapshot: PatientSnapshot) -> CardText:
    top = findings[0]
    lines = [f"- {_DATA_LABELS.get(key, key)}" for key in top.unavailable]
    if top.unreadable:
        lines.append(f"- {_and_list([_resources_of(rtype, n) for rtype, n in sorted(top.unreadable, key=lambda u: (-u[1], u[0]))])} could not be read")
    elsewhere = top.skipped_resources - sum(n for _, n in top.unreadable)
    if elsewhere > 0:
        lines.append(f"- {_resources_of('another patient', elsewhere)}: left out")
    parts = []
    if lines:
        why = " The EHR's FHIR server is not on this service's allowlist." if top.fhir_server_refused else ""
        parts.append("These data could not be obtained or read, so the checks that need them did not run:" + why
                     + "\n\n" + "\n".join(lines))
    if top.not_listed:
        parts.append("Not every finding is on the cards (a card lists at most its most important findings):\n\n"
                     + "\n".join(f"- {TOPICS[n.topic].title}: and {n.count} more" for n in top.not_listed))
    parts.append("A missing card is **not** an all-clear for these checks: review them in the chart.")
    summary = ("Some mTOR inhibitor safety checks could not be run: data unavailable" if lines
               else "More mTOR inhibitor findings than the cards list: review the full list in the chart")
    return CardText(summary, "\n\n".join(parts))


_RESOURCE_NAMES = {  # (one, many) for the (resource type, count) pairs of PatientSnapshot.unreadable
    "Bundle.entry": ("Bundle entry without a resource", "Bundle entries without a resource"),
    "not a resource": ("entry that is not a resource", "entries that are not resources"),
    "unknown": ("resource of an unknown type", "resources of an unknown type"),
    "another patient": ("resource about another patient", "resources about another patient"),
}


def _resources_of(rtype: str, count: int) -> str:
    """"1 Condition", "2 Observations", "3 Bundle entries without a resource"."""
    one, many = _RESOURCE_NAMES.get(rtype, (rtype, f"{rtype}s"))
    return f"{count} {one if count == 1 else many}"


def _and_list(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


TOPICS: dict[Topic, TopicEntry] = {
    Topic.CYP3A4_INTERACTION: TopicEntry("CYP3A4/P-gp interaction", _interaction_card, (
        ("benefit-outweighs-risk", "Benefit outweighs risk; trough levels will be monitored"),
        ("dose-adjusted", "Dose already adjusted as the label advises"),
        ("not-taking", "Patient no longer takes the interacting product"),
    )),
    Topic.LIVE_VACCINE: TopicEntry("Live vaccine", _live_vaccine_card, (
        ("benefit-outweighs-risk", "Benefit outweighs risk after specialist review"),
        ("mtor-stopped", "mTOR inhibitor has been stopped"),
    )),
    Topic.PREGNANCY: TopicEntry("Pregnancy", _pregnancy_card, (
        ("not-pregnant", "Patient is not pregnant (record out of date)"),
        ("specialist-decision", "Continued after specialist review of risks"),
    )),
    Topic.SURGERY_TIMING: TopicEntry("Surgery timing", _surgery_card, (
        ("already-held", "mTOR inhibitor already withheld"),
        ("minor-procedure", "Minor procedure; wound-healing risk accepted"),
        ("surgery-rescheduled", "Surgery cancelled or rescheduled"),
    )),
    Topic.TROUGH_HIGH: TopicEntry("Trough level above target", _trough_card, (
        ("dose-adjusted", "Dose already adjusted"),
        ("not-a-trough", "Sample was not a trough (timed after the dose)"),
    )),
    Topic.TROUGH_LOW: TopicEntry("Trough level below target", _trough_low_card, (
        ("dose-adjusted", "Dose already adjusted"),
        ("not-a-trough", "Sample was not a trough (timed after the dose)"),
        ("adequate-response", "Adequate clinical response at this level"),
    )),
    Topic.TROUGH_MONITORING: TopicEntry("Trough level due", _trough_monitoring_card, (
        ("already-ordered", "Trough level already ordered"),
        ("drawn-elsewhere", "Trough measured at another laboratory"),
    )),
    Topic.LIPIDS: TopicEntry("Lipids", _lipids_card, (
        ("being-managed", "Lipids already being managed"),
        ("already-ordered", "Lipid panel already ordered"),
    )),
    Topic.HEPATIC_IMPAIRMENT: TopicEntry("Hepatic impairment", _hepatic_card, (
        ("dose-adjusted", "Dose already adjusted for hepatic function"),
        ("resolved", "Hepatic impairment has resolved"),
    )),
    Topic.INFECTION: TopicEntry("Infection or pneumonitis", _infection_card, (
        ("already-held", "mTOR inhibitor already held"),
        ("resolved", "Infection or pneumonitis has resolved"),
        ("specialist-decision", "Continued after specialist review"),
    )),
    Topic.ANGIOEDEMA: TopicEntry("Angioedema risk (ACE inhibitor)", _angioedema_card, (
        ("benefit-outweighs-risk", "Benefit outweighs risk; patient counselled"),
        ("tolerated", "Combination already tolerated"),
    )),
    Topic.CONTRACEPTION: TopicEntry("Contraception", _contraception_card, (
        ("counselled", "Patient already counselled"),
        ("not-of-reproductive-potential", "Patient is not of reproductive potential"),
    )),
    Topic.DOSE_CHECK: TopicEntry("Dose check", _dose_card, (
        ("intended", "Dose intended (e.g. interaction, tolerability)"),
        ("measurements-outdated", "Height or weight on record is out of date"),
    )),
    Topic.CHECKS_INCOMPLETE: TopicEntry("Safety checks incomplete", _incomplete_card),  # data, not a judgement: nothing to override
}

# --- suggestions that create or update FHIR resources (validated with fhir.resources) -----------


def _trough_order_suggestion(
    snapshot: PatientSnapshot, mtor: MedicationOrder, drug: str, when: date, test: LevelTest
) -> dict[str, Any]:
    """A draft ServiceRequest for the drug's blood level (its LOINC test) on the date it is due."""
    resource = ServiceRequest.model_validate({
        "resourceType": "ServiceRequest",
        "status": "draft",
        "intent": "order",
        "category": [{"coding": [{"system": "http://snomed.info/sct", "code": "108252007", "display": "Laboratory procedure"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": test.loinc, "display": test.display}], "text": f"{drug} trough level"},
        "subject": {"reference": f"Patient/{snapshot.patient_id}"},
        "occurrenceDateTime": when.isoformat(),
        "reasonReference": [{"reference": mtor.ref}] if "/" in mtor.ref and not mtor.ref.endswith("/None") else None,
        "note": [{"text": "Trough: draw just before the next dose."}],
    }).model_dump(mode="json", exclude_none=True)
    return {
        "label": f"Order a trough level of {drug} for {when.isoformat()}",
        "uuid": _new_uuid(),
        "isRecommended": True,
        "actions": [{"type": "create", "description": f"Order a trough level of {drug} ({test.display}) for {when.isoformat()}", "resource": resource}],
    }


def _dose_suggestions(order: MedicationOrder, proposal: DoseProposal | None) -> list[dict[str, Any]]:
    """An update of the MedicationRequest to the proposed dose, when the order states its dose in mg."""
    proposed = proposal.proposed_dose_mg if proposal else None
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


def _dose_lines(proposal: DoseProposal | None, lab: LabResult, verb: str) -> list[str]:
    if proposal is None:
        return [f"{_cap(verb)} the dose as the label's therapeutic drug monitoring guidance says "
                "(new dose = current dose × target trough / measured trough)."]
    if proposal.proposed_dose_mg is None:
        return [f"The label's formula gives {proposal.raw_dose_mg:.2f} mg/day, which the product's strengths cannot "
                f"make better than the current dose; adjust by clinical judgement."]
    cap = f" (an increase is capped at +{proposal.max_increment_mg:g} mg per step)" if proposal.max_increment_mg else ""
    return [f"Label formula: new dose = current dose × target / measured = {proposal.current_dose_mg:g} mg × "
            f"{proposal.aim_ng_per_ml:g} / {lab.value:.3g} = {proposal.raw_dose_mg:.2f} mg/day{cap}; "
            f"with {proposal.product} strengths: **{proposal.proposed_dose_mg:g} mg once daily** "
            f"_({_cite(proposal.formula_source)}; aiming at the middle of the target range is this service's choice)_."]


def _days_after_text(timing: TroughTiming) -> str:
    """The label's interval in words: "about 14 days" (the labels say "approximately"), "10 to 20 days"."""
    return timing.days_text if timing.days_after_latest else f"about {timing.days_text}"


def _recheck_text(timing: TroughTiming | None, after: str) -> str:
    if timing is None:
        return f"recheck the trough after {after}"
    return f"recheck the trough {_days_after_text(timing)} after {after} _({_cite(timing.source, timing.section)})_"


def _level_line(lab: LabResult, drug: str) -> str:
    written = f" (reported as {lab.value_as_written})" if lab.value_as_written and not lab.value_as_written.endswith("ng/mL") else ""
    return f"- Most recent {drug} level: **{lab.value:.3g} ng/mL**{written} on **{_lab_date(lab)}** (`{lab.ref}`, {lab.text})."


def _lab_date(lab: LabResult) -> str:
    return lab.effective.date().isoformat() if lab.effective else "date unknown"


def _mtor(finding: Finding) -> MedicationOrder:
    """The mTOR order a topic's finding is about (every topic but checks-incomplete has one)."""
    assert finding.mtor is not None, f"{finding.topic.value} finding without an mTOR order"
    return finding.mtor


def _indication_text(indication: Indication) -> str:
    if indication is None or not indication.evidence:
        return "not on record"
    names = ", ".join(md_text(c.text) for c in indication.evidence)
    if indication.key is None:
        return f"more than one on record ({names}); the card lists the advice for each"
    return names


# --- shared pieces ------------------------------------------------------------------------------


def _removal_suggestions(orders: Iterable[MedicationOrder]) -> list[dict]:
    suggestions, seen = [], set()
    for order in orders:
        if order.ref in seen or order.ref.endswith("/None"):
            continue
        seen.add(order.ref)
        suggestions.append({
            "label": f"Remove the draft order for {md_text(order.text)}",
            "uuid": _new_uuid(),
            "isRecommended": len(seen) == 1,
            "actions": [{"type": "delete", "description": f"Remove the draft order for {md_text(order.text)}", "resourceId": order.ref}],
        })
    if len(suggestions) > 1:
        for s in suggestions:
            s["isRecommended"] = True
    return suggestions


def md_text(value: str) -> str:
    """Text from FHIR (a drug name, display, note), safe inside Markdown `detail` and suggestion labels: one line,
    at most FHIR_TEXT_MAX characters, every Markdown control character escaped, so that the EHR's data can never
    turn into a link, emphasis, heading, list, table or HTML on the card."""
    text = "".join(ch for ch in " ".join(str(value).split()) if ch.isprintable())  # a newline could start a heading
    if len(text) > FHIR_TEXT_MAX:
        text = text[: FHIR_TEXT_MAX - 1].rstrip() + "…"
    return _ORDERED_LIST_START.sub(r"\1\\\2", _MARKDOWN_SPECIAL.sub(r"\\\1", text))


def _summary(text: str, count: int = 1) -> str:
    """One line under SUMMARY_MAX characters. Issue 13: no "(+N more)"; the detail lists every finding.
    (`count` stays until every renderer stops passing it.)"""
    text = " ".join(text.split())  # FHIR text in a summary: never more than one line
    return text if len(text) <= SUMMARY_MAX else text[: SUMMARY_MAX - 1].rstrip() + "…"


def _cite(source: Source, section: str | None = None) -> str:
    label = f"[{source.label}]({source.url})" if source.url else source.label
    return f"{label}, {section}" if section else label


def _order_state(order: MedicationOrder) -> str:
    if order.is_draft:
        return "draft order"
    return "on hold" if order.status == "on-hold" else "active"


def _describe(evidence: LabResult | ConditionRecord) -> str:
    """A lab result or condition in human terms (name, result, date); its resource id stays out of the text."""
    if isinstance(evidence, LabResult):
        when = evidence.effective.date().isoformat() if evidence.effective else "date unknown"
        what = {"positive": "positive", "pregnant": "pregnant"}.get(evidence.result or "", evidence.result or "")
        return f"**{md_text(evidence.text)}**: {md_text(what)} on {when}"
    when = evidence.asserted.date().isoformat() if evidence.asserted else "date unknown"
    return f"active condition **{md_text(evidence.text)}** since {when}"


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _without_empty(value: Any) -> Any:
    """CDS Hooks forbids null, "", [] and {}: drop them wherever they would appear."""
    if isinstance(value, dict):
        items = {k: _without_empty(v) for k, v in value.items()}
        return {k: v for k, v in items.items() if v not in (None, "", [], {})}
    if isinstance(value, list):
        elements = [_without_empty(v) for v in value]
        return [v for v in elements if v not in (None, "", [], {})]
    return value


__all__ = ["TOPICS", "Card", "CardText", "TopicEntry", "Severity", "md_text", "render_cards"]
