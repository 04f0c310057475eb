"""What rules return: findings are data (topic, severity, evidence, numbers, source), not cards."""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping
from typing import Any

from cds_service.knowledge import Source
from cds_service.patient import MedicationOrder

TOPIC_SYSTEM = "https://mtor-cds.org/fhir/CodeSystem/card-topic"


class Topic(str, enum.Enum):
    """The card topics: the contract with EHRs, feedback analytics, logs and metrics."""

    CYP3A4_INTERACTION = "cyp3a4-interaction"
    LIVE_VACCINE = "live-vaccine"
    PREGNANCY = "pregnancy"
    SURGERY_TIMING = "surgery-timing"
    TROUGH_HIGH = "trough-high"
    TROUGH_LOW = "trough-low"
    TROUGH_MONITORING = "trough-monitoring"
    LIPIDS = "lipids"
    HEPATIC_IMPAIRMENT = "hepatic-impairment"
    INFECTION = "infection"
    ANGIOEDEMA = "angioedema"
    CONTRACEPTION = "contraception"
    DOSE_CHECK = "dose-check"
    CHECKS_INCOMPLETE = "checks-incomplete"


class Severity(enum.IntEnum):
    INFO = 1
    WARNING = 2
    CRITICAL = 3

    @property
    def indicator(self) -> str:
        return self.name.lower()


@dataclasses.dataclass(frozen=True)
class Finding:
    topic: Topic
    severity: Severity
    mtor: MedicationOrder | None  # the mTOR inhibitor order concerned
    evidence: tuple[Any, ...]  # MedicationOrder / LabResult / ConditionRecord / ProcedureEvent
    source: Source
    section: str = ""
    facts: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    label: Source | None = None  # the drug's prescribing information: what the card's source names

    @property
    def refs(self) -> frozenset[str]:
        """Every resource this finding rests on, the mTOR order included."""
        refs = {e.ref for e in self.evidence if getattr(e, "ref", None)}
        if self.mtor is not None:
            refs.add(self.mtor.ref)
        return frozenset(refs)

    @property
    def trigger_key(self) -> str:
        return "|".join(sorted(self.refs))
