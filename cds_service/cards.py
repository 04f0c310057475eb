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
from datetime import date
from typing import TYPE_CHECKING, Any

from fhir.resources.R4B.medicationrequest import MedicationRequest
from fhir.resources.R4B.servicerequest import ServiceRequest
from fhir.resources.R4B.task import Task

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
    LabelRestrictionFinding,
    LevelRaiserFinding,
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
from cds_service.knowledge.records import HepaticDose, LevelTest, TroughTiming
from cds_service.patient import ConditionRecord, LabResult, MedicationOrder, PatientSnapshot, ProcedureEvent

if TYPE_CHECKING:
    from cds_service.rules.treatment_context import TreatmentContext

OVERRIDE_SYSTEM = "https://mtor-cds.org/fhir/CodeSystem/override-reason"
SUMMARY_MAX = 139
FHIR_TEXT_MAX = 120  # characters of one FHIR text (drug name, display, note) a card prints
_NOTE_MAX = 400  # characters of one checks-incomplete note (its own words and the FHIR text it may quote)
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\](){}#+\-!|<>~&])")
_ORDERED_LIST_START = re.compile(r"^(\d+)([.)])")  # "1. " at the start of a line would begin a list
# GitHub Flavored Markdown also links bare text (its autolink extension): a scheme ("https://", "mailto:"), "www." and
# e-mail addresses. An escaped ":" or "." ends the first two; an address needs a zero-width space after its "@".
_AUTOLINK_SCHEME = re.compile(r"(?i)\b(https?|ftp|mailto|xmpp)(:)")
_AUTOLINK_WWW = re.compile(r"(?i)\b(www)(\.)")
_EMAIL_AT = re.compile(r"(?<=\w)@(?=\w)")
_INDICATOR_ORDER = {"critical": 0, "warning": 1, "info": 2}
_RELATIVE_REFERENCE = re.compile(r"[A-Z][A-Za-z]+/[^/\s#]+")


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


def _interaction_card(findings: list[InteractionFinding | LevelRaiserFinding], snapshot: PatientSnapshot) -> CardText:
    """CYP3A4/P-gp perpetrators and cannabidiol: what each does to the mTOR level, what to do, each one's citation."""
    top, today = findings[0], snapshot.today
    lines: list[str] = []
    for f in findings:
        lines += _level_raiser_lines(f, today) if isinstance(f, LevelRaiserFinding) else _cyp3a_lines(f, today)
    # Each fact's own source: a card listing cannabidiol (a study) and carbamazepine (the label's advice) cites both
    citations = dict.fromkeys(_interaction_citation(f) for f in findings)
    lines.append(f"\nSource: {'; '.join(_cite(source, section) for source, section in citations)}")
    suggestions = _removal_suggestions(
        [f.evidence[0] for f in findings if f.evidence[0].is_draft]
        + [_mtor(f) for f in findings if _mtor(f).is_draft and not f.evidence[0].is_draft]
    )  # a MedicationStatement (taken over the counter) is never a draft: nothing to delete, the card asks for a review
    due = next((f for f in findings if f.trough_recheck), None)
    if due is not None and due.trough_recheck is not None:
        suggestions.append(_trough_order_suggestion(snapshot, _mtor(due), due.drug, max(due.trough_recheck.due, today), due.level_test))
        for s in suggestions[:-1]:
            s["isRecommended"] = False  # removing the drug and rechecking the trough are alternatives
    return CardText(_summary(_interaction_summary(top, today), 1), "\n".join(lines), suggestions)


def _interaction_summary(top: InteractionFinding | LevelRaiserFinding, today: date) -> str:
    if isinstance(top, LevelRaiserFinding):
        check = f"check the {top.drug} trough {_when(top.trough_recheck.due, today)}" if top.trough_recheck else f"watch for {top.drug} toxicity"
        return f"Cannabidiol can raise {top.drug} levels: {check}"
    verb = "raises" if top.effect == "inhibitor" else "lowers"
    what = f"{_cap(top.perpetrator)} {verb} {top.drug} levels"
    if top.severity is Severity.CRITICAL:
        return f"{what}: avoid the combination"
    if not top.advice:
        trough = f" and the {top.drug} trough" if top.trough_monitored else ""
        return f"{what}: check the {top.product or top.drug} label{trough}"
    if len(top.advice) == 1:
        return f"{_cap(top.perpetrator)} with {top.product or top.drug}: {_first_clause(top.advice[0].action)}"
    if top.trough_recheck:
        return f"{what}: adjust the dose for the use on record; trough {_when(top.trough_recheck.due, today)}"
    return f"{what}: adjust the dose as the label says for the use on record"


def _cyp3a_lines(f: InteractionFinding, today: date) -> list[str]:
    other, mtor = f.evidence[0], _mtor(f)
    verb = "raises" if f.effect == "inhibitor" else "lowers"
    lines = [f"- **{md_text(other.text)}** ({_taken_state(other)}) with **{md_text(mtor.text)}** ({_taken_state(mtor)}): "
             f"a {f.strength} CYP3A4/P-gp {f.effect}, it {verb} {f.drug} exposure."]
    for advice in f.advice:
        lines.append(f"  - {_INDICATION_SCOPE.get(advice.indication or '', '')}{advice.action}")
    if not f.advice:
        trough = f", and check the {f.drug} trough" if f.trough_monitored else ""  # Fyarro's label sets no trough monitoring
        lines.append(f"  - The {f.product or f.drug} label governs this combination and this service has not verified its "
                     f"advice: check the label before combining{trough}.")
    if f.trough_recheck is not None:
        rule = f.trough_recheck.timing
        lines.append(f"  - If the combination is kept, check the {f.drug} trough {_when(f.trough_recheck.due, today)} "
                     f"({_days_after_text(rule)} after starting it).")
    return lines


def _level_raiser_lines(f: LevelRaiserFinding, today: date) -> list[str]:
    other, mtor, interaction = f.evidence[0], _mtor(f), f.interaction
    lines = [f"- **{md_text(other.text)}** ({_taken_state(other)}) with **{md_text(mtor.text)}** ({_taken_state(mtor)}): "
             f"cannabidiol can raise {f.drug} blood levels."]
    if f.cites_label and interaction.label_text:
        lines.append(f"  - {interaction.label_product} label: \"{interaction.label_text}\".")
    if f.trough_recheck is not None:
        lines.append(f"  - Check the {f.drug} trough {_when(f.trough_recheck.due, today)} "
                     f"({_days_after_text(f.trough_recheck.timing)} after starting or changing cannabidiol) and watch for "
                     f"{f.drug} toxicity; a dose reduction may be needed.")
    else:
        lines.append(f"  - Watch for {f.drug} toxicity; a dose reduction may be needed.")
    return lines


def _interaction_citation(top: InteractionFinding | LevelRaiserFinding) -> tuple[Source, str]:
    """A finding's citation: the label (or study) whose words the card quotes, else the governing label."""
    if isinstance(top, LevelRaiserFinding):
        return top.source, top.section
    if top.advice:
        return top.advice[0].source, top.advice[0].section
    return top.label or top.source, ""


