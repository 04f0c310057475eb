"""Rules: small pure functions, snapshot + knowledge in, findings out. No I/O, no Flask, no JSON.

RULES is the order rules run in; a new rule is one function added here (its finding type lives in findings.py,
its renderer and override reasons in cards.TOPICS). SUPERSEDED_BY keeps cards from
repeating each other's advice: a finding of the key topic is dropped when one of the listed topics fired
for the same drug.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

from cds_service.findings import Finding, Topic
from cds_service.knowledge import Knowledge
from cds_service.patient import PatientSnapshot
from cds_service.rules.angioedema import check_angioedema
from cds_service.rules.common import drug_of
from cds_service.rules.conditions import check_hepatic_impairment, check_infection
from cds_service.rules.interactions import check_cyp3a4_interactions
from cds_service.rules.lipids import check_lipids
from cds_service.rules.ordering import check_contraception, check_dose
from cds_service.rules.pregnancy import check_pregnancy
from cds_service.rules.surgery import check_surgery_timing
from cds_service.rules.trough import check_trough_high, check_trough_low, check_trough_monitoring
from cds_service.rules.vaccines import check_live_vaccines

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
)

SUPERSEDED_BY: dict[Topic, frozenset[Topic]] = {
    Topic.CONTRACEPTION: frozenset({Topic.PREGNANCY}),
    Topic.TROUGH_MONITORING: frozenset({Topic.TROUGH_HIGH, Topic.TROUGH_LOW, Topic.CYP3A4_INTERACTION}),
    Topic.DOSE_CHECK: frozenset({Topic.HEPATIC_IMPAIRMENT}),
}


def evaluate(snapshot: PatientSnapshot, knowledge: Knowledge) -> list[Finding]:
    """Every finding for the patient; empty when the patient is on no current or draft mTOR inhibitor."""
    if not snapshot.mtor_orders:
        return []
    findings = [finding for rule in RULES for finding in rule(snapshot, knowledge)]
    fired = {(f.topic, drug_of(f.mtor) if f.mtor else None) for f in findings}
    return [
        dataclasses.replace(f, label=knowledge.label_sources[drug_of(f.mtor)]) if f.mtor else f
        for f in findings
        if not any((t, drug_of(f.mtor) if f.mtor else None) in fired for t in SUPERSEDED_BY.get(f.topic, ()))
    ]
