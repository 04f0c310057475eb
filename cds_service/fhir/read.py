"""Patient data for one hook call, the reading half: FHIR JSON -> PatientSnapshot. No I/O.

Resources are read with plain dict access, each in isolation: one that cannot be read (wrong types, a date
the service cannot place in time, a negative or non-finite quantity) is skipped and counted by resource type
for the checks-incomplete card, never allowed to hide findings from the others. An unknown date ("next
Tuesday") is not a broken resource: it reads as no date. A medication is never dropped for an out-of-range date
or dose alone (what the drug is matters for interactions): that value reads as unknown and is said. Observations
are read by one reader per lab kind.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, date, datetime, timedelta
from typing import Any, TypeGuard

from cds_service.fhir.gather import GatheredData, medication_reference, proposed_appointments, reference_to
from cds_service.knowledge import DrugRole, Knowledge, normalize_text
from cds_service.knowledge.loader import CVX, LOINC, RXNORM, VACCINATION_WORDS, contains_phrase
from cds_service.limits import MAX_MEDICATIONS_PER_CALL, MAX_MTOR_ORDERS_PER_CALL
from cds_service.patient import (
    LOWER_BOUNDS,
    NEVER_SURGERY,
    RESULT_CLOCK_SKEW,
    UPPER_BOUNDS,
    ConditionRecord,
    LabResult,
    MedicationOrder,
    PatientSnapshot,
    ProcedureEvent,
)
from cds_service.services import HookCall

_PATIENT_REFERENCE = re.compile(r"(?:^|/)Patient/([^/]+)(?:/_history/[^/]+)?/?$")
# Dates the rules can reason about; outside them a date is a data error (9999-12-31, 0001-01-01), not a time.
READABLE_YEARS = range(1800, 2201)
# No amount read (ng/mL, mg/dL, cm, kg, mg, doses per day, timing periods) comes near a billion: beyond is a data error.
MAX_AMOUNT = 1e9
CURRENT_STATEMENT_STATUSES = frozenset({"active", "intended", "on-hold"})  # MedicationStatement: taken now or soon
# A draft order in one of these orders nothing (an EHR signing a discontinuation sends the order cancelled or stopped):
# it is not weighed, and it takes its prefetched twin with it; so does one with doNotPerform ("do not give").
# Immunization has no draft status, so a draft one may come as "not-done" (not given yet): only entered-in-error ends it.
ENDED_DRAFT_STATUSES = {
    "MedicationRequest": frozenset({"cancelled", "stopped", "completed", "entered-in-error"}),
    "Immunization": frozenset({"entered-in-error"}),
    "ServiceRequest": frozenset({"revoked", "completed", "entered-in-error"}),
}
_VACCINE_ROLES = frozenset({DrugRole.LIVE_VACCINE, DrugRole.AMBIGUOUS_VACCINE, DrugRole.NOT_LIVE_VACCINE})
# A ServiceRequest that tests for immunity is a lab order, whatever vaccine it names ("yellow fever vaccine antibody
# titer", "varicella immunization status IgG"): never read as a vaccine being given. Unless it says why a vaccine is
# given: a test's result in the order's text ("non-immune", "no immunity on serology", "IgG negative") is the reason.
_IMMUNITY_TEST_WORDS = frozenset({"titer", "titre", "titers", "titres", "antibody", "antibodies", "serology", "igg", "igm",
                                  "immunity"})
_TEST_RESULT_WORDS = frozenset({"no", "non", "not", "negative", "nonimmune"})


_UNCONFIRMED_VERIFICATION = frozenset({"unconfirmed", "provisional", "differential"})
_ORDER_KINDS = {"MedicationRequest": "request", "MedicationStatement": "statement", "Immunization": "immunization"}


@dataclasses.dataclass(slots=True)
class _LabFacts:
    """What every lab reader gets: the Observation and what was already read from it (not frozen: built for every
    lab read, and a frozen dataclass costs a setattr call per field)."""

    resource: Mapping[str, Any]
    ref: str
    kind: str
    analyte: str | None
    effective: datetime | None
    text: str


class Unreadable(ValueError):
    """A value that is present but cannot be used (out of range, not finite, negative): its resource is skipped."""


class UnknownFrequency(ValueError):
    """A dosage says how often in a form that cannot be read with confidence: the daily dose is unknown (never once
    daily by default), the medication is still read."""


# --- FHIR JSON -> snapshot ---------------------------------------------------------------------


def build_snapshot(data: GatheredData, call: HookCall, knowledge: Knowledge, now: datetime) -> PatientSnapshot:
    reader = _Reader(knowledge, call.patient_id, data.medications, now)
    selections = data.selected
    medications: dict[str, MedicationOrder] = {}
    history: list[MedicationOrder] = []
    procedures: list[ProcedureEvent] = []
    for resource in data.by_key.get("medications", ()):
        order = reader.safely(reader.medication_order, resource, is_draft=False, selected=False)
        if order and _do_not_perform(order.resource):
            continue  # a request that the drug not be given ("do not give MMR"): a prohibition, not a medication
        if order and order.status in ("active", "on-hold") and not (_course_ended(resource, now) and order.mtor_drug is None):
            medications[order.ref] = order
        elif order and order.mtor_drug and order.status in ("completed", "stopped"):
            history.append(order)  # an earlier mTOR order: its dose tells a dose change from a renewal
    for resource in data.by_key.get("medicationStatements", ()):
        statement = reader.safely(reader.medication_statement, resource)
        if statement:
            medications[statement.ref] = statement
    medication_problems = sum(reader.unreadable.values())
    for ref, resource in data.drafts:
        rtype = resource.get("resourceType")
        if rtype in ("MedicationRequest", "Immunization"):
            order = reader.safely(reader.medication_order, resource, is_draft=True, selected=ref in selections, ref=ref)
            if order and (order.status in ENDED_DRAFT_STATUSES[rtype] or _do_not_perform(order.resource)
                          or (rtype == "Immunization" and _not_given_for_a_reason(order.resource))):
                medications.pop(order.ref, None)
            elif order:
                medications[order.ref] = order  # a re-signed order replaces its prefetched twin
        elif rtype == "ServiceRequest":
            event = reader.safely(reader.procedure_event, resource, is_draft=True, ref=ref)
            procedures += [event] if event else []
            vaccination = reader.safely(reader.vaccination_order, resource, selected=ref in selections, ref=ref)
            if vaccination:
                medications[vaccination.ref] = vaccination  # a vaccine ordered as a ServiceRequest: weighed as one
    for key in ("procedures", "serviceRequests", "appointments"):
        for resource in data.by_key.get(key, ()):
            event = reader.safely(reader.procedure_event, resource, is_draft=False)
            procedures += [event] if event else []
    for resource in proposed_appointments(call):  # appointment-book: the appointments being booked
        event = reader.safely(reader.procedure_event, resource, is_draft=True)
        procedures += [event] if event else []
    procedures = link_surgical_appointments(procedures)
    labs = [lab for r in data.by_key.get("observations", ()) if (lab := reader.safely(reader.lab_result, r))]
    conditions = [c for r in data.by_key.get("conditions", ()) if (c := reader.safely(reader.condition, r))]
    patient = next(
        (r for r in data.by_key.get("patient", ()) if isinstance(r, dict) and r.get("resourceType") == "Patient" and r.get("id") == call.patient_id),
        {},
    )  # demographics of another patient must never feed the age- and sex-based checks
    demographics = reader.safely(reader.demographics, patient) if patient else None
    unavailable = list(data.unchecked)
    if reader.partly_read:
        unavailable.append(f"the start date or dose of {reader.partly_read} medication(s): out of range, read as unknown")
    kept = _bounded(list(medications.values()))
    unscheduled = sum(1 for m in kept if m.mtor_drug and m.frequency_unknown and m.is_draft)
    if unscheduled:  # the dose check and a trough card's dose need the daily dose: say it could not be had
        unavailable.append(f"the daily dose of {unscheduled} mTOR inhibitor order(s): its schedule could not be read")
    # A medication naming another patient may be this patient's own under a wrong reference: with none left, an empty
    # answer would read as "not on an mTOR inhibitor".
    if medication_problems or len(kept) < len(medications) or reader.foreign.keys() & _ORDER_KINDS.keys():
        # An unreadable or uncounted current medication may be the mTOR inhibitor or what interacts with it.
        unavailable.append("medications")
    snapshot = PatientSnapshot(
        now=now,
        patient_id=call.patient_id,
        birth_date=demographics[0] if demographics else None,
        gender=demographics[1] if demographics else None,
        medications=tuple(kept),
        labs=tuple(labs),
        conditions=tuple(conditions),
        procedures=tuple(procedures),
        unavailable=tuple(dict.fromkeys(unavailable)),
        skipped_resources=reader.skipped + data.malformed_entries,
        unreadable=tuple(sorted((reader.unreadable + Counter({"Bundle.entry": data.malformed_entries})).items())),
        order_history=tuple(history),
    )
    unread = _unread_latest_results(snapshot, knowledge)
    if unread:
        snapshot = dataclasses.replace(snapshot, unavailable=(*snapshot.unavailable, *unread))
    return snapshot


def _unread_latest_results(snapshot: PatientSnapshot, knowledge: Knowledge) -> list[str]:
    """Latest results a rule needs but could not read: said, so that no card is not read as "normal" or "not pregnant"."""
    said = [f"the unit of the latest {analyte} result (not convertible to mg/dL): its CTCAE grade was not checked"
            for analyte in ("triglycerides", "cholesterol")
            if (lab := snapshot.latest_lab("lipid", analyte)) is not None and lab.value is None and lab.unreadable_unit]
    hcg = snapshot.latest_lab("hcg")
    # No interpretation flag, no reference range, no unit with a sourced cut-off ("1500 mU/mL"): a positive test unread.
    if (hcg is not None and hcg.result is None and snapshot.gender != "male"
            and hcg.effective is not None and hcg.effective >= knowledge.lookback_start("hcg-test", snapshot.now)):
        written = f" ({hcg.value_as_written})" if hcg.value_as_written else ""
        said.append(f"the latest hCG result{written}: neither positive nor negative could be read (no interpretation, "
                    "reference range or known unit): pregnancy was not checked against it")
    # A result dated more than a day ahead is a data error, never the newest result (RESULT_CLOCK_SKEW): said, so that a
    # positive hCG or a high level entered with a wrong date is not silently left out.
    ahead = [lab for lab in snapshot.labs if lab.effective and lab.effective > snapshot.now + RESULT_CLOCK_SKEW]
    if ahead:
        names = ", ".join(dict.fromkeys(_FUTURE_RESULT_NAMES.get(lab.kind, lab.kind) for lab in ahead))
        said.append(f"a result dated more than a day ahead ({names}): not used; check its date" if len(ahead) == 1 else
                    f"{len(ahead)} results dated more than a day ahead ({names}): not used; check their dates")
    return said


_FUTURE_RESULT_NAMES = {"drug-level": "trough level", "pregnancy-status": "pregnancy status", "hcg": "hCG", "lipid": "lipids",
                        "height": "height", "weight": "weight"}


def _bounded(medications: list[MedicationOrder]) -> list[MedicationOrder]:
    """Findings grow as mTOR orders x other medications: at most MAX_MTOR_ORDERS_PER_CALL of the one and
    MAX_MEDICATIONS_PER_CALL in all are weighed, drafts first (what is being ordered now)."""
    if len(medications) <= MAX_MEDICATIONS_PER_CALL and sum(1 for m in medications if m.mtor_drug) <= MAX_MTOR_ORDERS_PER_CALL:
        return medications  # the common case: nothing to leave out
    mtor = sorted((m for m in medications if m.mtor_drug), key=lambda m: not m.is_draft)[:MAX_MTOR_ORDERS_PER_CALL]
    others = sorted((m for m in medications if not m.mtor_drug), key=lambda m: not m.is_draft)
    kept = {id(m) for m in [*mtor, *others[: MAX_MEDICATIONS_PER_CALL - len(mtor)]]}
    return [m for m in medications if id(m) in kept]


class _Reader:
    """Reads one resource type at a time into snapshot records; counts what it must skip."""

    def __init__(self, knowledge: Knowledge, patient_id: str, medications: Mapping[str, Mapping], now: datetime):
        self.k = knowledge
        self.now = now
        self.patient_id = patient_id
        self._own_reference = f"Patient/{patient_id}"
        self.medications = medications
        self.skipped = 0  # every resource not read: unreadable or another patient's
        self.unreadable: Counter[str] = Counter()  # resource type -> resources that could not be read
        self.foreign: Counter[str] = Counter()  # resource type -> resources that name another patient
        self.partly_read = 0  # medications read with an out-of-range date or amount taken as unknown

    def _codings(self, concept: Any) -> list[dict]:
        """Codings with OID system forms (urn:oid:2.16.840.1.113883.6.88 ...) mapped to their FHIR URIs."""
        codings = _codings(concept)
        aliases = self.k.system_aliases
        for coding in codings:  # a plain loop: this runs for every coded element of every resource
            system = coding.get("system")
            if isinstance(system, str) and system in aliases:
                break
        else:
            return codings
        return [{**c, "system": aliases[c["system"]]} if isinstance(c.get("system"), str) and c["system"] in aliases else c
                for c in codings]

    def safely(self, read: Callable[..., Any], resource: Any, **kwargs: Any) -> Any:
        """read(resource), or None when the resource is another patient's or cannot be read (then counted)."""
        if not isinstance(resource, dict):
            self.skipped += 1
            self.unreadable["not a resource"] += 1
            return None
        try:
            if not self._is_this_patients(resource):
                self.skipped += 1
                rtype = resource.get("resourceType")
                self.foreign[rtype if isinstance(rtype, str) and rtype.isalpha() else "unknown"] += 1
                return None
            return read(resource, **kwargs)
        except (AttributeError, KeyError, TypeError, ValueError, IndexError, ArithmeticError):
            self.skipped += 1
            rtype = resource.get("resourceType")
            self.unreadable[rtype if isinstance(rtype, str) and rtype.isalpha() else "unknown"] += 1
            return None

    def demographics(self, patient: Mapping) -> tuple[date | None, str | None]:
        gender = patient.get("gender")
        return _date(patient.get("birthDate")), gender if isinstance(gender, str) else None

    def _is_this_patients(self, resource: Mapping[str, Any]) -> bool:
        """Drop resources that plainly belong to another patient (a prefetch must never mix patients)."""
        subject = resource.get("subject")
        if isinstance(subject, dict) and subject.get("reference") == self._own_reference:
            return True  # the common case, without the regular expression
        reference = _get(subject, "reference") or _get(resource, "patient", "reference")
        if reference == self._own_reference:
            return True
        match = _PATIENT_REFERENCE.search(reference) if isinstance(reference, str) else None
        if match is None and resource.get("resourceType") == "Appointment":  # its patient is a participant
            actors = [_get(p, "actor", "reference") for p in resource.get("participant") or () if isinstance(p, dict)]
            patients = [m.group(1) for a in actors if isinstance(a, str) and (m := _PATIENT_REFERENCE.search(a))]
            return not patients or self.patient_id in patients
        return match is None or match.group(1) == self.patient_id

    def medication_order(self, resource: Mapping, *, is_draft: bool, selected: bool, ref: str = "") -> MedicationOrder | None:
        rtype = resource.get("resourceType")
        if rtype == "Immunization":
            concept_source = resource.get("vaccineCode") or {}
            codings, texts = self._codings(concept_source), _texts(concept_source)
        elif rtype in ("MedicationRequest", "MedicationStatement"):
            codings, texts = self._medication_codes(resource)
        else:
            return None
        dosages = resource.get("dosageInstruction" if rtype != "MedicationStatement" else "dosage")
        dosage = _first(dosages)
        texts_for_exclusions = (*texts, *_texts(dosage), *_texts(dosage.get("route"))) if dosage else tuple(texts)
        when = resource.get("authoredOn") or resource.get("occurrenceDateTime")
        if rtype == "MedicationStatement":
            when = resource.get("effectiveDateTime") or _get(resource, "effectivePeriod", "start") or resource.get("dateAsserted")
        # What the drug is matters more than when or how much (interactions, live vaccines): an out-of-range
        # date or amount reads as unknown here, and is said, rather than dropping the medication.
        unknown: list[str] = []
        authored_on, dose_mg = _or_unknown(_datetime, when, unknown), _or_unknown(_dose_mg, dosage, unknown)
        try:
            doses_per_day = _or_unknown(_doses_per_day, dosage, unknown)
            frequency_unknown = "_doses_per_day" in unknown  # out of range: unknown, never once daily
        except UnknownFrequency:
            doses_per_day, frequency_unknown = None, True
        lines = [d for d in dosages if isinstance(d, dict)] if isinstance(dosages, list) else []
        if len(lines) > 1:
            # Several dosage lines (concurrent, or one after another by sequence): the first alone does not give the
            # daily dose; the dose per administration stands only when every line states the same one.
            frequency_unknown = True
            dose_mg = dose_mg if all(_or_unknown(_dose_mg, d, []) == dose_mg for d in lines) else None
        if unknown:
            self.partly_read += 1
        return MedicationOrder(
            ref=ref or f"{rtype}/{resource.get('id')}",
            kind=_ORDER_KINDS[rtype],
            text=_display(texts, codings) or "unnamed medication",
            concepts=_recognized_medication(self.k, _code_key(codings), texts_for_exclusions),
            status=str(resource.get("status") or ""),
            is_draft=is_draft,
            is_selected=selected,
            authored_on=authored_on,
            dose_mg=dose_mg,
            doses_per_day=doses_per_day,
            frequency_unknown=frequency_unknown,
            product_rxnorm=self._mtor_product_code(codings),
            prior_prescription=reference_to(resource.get("priorPrescription"), "MedicationRequest"),
            resource=resource,
        )

    def vaccination_order(self, resource: Mapping, *, selected: bool, ref: str = "") -> MedicationOrder | None:
        """A draft ServiceRequest that orders a vaccine, read as that immunization: its code is CVX, or its name says
        vaccine, vaccination or immunization. None for any other ServiceRequest: labs are ServiceRequests too, and "MMR
        immunity panel", "Varicella IgG" or "yellow fever vaccine antibody titer" must never read as a vaccine being
        given."""
        if resource.get("status") in ENDED_DRAFT_STATUSES["ServiceRequest"] or _do_not_perform(resource):
            return None
        code = resource.get("code")
        codings, texts = self._codings(code), _texts(code)
        coded = any(c.get("system") == CVX for c in codings)
        words = set(normalize_text(" ".join(texts)))
        immunity_test = _IMMUNITY_TEST_WORDS & words and not _TEST_RESULT_WORDS & words
        if not coded and (not VACCINATION_WORDS & words or immunity_test):
            return None
        concepts = _recognized_medication(self.k, _code_key(codings), tuple(texts))
        if not any(c.role in _VACCINE_ROLES for c in concepts):
            return None
        return MedicationOrder(
            ref=ref or f"ServiceRequest/{resource.get('id')}",
            kind="immunization",
            text=_display(texts, codings) or "vaccine",
            concepts=tuple(c for c in concepts if c.role in _VACCINE_ROLES),
            status=str(resource.get("status") or ""),
            is_draft=True,
            is_selected=selected,
            authored_on=_or_unknown(_datetime, resource.get("authoredOn"), []),
            resource=resource,
        )

    def _mtor_product_code(self, codings: list[dict]) -> str | None:
        """The first RxNorm code that is an mTOR product (mtor_drugs.json), if any."""
        for coding in codings:
            if coding.get("system") == RXNORM and coding.get("code") in self.k.mtor_products:
                return coding["code"]
        return None

    def medication_statement(self, resource: Mapping) -> MedicationOrder | None:
        """A current MedicationStatement (e.g. St John's wort taken over the counter): taken, not an order."""
        if resource.get("resourceType") != "MedicationStatement" or resource.get("status") not in CURRENT_STATEMENT_STATUSES:
            return None
        ended = _end_of(_get(resource, "effectivePeriod", "end"))
        if ended is not None and ended <= self.now:
            return None  # "active" but taken until a day now past: a list not kept up to date, not a drug taken now
        return self.medication_order(resource, is_draft=False, selected=False)

    def _medication_codes(self, request: Mapping) -> tuple[list[dict], list[str]]:
        concept = request.get("medicationCodeableConcept")
        if isinstance(concept, dict):
            return self._codings(concept), _texts(concept)
        reference = request.get("medicationReference")
        if not isinstance(reference, dict):
            return [], []
        medication: Mapping | None = None
        target = reference.get("reference")
        if isinstance(target, str) and target.startswith("#"):
            contained = request.get("contained")
            medication = next(
                (c for c in contained or () if isinstance(c, dict) and c.get("id") == target[1:]), None
            )
        elif (resolved := medication_reference(request)) is not None:
            medication = self.medications.get(resolved)
        codings, texts = [], [reference.get("display")]
        if isinstance(medication, dict):
            codings += self._codings(medication.get("code"))
            texts += _texts(medication.get("code"))
            for ingredient in medication.get("ingredient") or ():
                item = ingredient.get("itemCodeableConcept") if isinstance(ingredient, dict) else None
                codings += self._codings(item)
                texts += _texts(item)
        return codings, [t for t in texts if isinstance(t, str)]

    def lab_result(self, resource: Mapping) -> LabResult | None:
        if resource.get("resourceType") != "Observation" or resource.get("status") in ("entered-in-error", "cancelled"):
            return None
        code = resource.get("code") or {}
        codings = self._codings(code)
        kinds = self.k.observation_kinds
        match = None
        for coding in codings:
            if coding.get("system") == LOINC and coding.get("code") in kinds:
                match = kinds[coding["code"]]
                break
        texts = _texts(code)
        if match is None and isinstance(resource.get("valueQuantity"), dict):
            # Local codes: a level named after an mTOR inhibitor ("Everolimus level", "RAPAMUNE TROUGH").
            match = _named_drug_level(self.k, " ".join(texts))
        if match is None:
            return None  # not an observation any rule reads: skip it before any further work
        if resource.get("status") == "registered" or not _has_result(resource):
            return None  # no result yet, or none (dataAbsentReason): it must never stand as the newest of its kind
        kind, analyte = match
        effective = _datetime(  # a Period with only its end (a collection ended then) is dated by its end
            resource.get("effectiveDateTime")
            or _get(resource, "effectivePeriod", "start")
            or _get(resource, "effectivePeriod", "end")
            or resource.get("effectiveInstant")
            or resource.get("issued")
        )
        ref = f"Observation/{resource.get('id')}"
        text = _display(texts, codings) or "observation"
        return _LAB_READERS[kind](self, _LabFacts(resource, ref, kind, analyte, effective, text))

    def _drug_level(self, lab: _LabFacts) -> LabResult:
        molar_mass = self.k.mtor_drugs[lab.analyte or ""]["molar_mass"]["g_per_mol"]  # no analyte: KeyError, unreadable
        return self._quantity(lab, lambda v, u: _to_ng_per_ml(v, u, molar_mass, self.k))

    def _pregnancy_status(self, lab: _LabFacts) -> LabResult:
        resource = lab.resource
        values = {(c.get("system"), c.get("code")) for c in self._codings(resource.get("valueCodeableConcept"))}
        answer = normalize_text(str(_get(resource, "valueCodeableConcept", "text") or resource.get("valueString") or ""))
        if values & self.k.pregnant_codes or (not values and answer in self.k.pregnant_words):
            result = "pregnant"
        elif values & self.k.not_pregnant_codes or (not values and answer in self.k.not_pregnant_words):
            result = "not-pregnant"
        else:
            result = None
        return LabResult(lab.ref, lab.kind, lab.effective, lab.text, result=result)

    def _hcg(self, lab: _LabFacts) -> LabResult:
        result = self._test_result(lab.resource)
        quantity = lab.resource.get("valueQuantity")
        written = ""
        # a lower bound ("> 4 mIU/mL") is never negative, whatever its flag says: the value may be above any cut-off
        if isinstance(quantity, dict) and (result is None or (result == "negative" and _comparator(quantity) in LOWER_BOUNDS)):
            result = self._quantitative_hcg_result(lab.resource)
            written = _as_written(quantity)
        return LabResult(lab.ref, lab.kind, lab.effective, lab.text, result=result, value_as_written=written)

    def _quantitative_hcg_result(self, resource: Mapping) -> str | None:
        """A quantitative hCG (lookback.json hcg_quantitative): interpretation codes first, then the lab's
        referenceRange, then the sourced serum cut-off: below it negative, at or above it "indeterminate" (no sourced
        positive cut-off exists: the pregnancy rule asks to confirm); None when no cut-off applies (urine, molar units)."""
        q = self.k.quantitative_hcg
        quantity = resource["valueQuantity"]
        comparator = _comparator(quantity)
        interpretations = {(c.get("system"), c.get("code")) for i in resource.get("interpretation") or () for c in self._codings(i)}
        if interpretations & q.positive_interpretations:
            return "positive"
        if interpretations & q.negative_interpretations and comparator not in LOWER_BOUNDS:
            return "negative"
        value = quantity.get("value")
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return None
        for reference in resource.get("referenceRange") or ():
            high = reference.get("high") if isinstance(reference, dict) else None
            if isinstance(high, dict) and isinstance(high.get("value"), (int, float)) and _same_unit(high, quantity):
                side = _side_of(value, comparator, high["value"])
                return {"below": "negative", "at or above": "positive"}.get(side or "")
        loinc = {c.get("code") for c in self._codings(resource.get("code")) if c.get("system") == LOINC}
        factor = next((q.iu_per_l_factor[u.strip().lower()] for u in (quantity.get("code"), quantity.get("unit"))
                       if isinstance(u, str) and u.strip().lower() in q.iu_per_l_factor), None)
        if loinc & q.threshold_loinc and factor is not None:
            # at or above the non-pregnant cut-off, with nothing from the lab to say more: not negative, not proven positive
            side = _side_of(value * factor, comparator, q.negative_below_iu_per_l)
            return {"below": "negative", "at or above": "indeterminate"}.get(side or "")
        return None

    def _lipid(self, lab: _LabFacts) -> LabResult:
        per_mmol = self.k.lipid_analytes[lab.analyte or ""].mg_dl_per_mmol_l  # no analyte: KeyError, unreadable
        result = self._quantity(lab, lambda v, u: _to_mg_dl(v, u, per_mmol, self.k))
        quantity = lab.resource.get("valueQuantity") or {}
        if result.value is not None and any(isinstance(u, str) and u.strip().lower() == "mmol/l"
                                            for u in (quantity.get("code"), quantity.get("unit"))):
            result = dataclasses.replace(result, value_mmol_l=round(result.value / per_mmol, 9))  # as reported, not x/y*y
        return result

    def _height(self, lab: _LabFacts) -> LabResult:
        return self._quantity(lab, lambda v, u: v * self.k.cm_factor[u] if u in self.k.cm_factor else None, with_analyte=False)

    def _weight(self, lab: _LabFacts) -> LabResult:
        return self._quantity(lab, lambda v, u: v * self.k.kg_factor[u] if u in self.k.kg_factor else None, with_analyte=False)

    def _quantity(self, lab: _LabFacts, convert: Callable[[float, str], float | None], with_analyte: bool = True) -> LabResult:
        """A quantity in its kind's canonical unit; a unit we cannot convert is kept visible, never guessed."""
        ref, kind, effective, text = lab.ref, lab.kind, lab.effective, lab.text
        analyte = lab.analyte if with_analyte else None
        quantity = lab.resource.get("valueQuantity") or {}
        value = quantity.get("value")
        unit_label = str(quantity.get("unit") or quantity.get("code") or "")
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return LabResult(ref, kind, effective, text, analyte=analyte, unreadable_unit="no numeric value")
        value = _measure(value)
        comparator = _comparator(quantity)
        if comparator == UNKNOWN_COMPARATOR:
            return LabResult(ref, kind, effective, text, analyte=analyte, value_as_written=_as_written(quantity),
                             unreadable_unit="a comparator that is not <, <=, >= or >")
        if comparator in UPPER_BOUNDS:
            value = max(value - 1e-9, 0.0)  # "< 2 ng/mL" is below 2
        elif comparator in LOWER_BOUNDS:
            value += 1e-9  # "> 1000 mg/dL" is above 1000 (CTCAE grade 4, not 3); no dose is computed from a bound
        # The UCUM code and the printed unit are each read; when both convert but disagree ("mmol/L" printed over the
        # code "mg/dL"), which one the number is in is unknown: never read (a 38-fold error in cholesterol).
        readings = {round(c, 9) for u in (quantity.get("code"), quantity.get("unit"))
                    if isinstance(u, str) and (c := convert(value, u.strip().replace("μ", "µ").lower())) is not None}
        if len(readings) > 1:
            unit_label = f"{quantity.get('unit')}, coded {quantity.get('code')}"
        converted = _measure(readings.pop()) if len(readings) == 1 else None
        return LabResult(ref, kind, effective, text, analyte=analyte, value=converted, value_as_written=_as_written(quantity),
                         unreadable_unit=None if converted is not None else unit_label or "no unit", comparator=comparator)

    def _test_result(self, resource: Mapping) -> str | None:
        codes = {(c.get("system"), c.get("code")) for c in self._codings(resource.get("valueCodeableConcept"))}
        for interpretation in resource.get("interpretation") or ():
            codes |= {(c.get("system"), c.get("code")) for c in self._codings(interpretation)}
        if codes & self.k.result_positive:
            return "positive"
        if codes & self.k.result_negative:
            return "negative"
        if isinstance(resource.get("valueBoolean"), bool):  # a qualitative test reported as detected / not detected
            return "positive" if resource["valueBoolean"] else "negative"
        words = " ".join(normalize_text(str(resource.get("valueString") or _get(resource, "valueCodeableConcept", "text") or "")))
        if words in self.k.result_negative_words:
            return "negative"
        if words in self.k.result_positive_words:
            return "positive"
        return None

    def condition(self, resource: Mapping) -> ConditionRecord | None:
        if resource.get("resourceType") != "Condition":
            return None
        code = resource.get("code") or {}
        codings, texts = self._codings(code), _texts(code)
        codes = _system_codes(codings)
        # A date no rule can place in time makes any condition unreadable (said on the checks-incomplete card).
        asserted = _datetime(resource.get("onsetDateTime") or _get(resource, "onsetPeriod", "start") or resource.get("recordedDate"))
        text = " ".join(texts)
        kinds = _condition_kinds(self.k, codes, text)
        if not kinds and not self.k.transplant_or_oncology_contexts(codes, text):
            # a condition no rule reads (rules ask for conditions by kind, the treatment context for transplant and
            # oncology codes): skip it before any further work
            return None
        clinical = {c.get("code") for c in self._codings(resource.get("clinicalStatus"))}
        verification = {c.get("code") for c in self._codings(resource.get("verificationStatus"))}
        abated = any(k.startswith("abatement") for k in resource)
        refuted = bool(verification & {"refuted", "entered-in-error"})
        clinically_active = (bool(clinical & {"active", "recurrence", "relapse"}) or (not clinical and not abated)) and not refuted
        # FHIR R4 condition-ver-status: unconfirmed, and its children provisional and differential, are "not sufficient
        # evidence to treat this as a confirmed condition"; confirmed wins when both are coded
        unconfirmed = bool(verification & _UNCONFIRMED_VERIFICATION) and "confirmed" not in verification
        return ConditionRecord(
            ref=f"Condition/{resource.get('id')}",
            text=_display(texts, codings) or "condition",
            codes=codes,
            kinds=kinds,
            is_active=clinically_active and not unconfirmed,
            asserted=asserted,
            is_unconfirmed=clinically_active and unconfirmed,
            is_refuted=refuted,
        )

    def procedure_event(self, resource: Mapping, *, is_draft: bool, ref: str = "") -> ProcedureEvent | None:
        rtype = resource.get("resourceType")
        status = resource.get("status")
        if _do_not_perform(resource):
            return None  # "do not perform": nothing is planned or done
        planned = status in self.k.planned_statuses.get(rtype, ())
        done = status in self.k.done_statuses.get(rtype, ())
        if not (planned or done):
            return None  # cancelled, entered-in-error, no-show, revoked, completed appointments: never surgery to come
        based_on: tuple[str, ...] = ()
        # What was done or ordered, by code (not the category: "surgical procedure" says no organ)
        what = self._codings(resource.get("code")) if rtype in ("ServiceRequest", "Procedure") else []
        what_codes = _system_codes(what)
        if rtype == "ServiceRequest":
            when = (resource.get("occurrenceDateTime") or _get(resource, "occurrencePeriod", "start")
                    or _timing_start(resource.get("occurrenceTiming")))
            concepts = [resource.get("code"), *(resource.get("category") or ())]
            texts = [t for c in concepts for t in _texts(c)]
        elif rtype == "Procedure":
            when = resource.get("performedDateTime") or _get(resource, "performedPeriod", "start")
            if done:
                when = _get(resource, "performedPeriod", "end") or when
            concepts = [resource.get("code"), resource.get("category")]
            texts = [t for c in concepts for t in _texts(c)]
        elif rtype == "Appointment":
            # a proposed or waitlisted one may have only the window asked for (FHIR R4 invariant app-3): its earliest day
            when = resource.get("start") or _earliest_start(resource.get("requestedPeriod"))
            # The specialty is not read as text: "General surgery" names who, not what is booked.
            concepts = [*(resource.get("serviceType") or ()), *(resource.get("serviceCategory") or ()),
                        resource.get("appointmentType"), *(resource.get("reasonCode") or ())]
            description = resource.get("description")
            texts = [*([description] if isinstance(description, str) else []), *(t for c in concepts for t in _texts(c))]
            based_on = tuple(_references(resource.get("basedOn"), "ServiceRequest"))
        else:
            return None
        codes = {(c.get("system"), c.get("code")) for concept in concepts for c in self._codings(concept)}
        evidence = self._surgery_evidence(resource, codes, texts, what_codes)
        named = next((self.k.surgical_procedures[c] for c in what_codes if c in self.k.surgical_procedures), "")
        return ProcedureEvent(
            ref=ref or f"{rtype}/{resource.get('id')}",
            text=_display(texts, []) or named.removesuffix(" (procedure)") or rtype,
            when=_datetime(when, keep_offset=True),  # days to surgery count on the hospital's calendar
            is_planned=planned,
            is_surgery=evidence not in ("", NEVER_SURGERY),
            is_draft=is_draft,
            surgery_evidence=evidence,
            based_on=based_on,
            codes=what_codes,
        )

    def _surgery_evidence(
        self, resource: Mapping, codes: set[tuple[Any, Any]], texts: list[str], what: frozenset[tuple[str, str]] = frozenset()
    ) -> str:
        """How a resource shows surgery (procedures.json): "" when it does not, NEVER_SURGERY when it shows a
        non-operative procedure (phlebotomy, venipuncture, reconciliation) or a clinic visit, whatever else it says.
        `what` is the ServiceRequest's or Procedure's own code: a major operation by its SNOMED CT code alone
        (surgical_procedures) is surgery; an Appointment's reason never is read so."""
        words = normalize_text(" ".join(texts))
        if codes & self.k.non_surgical_codes or any(contains_phrase(words, p) for p in self.k.non_surgical_phrases):
            return NEVER_SURGERY
        is_appointment = resource.get("resourceType") == "Appointment"
        if is_appointment:
            if self._codes_in(resource.get("appointmentType")) & self.k.clinic_visit_appointment_types:
                return NEVER_SURGERY  # a follow-up or check-up with the surgeon is a clinic visit
            if self._codes_in(*(resource.get("serviceType") or ())) & self.k.surgical_service_types:
                return "service-type"
        if codes & self.k.surgical_categories:
            return "category"
        if what & self.k.surgical_procedures.keys():
            return "code"
        if any(w in self.k.surgical_words or w.endswith(self.k.surgical_suffixes) for w in words):
            return "name"
        if is_appointment and self._codes_in(*(resource.get("specialty") or ())) & self.k.surgical_specialties:
            return "specialty"
        return ""

    def _codes_in(self, *concepts: Any) -> set[tuple[Any, Any]]:
        return {(c.get("system"), c.get("code")) for concept in concepts for c in self._codings(concept)}


