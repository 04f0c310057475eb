"""Small builders for rule and snapshot tests: FHIR R4 JSON in a few words, and PatientSnapshots made from it.

Rule tests describe a patient as FHIR resources (`med`, `level`, `hcg`, `condition`, `service_request`, ...) and
turn them into a PatientSnapshot with `snapshot_of` -- the same pure code path a hook call takes (prefetch ->
snapshot), with no app, no HTTP and no FHIR server. Dates are given in days relative to NOW, so a test reads
"surgery in 7 days", not a calendar date.
"""

from __future__ import annotations

import functools
import itertools
import uuid
from collections.abc import Iterable, Mapping
from datetime import date as date_
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from cds_service.fhir.snapshot import build_snapshot, gather
from cds_service.findings import Finding
from cds_service.knowledge import Knowledge, load_knowledge
from cds_service.patient import ConditionRecord, LabResult, MedicationOrder, PatientSnapshot
from cds_service.services import HookCall, build_services
from cds_service.settings import Settings

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=timezone.utc)
PATIENT_ID = "pt-1"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
CVX = "http://hl7.org/fhir/sid/cvx"
LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
UCUM = "http://unitsofmeasure.org"
INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
SURGICAL_PROCEDURE = {"system": SNOMED, "code": "387713003", "display": "Surgical procedure"}
PREFETCH_KEYS = ("patient", "medications", "medicationStatements", "observations", "conditions", "procedures", "serviceRequests", "appointments")

_ids = itertools.count(1)


@functools.cache
def knowledge() -> Knowledge:
    """The shipped knowledge, loaded once per test session."""
    return load_knowledge()


def _id(prefix: str) -> str:
    return f"{prefix}-{next(_ids)}"


def day(days_from_now: float) -> str:
    """A FHIR dateTime `days_from_now` days from NOW (negative: in the past)."""
    return (NOW + timedelta(days=days_from_now)).isoformat().replace("+00:00", "Z")


def date(days_from_now: int) -> str:
    """A FHIR date `days_from_now` days from NOW."""
    return (NOW + timedelta(days=days_from_now)).date().isoformat()