_INDICATION_SCOPE = {
    "fixed-dose": "TSC-AML and other fixed-dose use: ",
    "tdm": "TSC-SEGA and TSC seizures (trough-guided dosing): ",
}


def _live_vaccine_card(findings: list[LiveVaccineFinding], snapshot: PatientSnapshot) -> CardText:
    top = findings[0]
    drug, mtor = top.drug, _mtor(top)
    if top.ambiguous:
        summary = f"{_cap(top.vaccine)} may be a live vaccine and the patient is on {drug}: check the product before giving it"
    else:
        summary = f"Live vaccine ({top.vaccine}) ordered for a patient on {drug}: do not give it"
    lines = []
    for f in findings:
        order: MedicationOrder = f.evidence[0]
        kind = "may be a live vaccine (the record does not say which product)" if f.ambiguous else "is a live attenuated vaccine"
        lines.append(f"- **{md_text(order.text)}** ({_taken_state(order)}) {kind}.")
    said = f"The label: \"{top.statement.text}\"" if top.statement.quoted else f"{top.statement.text}."
    lines.append(f"- The patient is taking or starting **{md_text(mtor.text)}**. {said}")
    lines.append("\nCancel the live vaccine order, or give it only after the prescriber of the mTOR inhibitor agrees.")
    lines.append(f"\nSource: {_cite(top.statement.source, top.statement.section)}")
    suggestions = _removal_suggestions([f.evidence[0] for f in findings if f.evidence[0].is_draft])
    return CardText(_summary(summary, 1), "\n".join(lines), suggestions)


def _pregnancy_card(findings: list[PregnancyFinding], snapshot: PatientSnapshot) -> CardText:
    top = findings[0]
    drug, mtor = top.drug, _mtor(top)
    evidence = top.evidence[0]
    seen = _evidence_date(evidence)
    unconfirmed = top.unconfirmed
    doing = "ordering" if mtor.is_draft else "taking"
    if top.stale_after_days is not None:
        summary = f"Pregnancy evidence from {_human(seen) if seen else 'an unknown date'} is over {top.stale_after_days} days old: confirm status before {drug}"
    elif top.hcg_cutoff_iu_per_l is not None:
        summary = f"hCG not below the non-pregnant cut-off while {doing} {drug}: confirm pregnancy status"
    elif top.outside_ages_years is not None:
        summary = f"Positive pregnancy test at age {int(top.outside_ages_years)} while {doing} {drug}: confirm pregnancy status"
    elif top.recorded_male:
        summary = f"Positive hCG for a patient recorded as male while {doing} {drug}: confirm pregnancy status"
    elif unconfirmed:
        summary = f"Possible pregnancy (unconfirmed) on record while {doing} {drug}: confirm pregnancy status"
    else:
        summary = f"Pregnancy on record while {doing} {drug}: confirm it and review the order"
    if top.hcg_cutoff_iu_per_l is not None and top.stale_after_days is None:
        evidence_line = (f"- Quantitative hCG: {_pregnancy_evidence(evidence)}, at or above the non-pregnant cut-off of "
                         f"{top.hcg_cutoff_iu_per_l:g} IU/L; the lab sent no interpretation or reference range, so it is "
                         "read neither as positive nor as negative.")
    elif top.outside_ages_years is not None and top.stale_after_days is None:
        evidence_line = (f"- Positive test: {_pregnancy_evidence(evidence)}, for a patient aged {int(top.outside_ages_years)}, "
                         "outside the ages this service treats as of reproductive potential (project policy): pregnancy "
                         "is unlikely, and hCG is also a tumour marker.")
    elif top.recorded_male and top.stale_after_days is None:
        evidence_line = (f"- Positive test: {_pregnancy_evidence(evidence)}, for a patient whose recorded gender is male: "
                         "hCG is also a tumour marker, and the record does not say whether this patient can be pregnant.")
    elif unconfirmed and top.stale_after_days is None:
        evidence_line = (f"- Possible pregnancy: {_pregnancy_evidence(evidence)}, recorded as not confirmed (unconfirmed, "
                         "provisional or differential diagnosis).")
    else:
        evidence_line = f"- Evidence of pregnancy: {_pregnancy_evidence(evidence)}."
    lines = [evidence_line,
             f"- mTOR inhibitor: **{md_text(mtor.text)}** ({_taken_state(mtor)}). {_cap(drug)} can cause fetal harm."]
    if top.stale_after_days is not None:
        lines.append(f"- This is older than the {top.stale_after_days}-day look-back for this evidence, so it is shown for a "
                     "recheck only: confirm pregnancy status (for example with a new hCG test) before starting or continuing.")
    else:
        lines.append(f"- Confirm pregnancy status and review with the patient and prescriber whether to start or continue {drug}.")
    if top.contraception_weeks:
        lines.append(f"- If {drug} is given: effective contraception during treatment and for {top.contraception_weeks} weeks "
                     "after the last dose.")
    lines.append(f"\nSource: {_cite(top.source, top.section)}")
    # removal is suggested on evidence of pregnancy, not on a result that asks to be confirmed
    suggestions = _removal_suggestions([mtor] if mtor.is_draft and top.stale_after_days is None and not unconfirmed else [])
    return CardText(_summary(summary, 1), "\n".join(lines), suggestions)


def _pregnancy_evidence(evidence: ConditionRecord | LabResult) -> str:
    seen = _evidence_date(evidence)
    when = _human(seen) if seen else "an unknown date"
    if isinstance(evidence, LabResult):
        result = {"indeterminate": md_text(evidence.value_as_written or "")}.get(evidence.result or "", evidence.result or "")
        return f"**{md_text(evidence.text)}** {result} on {when}"
    return f"{'condition' if evidence.is_unconfirmed else 'active condition'} **{md_text(evidence.text)}** recorded on {when}"