def link_surgical_appointments(events: list[ProcedureEvent]) -> list[ProcedureEvent]:
    """An Appointment basedOn a planned surgical ServiceRequest is that surgery, on the Appointment's date
    (procedures.json surgical_appointment); the ServiceRequest then is not counted a second time. A proposed
    appointment (appointment-book) replaces a prefetched twin."""
    by_ref = {e.ref: e for e in events}  # later (proposed) events win
    orders = {e.ref: e for e in by_ref.values() if e.ref.startswith("ServiceRequest/") and e.is_surgery and e.is_planned}
    linked: list[ProcedureEvent] = []
    superseded: set[str] = set()
    for event in by_ref.values():
        surgical_orders = [orders[r] for r in event.based_on if r in orders]
        if surgical_orders and event.surgery_evidence != NEVER_SURGERY:
            if not event.is_surgery:
                text = event.text if event.text != "Appointment" else surgical_orders[0].text
                event = dataclasses.replace(event, is_surgery=True, surgery_evidence="based-on", text=text)
            superseded.update(o.ref for o in surgical_orders)
        linked.append(event)
    return [e for e in linked if e.ref not in superseded]


# One reader per lab kind (observations.json names the kinds); adding a kind adds a row here.
_LAB_READERS: dict[str, Callable[[_Reader, _LabFacts], LabResult]] = {
    "drug-level": _Reader._drug_level,
    "pregnancy-status": _Reader._pregnancy_status,
    "hcg": _Reader._hcg,
    "lipid": _Reader._lipid,
    "height": _Reader._height,
    "weight": _Reader._weight,
}