def concept(text: str | None = None, *codings: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if codings:
        out["coding"] = [dict(c) for c in codings]
    if text:
        out["text"] = text
    return out


def coding(system: str, code: str, display: str | None = None) -> dict[str, str]:
    return {"system": system, "code": code, **({"display": display} if display else {})}


def ref(resource: Mapping[str, Any]) -> str:
    """The relative reference of a built resource, e.g. "MedicationRequest/mr-3"."""
    return f"{resource['resourceType']}/{resource['id']}"


# --- medications ---------------------------------------------------------------------------------


def med(
    text: str | None = None,
    *,
    rxnorm: str | None = None,
    cvx: str | None = None,
    status: str = "active",
    draft: bool = False,
    id: str | None = None,
    patient: str = PATIENT_ID,
    dose_mg: float | None = None,
    dosage_text: str | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """A MedicationRequest with a medicationCodeableConcept (RxNorm and/or CVX code, and/or text)."""
    codings = [*([coding(RXNORM, rxnorm)] if rxnorm else []), *([coding(CVX, cvx)] if cvx else [])]
    resource: dict[str, Any] = {
        "resourceType": "MedicationRequest",
        "id": id or _id("draft" if draft else "mr"),
        "status": "draft" if draft else status,
        "intent": "order",
        "subject": {"reference": f"Patient/{patient}"},
        "authoredOn": date(0 if draft else -60),
        "medicationCodeableConcept": concept(text, *codings),
    }
    if dose_mg is not None or dosage_text:
        dosage: dict[str, Any] = {"text": dosage_text or "once daily"}
        if dose_mg is not None:
            dosage["doseAndRate"] = [{"doseQuantity": {"value": dose_mg, "unit": "mg", "system": UCUM, "code": "mg"}}]
        resource["dosageInstruction"] = [dosage]
    resource.update(fields)
    return resource


def everolimus(*, draft: bool = False, **kwargs: Any) -> dict[str, Any]:
    """Everolimus 10 mg tablet (RxNorm SCD 845507)."""
    return med("everolimus 10 MG Oral Tablet", rxnorm="845507", draft=draft, dose_mg=10, **kwargs)


def sirolimus(*, draft: bool = False, **kwargs: Any) -> dict[str, Any]:
    """Sirolimus 2 mg tablet (RxNorm SCD 360110)."""
    return med("sirolimus 2 MG Oral Tablet", rxnorm="360110", draft=draft, dose_mg=2, **kwargs)


def immunization(text: str | None = None, *, cvx: str | None = None, rxnorm: str | None = None, id: str | None = None) -> dict[str, Any]:
    """A draft Immunization (as an EHR may put one in draftOrders)."""
    codings = [*([coding(CVX, cvx)] if cvx else []), *([coding(RXNORM, rxnorm)] if rxnorm else [])]
    return {
        "resourceType": "Immunization",
        "id": id or _id("imm"),
        "status": "not-done",
        "patient": {"reference": f"Patient/{PATIENT_ID}"},
        "occurrenceDateTime": day(0),
        "vaccineCode": concept(text, *codings),
    }


def medication(id: str, text: str | None = None, *, rxnorm: str | None = None) -> dict[str, Any]:
    """A Medication resource (for medicationReference)."""
    return {"resourceType": "Medication", "id": id, "code": concept(text, *([coding(RXNORM, rxnorm)] if rxnorm else []))}


# --- observations --------------------------------------------------------------------------------


def observation(loinc: str | None, days_ago: float, *, text: str | None = None, id: str | None = None, system: str = LOINC, **value: Any) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Observation",
        "id": id or _id("obs"),
        "status": "final",
        "code": concept(text, *([coding(system, loinc)] if loinc else [])),
        "subject": {"reference": f"Patient/{PATIENT_ID}"},
        "effectiveDateTime": day(-days_ago),
    }
    resource.update(value)
    return resource


def level(drug: str, value: Any, unit: str | None = "ng/mL", *, days_ago: float = 1, code: str | None = None, **kwargs: Any) -> dict[str, Any]:
    """A blood level of everolimus (LOINC 50544-6) or sirolimus (LOINC 29247-4)."""
    loinc = {"everolimus": "50544-6", "sirolimus": "29247-4"}[drug]
    quantity: dict[str, Any] = {"value": value}
    if unit is not None:
        quantity.update(unit=unit, system=UCUM, code=code or unit)
    return observation(loinc, days_ago, text=f"{drug.capitalize()} [Mass/volume] in Blood", valueQuantity=quantity, **kwargs)


POSITIVE = coding(SNOMED, "10828004", "Positive")
NEGATIVE = coding(SNOMED, "260385009", "Negative")


def hcg(result: str | None, days_ago: float, *, loinc: str = "2106-3", **kwargs: Any) -> dict[str, Any]:
    """A urine hCG test; result "positive"/"negative" as a SNOMED-coded value, or None (give the value in kwargs)."""
    value = {}
    if result is not None:
        value["valueCodeableConcept"] = concept(result.capitalize(), POSITIVE if result == "positive" else NEGATIVE)
    return observation(loinc, days_ago, text="Choriogonadotropin (pregnancy test) [Presence] in Urine", **value, **kwargs)


def pregnancy_status(pregnant: bool, days_ago: float) -> dict[str, Any]:
    """LOINC 82810-3 Pregnancy status, valued SNOMED 77386006 Pregnant or 60001007 Not pregnant."""
    value = coding(SNOMED, "77386006", "Pregnant") if pregnant else coding(SNOMED, "60001007", "Not pregnant")
    return observation("82810-3", days_ago, text="Pregnancy status", valueCodeableConcept=concept(None, value))


# --- conditions, procedures ----------------------------------------------------------------------


def condition(system: str, code: str, display: str = "", *, clinical: str | None = "active", verification: str | None = None,
              onset_days_ago: int = 30, **fields: Any) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Condition",
        "id": _id("cond"),
        "code": concept(display or None, coding(system, code, display or None)),
        "subject": {"reference": f"Patient/{PATIENT_ID}"},
        "onsetDateTime": date(-onset_days_ago),
    }
    if clinical:
        resource["clinicalStatus"] = concept(None, coding("http://terminology.hl7.org/CodeSystem/condition-clinical", clinical))
    if verification:
        resource["verificationStatus"] = concept(None, coding("http://terminology.hl7.org/CodeSystem/condition-ver-status", verification))
    resource.update(fields)
    return resource


def service_request(text: str, in_days: int | None, *, status: str = "active", category: Mapping | None = None,
                    code: Mapping | None = None, **fields: Any) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "ServiceRequest",
        "id": _id("sr"),
        "status": status,
        "intent": "order",
        "code": concept(text, *([code] if code else [])),
        "subject": {"reference": f"Patient/{PATIENT_ID}"},
    }
    if category:
        resource["category"] = [concept(None, category)]
    if in_days is not None:
        resource["occurrenceDateTime"] = day(in_days)
    resource.update(fields)
    return resource


def procedure(text: str, in_days: int | None, *, status: str = "completed", category: Mapping | None = None, **fields: Any) -> dict[str, Any]:
    """A Procedure; `in_days` negative for one performed in the past."""
    resource: dict[str, Any] = {
        "resourceType": "Procedure",
        "id": _id("proc"),
        "status": status,
        "code": concept(text),
        "subject": {"reference": f"Patient/{PATIENT_ID}"},
    }
    if category:
        resource["category"] = concept(None, category)
    if in_days is not None:
        resource["performedDateTime"] = day(in_days)
    resource.update(fields)
    return resource