def _lipids_card(findings: list[LipidGradeFinding | LipidPanelMissing], snapshot: PatientSnapshot) -> CardText:
    top = findings[0]
    drug = top.drug
    if isinstance(top, LipidPanelMissing):
        when = f"the last one was on {_human(top.last.effective.date())}" if top.last and top.last.effective else "none is on record"
        summary = f"No lipid panel in the last {top.missing_panel_days} days while on {drug}: order a fasting lipid panel"
        detail = (f"- The label asks to monitor lipids before and periodically during treatment; {when}.\n"
                  f"- Order a fasting lipid panel.\n\nSource: {_cite(top.source)} ({top.missing_panel_days}-day interval)")
        return CardText(_summary(summary, 1), detail)
    graded = [f for f in findings if isinstance(f, LipidGradeFinding)]
    lab: LabResult = top.evidence[0]
    value = f"{_cap(top.analyte)} {_lipid_value(lab)} on {_lab_day(lab)}"
    if top.stale_after_days is not None:
        summary = f"{value} (CTCAE grade {top.grade}) is over {top.stale_after_days} days old: recheck a fasting lipid panel"
    elif not top.label_action:
        summary = f"{value} is CTCAE grade {top.grade} on {drug}: review lipid treatment"
    else:
        summary = f"{value} is CTCAE grade {top.grade} on {drug}: {_first_clause(top.action.action.split(':', 1)[-1])}"
    lines = []
    for f in graded:
        lab = f.evidence[0]
        if lab.value_mmol_l is not None:  # graded on CTCAE's mmol/L scale: shown as reported, then in mg/dL
            shown = f"**{_lipid_value(lab)}** ({_mg_per_dl(lab)})"
            scale = " (its mmol/L scale)"
        else:
            written = f" (reported as {md_text(lab.value_as_written)})" if not (lab.value_as_written or "").lower().endswith("mg/dl") else ""
            shown, scale = f"**{_mg_per_dl(lab)}**{written}", ""
        lines.append(f"- {_cap(f.analyte)}: {shown} on {_lab_day(lab)}: CTCAE v5 grade {f.grade}{scale}.")
        if f.stale_after_days is not None:
            lines.append(f"  - Older than the {f.stale_after_days}-day look-back: no grade action is advised on it. "
                         "Order a fasting lipid panel and act on the new result.")
        elif not f.label_action:
            lines.append(f"  - Review lipid-lowering treatment with the {drug} prescriber.")
        else:
            lines.append(f"  - {f.action.action}")
    if top.stale_after_days is not None:
        lines.append(f"\nSource: look-back window: {_cite(top.source)}")
    else:
        lines.append(f"\nSource: {_cite(top.source, top.section) if top.label_action else _cite(top.grade_source)}")
    return CardText(_summary(summary, 1), "\n".join(lines))


def _lipid_value(lab: LabResult) -> str:
    """A lipid value as it was graded: as reported when in mmol/L (CTCAE's mmol/L scale), else in mg/dL."""
    return _as_reported(lab, f"{lab.value_mmol_l:g} mmol/L") if lab.value_mmol_l is not None else _mg_per_dl(lab)


def _mg_per_dl(lab: LabResult) -> str:
    """A lipid value for the card, its comparator kept ("> 1000 mg/dL": a bound, graded just beyond it)."""
    assert lab.value is not None
    return _as_reported(lab, f"{lab.value:.0f} mg/dL")


def _hepatic_card(findings: list[HepaticFinding], snapshot: PatientSnapshot) -> CardText:
    """The next step for this patient (the dose for the Child-Pugh class on record, or what to record), not a table."""
    top = findings[0]
    drug, mtor, cp = top.drug, _mtor(top), top.child_pugh
    impairment = f"Child-Pugh {cp} hepatic impairment" if cp else "Hepatic impairment"
    conditions = ", ".join(f"**{md_text(c.text)}**" for c in top.evidence)
    dose = f", {mtor.daily_dose_mg:g} mg/day" if mtor.daily_dose_mg else ""
    lines = [f"- On record: {conditions}.", f"- Order: **{md_text(mtor.text)}** ({_taken_state(mtor)}){dose}."]
    if top.doses and cp:
        steps = [f"{_hepatic_dose(d)}{_HEPATIC_SCOPE.get(d.dosing or '', '')}" for d in top.doses]
        summary = (f"{impairment}: {drug} {steps[0]}" if len(steps) == 1
                   else f"{impairment} on record: adjust the {drug} dose for the use on record")
        lines += [f"- Next step: {step}." for step in steps]
    elif top.doses:
        summary = f"Hepatic impairment on record: assess the Child-Pugh class to set the {drug} dose"
        lines.append("- Next step: assess and record the Child-Pugh class (A, B or C); the label sets the dose by it.")
    else:
        product = top.advice.product if top.advice else drug
        trough = "" if product == "Fyarro" else " and check the trough"  # Fyarro's label has no trough monitoring
        summary = f"{impairment} on record: review the {product} dose against its label{trough}"
        lines.append(f"- Next step: {top.advice.text if top.advice else 'review the dose against the label.'}")
    lines.append(f"\nSource: {_cite(top.source, top.section)}")
    return CardText(_summary(summary, 1), "\n".join(lines))


_HEPATIC_SCOPE = {"fixed": " (fixed-dose use)", "tdm": " (trough-guided use)"}


def _hepatic_dose(d: HepaticDose) -> str:
    if d.dose_mg is not None:
        dose = f"{d.dose_mg:g} mg once daily"
    elif d.dose_mg_per_m2 is not None:
        dose = f"{d.dose_mg_per_m2:g} mg/m² once daily"
    else:
        dose = d.action or "see the label"
    note = f" ({d.note})" if d.note and "UNVERIFIED" not in d.note else ""
    return f"{dose}{note}"


def _infection_card(findings: list[InfectionFinding], snapshot: PatientSnapshot) -> CardText:
    top = findings[0]
    mtor, drug = _mtor(top), top.drug
    if top.stale_after_days is not None:
        summary = f"Infection recorded over {top.stale_after_days} days ago is still active on the list: confirm it has resolved"
    elif top.kind == "pneumonitis":
        summary = f"Non-infectious pneumonitis on record while on {drug}: grade it and decide whether to hold {drug}"
    else:
        summary = f"Active severe infection on record while on {drug}: " + (
            top.advice.action or f"review holding {drug} with the prescriber today")
    lines = []
    for f in findings:
        conditions = ", ".join(f"**{md_text(c.text)}**" + (f" (since {_human(c.asserted.date())})" if c.asserted else "")
                               for c in f.evidence)
        lines.append(f"- On record: {conditions}; order **{md_text(mtor.text)}** ({_taken_state(mtor)}).")
        lines.append(f"- The label: {f.advice.text}")
        if f.stale_after_days is not None:
            lines.append(f"- Next step: it is older than the {f.stale_after_days}-day look-back; confirm whether it has resolved "
                         f"and update the problem list. If it is still active, {f.advice.action or f'review holding {drug}'}.")
        elif f.kind == "pneumonitis":
            lines.append(f"- Next step: grade the pneumonitis and decide with the prescriber whether to hold or stop {drug}.")
        elif f.advice.action:
            lines.append(f"- Next step: {f.advice.action}.")
        else:
            lines.append(f"- Next step: review today with the {drug} prescriber whether to hold it until the infection is controlled.")
    lines.append(f"\nSource: {_cite(top.source, top.section)}")
    return CardText(_summary(summary, 1), "\n".join(lines))


def _angioedema_card(findings: list[AngioedemaFinding], snapshot: PatientSnapshot) -> CardText:
    top = findings[0]
    ace = top.evidence[0]
    act = "reconsider the ACE inhibitor order" if ace.is_draft else "counsel the patient"
    summary = f"{_cap(top.ace_inhibitor)} with {top.drug}: higher risk of angioedema; {act}"
    lines = [f"- **{md_text(f.evidence[0].text)}** ({_taken_state(f.evidence[0])}) with **{md_text(_mtor(f).text)}** "
             f"({_taken_state(_mtor(f))})." for f in findings]
    lines.append(f"- {top.statement.text}")
    lines.append("- Tell the patient to report swelling of the face, lips, tongue or throat at once.")
    lines.append(f"\nSource: {_cite(top.source, top.section)}")
    suggestions = _removal_suggestions([f.evidence[0] for f in findings if f.evidence[0].is_draft])
    return CardText(_summary(summary, 1), "\n".join(lines), suggestions)


