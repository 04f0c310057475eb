"""The plain, already-normalised patient snapshot that rules read. No FHIR JSON, no I/O."""

from __future__ import annotations

import calendar
import dataclasses
from collections.abc import Callable, Mapping
from datetime import date, datetime, timedelta
from typing import Any, Generic, TypeVar, overload

from cds_service.knowledge import DrugConcept, DrugRole

_T = TypeVar("_T")
# A result dated later than this after "now" is a data error (or another time zone's tomorrow): never the newest.
RESULT_CLOCK_SKEW = timedelta(days=1)
# Quantity.comparator: a value reported as a bound is on one side of it only ("< 20" may be anything below 20)
UPPER_BOUNDS, LOWER_BOUNDS = frozenset({"<", "<="}), frozenset({">", ">="})


class cached(Generic[_T]):  # noqa: N801 -- used like functools.cached_property
    """functools.cached_property without its lock (Python 3.11 takes one RLock, shared by every instance of the
    class, on each first read): the value is a pure function of the frozen fields, so two threads computing it at
    once store the same answer. Cached in the instance's __dict__: equality and dataclasses.replace() ignore it."""

    def __init__(self, compute: Callable[[Any], _T]):
        self.compute = compute
        self.name = compute.__name__
        self.__doc__ = compute.__doc__

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, instance: None, owner: type | None = None) -> cached[_T]: ...

    @overload
    def __get__(self, instance: object, owner: type | None = None) -> _T: ...

    def __get__(self, instance: Any, owner: type | None = None) -> _T | cached[_T]:
        if instance is None:
            return self  # the descriptor itself, read on the class
        value = instance.__dict__[self.name] = self.compute(instance)
        return value


@dataclasses.dataclass(frozen=True)
class MedicationOrder:
    """A MedicationRequest, a current MedicationStatement or a draft Immunization, with what the knowledge recognises."""

    ref: str  # relative reference, e.g. "MedicationRequest/123"
    text: str  # what the clinician sees, e.g. "Afinitor 10 MG Oral Tablet"
    concepts: tuple[DrugConcept, ...]
    status: str
    kind: str = "request"  # "request" | "statement" (taken, e.g. over the counter: nothing to delete) | "immunization"
    is_draft: bool = False
    is_selected: bool = False
    authored_on: datetime | None = None
    dose_mg: float | None = None  # per administration
    doses_per_day: float | None = None  # from dosageInstruction timing, when stated
    # The timing says how often in a way that cannot be read with confidence (a timing.code this service does not map,
    # a code that contradicts repeat, several dosage lines): the daily dose is unknown, never assumed once daily.
    frequency_unknown: bool = False
    product_rxnorm: str | None = None  # the mTOR product code when one was recognised
    prior_prescription: str | None = None  # MedicationRequest.priorPrescription (relative reference), for renewals
    resource: Mapping[str, Any] = dataclasses.field(default_factory=dict, compare=False, repr=False)

    def concepts_with(self, role: DrugRole) -> tuple[DrugConcept, ...]:
        if not self.concepts:  # most of a record's medications: nothing recognised
            return ()
        return self._concepts_by_role.get(role, ())

    @cached  # every rule asks every medication for one role or another: grouped once
    def _concepts_by_role(self) -> dict[DrugRole, tuple[DrugConcept, ...]]:
        by_role: dict[DrugRole, list[DrugConcept]] = {}
        for concept in self.concepts:
            by_role.setdefault(concept.role, []).append(concept)
        return {role: tuple(concepts) for role, concepts in by_role.items()}

    @cached  # frozen dataclass: cached in __dict__, read by every rule
    def mtor_drug(self) -> str | None:
        """'everolimus' or 'sirolimus' when this order is an mTOR inhibitor."""
        found = self.concepts_with(DrugRole.MTOR_INHIBITOR)
        return found[0].key if found else None

    @property
    def daily_dose_mg(self) -> float | None:
        """Dose per day; once daily when the order states no frequency (every mTOR label dose is once daily); None when
        the dose or how often it is taken cannot be read (no rule may compute a dose from a guessed schedule)."""
        if self.dose_mg is None or self.frequency_unknown:
            return None
        return self.dose_mg * (self.doses_per_day or 1)


@dataclasses.dataclass(frozen=True)
class LabResult:
    """An Observation the rules use, its value in the canonical unit of its kind."""

    ref: str
    kind: str  # "drug-level" | "pregnancy-status" | "hcg" | "lipid" | "height" | "weight"
    effective: datetime | None
    text: str
    analyte: str | None = None  # drug levels: "everolimus" | "sirolimus"; lipids: "triglycerides" | "cholesterol"
    value: float | None = None  # ng/mL (drug levels), mg/dL (lipids), cm (height), kg (weight)
    value_mmol_l: float | None = None  # lipids reported in mmol/L: the value as reported (graded on CTCAE's mmol/L scale)
    value_as_written: str = ""  # e.g. "18.2 ug/L" or "> 20 ng/mL" (comparator kept), for the card
    # Quantity.comparator ("<", "<=", ">=", ">"): the value is a bound, read just beyond it; None when exact
    comparator: str | None = None
    unreadable_unit: str | None = None  # a quantity whose unit could not be converted
    result: str | None = None  # "positive" | "negative" | "pregnant" | "not-pregnant"

    @property
    def drug(self) -> str | None:
        return self.analyte if self.kind == "drug-level" else None