def appointment(text: str, in_days: int, *, status: str = "booked", **fields: Any) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Appointment",
        "id": _id("appt"),
        "status": status,
        "serviceType": [concept(text)],
        "start": day(in_days),
        "end": day(in_days + 0.1),
        "participant": [{"actor": {"reference": f"Patient/{PATIENT_ID}"}, "status": "accepted"}],
    }
    resource.update(fields)
    return resource


# --- requests and snapshots ----------------------------------------------------------------------


def bundle(*resources: Mapping[str, Any], next_url: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": len(resources),
        "entry": [{"fullUrl": f"https://ehr.example.org/fhir/{ref(r)}", "resource": dict(r)} for r in resources],
    }
    if next_url:
        out["link"] = [{"relation": "next", "url": next_url}]
    return out


def patient_resource(patient_id: str = PATIENT_ID, gender: str = "female", birth_date: str = "1994-03-02") -> dict[str, Any]:
    return {"resourceType": "Patient", "id": patient_id, "gender": gender, "birthDate": birth_date}


def hook_request(
    hook: str = "patient-view",
    *,
    medications: Iterable[Mapping] = (),
    observations: Iterable[Mapping] = (),
    conditions: Iterable[Mapping] = (),
    procedures: Iterable[Mapping] = (),
    service_requests: Iterable[Mapping] = (),
    appointments: Iterable[Mapping] = (),
    drafts: Iterable[Mapping] = (),
    selections: Iterable[str] | None = None,
    prefetch: Mapping[str, Any] | None = None,
    patient_id: str = PATIENT_ID,
    medication_statements: Iterable[Mapping] = (),
    booking: Iterable[Mapping] = (),
) -> dict[str, Any]:
    """A complete CDS Hooks 2.0 request with every prefetch key filled (override keys with `prefetch`);
    appointment-book's context.appointments holds `booking`."""
    drafts = list(drafts)
    context: dict[str, Any] = {"userId": "Practitioner/dr-lee", "patientId": patient_id, "encounterId": "enc-1"}
    if hook == "appointment-book":
        context["appointments"] = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": dict(r)} for r in booking]}
    if hook in ("order-select", "order-sign"):
        context["draftOrders"] = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": dict(r)} for r in drafts]}
    if hook == "order-select":
        context["selections"] = list(selections if selections is not None else [ref(r) for r in drafts])
    full_prefetch: dict[str, Any] = {
        "patient": patient_resource(patient_id),
        "medications": bundle(*medications),
        "medicationStatements": bundle(*medication_statements),
        "observations": bundle(*observations),
        "conditions": bundle(*conditions),
        "procedures": bundle(*procedures),
        "serviceRequests": bundle(*service_requests),
        "appointments": bundle(*appointments),
    }
    full_prefetch.update(prefetch or {})
    return {"hook": hook, "hookInstance": str(uuid.uuid4()), "context": context, "prefetch": full_prefetch}


def call_of(request: Mapping[str, Any]) -> HookCall:
    return HookCall(
        hook=request["hook"],
        hook_instance=request["hookInstance"],
        context=request["context"],
        fhir_server=request.get("fhirServer"),
        access_token=(request.get("fhirAuthorization") or {}).get("access_token"),
        prefetch=request.get("prefetch") or {},
    )


def snapshot_of(request: Mapping[str, Any] | None = None, *, now: datetime = NOW, **resources: Any) -> PatientSnapshot:
    """The PatientSnapshot the service builds for a request (or for `hook_request(**resources)`), without HTTP."""
    request = request if request is not None else hook_request(**resources)
    k = knowledge()
    call = call_of(request)
    service = next(s for s in build_services(k).values() if s.hook == call.hook)
    data = gather(call, service, Settings(require_jwt=False))
    return build_snapshot(data, call, k, now)


def rule_findings(rule, **resources: Any) -> list[Finding]:
    """Run one rule on the snapshot of these resources (as `hook_request` takes them)."""
    return rule(snapshot_of(**resources), knowledge())


# --- plain records, for rules given a snapshot made by hand --------------------------------------


def order(text: str, *, ref: str | None = None, draft: bool = False, selected: bool = False, status: str = "active") -> MedicationOrder:
    """A MedicationOrder recognised from its name by the knowledge (as the reader does for text-only orders)."""
    return MedicationOrder(
        ref=ref or f"MedicationRequest/{_id('mo')}",
        text=text,
        concepts=knowledge().recognize_medication([], [text]),
        status="draft" if draft else status,
        is_draft=draft,
        is_selected=selected,
    )