def _label_restriction_card(findings: list[LabelRestrictionFinding], snapshot: PatientSnapshot) -> CardText:
    top = findings[0]
    order = _mtor(top)
    lines = [line for f in findings for line in _label_restriction_lines(f)]
    sources = list(dict.fromkeys((f.source, f.section) for f in findings))  # one per fact; usually one
    lines.append("\nSource: " + "; ".join(_cite(source, section) for source, section in sources))
    drafts = [_mtor(f) for f in findings if _mtor(f).is_draft and _mtor(f).kind == "request"]
    return CardText(_summary(_label_restriction_summary(top, order)), "\n".join(lines), _removal_suggestions(drafts))


def _label_restriction_summary(f: LabelRestrictionFinding, order: MedicationOrder) -> str:
    drug = _cap(f.drug)
    if f.earliest is not None and f.earliest_start is not None:
        act = "do not start it yet" if order.is_draft else "review with the transplant team"
        return (f"{drug} {f.days_after} days after {f.organ} transplant: the {f.earliest.product} label says not before "
                f"{_human(f.earliest_start)}; {act}")
    assert f.restriction is not None
    return f"{drug} in a {f.organ} transplant recipient: the {f.restriction.product} label advises against it; review the order"


def _label_restriction_lines(f: LabelRestrictionFinding) -> list[str]:
    order = _mtor(f)
    ordered = f"**{md_text(order.text)}** ({_taken_state(order)})"
    if f.earliest is not None and f.transplant is not None and f.transplant_date and f.earliest_start and f.start:
        start = "starts today" if f.start == f.today else f"started {_human(f.start)}"
        act = ("Do not start it before that day: remove the draft and order it again from then." if order.is_draft
               else "Review it with the transplant team now.")
        return [
            f"- {ordered} {start}: {f.days_after} days after the {f.organ} transplant on {_human(f.transplant_date)} "
            f"({md_text(f.transplant.text)}).",
            f"- The {f.earliest.product} label: not earlier than {f.earliest.days} days after {f.organ} transplant; "
            f"{f.earliest.reason}.",
            f"- Earliest start: **{_human(f.earliest_start)}**. {act}",
        ]
    assert f.restriction is not None
    shown_by = ", ".join(md_text(e.text) for e in f.evidence)
    act = "before this order goes ahead" if order.is_draft else "now"
    return [
        f"- {ordered} for a {f.organ} transplant recipient ({shown_by}).",
        f"- The {f.restriction.product} label: {f.restriction.statement[0].lower()}{f.restriction.statement[1:]}. "
        f"In {f.organ} transplant: {f.restriction.reason_for(f.context)}.",
        f"- Review the immunosuppression plan with the transplant team {act}.",
    ]


# --- wording shared by the interaction, pregnancy, lipid, hepatic, infection, angioedema and vaccine cards ---------


def _taken_state(order: MedicationOrder) -> str:
    """How the order stands, in words; a MedicationStatement is a drug the patient takes, not an order."""
    return "recorded as taken" if order.kind == "statement" else _order_state(order)


def _human(day: date) -> str:
    return f"{day.day} {day:%b %Y}"


def _when(due: date, today: date) -> str:
    """A due date already reached is "now" (issue 13), else "on 4 Dec 2026"."""
    return "now" if due <= today else f"on {_human(due)}"


def _lab_day(lab: LabResult) -> str:
    return _human(lab.effective.date()) if lab.effective else "an unknown date"


def _evidence_date(evidence: ConditionRecord | LabResult) -> date | None:
    when = evidence.effective if isinstance(evidence, LabResult) else evidence.asserted
    return when.date() if when else None


_SENTENCE_END = re.compile(r"(?<!\bSt)\.\s+(?=[A-Z])")  # a full stop before a capital, not "St. John's wort"


def _first_clause(text: str) -> str:
    """The first instruction of a label sentence, lower-cased for use after a colon: "Avoid strong CYP3A4 inducers if an
    alternative exists. If one is required, double ..." gives its first sentence, never a summary cut mid-sentence."""
    clause = _SENTENCE_END.split(text.strip().split(";")[0].split(": ")[0])[0].rstrip(".")
    return clause[:1].lower() + clause[1:]


def _surgery_card(findings: list[SurgeryTiming], snapshot: PatientSnapshot) -> CardText:
    """Issue 13: the surgery date, the last day to take the drug and the earliest restart (per the governing label);
    a hold date already past reads "now". A label with no interval gives its warning and who to plan with."""
    top = findings[0]
    drug, when = top.drug, _day(top.surgery_date, top.today)
    if top.caution is not None:
        summary = f"Surgery on {when}: plan {drug} around it with {_plan_with(top)} (wound-healing risk)"
    elif top.kind == "recent":
        major = "" if _known_major(top) else "if it was major, "
        summary = f"Surgery on {when}: {major}no {drug} before {_day(top.earliest_restart, top.today)} and until the wound heals"
    elif top.hold_is_due:
        summary = f"Hold {drug} now: surgery on {when}; restart no earlier than {_day(top.earliest_restart, top.today)} if healed"
    else:
        summary = (f"Surgery on {when}: last {drug} dose {_day(top.last_dose, top.today)}, "
                   f"restart no earlier than {_day(top.earliest_restart, top.today)}")
    lines: list[str] = []
    for f in findings:
        lines += _surgery_lines(f)
    if top.caution is not None and top.assumption and len(top.plausible_uses) > 1:  # the use decides whose advice
        lines.append(f"- Use: {top.assumption}")
    cited = top.caution or top.window
    assert cited is not None
    lines.append(f"\n_{_cite(cited.source, cited.section.split(':')[0] if top.window else cited.section)}_")
    suggestions = _surgery_plan_suggestions(findings, snapshot)
    mtor = _mtor(top)
    if top.kind == "recent" and mtor.is_draft:
        suggestions += _removal_suggestions([mtor])
    return CardText(_summary(summary, 1), "\n".join(lines), suggestions)