# --- what the knowledge makes of codes and names, remembered (Knowledge.remembered) ------------------------
# Recognising drugs, labs and conditions (text normalisation, phrase look-ups) was a large share of the CPU of
# reading a record, and the same ones recur in every call.


def _code_key(codings: Iterable[Mapping]) -> tuple[tuple[Any, Any], ...]:
    """What recognize_medication reads of the codings: (system, code) pairs, hashable (it reads only string ones)."""
    key = []
    for coding in codings:
        system, code = coding.get("system"), coding.get("code")
        key.append((system if isinstance(system, str) else None, code if isinstance(code, str) else None))
    return tuple(key)


def _recognized_medication(knowledge: Knowledge, codes: tuple[tuple[Any, Any], ...], texts: tuple[str, ...]) -> tuple:
    return knowledge.remembered("medication", (codes, texts),
                                lambda: knowledge.recognize_medication([{"system": s, "code": c} for s, c in codes], texts))


def _named_drug_level(knowledge: Knowledge, text: str) -> tuple[str, str] | None:
    """('drug-level', drug) for a local lab named after an mTOR inhibitor ("Everolimus level"), else None."""

    def compute() -> tuple[str, str] | None:
        named = [c for c in knowledge.names.find(normalize_text(text)) if c.role is DrugRole.MTOR_INHIBITOR]
        return ("drug-level", named[0].key) if named else None

    return knowledge.remembered("drug-level", text, compute)


