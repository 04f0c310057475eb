"""Patient data for one hook call: prefetch first, fetch what is missing, then FHIR JSON -> PatientSnapshot.

Prefetch values are told apart as the spec asks: an absent key (fetch it), `null` (no data), a Bundle
(its entries, plus its `next` pages when a server can be reached) and an OperationOutcome or anything
else (the EHR's prefetch failed: fetch it). Resources are read with plain dict access; one resource that
cannot be read is skipped and counted, never allowed to hide findings from the others.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Iterable, Mapping
from datetime import date, datetime, timezone
from functools import partial
from typing import Any
from urllib.parse import quote

from cds_service.errors import DataUnavailable, FhirError
from cds_service.fhir.client import Deadline, FhirClient, QueryTiming, entry_resources, next_link, run_parallel
from cds_service.knowledge import DrugRole, Knowledge, normalize_text
from cds_service.knowledge.loader import LOINC, RXNORM
from cds_service.patient import ConditionRecord, LabResult, MedicationOrder, PatientSnapshot, ProcedureEvent
from cds_service.services import HookCall, ServiceDefinition
from cds_service.settings import Settings

_LOG = logging.getLogger(__name__)
_TOKEN = re.compile(r"\{\{\s*context\.(\w+)\s*\}\}")
_PATIENT_REFERENCE = re.compile(r"(?:^|/)Patient/([^/]+)(?:/_history/[^/]+)?/?$")


@dataclasses.dataclass
class GatheredData:
    """Raw resources per prefetch key, and what could not be had."""

    by_key: dict[str, list[dict[str, Any]]]
    unchecked: list[str]  # keys with no data or only part of it
    medications: dict[str, dict[str, Any]]  # "Medication/id" -> Medication, for references
    timings: list[QueryTiming]
    fhir_server_refused: bool = False
    malformed_entries: int = 0  # prefetched Bundle entries with no resource object


def gather(call: HookCall, service: ServiceDefinition, settings: Settings) -> GatheredData:
    """Prefetch first; fetch missing keys (and further pages) in parallel under one deadline."""
    deadline = Deadline.after(settings.fhir_deadline_s)
    client, refused = _client_for(call, settings, deadline)
    by_key: dict[str, list[dict[str, Any]]] = {}
    unchecked: list[str] = []
    malformed = 0
    jobs = {}
    for key, template in service.prefetch.items():
        present, value = key in call.prefetch, call.prefetch.get(key)
        if present and value is None:
            by_key[key] = []  # the EHR says: no data
        elif present and isinstance(value, dict) and value.get("resourceType") == "Bundle" and isinstance(value.get("entry", []), list):
            by_key[key] = entry_resources(value)
            malformed += len(value.get("entry") or ()) - len(by_key[key])
            if next_link(value):
                if client:
                    jobs[key] = partial(client.continue_search, value)
                else:
                    unchecked.append(key)
        elif present and isinstance(value, dict) and value.get("resourceType") not in (None, "OperationOutcome"):
            by_key[key] = [value]  # a single resource, e.g. Patient
        elif client:
            jobs[key] = partial(_fetch_template, client, template, call.context)
        else:
            unchecked.append(key)
    for key, result in run_parallel(jobs, deadline).items():
        if isinstance(result, FhirError):
            unchecked.append(key)
        else:
            by_key[key] = result
    missing_required = sorted(k for k in service.required_prefetch if k not in by_key)
    if missing_required:
        raise DataUnavailable(
            "required data could not be prefetched or fetched: " + ", ".join(missing_required)
        )
    medications, unresolved = _resolve_medication_references(by_key, call, client)
    if unresolved and "medications" not in unchecked:
        unchecked.append("medications")  # an order we cannot identify must not read as "nothing interacting"
    return GatheredData(by_key, unchecked, medications, client.timings if client else [], refused, malformed)


def _client_for(call: HookCall, settings: Settings, deadline: Deadline) -> tuple[FhirClient | None, bool]:
    if not call.fhir_server:
        return None, False
    try:
        return FhirClient(call.fhir_server, call.access_token, settings, deadline), False
    except FhirError as exc:
        _LOG.warning("fhirServer not contacted: %s", exc)
        return None, True


def _fetch_template(client: FhirClient, template: str, context: Mapping[str, Any]) -> list[dict[str, Any]]:
    query = _TOKEN.sub(lambda m: quote(str(context.get(m.group(1), "")), safe=""), template)
    if "?" in query:
        return client.search(query)
    return [client.read(query)]


def _resolve_medication_references(
    by_key: dict[str, list[dict[str, Any]]], call: HookCall, client: FhirClient | None
) -> tuple[dict[str, dict[str, Any]], int]:
    """Medication resources by reference (from any bundle, e.g. _include, else read) and how many stayed unresolved."""
    known = {
        f"Medication/{r.get('id')}": r
        for resources in by_key.values()
        for r in resources
        if r.get("resourceType") == "Medication" and isinstance(r.get("id"), str)
    }
    wanted = set()
    for resource in [*by_key.get("medications", ()), *draft_resources(call)]:
        reference = _medication_reference(resource)
        if reference and reference not in known:
            wanted.add(reference)
    if wanted and client:
        results = run_parallel({ref: partial(client.read, ref) for ref in sorted(wanted)}, client.deadline)
        known.update({ref: r for ref, r in results.items() if isinstance(r, dict)})
    return known, len(wanted - known.keys())


def _medication_reference(resource: Mapping[str, Any]) -> str | None:
    reference = _get(resource, "medicationReference", "reference")
    if not isinstance(reference, str) or reference.startswith("#"):
        return None
    parts = reference.rstrip("/").split("/")
    if len(parts) >= 2 and parts[-2] == "Medication" and parts[-1]:
        return f"Medication/{parts[-1]}"
    return None


def draft_resources(call: HookCall) -> list[dict[str, Any]]:
    draft_orders = call.context.get("draftOrders")
    return entry_resources(draft_orders) if isinstance(draft_orders, dict) else []


# --- FHIR JSON -> snapshot ---------------------------------------------------------------------


def build_snapshot(data: GatheredData, call: HookCall, knowledge: Knowledge, now: datetime) -> PatientSnapshot:
    reader = _Reader(knowledge, call.patient_id, data.medications)
    selections = set(call.selections)
    medications: dict[str, MedicationOrder] = {}
    procedures: list[ProcedureEvent] = []
    for resource in data.by_key.get("medications", ()):
        order = reader.safely(reader.medication_order, resource, is_draft=False, selected=False)
        if order and order.status in ("active", "on-hold"):
            medications[order.ref] = order
    for resource in draft_resources(call):
        rtype = resource.get("resourceType")
        ref = f"{rtype}/{resource.get('id')}"
        if rtype in ("MedicationRequest", "Immunization"):
            order = reader.safely(reader.medication_order, resource, is_draft=True, selected=ref in selections)
            if order:
                medications[order.ref] = order  # a re-signed order replaces its prefetched twin
        elif rtype == "ServiceRequest":
            event = reader.safely(reader.procedure_event, resource, is_draft=True)
            procedures += [event] if event else []
    for key in ("procedures", "serviceRequests", "appointments"):
        for resource in data.by_key.get(key, ()):
            event = reader.safely(reader.procedure_event, resource, is_draft=False)
            procedures += [event] if event else []
    labs = [lab for r in data.by_key.get("observations", ()) if (lab := reader.safely(reader.lab_result, r))]
    conditions = [c for r in data.by_key.get("conditions", ()) if (c := reader.safely(reader.condition, r))]
    patient = next(
        (r for r in data.by_key.get("patient", ()) if r.get("resourceType") == "Patient" and r.get("id") == call.patient_id),
        {},
    )  # demographics of another patient must never feed the age- and sex-based checks
    return PatientSnapshot(
        now=now,
        patient_id=call.patient_id,
        birth_date=_date(patient.get("birthDate")),
        gender=patient.get("gender") if isinstance(patient.get("gender"), str) else None,
        medications=tuple(medications.values()),
        labs=tuple(labs),
        conditions=tuple(conditions),
        procedures=tuple(procedures),
        unavailable=tuple(data.unchecked),
        skipped_resources=reader.skipped + data.malformed_entries,
    )


class _Reader:
    """Reads one resource type at a time into snapshot records; counts what it must skip."""

    def __init__(self, knowledge: Knowledge, patient_id: str, medications: Mapping[str, Mapping]):
        self.k = knowledge
        self.patient_id = patient_id
        self.medications = medications
        self.skipped = 0

    def _codings(self, concept: Any) -> list[dict]:
        """Codings with OID system forms (urn:oid:2.16.840.1.113883.6.88 ...) mapped to their FHIR URIs."""
        codings = _codings(concept)
        aliases = self.k.system_aliases
        return [{**c, "system": aliases[c["system"]]} if isinstance(c.get("system"), str) and c["system"] in aliases else c
                for c in codings]

    def safely(self, read, resource: Any, **kwargs):
        if not isinstance(resource, dict) or not self._is_this_patients(resource):
            self.skipped += 1
            return None
        try:
            return read(resource, **kwargs)
        except (AttributeError, KeyError, TypeError, ValueError, IndexError):
            self.skipped += 1
            return None

    def _is_this_patients(self, resource: Mapping[str, Any]) -> bool:
        """Drop resources that plainly belong to another patient (a prefetch must never mix patients)."""
        reference = _get(resource, "subject", "reference") or _get(resource, "patient", "reference")
        match = _PATIENT_REFERENCE.search(reference) if isinstance(reference, str) else None
        return match is None or match.group(1) == self.patient_id

    def medication_order(self, resource: Mapping, *, is_draft: bool, selected: bool) -> MedicationOrder | None:
        rtype = resource.get("resourceType")
        if rtype == "Immunization":
            concept_source = resource.get("vaccineCode") or {}
            codings, texts = self._codings(concept_source), _texts(concept_source)
        elif rtype == "MedicationRequest":
            codings, texts = self._medication_codes(resource)
        else:
            return None
        dosage = _first(resource.get("dosageInstruction"))
        texts_for_exclusions = [*texts, *_texts(dosage), *_texts(dosage.get("route") if dosage else None)]
        return MedicationOrder(
            ref=f"{rtype}/{resource.get('id')}",
            text=_display(texts, codings) or "unnamed medication",
            concepts=self.k.recognize_medication(codings, texts_for_exclusions),
            status=str(resource.get("status") or ""),
            is_draft=is_draft,
            is_selected=selected,
            authored_on=_datetime(resource.get("authoredOn") or resource.get("occurrenceDateTime")),
            dose_mg=_dose_mg(dosage),
            doses_per_day=_doses_per_day(dosage),
            product_rxnorm=next(
                (c["code"] for c in codings if c.get("system") == RXNORM and c.get("code") in self.k.mtor_products), None
            ),
            resource=resource,
        )

    def _medication_codes(self, request: Mapping) -> tuple[list[Mapping], list[str]]:
        concept = request.get("medicationCodeableConcept")
        if isinstance(concept, dict):
            return self._codings(concept), _texts(concept)
        reference = request.get("medicationReference")
        if not isinstance(reference, dict):
            return [], []
        medication = None
        target = reference.get("reference")
        if isinstance(target, str) and target.startswith("#"):
            contained = request.get("contained")
            medication = next(
                (c for c in contained or () if isinstance(c, dict) and c.get("id") == target[1:]), None
            )
        elif (resolved := _medication_reference(request)) is not None:
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
        match = next((kinds[c["code"]] for c in codings if c.get("system") == LOINC and c.get("code") in kinds), None)
        if match is None and isinstance(resource.get("valueQuantity"), dict):
            # Local codes: a level named after an mTOR inhibitor ("Everolimus level", "RAPAMUNE TROUGH").
            named = [c for c in self.k.names.find(normalize_text(" ".join(_texts(code)))) if c.role is DrugRole.MTOR_INHIBITOR]
            match = ("drug-level", named[0].key) if named else None
        if match is None:
            return None  # not an observation any rule reads: skip it before any further work
        kind, analyte = match
        effective = _datetime(
            resource.get("effectiveDateTime")
            or _get(resource, "effectivePeriod", "start")
            or resource.get("effectiveInstant")
            or resource.get("issued")
        )
        ref = f"Observation/{resource.get('id')}"
        text = _display(_texts(code), codings) or "observation"
        if kind == "drug-level":
            molar_mass = self.k.mtor_drugs[analyte]["molar_mass"]["g_per_mol"]
            return self._quantity(resource, ref, text, effective, kind, analyte, lambda v, u: _to_ng_per_ml(v, u, molar_mass, self.k))
        if kind == "pregnancy-status":
            values = {(c.get("system"), c.get("code")) for c in self._codings(resource.get("valueCodeableConcept"))}
            answer = normalize_text(str(_get(resource, "valueCodeableConcept", "text") or resource.get("valueString") or ""))
            if values & self.k.pregnant_codes or (not values and answer in self.k.pregnant_words):
                result = "pregnant"
            elif values & self.k.not_pregnant_codes or (not values and answer in self.k.not_pregnant_words):
                result = "not-pregnant"
            else:
                result = None
            return LabResult(ref, kind, effective, text, result=result)
        if kind == "hcg":
            return LabResult(ref, kind, effective, text, result=self._test_result(resource))
        if kind == "lipid":
            per_mmol = self.k.lipids[analyte]["mg_dl_per_mmol_l"]
            return self._quantity(resource, ref, text, effective, kind, analyte, lambda v, u: _to_mg_dl(v, u, per_mmol, self.k))
        table = self.k.cm_factor if kind == "height" else self.k.kg_factor
        return self._quantity(resource, ref, text, effective, kind, None, lambda v, u: v * table[u] if u in table else None)

    def _quantity(self, resource: Mapping, ref: str, text: str, effective, kind: str, analyte: str | None, convert) -> LabResult:
        """A quantity in its kind's canonical unit; a unit we cannot convert is kept visible, never guessed."""
        quantity = resource.get("valueQuantity") or {}
        value = quantity.get("value")
        unit_label = str(quantity.get("unit") or quantity.get("code") or "")
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return LabResult(ref, kind, effective, text, analyte=analyte, unreadable_unit="no numeric value")
        if quantity.get("comparator") in ("<", "<="):
            value = value - 1e-9  # "< 2 ng/mL" is below 2
        converted = None
        for unit in dict.fromkeys((quantity.get("code"), quantity.get("unit"))):
            if isinstance(unit, str) and converted is None:
                converted = convert(float(value), unit.strip().replace("μ", "µ").lower())
        written = f"{quantity.get('value'):g} {unit_label}".strip()
        return LabResult(ref, kind, effective, text, analyte=analyte, value=converted, value_as_written=written,
                         unreadable_unit=None if converted is not None else unit_label or "no unit")

    def _test_result(self, resource: Mapping) -> str | None:
        codes = {(c.get("system"), c.get("code")) for c in self._codings(resource.get("valueCodeableConcept"))}
        for interpretation in resource.get("interpretation") or ():
            codes |= {(c.get("system"), c.get("code")) for c in self._codings(interpretation)}
        if codes & self.k.result_positive:
            return "positive"
        if codes & self.k.result_negative:
            return "negative"
        words = " ".join(normalize_text(str(resource.get("valueString") or _get(resource, "valueCodeableConcept", "text") or "")))
        if words in self.k.result_negative_words:
            return "negative"
        if words in self.k.result_positive_words:
            return "positive"
        return None

    def condition(self, resource: Mapping) -> ConditionRecord | None:
        if resource.get("resourceType") != "Condition":
            return None
        clinical = {c.get("code") for c in self._codings(resource.get("clinicalStatus"))}
        verification = {c.get("code") for c in self._codings(resource.get("verificationStatus"))}
        abated = any(k.startswith("abatement") for k in resource)
        is_active = (bool(clinical & {"active", "recurrence", "relapse"}) or (not clinical and not abated)) and not (
            verification & {"refuted", "entered-in-error"}
        )
        code = resource.get("code") or {}
        codes = frozenset((c.get("system"), c.get("code")) for c in self._codings(code) if isinstance(c.get("code"), str))
        return ConditionRecord(
            ref=f"Condition/{resource.get('id')}",
            text=_display(_texts(code), self._codings(code)) or "condition",
            codes=codes,
            kinds=self.k.condition_kinds(codes, " ".join(_texts(code))),
            is_active=is_active,
            asserted=_datetime(resource.get("onsetDateTime") or _get(resource, "onsetPeriod", "start") or resource.get("recordedDate")),
        )

    def procedure_event(self, resource: Mapping, *, is_draft: bool) -> ProcedureEvent | None:
        rtype = resource.get("resourceType")
        status = resource.get("status")
        planned = status in self.k.planned_statuses.get(rtype, ())
        done = status in self.k.done_statuses.get(rtype, ())
        if not (planned or done):
            return None
        if rtype == "ServiceRequest":
            when = resource.get("occurrenceDateTime") or _get(resource, "occurrencePeriod", "start")
            concepts = [resource.get("code"), *(resource.get("category") or ())]
        elif rtype == "Procedure":
            when = resource.get("performedDateTime") or _get(resource, "performedPeriod", "start")
            if done:
                when = _get(resource, "performedPeriod", "end") or when
            concepts = [resource.get("code"), resource.get("category")]
        elif rtype == "Appointment":
            when = resource.get("start")
            concepts = [*(resource.get("serviceType") or ()), *(resource.get("serviceCategory") or ()),
                        resource.get("appointmentType"), *(resource.get("reasonCode") or ()), *(resource.get("specialty") or ())]
        else:
            return None
        texts = [t for c in concepts for t in _texts(c)]
        if rtype == "Appointment" and isinstance(resource.get("description"), str):
            texts.append(resource["description"])
        codes = {(c.get("system"), c.get("code")) for concept in concepts for c in self._codings(concept)}
        return ProcedureEvent(
            ref=f"{rtype}/{resource.get('id')}",
            text=_display(texts, []) or rtype,
            when=_datetime(when, keep_offset=True),  # days to surgery count on the hospital's calendar
            is_planned=planned,
            is_surgery=bool(codes & self.k.surgical_categories) or self._names_surgery(texts),
            is_draft=is_draft,
        )

    def _names_surgery(self, texts: Iterable[str]) -> bool:
        words = normalize_text(" ".join(texts))
        return any(w in self.k.surgical_words or w.endswith(self.k.surgical_suffixes) for w in words)