def _surgery_lines(f: SurgeryTiming) -> list[str]:
    event: ProcedureEvent = f.evidence[0]
    mtor, when = _mtor(f), _day(f.surgery_date, f.today)
    state = {True: "being booked", False: "planned"}[event.is_draft and event.ref.startswith("Appointment/")]
    what = f"**{md_text(event.text)}**"
    if event.surgery_evidence == "specialty":
        what += " (a surgical specialty appointment: if it is an operation)"
    taking = "starting" if mtor.is_draft else "taking"
    if f.kind == "recent":
        head = f"- {what} was done on **{when}**; the patient is {taking} **{md_text(mtor.text)}**."
    else:
        head = f"- {what} is {state} for **{when}**; the patient is {taking} **{md_text(mtor.text)}**."
    if f.caution is not None:
        return [head, f"- The {f.caution.product} label warns of impaired wound healing and sets "
                      f"no interval to stop {f.drug} around surgery: agree with {_plan_with(f)} whether and when to hold "
                      "it, and watch the wound."]
    assert f.window is not None and f.hold_from and f.last_dose and f.earliest_restart
    after = (f"**{_day(f.earliest_restart, f.today)}** ({f.window.avoid_after_major_days} days after major surgery) "
             "and only once the wound has healed.")
    if f.kind == "recent":
        # The label's interval is for major surgery; only an operation known by its code is known to be one (an EHR's
        # "surgical procedure" category or an "-ectomy" also covers a skin excision): otherwise it is said as a condition.
        return [head, f"- Give no {f.drug} before {after}" if _known_major(f) else
                f"- If it was major surgery, give no {f.drug} before {after} (the label's interval is for major surgery; "
                "this record does not say how major it was)"]
    restart = f"Restart no earlier than {after}"
    if f.hold_is_due:
        hold = (f"Hold {f.drug} **now**: the label's hold of at least {f.window.withhold_before_days} days before "
                f"elective surgery began on {_day(f.hold_from, f.today)}.")
    else:
        hold = (f"Last dose on **{_day(f.last_dose, f.today)}**; hold from {_day(f.hold_from, f.today)} "
                f"(at least {f.window.withhold_before_days} days before elective surgery).")
    return [head, f"- {hold} {restart}"]


def _known_major(finding: SurgeryTiming) -> bool:
    """A major operation by its code (procedures.json surgical_procedures: each one a major operation)."""
    return finding.evidence[0].surgery_evidence == "code"


def _plan_with(finding: SurgeryTiming) -> str:
    """The transplant team when the record shows a transplant (or one among the uses it leaves open); with no use on
    record, the product's labelled transplant use is no evidence of one: the prescriber."""
    transplant = finding.use == "transplant" or ("transplant" in finding.plausible_uses and not finding.implied_only)
    return "the transplant team" if transplant else "the prescriber"


def _day(day: date | None, today: date) -> str:
    """"4 Dec"; the year too when it is not this year's."""
    if day is None:
        return "an unknown date"
    return f"{day.day} {day:%b}" + (f" {day.year}" if day.year != today.year else "")


def _surgery_plan_suggestions(findings: list[SurgeryTiming], snapshot: PatientSnapshot) -> list[dict[str, Any]]:
    """appointment-book: a Task for the prescriber (or transplant team) to plan the drug around the surgery being
    booked. A hold is a prescriber's decision: no order is changed from the card."""
    suggestions = []
    for f in findings:
        event: ProcedureEvent = f.evidence[0]
        if not (event.is_draft and event.ref.startswith("Appointment/")) or f.kind != "planned":
            continue
        mtor = _mtor(f)
        when = _human(f.surgery_date)
        if f.window is not None and f.last_dose and f.earliest_restart:
            plan = (f"last dose {'now' if f.hold_is_due else _human(f.last_dose)}, restart no earlier than "
                    f"{_human(f.earliest_restart)} once the wound has healed")
        else:
            plan = f"the {f.caution.product if f.caution else ''} label warns of impaired wound healing and sets no interval"
        task: dict[str, Any] = {
            "resourceType": "Task",
            "status": "requested",
            "intent": "order",
            "priority": "routine",
            "description": f"Plan {f.drug} around surgery on {when}: {plan}.",
            "for": {"reference": f"Patient/{snapshot.patient_id}"},
            "authoredOn": snapshot.now.isoformat(),
        }
        if _is_reference(mtor.ref):
            task["focus"] = {"reference": mtor.ref}
        if _is_reference(event.ref):
            task["reasonReference"] = {"reference": event.ref}
        requester = mtor.resource.get("requester") if isinstance(mtor.resource, dict) else None
        if isinstance(requester, dict) and isinstance(requester.get("reference"), str):
            task["owner"] = {"reference": requester["reference"]}
        resource = Task.model_validate(task).model_dump(mode="json", exclude_none=True)
        label = f"Ask {_plan_with(f)} to plan {f.drug} around the surgery on {_day(f.surgery_date, f.today)}"
        suggestions.append({
            "label": label[:SUMMARY_MAX],
            "uuid": _new_uuid(),
            "isRecommended": True,
            "actions": [{"type": "create", "description": label, "resource": resource}],
        })
    return suggestions


def _is_reference(ref: str) -> bool:
    """A relative reference "Type/id" that a suggestion may name. A draft order sent without an id is known as its
    fullUrl (urn:uuid:...) or its place ("MedicationRequest#2"): nothing the EHR could resolve as a resourceId."""
    return _RELATIVE_REFERENCE.fullmatch(ref) is not None and not ref.endswith("/None")


def _trough_card(findings: list[TroughHighFinding], snapshot: PatientSnapshot) -> CardText:
    top = findings[0]
    lab: LabResult = top.evidence[0]
    drug, mtor, limit = top.drug, _mtor(top), top.limit.upper_ng_per_ml
    when = _lab_date(lab)
    if top.context is not None and not top.context.allows_tsc_lam_rules:
        return _context_trough_card(top, lab)
    if lab.value is None:
        summary = f"Latest {drug} level ({when}) could not be read (unit {plain_text(lab.unreadable_unit or '')}): check it by hand"
        lines = [f"- The most recent {drug} level, on {when}, reads **{md_text(lab.value_as_written or lab.unreadable_unit or '')}**, "
                 f"which cannot be converted to ng/mL. Check it against the {limit:g} ng/mL limit by hand.",
                 f"\nSource: {_cite(top.source, top.section)}."]
        return CardText(_summary(summary, 1), "\n".join(lines))
    if top.stale or top.not_steady_until:
        return _recheck_trough_card(top, lab, f"above the {limit:g} ng/mL limit", snapshot.today)
    proposal = top.proposal
    action = (f"reduce to {proposal.proposed_dose_mg:g} mg once daily" if proposal and proposal.proposed_dose_mg is not None
              else "review the dose")
    summary = f"{_cap(drug)} trough {_ng_per_ml(lab)} on {when} is above the {limit:g} ng/mL limit: {action}"
    lines = [_level_line(lab, drug), f"- Order: {md_text(mtor.text)} ({_order_state(mtor)}).", f"- {_target_range(top)}."]
    if top.context is not None and top.context.implied_only:  # no use on record: no dose from an assumed use
        lines.append(f"- {top.context.assumption} No dose is computed; review the dose for the patient's actual use.")
    elif top.indication.dosing == "fixed":  # TSC-AML: a fixed dose; the label's TDM formula is for SEGA and seizures
        lines[-1] = (f"- The use on record is fixed-dose (TSC-AML): the label sets no trough target for it; {limit:g} ng/mL "
                     "is its upper target for the trough-guided TSC uses (SEGA, seizures).")
        lines.append("- No dose is computed: review the dose and look for adverse reactions with the prescriber.")
    else:
        if top.assumed_indication and proposal and proposal.proposed_dose_mg is not None:
            lines.append(f"- No indication that sets a trough target is on record: the dose below assumes "
                         f"{top.assumed_indication}; it does not apply to fixed-dose TSC-AML, which has no trough target.")
        lines += _dose_lines(proposal, lab, "reduce", mtor)
    lines.append(f"- {_cap(_recheck_text(top.recheck, 'the change'))}; confirm the sample was drawn just before a dose.")
    lines.append(f"\nSource: {_cite(top.source, top.section)}.")
    return CardText(_summary(summary, 1), "\n".join(lines), _dose_suggestions(mtor, proposal))


