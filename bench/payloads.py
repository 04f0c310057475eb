"""Realistic hook requests for the benchmark, built in the style of fhir_fixtures/.

order_select_request(): a patient on everolimus 10 mg (tuberous sclerosis) with a full record in
prefetch - 20 MedicationRequests, 30 Observations (everolimus troughs, labs), 10 Conditions - whose
clinician selects a draft clarithromycin order (a strong CYP3A4 inhibitor): about 30 KB, and it
answers one critical `cyp3a4-interaction` card.

patient_view_request(fhir_server): the same patient's chart opened with no prefetch, so the service
fetches every prefetch key from fhir_server; fhir_stub.py answers with fhir_resources().
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fhir_fixtures"
PATIENT_ID = "pt-bench-1"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
UCUM = "http://unitsofmeasure.org"

# Current medications besides everolimus: none of them interacts with it (RxNorm SCDs).
OTHER_MEDICATIONS = [
    ("197361", "amlodipine 5 MG Oral Tablet", 5, "mg"),
    ("314076", "lisinopril 10 MG Oral Tablet", 10, "mg"),
    ("860975", "metformin hydrochloride 500 MG Oral Tablet", 500, "mg"),
    ("617312", "atorvastatin 10 MG Oral Tablet", 10, "mg"),
    ("310798", "hydrochlorothiazide 25 MG Oral Tablet", 25, "mg"),
    ("198211", "simvastatin 40 MG Oral Tablet", 40, "mg"),
    ("313782", "acetaminophen 325 MG Oral Tablet", 650, "mg"),
    ("311700", "levetiracetam 500 MG Oral Tablet", 500, "mg"),
    ("966529", "levothyroxine sodium 0.1 MG Oral Tablet", 0.1, "mg"),
    ("866924", "metoprolol succinate 25 MG Extended Release Oral Tablet", 25, "mg"),
    ("197884", "lisinopril 40 MG Oral Tablet", 40, "mg"),
    ("200801", "furosemide 20 MG Oral Tablet", 20, "mg"),
    ("311989", "nitrofurantoin 100 MG Oral Capsule", 100, "mg"),
    ("197319", "allopurinol 100 MG Oral Tablet", 100, "mg"),
    ("308136", "amlodipine 2.5 MG Oral Tablet", 2.5, "mg"),
    ("312961", "simvastatin 20 MG Oral Tablet", 20, "mg"),
    ("198440", "acetaminophen 500 MG Oral Tablet", 1000, "mg"),
    ("310965", "ibuprofen 200 MG Oral Tablet", 400, "mg"),
    ("1719286", "vitamin D3 1000 UNT Oral Tablet", 1, "tablet"),
]
LABS = [  # (LOINC, display, unit, value): routine labs besides the everolimus troughs
    ("2345-7", "Glucose [Mass/volume] in Serum or Plasma", "mg/dL", 98),
    ("2160-0", "Creatinine [Mass/volume] in Serum or Plasma", "mg/dL", 0.9),
    ("2093-3", "Cholesterol [Mass/volume] in Serum or Plasma", "mg/dL", 212),
    ("2571-8", "Triglyceride [Mass/volume] in Serum or Plasma", "mg/dL", 180),
    ("718-7", "Hemoglobin [Mass/volume] in Blood", "g/dL", 12.9),
    ("6690-2", "Leukocytes [#/volume] in Blood by Automated count", "10*3/uL", 5.2),
]
CONDITIONS = [
    ("7199000", "Tuberous sclerosis syndrome"),
    ("38341003", "Hypertensive disorder"),
    ("44054006", "Diabetes mellitus type 2"),
    ("55822004", "Hyperlipidemia"),
    ("84757009", "Epilepsy"),
    ("40930008", "Hypothyroidism"),
    ("195967001", "Asthma"),
    ("35489007", "Depressive disorder"),
    ("68566005", "Urinary tract infectious disease"),
    ("90560007", "Gout"),
]


def _patient() -> dict[str, Any]:
    return {
        "resourceType": "Patient", "id": PATIENT_ID,
        "meta": {"profile": ["http://hl7.org/fhir/us/core/StructureDefinition/us-core-patient"]},
        "identifier": [{"system": "urn:oid:2.16.840.1.113883.19.5", "value": f"MRN-{PATIENT_ID}"}],
        "name": [{"use": "official", "family": "Okafor", "given": ["Grace"]}],
        "gender": "female", "birthDate": "1988-07-14",
    }


def _medication_request(rid: str, code: str, display: str, dose: float, unit: str, status: str = "active",
                        authored: str = "2026-06-01") -> dict[str, Any]:
    return {
        "resourceType": "MedicationRequest", "id": rid, "status": status, "intent": "order",
        "subject": {"reference": f"Patient/{PATIENT_ID}"}, "authoredOn": authored,
        "requester": {"reference": "Practitioner/dr-lee", "display": "Dr. Lee"},
        "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": code, "display": display}]},
        "dosageInstruction": [{
            "text": "once daily", "timing": {"repeat": {"frequency": 1, "period": 1, "periodUnit": "d"}},
            "doseAndRate": [{"doseQuantity": {"value": dose, "unit": unit, "system": UCUM, "code": unit}}],
        }],
    }


def _observation(rid: str, code: str, display: str, value: float, unit: str, when: str) -> dict[str, Any]:
    return {
        "resourceType": "Observation", "id": rid, "status": "final",
        "code": {"coding": [{"system": LOINC, "code": code, "display": display}]},
        "subject": {"reference": f"Patient/{PATIENT_ID}"}, "effectiveDateTime": when,
        "valueQuantity": {"value": value, "unit": unit, "system": UCUM, "code": unit},
    }


def _condition(rid: str, code: str, display: str) -> dict[str, Any]:
    return {
        "resourceType": "Condition", "id": rid,
        "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]},
        "code": {"coding": [{"system": SNOMED, "code": code, "display": display}], "text": display},
        "subject": {"reference": f"Patient/{PATIENT_ID}"}, "onsetDateTime": "2015-03-01", "recordedDate": "2015-03-01",
    }


def fhir_resources() -> dict[str, list[dict[str, Any]]]:
    """The patient's record by prefetch key (what a FHIR server holds for the searches)."""
    medications = [_medication_request("mr-eve-1", "845507", "everolimus 10 MG Oral Tablet", 10, "mg")]
    medications += [
        _medication_request(f"mr-{n}", code, display, dose, unit)
        for n, (code, display, dose, unit) in enumerate(OTHER_MEDICATIONS, start=2)
    ]
    observations = [  # monthly everolimus troughs, all in range (5-15 ng/mL)
        _observation(f"lvl-{n}", "50544-6", "Everolimus [Mass/volume] in Blood", 6 + (n % 7), "ng/mL",
                     f"2026-{1 + n % 10:02d}-{1 + n:02d}T08:00:00Z")
        for n in range(12)
    ]
    observations += [
        _observation(f"lab-{n}", code, display, value, unit, f"2026-{1 + n % 10:02d}-{1 + n % 28:02d}T08:00:00Z")
        for n, (code, display, unit, value) in enumerate(LABS * 3)
    ]
    conditions = [_condition(f"cond-{n}", code, display) for n, (code, display) in enumerate(CONDITIONS)]
    return {
        "patient": [_patient()],
        "medications": medications,
        "medicationStatements": [],
        "observations": observations,
        "conditions": conditions,
        "procedures": [],
        "serviceRequests": [],
        "appointments": [],
    }