# --- small readers ------------------------------------------------------------------------------


def _get(resource: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(resource, dict):
            return None
        resource = resource.get(key)
    return resource


def _first(value: Any) -> dict:
    return value[0] if isinstance(value, list) and value and isinstance(value[0], dict) else {}


def _codings(concept: Any) -> list[dict]:
    codings = concept.get("coding") if isinstance(concept, dict) else None
    return [c for c in codings if isinstance(c, dict)] if isinstance(codings, list) else []


def _texts(concept: Any) -> list[str]:
    if not isinstance(concept, dict):
        return []
    texts = [concept.get("text")] + [c.get("display") for c in _codings(concept)]
    return [t for t in texts if isinstance(t, str) and t.strip()]


def _display(texts: list[str], codings: list[dict]) -> str:
    for text in texts:
        if isinstance(text, str) and text.strip():
            return text.strip()[:200]
    for coding in codings:
        if isinstance(coding.get("code"), str):
            return f"{coding.get('system', '')}|{coding['code']}"[:200]
    return ""


def _dose_mg(dosage: Mapping) -> float | None:
    quantity = _get(_first(dosage.get("doseAndRate")), "doseQuantity") if dosage else None
    if not isinstance(quantity, dict):
        return None
    value, unit = quantity.get("value"), quantity.get("code") or quantity.get("unit")
    unit = unit.lower() if isinstance(unit, str) else ""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and unit == "mg":
        return float(value)
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


def _doses_per_day(dosage: Mapping) -> float | None:
    repeat = _get(dosage, "timing", "repeat") if dosage else None
    if not isinstance(repeat, dict):
        return None
    frequency, period, unit = repeat.get("frequency", 1), repeat.get("period"), repeat.get("periodUnit")
    if not all(isinstance(x, (int, float)) and not isinstance(x, bool) and x > 0 for x in (frequency, period)):
        return None
    days = period * _PERIOD_DAYS.get(unit, 0) if isinstance(unit, str) else 0
    return frequency / days if days else None


def _datetime(value: Any, keep_offset: bool = False) -> datetime | None:
    """FHIR date/dateTime/instant (partial dates allowed) as an aware datetime (UTC unless keep_offset); None if unreadable."""
    if not isinstance(value, str) or len(value) < 4:
        return None
    text = value.strip()
    try:
        if len(text) == 4:
            return datetime(int(text), 1, 1, tzinfo=timezone.utc)
        if len(text) == 7:
            return datetime(int(text[:4]), int(text[5:7]), 1, tzinfo=timezone.utc)
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed if keep_offset else parsed.astimezone(timezone.utc)


def _date(value: Any) -> date | None:
    parsed = _datetime(value)
    return parsed.date() if parsed else None
