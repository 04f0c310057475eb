"""One hook call, start to end: patient data -> rules -> findings -> cards -> suppression. No HTTP here."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta, timezone
from typing import Protocol

from cds_service.cards import Card, render_cards
from cds_service.fhir.client import QueryTiming
from cds_service.fhir.snapshot import build_snapshot, gather
from cds_service.findings import Finding, Severity, Topic
from cds_service.knowledge import Knowledge
from cds_service.patient import PatientSnapshot
from cds_service.rules import evaluate
from cds_service.rules.completeness import check_data_completeness
from cds_service.services import HookCall, ServiceDefinition
from cds_service.settings import Settings


class OverrideHistory(Protocol):
    """What suppression needs from the card store."""

    def overridden_recently(self, patient_hash: str, topic: str, trigger_key: str, since: datetime) -> bool: ...


@dataclasses.dataclass(frozen=True)
class HookAnswer:
    cards: list[Card]  # the cards to show, after suppression
    suppressed: int  # cards not shown because an identical one was overridden recently
    fhir_timings: list[QueryTiming]


def answer_hook(
    call: HookCall,
    service: ServiceDefinition,
    knowledge: Knowledge,
    settings: Settings,
    now: datetime | None = None,
    history: OverrideHistory | None = None,
    patient_hash: str = "",
) -> HookAnswer:
    """Raises DataUnavailable (412) when the medications cannot be had; otherwise always answers."""
    now = now or datetime.now(timezone.utc)
    data = gather(call, service, settings)
    snapshot = build_snapshot(data, call, knowledge, now)
    incomplete = check_data_completeness(snapshot, data.fhir_server_refused)
    findings: list[Finding]
    if not snapshot.mtor_orders:
        # Some medications could not be identified (unresolved references, pages not fetched): an empty answer
        # would read as "not on an mTOR inhibitor", so say what could not be checked instead. Otherwise this
        # service speaks only about mTOR inhibitors.
        unidentified = "medications" in snapshot.unavailable and call.hook != "order-select"
        findings = list(incomplete) if unidentified else []
    else:
        findings = _in_focus(evaluate(snapshot, knowledge), call)
        if call.hook != "order-select" or findings or _selection_concerns_mtor(call, snapshot):
            findings += incomplete  # on order-select, speak about the selected orders only
    cards = render_cards(findings, snapshot)
    shown = _not_recently_overridden(cards, settings, now, history, patient_hash)
    return HookAnswer(shown, len(cards) - len(shown), data.timings)


def _not_recently_overridden(
    cards: list[Card], settings: Settings, now: datetime, history: OverrideHistory | None, patient_hash: str
) -> list[Card]:
    """CDS_SUPPRESS_OVERRIDDEN_HOURS: an identical card (patient, topic, triggering resources) that a clinician
    overrode with a reason is not shown again for that long. Critical cards and the incomplete-checks card always are."""
    hours = settings.suppress_overridden_hours
    if hours <= 0 or history is None:
        return cards
    since = now - timedelta(hours=hours)
    return [
        card for card in cards
        if card.indicator == Severity.CRITICAL.indicator or card.topic is Topic.CHECKS_INCOMPLETE
        or not history.overridden_recently(patient_hash, card.topic.value, card.trigger_key, since)
    ]


def _in_focus(findings: list[Finding], call: HookCall) -> list[Finding]:
    """order-select focuses on the selected orders: keep findings that rest on one of them."""
    if call.hook != "order-select":
        return findings
    selected = set(call.selections)
    return [f for f in findings if f.refs & selected]


def _selection_concerns_mtor(call: HookCall, snapshot: PatientSnapshot) -> bool:
    selected = set(call.selections)
    return any(m.ref in selected for m in snapshot.mtor_orders)