def _condition_kinds(knowledge: Knowledge, codes: frozenset[tuple[Any, Any]], text: str) -> frozenset[str]:
    return knowledge.remembered("condition", (codes, text), lambda: knowledge.condition_kinds(codes, text))


# --- small readers ------------------------------------------------------------------------------


def _earliest_start(periods: Any) -> str | None:
    """The earliest start of a list of Periods (Appointment.requestedPeriod: windows in any order), as written."""
    starts = [p["start"] for p in periods if isinstance(p, dict) and isinstance(p.get("start"), str)] if isinstance(periods, list) else []
    dated = [(when, start) for start in starts if (when := _datetime(start)) is not None]
    return min(dated)[1] if dated else None


def _timing_start(timing: Any) -> str | None:
    """When a Timing begins, as written: its earliest event, else the start of its repeat.boundsPeriod."""
    if not isinstance(timing, dict):
        return None
    events = timing.get("event")
    earliest = _earliest_start([{"start": e} for e in events]) if isinstance(events, list) else None
    bounds_start = _get(timing, "repeat", "boundsPeriod", "start")
    return earliest or (bounds_start if isinstance(bounds_start, str) else None)


def _has_result(observation: Mapping[str, Any]) -> bool:
    """An Observation that carries a result: a value[x] of any type, components, or an interpretation alone (a
    qualitative test reported only as "POS")."""
    return not _OBSERVATION_VALUES.isdisjoint(observation) or bool(observation.get("component") or observation.get("interpretation"))


