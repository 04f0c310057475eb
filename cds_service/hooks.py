"""One hook call, start to end: patient data -> rules -> cards. No HTTP here."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timezone

from cds_service.cards import render_cards, unchecked_note
from cds_service.fhir.client import QueryTiming
from cds_service.fhir.snapshot import build_snapshot, gather
from cds_service.findings import Finding
from cds_service.knowledge import Knowledge
from cds_service.patient import PatientSnapshot
from cds_service.rules import evaluate
from cds_service.services import HookCall, ServiceDefinition
from cds_service.settings import Settings


@dataclasses.dataclass(frozen=True)
class HookAnswer:
    cards: list[dict]
    trigger_keys: list[str]  # per card: the resources it rests on (for the card store and suppression)
    fhir_timings: list[QueryTiming]


def answer_hook(
    call: HookCall,
    service: ServiceDefinition,
    knowledge: Knowledge,
    settings: Settings,
    now: datetime | None = None,
) -> HookAnswer:
    """Raises DataUnavailable (412) when the medications cannot be had; otherwise always answers."""
    data = gather(call, service, settings)
    snapshot = build_snapshot(data, call, knowledge, now or datetime.now(timezone.utc))
    if not snapshot.mtor_orders:
        if "medications" in snapshot.unavailable and call.hook != "order-select":
            # Some medications could not be identified (unresolved references, pages not fetched): an empty
            # answer would read as "not on an mTOR inhibitor", so say what could not be checked instead.
            cards = render_cards([], snapshot, unchecked_note(snapshot, data.fhir_server_refused))
            return HookAnswer(cards, [""] * len(cards), data.timings)
        return HookAnswer([], [], data.timings)  # this service speaks only about mTOR inhibitors
    notes: list[str] = []  # checks that failed on this data, findings beyond a card's cap
    findings = _in_focus(evaluate(snapshot, knowledge, notes), call, snapshot)
    snapshot = dataclasses.replace(snapshot, unavailable=(*snapshot.unavailable, *notes)) if notes else snapshot
    note = unchecked_note(snapshot, data.fhir_server_refused)
    if note and call.hook == "order-select" and not findings and not _selection_concerns_mtor(call, snapshot):
        note = None  # on order-select, speak about the selected orders only
    cards = render_cards(findings, snapshot, note)
    return HookAnswer(cards, [_trigger_key(card, findings) for card in cards], data.timings)


def _trigger_key(card: dict, findings: list[Finding]) -> str:
    topic = card["source"]["topic"]["code"]
    return "|".join(sorted({f.trigger_key for f in findings if f.topic.value == topic}))[:500]


def _in_focus(findings: list[Finding], call: HookCall, snapshot: PatientSnapshot) -> list[Finding]:
    """order-select focuses on the selected orders: keep findings that rest on one of them."""
    if call.hook != "order-select":
        return findings
    selected = set(call.selections)
    return [f for f in findings if f.refs & selected]


def _selection_concerns_mtor(call: HookCall, snapshot: PatientSnapshot) -> bool:
    selected = set(call.selections)
    return any(m.ref in selected for m in snapshot.mtor_orders)