def bundle(resources: list[dict[str, Any]], base: str = "https://ehr.example.org/fhir") -> dict[str, Any]:
    return {
        "resourceType": "Bundle", "type": "searchset", "total": len(resources),
        "entry": [
            {"fullUrl": f"{base}/{r['resourceType']}/{r['id']}", "resource": r}
            for r in resources
        ],
    }


def order_select_request() -> dict[str, Any]:
    record = fhir_resources()
    clarithromycin = _medication_request(
        "draft-clari-1", "197517", "clarithromycin 500 MG Oral Tablet", 500, "mg", status="draft", authored="2026-11-23"
    )
    return {
        "hook": "order-select",
        "hookInstance": "7a100d37-c5cb-50e7-9829-fe970ca0b001",
        "context": {
            "userId": "Practitioner/dr-lee", "patientId": PATIENT_ID, "encounterId": f"enc-{PATIENT_ID}",
            "draftOrders": {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": clarithromycin}]},
            "selections": ["MedicationRequest/draft-clari-1"],
        },
        "prefetch": {
            "patient": record["patient"][0],
            **{key: bundle(resources) for key, resources in record.items() if key != "patient"},
        },
    }


def sized_record(size: int) -> dict[str, list[dict[str, Any]]]:
    """A record of about `size` resources with the same clinical picture as fhir_resources(): everolimus plus
    routine medications, troughs and labs, conditions (in the proportions 3 : 5 : 2), for the growth table."""
    base = fhir_resources()
    n_meds, n_obs = max(2, size * 3 // 10), max(3, size // 2)
    n_cond = max(1, size - n_meds - n_obs)
    medications = [base["medications"][0]] + [
        _medication_request(f"mr-g{n}", *OTHER_MEDICATIONS[n % len(OTHER_MEDICATIONS)]) for n in range(n_meds - 1)
    ]
    observations = [
        _observation(f"obs-g{n}", "50544-6", "Everolimus [Mass/volume] in Blood", 6 + n % 7, "ng/mL",
                     f"2026-{1 + n % 10:02d}-{1 + n % 28:02d}T08:00:00Z") if n % 4 == 0 else
        _observation(f"obs-g{n}", *LABS[n % len(LABS)][:2], LABS[n % len(LABS)][3], LABS[n % len(LABS)][2],
                     f"2026-{1 + n % 10:02d}-{1 + n % 28:02d}T08:00:00Z")
        for n in range(n_obs)
    ]
    conditions = [_condition(f"cond-g{n}", *CONDITIONS[n % len(CONDITIONS)]) for n in range(n_cond)]
    return {**base, "medications": medications, "observations": observations, "conditions": conditions}


def sized_order_select_request(size: int) -> dict[str, Any]:
    """order_select_request() with a record of about `size` resources (same answer: one critical card)."""
    request = order_select_request()
    record = sized_record(size)
    request["prefetch"] = {"patient": record["patient"][0], **{k: bundle(v) for k, v in record.items() if k != "patient"}}
    return request


def patient_view_request(fhir_server: str) -> dict[str, Any]:
    return {
        "hook": "patient-view",
        "hookInstance": "7a100d37-c5cb-50e7-9829-fe970ca0b002",
        "fhirServer": fhir_server,
        "fhirAuthorization": {
            "access_token": "bench-token", "token_type": "Bearer", "expires_in": 300,
            "scope": "patient/*.read", "subject": "mtor-cds",
        },
        "context": {"userId": "Practitioner/dr-lee", "patientId": PATIENT_ID, "encounterId": f"enc-{PATIENT_ID}"},
    }


if __name__ == "__main__":  # sizes, for the README
    print("order-select body:", len(json.dumps(order_select_request(), separators=(",", ":"))), "bytes")


def floor_request() -> dict[str, Any]:
    """The order-select call with a hook the service does not answer: refused with 400 once its JSON is parsed (the
    bench's floor: what a call of that size costs before any record is read)."""
    return {**order_select_request(), "hook": "patient-view"}