@dataclasses.dataclass(frozen=True)
class ConditionRecord:
    ref: str
    text: str
    codes: frozenset[tuple[str, str]]
    is_active: bool  # clinically active and confirmed (or verification not stated): what every rule counts
    asserted: datetime | None  # onset, else recordedDate
    kinds: frozenset[str] = frozenset()  # what the knowledge recognises: "pregnancy", "tsc-aml", ...
    # clinically active but verificationStatus unconfirmed, provisional or differential: a candidate diagnosis, never a
    # basis for a card, except pregnancy, which then asks to confirm it
    is_unconfirmed: bool = False
    is_refuted: bool = False  # verificationStatus refuted or entered-in-error: says nothing, active or not


NEVER_SURGERY = "never"


def _birthday(born: date, year: int) -> date:
    """The birthday in a year; 1 March for 29 February in a common year."""
    return born.replace(year=year) if (born.month, born.day) != (2, 29) or calendar.isleap(year) else date(year, 3, 1)


@dataclasses.dataclass(frozen=True)
class ProcedureEvent:
    """A planned or performed procedure from ServiceRequest, Procedure or Appointment."""

    ref: str
    text: str
    when: datetime | None
    is_planned: bool  # planned (ordered, in preparation, booked) rather than done
    is_surgery: bool
    is_draft: bool = False  # a draft order, or an appointment being booked (appointment-book)
    # How the record shows surgery: "category", "service-type", "specialty", "based-on" (an Appointment for a
    # surgical ServiceRequest), "name", "code" (a major operation by its SNOMED CT code, procedures.json
    # surgical_procedures); "" when it does not; NEVER_SURGERY for a non-operative procedure or clinic visit.
    surgery_evidence: str = ""
    based_on: tuple[str, ...] = ()  # Appointment.basedOn ServiceRequest references
    # (system, code) of Procedure.code / ServiceRequest.code (OID systems mapped to FHIR URIs); none for Appointments
    codes: frozenset[tuple[str, str]] = frozenset()


@dataclasses.dataclass(frozen=True)
class PatientSnapshot:
    now: datetime
    patient_id: str
    birth_date: date | None = None
    gender: str | None = None
    medications: tuple[MedicationOrder, ...] = ()
    labs: tuple[LabResult, ...] = ()
    conditions: tuple[ConditionRecord, ...] = ()
    procedures: tuple[ProcedureEvent, ...] = ()
    unavailable: tuple[str, ...] = ()  # prefetch keys whose data could not be had (or a check that could not run)
    skipped_resources: int = 0  # resources not read: not valid enough, or another patient's
    unreadable: tuple[tuple[str, int], ...] = ()  # (resource type, count) of resources skipped as unreadable
    order_history: tuple[MedicationOrder, ...] = ()  # ended mTOR MedicationRequests: tell a dose change from a renewal

    @cached
    def mtor_orders(self) -> tuple[MedicationOrder, ...]:
        return tuple(m for m in self.medications if m.mtor_drug)

    @property
    def today(self) -> date:
        return self.now.date()

    @property
    def age_years(self) -> float | None:
        """Age by the calendar: the years completed (18 on the 18th birthday; born on 29 February, a year older on
        1 March in a common year), plus the part of the current year of age gone by."""
        if self.birth_date is None:
            return None
        born, today = self.birth_date, self.today
        years = today.year - born.year - ((today.month, today.day) < (born.month, born.day))
        last, following = _birthday(born, born.year + years), _birthday(born, born.year + years + 1)
        return years + (today - last).days / (following - last).days

    def active_conditions(self, kind: str) -> tuple[ConditionRecord, ...]:
        found = self._active_conditions.get(kind)
        if found is None:
            found = self._active_conditions[kind] = tuple(c for c in self.conditions if c.is_active and kind in c.kinds)
        return found

    def latest_lab(self, kind: str, analyte: str | None = None) -> LabResult | None:
        """The newest dated result of a kind (and analyte); undated or future-dated results never count as newest."""
        of_kind = self._labs_by_kind.get(kind, ())
        latest_possible = self.now + RESULT_CLOCK_SKEW
        dated = [(lab.effective, lab) for lab in of_kind
                 if lab.effective and lab.effective <= latest_possible and (analyte is None or lab.analyte == analyte)]
        return max(dated, key=lambda pair: pair[0])[1] if dated else None

    # Rules ask the same questions of the same snapshot: indexed on first use (in __dict__, not fields).
    @cached
    def _active_conditions(self) -> dict[str, tuple[ConditionRecord, ...]]:
        return {}

    @cached
    def _labs_by_kind(self) -> dict[str, list[LabResult]]:
        by_kind: dict[str, list[LabResult]] = {}
        for lab in self.labs:  # in record order: max() keeps the first of equally recent results, as before
            by_kind.setdefault(lab.kind, []).append(lab)
        return by_kind