def plain_snapshot(*medications: MedicationOrder, now: datetime = NOW, **fields: Any) -> PatientSnapshot:
    return PatientSnapshot(now=now, patient_id=PATIENT_ID, medications=tuple(medications), **fields)


# --- plain records with codes, doses and dates, for the rules' clinical-depth tests ------------------


def mtor_order(ref: str = "MedicationRequest/eve", text: str = "everolimus 10 MG Oral Tablet", code: str | None = "845507",
               draft: bool = False, dose: float | None = 10.0, authored: datetime | None = NOW - timedelta(days=200),
               resource: Mapping[str, Any] | None = None) -> MedicationOrder:
    """A MedicationOrder as the reader makes it from an RxNorm-coded request (everolimus 10 mg by default)."""
    k = knowledge()
    concepts = k.recognize_medication([{"system": RXNORM, "code": code}] if code else [], [text])
    return MedicationOrder(ref, text, concepts, "draft" if draft else "active", is_draft=draft, authored_on=authored,
                           dose_mg=dose, product_rxnorm=code if code in k.mtor_products else None, resource=resource or {})


def condition_record(kind_code: str | None, system: str = SNOMED, text: str = "", ref: str | None = None, active: bool = True,
                     asserted: datetime | None = NOW - timedelta(days=400)) -> ConditionRecord:
    """A ConditionRecord with the kinds the knowledge recognises in its code (or, with no code, its text)."""
    codes = frozenset({(system, kind_code)}) if kind_code else frozenset()
    return ConditionRecord(ref or f"Condition/{kind_code or 'text'}", text or kind_code or "", codes, active, asserted,
                           knowledge().condition_kinds(codes, text))


TSC_RECORD = condition_record("7199000")
SEGA_RECORD = condition_record(None, text="Subependymal giant cell astrocytoma")
AML_RECORD = condition_record("D17.71", ICD10CM)


def drug_level(value: float, days_ago: float = 3, drug: str = "everolimus", ref: str = "Observation/lvl") -> LabResult:
    return LabResult(ref, "drug-level", NOW - timedelta(days=days_ago), "level", analyte=drug, value=value,
                     value_as_written=f"{value} ng/mL")


def lipid_result(analyte: str, mg_dl: float, days_ago: float = 10) -> LabResult:
    return LabResult(f"Observation/{analyte}", "lipid", NOW - timedelta(days=days_ago), analyte, analyte=analyte, value=mg_dl,
                     value_as_written=f"{mg_dl} mg/dL")


def body_measurements(height_cm: float = 128, weight_kg: float = 26) -> tuple[LabResult, LabResult]:
    """Height and weight 20 days ago (a child of about 0.96 m² by default)."""
    return (LabResult("Observation/h", "height", NOW - timedelta(days=20), "Body height", value=height_cm),
            LabResult("Observation/w", "weight", NOW - timedelta(days=20), "Body weight", value=weight_kg))


def record_snapshot(meds: Iterable[MedicationOrder] = (), labs: Iterable[LabResult] = (), conditions: Iterable[ConditionRecord] = (),
                    birth: date_ | None = date_(1990, 1, 1), gender: str = "female", unavailable: Iterable[str] = ()) -> PatientSnapshot:
    """A PatientSnapshot of plain records (a woman born in 1990 by default)."""
    return PatientSnapshot(NOW, "p1", birth, gender, tuple(meds), tuple(labs), tuple(conditions), (), tuple(unavailable))


# --- responses -----------------------------------------------------------------------------------

CORE_TOPICS = ("cyp3a4-interaction", "live-vaccine", "pregnancy", "surgery-timing", "trough-high", "checks-incomplete")


def core_topics(body: Mapping[str, Any], among: Iterable[str] = CORE_TOPICS) -> list[str]:
    """The topics of a response's cards, in card order, restricted to `among` (other rules' cards ignored)."""
    wanted = set(among)
    return [c["source"]["topic"]["code"] for c in body["cards"] if c["source"]["topic"]["code"] in wanted]


def make_app(directory: Path, **settings: Any):
    """The app exactly as conftest's `app` fixture builds it (same settings, clock pinned to NOW), for modules
    that share one app across their tests to stay fast (`@pytest.fixture(scope="module") def app(...)`).
    Keyword arguments override settings."""
    from cds_service import create_app

    app = create_app(
        **{
            "require_jwt": False,
            "allowed_fhir_servers": ("https://ehr.example.org/fhir",),
            "fhir_deadline_s": 3.0,
            "database_url": f"sqlite:///{directory}/cards.sqlite3",
            **settings,
        }
    )
    app.extensions["mtor_cds"].clock = lambda: NOW
    return app