_OBSERVATION_VALUES = frozenset({  # FHIR R4 Observation.value[x], every type
    "valueQuantity", "valueCodeableConcept", "valueString", "valueBoolean", "valueInteger", "valueRange", "valueRatio",
    "valueSampledData", "valueTime", "valueDateTime", "valuePeriod",
})


def _not_given_for_a_reason(immunization: Mapping[str, Any]) -> bool:
    """A not-done Immunization with a statusReason (immunity, medical precaution, refusal) records a vaccine NOT given:
    only a not-done one without a reason may be the vaccination about to be given."""
    return immunization.get("status") == "not-done" and bool(immunization.get("statusReason"))


def _do_not_perform(resource: Mapping[str, Any]) -> bool:
    """MedicationRequest or ServiceRequest.doNotPerform: a request that the action NOT happen (FHIR R4)."""
    return resource.get("doNotPerform") is True


def _get(resource: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(resource, dict):
            return None
        resource = resource.get(key)
    return resource


def _first(value: Any) -> dict:
    return value[0] if isinstance(value, list) and value and isinstance(value[0], dict) else {}


def _references(references: Any, resource_type: str) -> list[str]:
    """Relative references ("ServiceRequest/1") of this type in a list of Reference objects."""
    return [found for reference in (references if isinstance(references, list) else ()) if (found := reference_to(reference, resource_type))]


def _codings(concept: Any) -> list[dict]:
    codings = concept.get("coding") if isinstance(concept, dict) else None
    return [c for c in codings if isinstance(c, dict)] if isinstance(codings, list) else []


def _texts(concept: Any) -> list[str]:
    """The concept's text, then its codings' displays: the non-blank strings."""
    if not isinstance(concept, dict):
        return []
    text = concept.get("text")
    texts = [text] if isinstance(text, str) and text.strip() else []
    codings = concept.get("coding")
    for coding in codings if isinstance(codings, list) else ():
        display = coding.get("display") if isinstance(coding, dict) else None
        if isinstance(display, str) and display.strip():
            texts.append(display)
    return texts


def _display(texts: list[str], codings: list[dict]) -> str:
    for text in texts:
        if isinstance(text, str) and text.strip():
            return text.strip()[:200]
    for coding in codings:
        if isinstance(coding.get("code"), str):
            return f"{coding.get('system', '')}|{coding['code']}"[:200]
    return ""


def _as_written(quantity: Mapping) -> str:
    """A numeric quantity as the lab wrote it ("18.2 ug/L", "> 20 ng/mL"), for the card; "" when it has no number."""
    value = quantity.get("value")
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return ""
    comparator = _comparator(quantity)
    shown = "" if comparator is None else "~" if comparator == UNKNOWN_COMPARATOR else comparator + " "
    return f"{shown}{value:g} {quantity.get('unit') or quantity.get('code') or ''}".strip()


_COMPARATORS = ("<", "<=", ">=", ">")  # FHIR R4 QuantityComparator (a required binding)


UNKNOWN_COMPARATOR = "?"


def _comparator(quantity: Mapping) -> str | None:
    """Quantity.comparator: how the actual value relates to the stated one (a bound); None for an exact value;
    UNKNOWN_COMPARATOR for any other code ("~", "ca"): the number's meaning is unknown, so it is read as no value, but
    the result still stands as the newest of its kind (an older one must not speak for it)."""
    comparator = quantity.get("comparator")
    if comparator is None:
        return None
    return comparator if isinstance(comparator, str) and comparator in _COMPARATORS else UNKNOWN_COMPARATOR


def _side_of(value: float, comparator: str | None, threshold: float) -> str | None:
    """Where a reported value lies against a threshold: "below", "at or above", or None when a bound leaves both
    possible ("> 4" against 5, "< 10" against 5)."""
    if comparator is None:
        return "below" if value < threshold else "at or above"
    if comparator == UNKNOWN_COMPARATOR:
        return None
    if comparator in UPPER_BOUNDS:
        return "below" if value < threshold or (comparator == "<" and value == threshold) else None
    return "at or above" if value >= threshold else None


def _dose_mg(dosage: Mapping) -> float | None:
    quantity = _get(_first(dosage.get("doseAndRate")), "doseQuantity") if dosage else None
    if not isinstance(quantity, dict):
        return None
    value, unit = quantity.get("value"), quantity.get("code") or quantity.get("unit")
    unit = unit.lower() if isinstance(unit, str) else ""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and unit == "mg":
        return _measure(value)
    return None


def _to_ng_per_ml(value: float, unit: str, grams_per_mol: float, knowledge: Knowledge) -> float | None:
    if unit in knowledge.ng_per_ml_factor:
        return value * knowledge.ng_per_ml_factor[unit]
    if unit in knowledge.nmol_per_l_factor:
        return value * knowledge.nmol_per_l_factor[unit] * grams_per_mol / 1000
    return None


def _to_mg_dl(value: float, unit: str, mg_dl_per_mmol_l: float, knowledge: Knowledge) -> float | None:
    if unit in knowledge.mg_dl_factor:
        return value * knowledge.mg_dl_factor[unit]
    if unit == "mmol/l":
        return value * mg_dl_per_mmol_l
    return None


_PERIOD_DAYS = {"d": 1, "h": 1 / 24, "wk": 7, "mo": 30, "min": 1 / 1440}
GTS_ABBREVIATION = "http://terminology.hl7.org/CodeSystem/v3-GTSAbbreviation"
# Timing.code: the HL7 v3 GTSAbbreviation codes (R4 value set timing-abbreviation) whose definition gives one number of
# doses a day: QD "Every day", AM "Every morning", PM "Every afternoon", BID/TID/QID "Two/Three/Four times a day",
# QOD "Every other day", Q4H/Q6H/Q8H "Every 4/6/8 hours". Any other code (BED, WK, MO, the J* calendars, Q12H, which
# the code system does not have, a local code) says how often in a way this service does not read.
_GTS_DOSES_PER_DAY = {"QD": 1, "AM": 1, "PM": 1, "BID": 2, "TID": 3, "QID": 4, "QOD": 0.5, "Q4H": 6, "Q6H": 4, "Q8H": 3}
# Timing.repeat.when events that each come once a day and do not overlap: a dose is given at each listed (R4: "the
# union of the specified events"). C/AC/PC (every meal) and overlapping ones (MORN with MORN.early, or with ACM)
# cannot be counted.
_COUNTABLE_EVENTS = (frozenset({"MORN", "NOON", "AFT", "EVE", "NIGHT"}), frozenset({"ACM", "ACD", "ACV"}),
                     frozenset({"CM", "CD", "CV"}), frozenset({"PCM", "PCD", "PCV"}))
_EVERY_MEAL_EVENTS = frozenset({"C", "AC", "PC"})


def _doses_per_day(dosage: Mapping) -> float | None:
    """Doses a day from Dosage.timing: repeat (frequency per period; timeOfDay or when: one dose at each), or a
    GTSAbbreviation timing.code, which R4 makes "a complete statement" of the timing (checked against repeat when both
    say how often). None when the timing says nothing of how often (once daily is assumed: every mTOR label dose is);
    UnknownFrequency when it says so in a way that cannot be read with confidence."""
    timing = dosage.get("timing") if dosage else None
    if not isinstance(timing, dict):
        return None
    repeat = timing.get("repeat")
    from_repeat = _repeat_doses_per_day(repeat) if isinstance(repeat, dict) else None
    code = timing.get("code")
    if code is None:
        return from_repeat
    codes = [c.get("code") for c in _codings(code) if c.get("system") == GTS_ABBREVIATION]
    known = {_GTS_DOSES_PER_DAY.get(c) if isinstance(c, str) else None for c in codes}
    from_code = known.pop() if len(known) == 1 else None  # codings that disagree say nothing for sure
    if from_code is None:
        if from_repeat is not None:
            return from_repeat  # R4: the code and the structured data say the same; either may be read
        raise UnknownFrequency("a timing code this service does not read")
    if from_repeat is not None and abs(from_repeat - from_code) > 1e-9:
        raise UnknownFrequency("the timing code contradicts timing.repeat")
    return float(from_code)


def _repeat_doses_per_day(repeat: Mapping) -> float | None:
    """Doses a day from Timing.repeat; None when it does not say how often (only bounds, a count)."""
    if any(repeat.get(k) is not None for k in ("frequencyMax", "periodMax", "dayOfWeek")):
        raise UnknownFrequency("a range of frequencies or periods, or some days of the week only")
    frequency, period, unit = repeat.get("frequency"), repeat.get("period"), repeat.get("periodUnit")
    times, events = repeat.get("timeOfDay"), repeat.get("when")
    at_each = None  # doses a day given one at each time of day or event (R4: every day, at each)
    if isinstance(times, list) and times:
        at_each = len({str(t) for t in times})
    elif isinstance(events, list) and events:
        listed = {str(e) for e in events}
        if any(listed <= day_parts for day_parts in _COUNTABLE_EVENTS) or (len(listed) == 1 and not listed & _EVERY_MEAL_EVENTS):
            at_each = len(listed)
        elif frequency is None:
            raise UnknownFrequency("timing events that cannot be counted, and no frequency")
    if at_each is not None:
        if (frequency is not None and frequency != at_each) or (period is not None and (period, unit) != (1, "d")):
            raise UnknownFrequency("a frequency or period that does not fit the times of day")
        return float(at_each)
    if frequency is None and period is None:
        return None
    frequency = 1 if frequency is None else frequency
    if not (_is_positive_number(frequency) and _is_positive_number(period) and isinstance(unit, str) and unit in _PERIOD_DAYS):
        raise UnknownFrequency("a frequency or period that cannot be read")
    days = _measure(period) * _PERIOD_DAYS[unit]
    if not days:
        raise Unreadable("a period too short to be a time")
    return _measure(_measure(frequency) / days)


def _system_codes(codings: list[dict]) -> frozenset[tuple[str, str]]:
    """(system, code) of the codings that have both: only those can match the knowledge's codes."""
    return frozenset((c["system"], c["code"]) for c in codings if isinstance(c.get("system"), str) and isinstance(c.get("code"), str))


def _is_positive_number(x: Any) -> TypeGuard[float]:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and x > 0


def _or_unknown(read: Callable[[Any], Any], value: Any, unknown: list[str]) -> Any:
    """read(value), or None (noted in `unknown`) when the value is present but out of range."""
    try:
        return read(value)
    except (Unreadable, OverflowError):
        unknown.append(getattr(read, "__name__", "value"))
        return None


def _measure(value: float) -> float:
    """A measured amount as a float, from 0 to MAX_AMOUNT; anything else makes the resource unreadable."""
    number = float(value)  # an integer too large for a float raises OverflowError: unreadable too
    if not 0 <= number <= MAX_AMOUNT:  # NaN fails this too
        raise Unreadable("not an amount the service can read")
    return number


def _same_unit(a: Mapping, b: Mapping) -> bool:
    """Two quantities in the same unit (a referenceRange compared with its value); an absent unit matches."""
    unit_a = str(a.get("code") or a.get("unit") or "").strip().lower()
    unit_b = str(b.get("code") or b.get("unit") or "").strip().lower()
    return not unit_a or not unit_b or unit_a == unit_b


def _datetime(value: Any, keep_offset: bool = False) -> datetime | None:
    """FHIR date/dateTime/instant (partial dates allowed) as an aware datetime (UTC unless keep_offset).

    None for no date or text that is not a date; Unreadable for a date outside READABLE_YEARS (in UTC or as
    written), which no rule can place in time (9999-12-31T23:59:59-14:00 is not even a representable instant).
    """
    if not isinstance(value, str) or len(value) < 4:
        return None
    return _parse_datetime(value, keep_offset)


def _course_ended(request: Mapping[str, Any], now: datetime) -> bool:
    """An order whose every dosage line is bounded (timing.repeat.boundsPeriod.end) by a day now past: a course that
    ended (a 14-day clarithromycin course), left "active" by an EHR that does not complete orders, not a drug taken
    now (as for a MedicationStatement whose effectivePeriod.end has passed). Never used for the mTOR inhibitor itself:
    an mTOR order with stale bounds still counts, so its cards are not lost."""
    lines = request.get("dosageInstruction")
    if not isinstance(lines, list) or not lines:
        return False
    for line in lines:  # most orders have no bounds: the first line without an end settles it
        end = _end_of(_get(line, "timing", "repeat", "boundsPeriod", "end"))
        if end is None or end > now:
            return False
    return True


def _end_of(value: Any) -> datetime | None:
    """The instant a FHIR end date has passed: after its whole year, month or day when given to that precision
    ("2024-05" ends with May), the instant itself when a time is given. None when absent or unreadable."""
    try:
        start = _datetime(value)
    except Unreadable:
        return None
    if start is None or not isinstance(value, str) or "T" in value:
        return start
    if len(value) == 4:
        return start.replace(year=start.year + 1)
    if len(value) == 7:
        return start.replace(year=start.year + start.month // 12, month=start.month % 12 + 1)
    return start + timedelta(days=1)


@functools.lru_cache(maxsize=4096)
def _parse_datetime(value: str, keep_offset: bool) -> datetime | None:
    """_datetime of a string, kept: a record repeats its dates (one encounter's orders and labs), and the same
    patient's record comes with every order selection. An Unreadable date is not kept (raised each time)."""
    text = value.strip()
    try:
        if len(text) == 4:
            parsed = datetime(int(text), 1, 1, tzinfo=UTC)
        elif len(text) == 7:
            parsed = datetime(int(text[:4]), int(text[5:7]), 1, tzinfo=UTC)
        else:
            parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    try:
        in_utc = parsed.astimezone(UTC)
    except OverflowError:
        raise Unreadable("date out of range") from None
    if in_utc.year not in READABLE_YEARS or parsed.year not in READABLE_YEARS:
        raise Unreadable("date out of range")
    return parsed if keep_offset else in_utc


def _date(value: Any) -> date | None:
    parsed = _datetime(value)
    return parsed.date() if parsed else None