def _trough_low_card(findings: list[TroughLowFinding], snapshot: PatientSnapshot) -> CardText:
    top = findings[0]
    lab: LabResult = top.evidence[0]
    drug, mtor = top.drug, _mtor(top)
    low, high = top.target.low_ng_per_ml, top.target.high_ng_per_ml
    if top.context is not None:
        return _context_trough_card(top, lab)
    if top.not_steady_until:
        return _recheck_trough_card(top, lab, f"below the {low:g}-{high:g} ng/mL target", snapshot.today)
    proposal = top.proposal
    action = (f"consider {proposal.proposed_dose_mg:g} mg once daily" if proposal and proposal.proposed_dose_mg is not None
              else "check adherence, then review the dose")
    summary = f"{_cap(drug)} trough {_ng_per_ml(lab)} on {_lab_date(lab)} is below the {low:g}-{high:g} ng/mL target: {action}"
    lines = [_level_line(lab, drug), f"- Order: {md_text(mtor.text)} ({_order_state(mtor)}).",
             f"- Use: {_indication_text(top.indication)}; the label's trough target is {low:g}-{high:g} ng/mL."]
    lines += _dose_lines(proposal, lab, "increase", mtor)
    lines.append(f"- Check adherence and interacting drugs first; {_recheck_text(top.recheck, 'any change')}.")
    lines.append(f"\nSource: {_cite(top.source, top.section)}.")
    return CardText(_summary(summary, 1), "\n".join(lines), _dose_suggestions(mtor, proposal))


def _use_text(context: TreatmentContext) -> str:
    """The use in plain words, with the product whose label governs it (issue 10: never another product's label)."""
    if context.use == "transplant":
        organ = f"{context.organ} " if context.organ else ""
        return f"{organ}transplant"
    return context.use


def _context_trough_card(top: TroughHighFinding | TroughLowFinding, lab: LabResult) -> CardText:
    """A trough for a transplant use (or several plausible uses): the governing label's range, no computed dose,
    no TSC wording. An unverified target is never shown as a number (info: review with the transplant team)."""
    assert top.context is not None and lab.value is not None
    context, drug, mtor = top.context, top.drug, _mtor(top)
    product = context.product or drug
    level = f"{_cap(drug)} trough {_ng_per_ml(lab)} on {_lab_date(lab)}"
    target = top.target
    lines = [f"- {level}; order: {md_text(mtor.text)}."]  # FHIR text in one place (md_text() when merged)
    if isinstance(top, TroughHighFinding) and top.target_unverified:
        summary = f"{level} ({product}, {_use_text(context)}): review the dose with the transplant team"
        lines.append("- This service has not verified the label's trough target for this use, so it shows none and "
                     "computes no dose.")
    elif target is not None:
        labelled = target.product or product  # Afinitor taken after a kidney transplant: Zortress's target
        side = "below" if isinstance(top, TroughLowFinding) else "above"
        summary = f"{level} is {side} the {labelled} target of {target.low_ng_per_ml:g}-{target.high_ng_per_ml:g} ng/mL: review the dose"
        lines.append(f"- {labelled} label target for {_use_text(context)}: {target.low_ng_per_ml:g}-{target.high_ng_per_ml:g} ng/mL.")
        if labelled != product:
            lines.append(f"- The order is for {product}, whose label gives no target for this use: the {labelled} label's "
                         f"target for {drug} after a {_use_text(context)} is the one shown.")
    elif isinstance(top, TroughHighFinding):
        summary = f"{level} is above the limit of every use on record: review the dose"
        lines.append(f"- Above {top.limit.upper_ng_per_ml:g} ng/mL, the highest limit of the plausible uses.")
    if isinstance(top, TroughHighFinding) and top.stale:
        summary = f"{level} is too old to dose by ({product}, {_use_text(context)}): recheck now"
        lines.append("- It is older than this service's look-back window for troughs: recheck now, just before a dose.")
    if context.assumption:
        lines.append(f"- {context.assumption}")
    if top.not_steady_until:
        lines.append(f"- Drawn before steady state on the current regimen: recheck on or after {_human(top.not_steady_until)}.")
    if not (isinstance(top, TroughHighFinding) and top.stale):
        lines.append("- Adjust the dose by the transplant protocol (this label gives no dose formula); no dose is computed here.")
    lines.append(f"\nSource: {_cite(top.source, top.section)}.")
    return CardText(_summary(summary, 1), "\n".join(lines))


def _recheck_trough_card(top: TroughHighFinding | TroughLowFinding, lab: LabResult, where: str, today: date) -> CardText:
    """A level that cannot drive a dose (older than the look-back window, or drawn before steady state)."""
    assert lab.value is not None
    drug, mtor = top.drug, _mtor(top)
    level = f"{_cap(drug)} trough {_ng_per_ml(lab)} on {_lab_date(lab)}"
    until, cause = top.not_steady_until, top.not_steady_after
    if until is not None:
        when = "now" if until <= today else f"from {_human(until)}"
        if cause is not None and cause.is_draft:  # an interacting drug being ordered, not started yet
            summary = f"{level} is {where}; a new interacting drug will change it: recheck {when}"
            reason = (f"**{md_text(cause.text)}** is being ordered now and will change the {drug} level once it is taken, "
                      "so this level gives no new dose; the interaction card says what the label advises for the combination.")
        else:
            summary = f"{level} is {where} but was drawn before steady state: recheck {when}"
            reason = f"It was drawn before steady state on {_regimen_change(cause, mtor)}, so it gives no new dose."
    else:
        when = "now"
        summary = f"{level} is {where} but is too old to dose by: recheck now"
        reason = "It is older than this service's look-back window for troughs, so it gives no new dose."
    lines = [f"- {level}; order: {md_text(mtor.text)}.", f"- {reason}", f"- Recheck the trough {when}, just before a dose.",
             f"\nSource: {_cite(top.source, top.section)}."]
    return CardText(_summary(summary, 1), "\n".join(lines))


