"""Rules: small pure functions, snapshot + knowledge in, findings out. No I/O, no Flask, no JSON.

The list below is the order rules run in; a new rule is one function added here.
"""

from __future__ import annotations

from collections.abc import Callable

from cds_service.findings import Finding
from cds_service.knowledge import Knowledge
from cds_service.patient import PatientSnapshot
from cds_service.rules.interactions import check_cyp3a4_interactions
from cds_service.rules.pregnancy import check_pregnancy
from cds_service.rules.surgery import check_surgery_timing
from cds_service.rules.trough import check_trough_high
from cds_service.rules.vaccines import check_live_vaccines

Rule = Callable[[PatientSnapshot, Knowledge], list[Finding]]

RULES: tuple[Rule, ...] = (
    check_cyp3a4_interactions,
    check_live_vaccines,
    check_pregnancy,
    check_surgery_timing,
    check_trough_high,
)


def evaluate(snapshot: PatientSnapshot, knowledge: Knowledge) -> list[Finding]:
    """Every finding for the patient; empty when the patient is on no current or draft mTOR inhibitor."""
    if not snapshot.mtor_orders:
        return []
    return [finding for rule in RULES for finding in rule(snapshot, knowledge)]
