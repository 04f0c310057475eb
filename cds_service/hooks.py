"""One hook call, start to end: patient data -> rules -> findings -> cards -> suppression. No HTTP here."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta, timezone
from typing import Protocol

from cds_service.cards import OVERRIDE_SYSTEM, TOPICS, Card, render_cards
from cds_service.fhir.client import QueryTiming
from cds_service.fhir.snapshot import build_snapshot, gather
from cds_service.findings import Finding, NotListed, Severity, Topic
from cds_service.knowledge import DrugRole, Knowledge
from cds_service.limits import MAX_FINDINGS_PER_TOPIC
from cds_service.patient import PatientSnapshot
from cds_service.rules import evaluate
from cds_service.rules.completeness import check_data_completeness
from cds_service.services import HookCall, ServiceDefinition
from cds_service.settings import Settings
from cds_service.store import CardRecord


class OverrideHistory(Protocol):
    """What suppression needs from the card store."""

    def overridden_recently(self, card: CardRecord, since: datetime) -> bool: ...


@dataclasses.dataclass(frozen=True)
class Caller:
    """Who receives the cards: they are recorded for, and suppressed per, this caller and patient."""

    issuer: str = ""  # the JWT's iss; "" when JWTs are off
    patient_hash: str = ""


@dataclasses.dataclass(frozen=True)
class HookAnswer:
    cards: list[Card]  # the cards to show, after suppression
    records: list[CardRecord]  # one per card shown: what the card store keeps
    held_back: list[CardRecord]  # cards not shown because an identical one was overridden recently
    fhir_timings: list[QueryTiming]
    unmatched_selections: int = 0  # order-select: selections naming no draft order (the focus widened to every draft)

    @property
    def suppressed(self) -> int:
        return len(self.held_back)


def answer_hook(
    call: HookCall,
    service: ServiceDefinition,
    knowledge: Knowledge,
    settings: Settings,
    now: datetime | None = None,
    history: OverrideHistory | None = None,
    caller: Caller = Caller(),
) -> HookAnswer:
    """Raises DataUnavailable (412) when the medications cannot be had; otherwise always answers."""
    now = now or datetime.now(timezone.utc)
    data = gather(call, service, settings)
    snapshot = build_snapshot(data, call, knowledge, now)
    findings: list[Finding]
    # a selected order whose Medication could not be had may be the mTOR inhibitor, or what interacts with it
    unidentified_selection = bool(data.unresolved_drafts & data.selected)
    if not snapshot.mtor_orders:
        # Some medications could not be identified (unreadable, unresolved references, pages not fetched): an empty
        # answer would read as "not on an mTOR inhibitor", so say what could not be checked instead. On
        # order-select, only when the selection is a drug the checks weigh (the unread order may be the mTOR
        # inhibitor it interacts with); on appointment-book, only when a surgery is booked. Otherwise this service
        # speaks only about mTOR inhibitors.
        unidentified = "medications" in snapshot.unavailable and (
            call.hook not in _FOCUSED_HOOKS
            or (call.hook == "order-select" and (_selection_is_checked_drug(data.selected, snapshot) or unidentified_selection))
            or (call.hook == "appointment-book" and _books_surgery(snapshot))
        )
        findings = list(check_data_completeness(snapshot, data.fhir_server_refused)) if unidentified else []
    else:
        notes: list[str | NotListed] = []  # checks that failed on this data, findings beyond a card's cap
        findings = _in_focus(evaluate(snapshot, knowledge, notes), call, snapshot, data.selected)
        failed = [note for note in notes if isinstance(note, str)]
        if failed:
            snapshot = dataclasses.replace(snapshot, unavailable=(*snapshot.unavailable, *failed))
        # after the focus, a topic whose card is not full has listed all its findings about the selection
        not_listed = [note for note in notes if isinstance(note, NotListed)
                      and sum(f.topic is note.topic for f in findings) >= MAX_FINDINGS_PER_TOPIC]
        if (call.hook not in _FOCUSED_HOOKS or findings or unidentified_selection or _selection_concerns_mtor(data.selected, snapshot)
                or _books_surgery(snapshot)):
            # on order-select and appointment-book, speak about the selected orders / booked appointments only
            findings += check_data_completeness(snapshot, data.fhir_server_refused, not_listed)
    cards = render_cards(findings, snapshot)
    records = [_card_record(card, call, service, caller, now) for card in cards]
    shown = [_not_recently_overridden(card, record, settings, now, history) for card, record in zip(cards, records, strict=True)]
    return HookAnswer(
        [card for card, show in zip(cards, shown, strict=True) if show],
        [record for record, show in zip(records, shown, strict=True) if show],
        [record for record, show in zip(records, shown, strict=True) if not show],
        data.timings,
        data.unmatched_selections,
    )


def _not_recently_overridden(
    card: Card, record: CardRecord, settings: Settings, now: datetime, history: OverrideHistory | None
) -> bool:
    """CDS_SUPPRESS_OVERRIDDEN_HOURS: an identical card (caller, patient, topic, triggering resources) that a
    clinician overrode with a reason is not shown again for that long. Critical cards and the incomplete-checks card
    always are."""
    hours = settings.suppress_overridden_hours
    if hours <= 0 or history is None:
        return True
    if card.indicator == Severity.CRITICAL.indicator or card.topic is Topic.CHECKS_INCOMPLETE:
        return True
    return not history.overridden_recently(record, now - timedelta(hours=hours))


def _card_record(card: Card, call: HookCall, service: ServiceDefinition, caller: Caller, now: datetime) -> CardRecord:
    """What the card store keeps of a card: enough to bind feedback to the caller and to what the card offered."""
    return CardRecord(
        uuid=card.uuid,
        service_id=service.id,
        hook=call.hook,
        topic=card.topic.value,
        indicator=card.indicator,
        hook_instance=call.hook_instance[:200],
        patient_hash=caller.patient_hash,
        trigger_key=card.trigger_key,
        issued_at=now,
        issuer=caller.issuer,
        fhir_server=call.fhir_server or "",
        topic_display=TOPICS[card.topic].title,
        suggestion_ids=tuple(s["uuid"] for s in card.suggestions if "uuid" in s),
        override_reasons=tuple((OVERRIDE_SYSTEM, code) for code, _ in card.override_reasons),
    )


_FOCUSED_HOOKS = ("order-select", "appointment-book")


def _in_focus(findings: list[Finding], call: HookCall, snapshot: PatientSnapshot, selections: frozenset[str]) -> list[Finding]:
    """order-select focuses on the selected orders, appointment-book on the appointments being booked: keep
    findings that rest on one of them."""
    if call.hook == "order-select":
        selected = set(selections)
    elif call.hook == "appointment-book":
        selected = {p.ref for p in snapshot.procedures if p.is_draft and p.ref.startswith("Appointment/")}
    else:
        return findings
    return [f for f in findings if f.refs & selected]


def _books_surgery(snapshot: PatientSnapshot) -> bool:
    """appointment-book: an appointment being booked is surgery, or may be (the order it is based on could not be read)."""
    unread_orders = "serviceRequests" in snapshot.unavailable
    return any(p.is_draft and p.ref.startswith("Appointment/") and (p.is_surgery or (p.based_on and unread_orders))
               for p in snapshot.procedures)


def _selection_concerns_mtor(selected: frozenset[str], snapshot: PatientSnapshot) -> bool:
    return any(m.ref in selected for m in snapshot.mtor_orders)


def _selection_is_checked_drug(selected: frozenset[str], snapshot: PatientSnapshot) -> bool:
    """A selected order the checks weigh against an mTOR inhibitor: one itself, an interacting drug, a live or
    possibly live vaccine, an ACE inhibitor."""
    return any(role is not DrugRole.NOT_LIVE_VACCINE
               for m in snapshot.medications if m.ref in selected for role in (c.role for c in m.concepts))