def _regimen_change(cause: MedicationOrder | None, mtor: MedicationOrder) -> str:
    """What a trough drawn too early was drawn too soon after: the mTOR order's start or dose change, or an
    interacting drug's start (the finding's not_steady_after), with its date."""
    if cause is None or cause.authored_on is None:
        return "the current dose or interacting drugs"
    if cause.ref == mtor.ref:
        return f"the current dose, started or changed on {_human(cause.authored_on.date())}"
    return f"**{md_text(cause.text)}**, started on {_human(cause.authored_on.date())}"


def _target_range(finding: TroughHighFinding) -> str:
    """The target range of the indication on record (or assumed); with none, the label's upper limit."""
    if finding.target is not None and finding.target.high_ng_per_ml == finding.limit.upper_ng_per_ml:
        return f"The label's trough target is {finding.target.low_ng_per_ml:g}-{finding.target.high_ng_per_ml:g} ng/mL"
    return f"The label's upper trough limit is {finding.limit.upper_ng_per_ml:g} ng/mL"


def _trough_monitoring_card(findings: list[TroughMonitoringFinding], snapshot: PatientSnapshot) -> CardText:
    top = findings[0]
    drug, mtor, due, latest = top.drug, _mtor(top), top.due_date, top.latest
    after = _days_after_text(top.timing)
    if due > snapshot.today:
        event = "starting" if top.event == "start" else f"{top.event} ({_human(top.event_date)})"
        summary = f"Plan a trough level of {drug} around {_human(due)}, {after} after {event}"
    else:
        summary = f"{_cap(drug)} trough due now: none since {top.event} on {_human(top.event_date)}"
    last = f"the last trough was on {_lab_date(latest)}" if latest else "no trough is on record"
    asks = f"the label asks for a trough {after} later"
    section = top.section
    if top.start_timing is not None:  # the record does not tell a start from a dose change: both, the sooner due
        asks = (f"the label asks for a trough {_days_after_text(top.start_timing)} after a start "
                f"({top.start_timing.section}) and {after} after a dose change ({top.section})")
        if top.start_timing.source == top.source:
            section = f"{top.start_timing.section}; {top.section}"
    lines = [f"- {md_text(mtor.text)} ({_order_state(mtor)}); {last}.",
             f"- {_cap(top.event)} on {_human(top.event_date)}: {asks}.",
             f"- Use: {_indication_text(top.indication)}.",
             f"\nSource: {_cite(top.source, section)}."]
    order_date = max(due, snapshot.today)
    suggestion = _trough_order_suggestion(snapshot, mtor, drug, order_date, top.level_test)
    return CardText(_summary(summary, 1), "\n".join(lines), [suggestion])


def _contraception_card(findings: list[ContraceptionFinding], snapshot: PatientSnapshot) -> CardText:
    top = findings[0]
    drug, weeks = top.drug, top.weeks
    who = "Females" if top.sex == "female" else "Males with female partners"
    summary = f"{_cap(drug)} ordered: confirm pregnancy status; contraception during treatment and {weeks} weeks after"
    lines = [f"- Patient: {top.age:.0f} years old, of reproductive potential.",
             f"- {who} of reproductive potential should use effective contraception during treatment with {drug} and "
             f"for **{weeks} weeks** after the last dose.",
             "- Confirm pregnancy status before starting and discuss contraception.",
             f"\nSource: {_cite(top.source, top.section)}."]
    return CardText(_summary(summary, 1), "\n".join(lines))


def _dose_card(findings: list[DoseCheckFinding], snapshot: PatientSnapshot) -> CardText:
    top = findings[0]
    drug, mtor, start = top.drug, _mtor(top), top.start
    label_dose = (f"{start.dose_mg_per_m2:g} mg/m² once daily" if start.dose_mg_per_m2 is not None else f"{start.dose_mg:g} mg once daily")
    lines = [f"- Ordered: {md_text(mtor.text)}, **{top.ordered_mg:g} mg/day**.",
             f"- Use: {_indication_text(top.indication)}; label starting dose {label_dose}."]
    if top.below_label_age_years is not None:
        age, min_age = _age_text(top.below_label_age_years), start.min_age_years or 0
        who = "adults" if min_age >= 18 else f"patients {min_age:g} year{'' if min_age == 1 else 's'} and older"
        summary = f"{_cap(drug)} {top.ordered_mg:g} mg/day for a patient aged {age}: the label's dose for this use is for {who}: review"
        lines[-1] = f"- Use: {_indication_text(top.indication)}; the label's starting dose {label_dose} is for {who}."
        lines.append(f"- The patient is **{age}** old: the label gives no dose for this use at this age, so the order was "
                     "not compared with it. Review the dose and the use with the prescriber.")
        if start.age_source is not None:
            lines.append(f"- Age of the indication: {_cite(start.age_source, start.age_section)}.")
    elif top.expected_mg is None:
        summary = f"Cannot check the {drug} starting dose: record height and weight (the dose is per m²)"
        lines.append("- The dose is per m² of body surface area: record height and weight to check it.")
    else:
        if top.bsa:
            h, w = top.bsa.height, top.bsa.weight
            lines.append(f"- Body surface area (Mosteller) **{top.bsa.bsa_m2:.2f} m²** from height {h.value:.0f} cm "
                         f"({_lab_date(h)}) and weight {w.value:.1f} kg ({_lab_date(w)}).")
        lines.append(f"- Label dose for this patient: about **{top.expected_mg:.1f} mg/day**, then adjust by trough where the label says so.")
        if top.fits:
            summary = f"{_cap(drug)} dose fits the label; note the infection risk in young children"
        elif top.ordered_mg > top.expected_mg:
            summary = f"{_cap(drug)} {top.ordered_mg:g} mg/day is above the label dose (~{top.expected_mg:.1f} mg/day): review the order"
        else:
            summary = f"{_cap(drug)} {top.ordered_mg:g} mg/day is below the label dose (~{top.expected_mg:.1f} mg/day): review the order"
    if top.pediatric:
        p = top.pediatric
        lines.append(f"- Patient is under {p.below_age_years:g}: {p.note_text}")
    lines.append(f"\nSource: {_cite(top.source, top.section)}.")
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
    # A note that is not a prefetch key may quote the record (the latest hCG "as written"): escaped like any FHIR text
    lines = [f"- {_DATA_LABELS.get(key) or md_text(key, limit=_NOTE_MAX)}" for key in top.unavailable]
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
    Topic.LABEL_RESTRICTION: TopicEntry("Use the label advises against", _label_restriction_card, (
        ("transplant-team-decision", "Decided with the transplant team"),
        ("transplant-date-wrong", "Transplant date or organ on record is wrong"),
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
        "reasonReference": [{"reference": mtor.ref}] if _is_reference(mtor.ref) else None,
        "note": [{"text": "Trough: draw just before the next dose."}],
    }).model_dump(mode="json", exclude_none=True)
    return {
        "label": f"Order a trough level of {drug} for {_human(when)}",
        "uuid": _new_uuid(),
        "isRecommended": True,
        "actions": [{"type": "create", "description": f"Order a trough level of {drug} ({test.display}) for {_human(when)}", "resource": resource}],
    }


