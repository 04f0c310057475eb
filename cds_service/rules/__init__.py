"""Rules: small pure functions, snapshot + knowledge in, findings out. No I/O, no Flask, no JSON.

RULES is the order rules run in; a new rule is one function added here (its finding type lives in findings.py,
its renderer and override reasons in cards.TOPICS). SUPERSEDED_BY keeps cards from
repeating each other's advice: a finding of the key topic is dropped when one of the listed topics fired
for the same drug.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from collections.abc import Callable, Sequence

from cds_service.findings import Finding, NotListed, Topic
from cds_service.knowledge import Knowledge, Source
from cds_service.limits import MAX_FINDINGS_PER_TOPIC
from cds_service.patient import MedicationOrder, PatientSnapshot
from cds_service.rules.angioedema import check_angioedema
from cds_service.rules.common import TRANSPLANT_PRODUCTS, drug_of, product_label
from cds_service.rules.conditions import check_hepatic_impairment, check_infection
from cds_service.rules.interactions import check_cyp3a4_interactions
from cds_service.rules.lipids import check_lipids
from cds_service.rules.ordering import check_contraception, check_dose
from cds_service.rules.pregnancy import check_pregnancy
from cds_service.rules.restrictions import check_label_restrictions
from cds_service.rules.surgery import check_surgery_timing
from cds_service.rules.treatment_context import treatment_context
from cds_service.rules.trough import check_trough_high, check_trough_low, check_trough_monitoring
from cds_service.rules.vaccines import check_live_vaccines

_LOG = logging.getLogger(__name__)
Rule = Callable[[PatientSnapshot, Knowledge], Sequence[Finding]]

RULES: tuple[Rule, ...] = (
    check_cyp3a4_interactions,
    check_live_vaccines,
    check_pregnancy,
    check_surgery_timing,
    check_trough_high,
    check_trough_low,
    check_trough_monitoring,
    check_lipids,
    check_hepatic_impairment,
    check_infection,
    check_angioedema,
    check_contraception,
    check_dose,
    check_label_restrictions,
)

SUPERSEDED_BY: dict[Topic, frozenset[Topic]] = {
    Topic.CONTRACEPTION: frozenset({Topic.PREGNANCY}),
    Topic.TROUGH_MONITORING: frozenset({Topic.TROUGH_HIGH, Topic.TROUGH_LOW, Topic.CYP3A4_INTERACTION}),
    Topic.DOSE_CHECK: frozenset({Topic.HEPATIC_IMPAIRMENT}),
}


def evaluate(snapshot: PatientSnapshot, knowledge: Knowledge, notes: list[str | NotListed] | None = None) -> list[Finding]:
    """Every finding for the patient; empty when the patient is on no current or draft mTOR inhibitor.

    Each rule runs in isolation: one that fails on this patient's data (date arithmetic out of range, ...) is
    logged and named in `notes` (for the checks-incomplete card) while the others still run. At most
    MAX_FINDINGS_PER_TOPIC findings per topic are kept, most severe and selected/draft orders first; `notes` counts
    the rest per topic (NotListed).
    """
    if not snapshot.mtor_orders:
        return []
    notes = [] if notes is None else notes
    findings: list[Finding] = []
    for rule in RULES:
        try:
            findings += rule(snapshot, knowledge)
        except (ArithmeticError, ValueError, TypeError, KeyError, AttributeError, IndexError) as exc:
            _LOG.error("rule %s failed: %s", rule.__name__, type(exc).__name__)  # the type only: no patient data
            notes.append(f"the {rule.__name__.removeprefix('check_').replace('_', ' ')} check (it failed on this patient's data)")
    fired = {(f.topic, drug_of(f.mtor) if f.mtor else None) for f in findings}
    findings = [
        dataclasses.replace(f, label=governing_label(snapshot, knowledge, f.mtor)) if f.mtor and f.label is None else f
        for f in findings
        if not any((t, drug_of(f.mtor) if f.mtor else None) in fired for t in SUPERSEDED_BY.get(f.topic, ()))
    ]
    return _at_most_per_topic(findings, snapshot, notes)


def governing_label(snapshot: PatientSnapshot, knowledge: Knowledge, order: MedicationOrder) -> Source:
    """The label a card on this order names: the one governing its use or product (a Zortress or Fyarro order never
    names Afinitor or Rapamune); a generic order with no known use names its drug's reference label."""
    context = treatment_context(snapshot, knowledge, order)
    drug = drug_of(order)
    transplant_everolimus = product_label(knowledge, TRANSPLANT_PRODUCTS[drug]) if context.use == "transplant" and drug == "everolimus" else None
    return context.label or product_label(knowledge, context.product) or transplant_everolimus or knowledge.label_sources[drug]


def _at_most_per_topic(findings: list[Finding], snapshot: PatientSnapshot, notes: list[str | NotListed]) -> list[Finding]:
    """Findings grow as mTOR orders x other medications: a card lists at most MAX_FINDINGS_PER_TOPIC of them."""
    selected = {m.ref for m in snapshot.medications if m.is_selected}
    drafts = {m.ref for m in snapshot.medications if m.is_draft}
    ranked = sorted(range(len(findings)), key=lambda i: (-findings[i].severity, not findings[i].refs & selected, not findings[i].refs & drafts))
    kept: set[int] = set()
    listed: Counter[Topic] = Counter()
    more: Counter[Topic] = Counter()
    for i in ranked:
        topic = findings[i].topic
        if listed[topic] < MAX_FINDINGS_PER_TOPIC:
            kept.add(i)
            listed[topic] += 1
        else:
            more[topic] += 1
    notes += [NotListed(topic, n) for topic, n in more.items()]
    return [f for i, f in enumerate(findings) if i in kept]