def _dose_suggestions(order: MedicationOrder, proposal: DoseProposal | None) -> list[dict[str, Any]]:
    """An update of the MedicationRequest to the proposed dose, when the order states its dose in mg."""
    proposed = proposal.proposed_dose_mg if proposal else None
    dosages = order.resource.get("dosageInstruction")
    dosage = dosages[0] if isinstance(dosages, list) and dosages else None  # any JSON may come here
    if (proposed is None or not isinstance(dosage, dict) or not order.resource.get("id") or order.doses_per_day not in (None, 1)
            or order.daily_dose_mg is None):
        return []  # never a one-click change from an order whose daily dose cannot be read
    if proposal is not None and not proposal.fits_the_ordered_unit:
        return []  # the new dose needs another strength than the one ordered: not a one-click change
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
        "actions": [{"type": "update", "description": f"Change {plain_text(order.text)} to {proposed:g} mg once daily", "resource": resource}],
    }]


def _dose_lines(proposal: DoseProposal | None, lab: LabResult, verb: str, order: MedicationOrder) -> list[str]:
    if lab.comparator:  # the formula needs the level itself: "> 20" may be 21 or 60
        return [f"- Reported as {_ng_per_ml(lab)}: the dose cannot be computed from a bound; review the dose."]
    if order.frequency_unknown:
        return ["- The order's daily dose cannot be read (how often it is taken is not stated in a form this service "
                "reads, or it has several dosage lines): no dose is computed; review the dose."]
    if proposal is None:
        return [f"- {_cap(verb)} the dose as the label's therapeutic drug monitoring guidance says "
                "(new dose = current dose × target trough / measured trough)."]
    formula = proposal.formula_dose_mg if proposal.formula_dose_mg is not None else proposal.raw_dose_mg
    arithmetic = (f"- Label formula: new dose = current dose × target / measured = {proposal.current_dose_mg:g} mg × "
                  f"{proposal.aim_ng_per_ml:g} / {lab.value:.3g} = {formula:.2f} mg/day")
    if proposal.max_increment_mg and proposal.raw_dose_mg < formula - 1e-9:
        arithmetic += (f"; an increase is capped at +{proposal.max_increment_mg:g} mg per step, "
                       f"so {proposal.raw_dose_mg:.2f} mg/day")
    if proposal.proposed_dose_mg is None:
        return [arithmetic + f", which {proposal.product} strengths cannot make better than the current dose; "
                "adjust by clinical judgement."]
    lines = [arithmetic + f"; with whole {proposal.product} tablets: **{proposal.proposed_dose_mg:g} mg once daily** "
             "(aiming at the middle of the target range is this service's choice)."]
    if not proposal.fits_the_ordered_unit:
        lines.append(f"- The order is for {proposal.unit_strength_mg:g} mg units, which cannot make {proposal.proposed_dose_mg:g} mg "
                     "whole: order the new dose on a strength that does (tablets are swallowed whole, never split).")
    return lines


def _days_after_text(timing: TroughTiming) -> str:
    """The label's interval in words: "about 14 days" (the labels say "approximately"), "10 to 20 days"."""
    return timing.days_text if timing.days_after_latest else f"about {timing.days_text}"


def _recheck_text(timing: TroughTiming | None, after: str) -> str:
    if timing is None:
        return f"recheck the trough after {after}"
    return f"recheck the trough {_days_after_text(timing)} after {after}"


def _level_line(lab: LabResult, drug: str) -> str:
    written = f" (reported as {md_text(lab.value_as_written)})" if lab.value_as_written and not lab.value_as_written.endswith("ng/mL") else ""
    return f"- Most recent {drug} level: **{_ng_per_ml(lab)}**{written} on **{_lab_date(lab)}**."


def _ng_per_ml(lab: LabResult) -> str:
    """A level for the card, its comparator kept: "> 20 ng/mL" is a bound, never the level itself."""
    assert lab.value is not None
    return _as_reported(lab, f"{lab.value:.3g} ng/mL")


def _as_reported(lab: LabResult, amount: str) -> str:
    """The amount with the lab's comparator before it when the value is a bound (Quantity.comparator)."""
    return f"{lab.comparator} {amount}" if lab.comparator else amount


def _lab_date(lab: LabResult) -> str:
    return _human(lab.effective.date()) if lab.effective else "date unknown"


def _mtor(finding: Finding) -> MedicationOrder:
    """The mTOR order a topic's finding is about (every topic but checks-incomplete has one)."""
    assert finding.mtor is not None, f"{finding.topic.value} finding without an mTOR order"
    return finding.mtor


def _age_text(age_years: float) -> str:
    """An age as a clinician says it: months under 2 years, else whole years."""
    return f"{int(age_years * 12)} months" if age_years < 2 else f"{int(age_years)} years"


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
        if order.ref in seen or not _is_reference(order.ref):
            continue
        seen.add(order.ref)
        suggestions.append({
            "label": f"Remove the draft order for {plain_text(order.text)}",
            "uuid": _new_uuid(),
            "isRecommended": len(seen) == 1,
            "actions": [{"type": "delete", "description": f"Remove the draft order for {plain_text(order.text)}", "resourceId": order.ref}],
        })
    if len(suggestions) > 1:
        for s in suggestions:
            s["isRecommended"] = True
    return suggestions


def plain_text(value: str) -> str:
    """Text from FHIR inside a suggestion label or action description, which the spec defines as plain text (not
    Markdown): one line of printable characters, at most FHIR_TEXT_MAX characters."""
    text = "".join(ch for ch in " ".join(str(value).split()) if ch.isprintable())
    return text if len(text) <= FHIR_TEXT_MAX else text[: FHIR_TEXT_MAX - 1].rstrip() + "…"


def md_text(value: str, limit: int = FHIR_TEXT_MAX) -> str:
    """Text from FHIR (a drug name, display, note), safe inside Markdown `detail` and suggestion labels: one line,
    at most `limit` characters, every Markdown control character escaped, so that the EHR's data can never
    turn into a link (GFM's bare-URL and e-mail autolinks included), emphasis, heading, list, table or HTML on the card."""
    text = "".join(ch for ch in " ".join(str(value).split()) if ch.isprintable())  # a newline could start a heading
    if len(text) > limit:
        text = text[: limit - 1].rstrip() + "…"
    text = _ORDERED_LIST_START.sub(r"\1\\\2", _MARKDOWN_SPECIAL.sub(r"\\\1", text))
    return _EMAIL_AT.sub("@\u200b", _AUTOLINK_WWW.sub(r"\1\\\2", _AUTOLINK_SCHEME.sub(r"\1\\\2", text)))


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
        when = _human(evidence.effective.date()) if evidence.effective else "date unknown"
        what = {"positive": "positive", "pregnant": "pregnant"}.get(evidence.result or "", evidence.result or "")
        return f"**{md_text(evidence.text)}**: {md_text(what)} on {when}"
    when = _human(evidence.asserted.date()) if evidence.asserted else "date unknown"
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
