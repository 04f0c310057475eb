"""One bad value never costs the other cards: each resource is read in isolation, each rule runs in isolation.

A resource with an out-of-range date, a negative or non-finite amount or a wrong type is skipped and counted (by
resource type) in the checks-incomplete card; the critical clarithromycin interaction still fires alongside. The
property-based test covers every date and number field the reader reads, of every resource type it reads.
"""

from __future__ import annotations

import copy
import itertools
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cds_assertions import assert_valid_cds_response, topics_of
from cds_service import rules
from cds_service.fhir.read import _LAB_READERS, READABLE_YEARS
from cds_service.knowledge import load_knowledge
from conftest import load_fixture
from snapshots import NOW, condition, everolimus, level, snapshot_of

ORDER_SELECT = "/cds-services/mtor-safety-order-select"
PATIENT_VIEW = "/cds-services/mtor-safety-patient-view"
PATIENT = "pt-cyp-1"
SUBJECT = {"reference": f"Patient/{PATIENT}"}
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
KINDS = load_knowledge().observation_kinds
LOINC_OF_KIND = {kind: code for code, (kind, _) in sorted(KINDS.items(), reverse=True)}  # one LOINC code per lab kind


def observation(kind: str) -> dict:
    return {"resourceType": "Observation", "id": f"obs-{kind}", "status": "final", "subject": SUBJECT,
            "code": {"coding": [{"system": "http://loinc.org", "code": LOINC_OF_KIND[kind]}]},
            "effectiveDateTime": "2026-11-01", "valueQuantity": {"value": 12, "unit": "mg/dL", "code": "mg/dL"},
            "valueCodeableConcept": {"text": "positive"}}


def medication_request(id: str) -> dict:
    return {"resourceType": "MedicationRequest", "id": id, "status": "active", "intent": "order", "subject": SUBJECT,
            "authoredOn": "2026-10-01", "medicationCodeableConcept": {"text": "atorvastatin 20 MG Oral Tablet"},
            "dosageInstruction": [{"timing": {"repeat": {"frequency": 1, "period": 1, "periodUnit": "d"}},
                                   "doseAndRate": [{"doseQuantity": {"value": 20, "unit": "mg", "code": "mg"}}]}]}


# Where each resource goes, the resource, and every date or number field the reader reads in it.
TARGETS: dict[str, tuple[str, dict, list[tuple]]] = {
    "MedicationRequest": ("medications", medication_request("mr-other"), [
        ("authoredOn",), ("dosageInstruction", 0, "doseAndRate", 0, "doseQuantity", "value"),
        ("dosageInstruction", 0, "timing", "repeat", "frequency"), ("dosageInstruction", 0, "timing", "repeat", "period")]),
    "MedicationRequest+Medication": ("medications", {
        **{k: v for k, v in medication_request("mr-by-ref").items() if k != "medicationCodeableConcept"},
        "medicationReference": {"reference": "#m1"},
        "contained": [{"resourceType": "Medication", "id": "m1", "code": {"text": "atorvastatin"},
                       "batch": {"expirationDate": "2027-01-01"}, "amount": {"numerator": {"value": 20}}}]}, [
        ("contained", 0, "batch", "expirationDate"), ("contained", 0, "amount", "numerator", "value")]),
    "MedicationStatement": ("medicationStatements", {
        "resourceType": "MedicationStatement", "id": "ms-1", "status": "active", "subject": SUBJECT,
        "medicationCodeableConcept": {"text": "fish oil"}, "effectiveDateTime": "2026-01-01", "dateAsserted": "2026-01-02",
        "dosage": [{"doseAndRate": [{"doseQuantity": {"value": 1000, "unit": "mg", "code": "mg"}}]}]}, [
        ("effectiveDateTime",), ("effectivePeriod", "start"), ("dateAsserted",), ("dosage", 0, "doseAndRate", 0, "doseQuantity", "value")]),
    **{f"Observation:{kind}": ("observations", observation(kind), [
        ("effectiveDateTime",), ("effectivePeriod", "start"), ("effectiveInstant",), ("issued",), ("valueQuantity", "value")])
       for kind in sorted(_LAB_READERS)},
    "Condition": ("conditions", {
        "resourceType": "Condition", "id": "c-1", "subject": SUBJECT, "code": {"text": "Pregnancy"},
        "clinicalStatus": {"coding": [{"code": "active"}]}, "onsetDateTime": "2026-01-01", "recordedDate": "2026-01-02"}, [
        ("onsetDateTime",), ("onsetPeriod", "start"), ("recordedDate",), ("abatementDateTime",)]),
    "Procedure": ("procedures", {
        "resourceType": "Procedure", "id": "p-1", "status": "completed", "subject": SUBJECT, "code": {"text": "Nephrectomy"},
        "performedDateTime": "2026-11-20"}, [("performedDateTime",), ("performedPeriod", "start"), ("performedPeriod", "end")]),
    "ServiceRequest": ("serviceRequests", {
        "resourceType": "ServiceRequest", "id": "sr-1", "status": "active", "intent": "order", "subject": SUBJECT,
        "code": {"text": "Nephrectomy"}, "occurrenceDateTime": "2026-11-25"}, [("occurrenceDateTime",), ("occurrencePeriod", "start")]),
    "Appointment": ("appointments", {
        "resourceType": "Appointment", "id": "ap-1", "status": "booked", "description": "Nephrectomy", "start": "2026-11-25T09:00:00Z",
        "end": "2026-11-25T12:00:00Z", "participant": [{"actor": SUBJECT, "status": "accepted"}]}, [("start",), ("end",)]),
    "Immunization (draft)": ("draft", {
        "resourceType": "Immunization", "id": "imm-1", "status": "not-done", "patient": SUBJECT,
        "vaccineCode": {"text": "influenza vaccine"}, "occurrenceDateTime": "2026-11-23"}, [("occurrenceDateTime",)]),
    "ServiceRequest (draft)": ("draft", {
        "resourceType": "ServiceRequest", "id": "sr-d", "status": "draft", "intent": "order", "subject": SUBJECT,
        "code": {"text": "Nephrectomy"}, "occurrenceDateTime": "2026-11-25"}, [("occurrenceDateTime",), ("occurrencePeriod", "start")]),
    "Patient": ("patient", {"resourceType": "Patient", "id": PATIENT, "gender": "female", "birthDate": "1994-03-02"}, [("birthDate",)]),
}
FIELDS = [(name, path) for name, (_, _, paths) in TARGETS.items() for path in paths]

EXTREME_DATES = ["9999-12-31", "9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00+14:00", "0001-01-01", "9999", "0001-01",
                 "2026-02-30", "next Tuesday", 20261123, None, [], {}]
EXTREME_NUMBERS = [-170, -1, 0, 1e308, -1e308, 1.7976931348623157e308, 5e-324, 10**30, 18446744073709551616, "12", True, None, [], {}]


# FHIR choice types and fall-backs: the reader takes the first present, so a value is read only without the others.
ALTERNATIVES = [{"effectiveDateTime", "effectivePeriod", "effectiveInstant", "issued", "dateAsserted"},
                {"onsetDateTime", "onsetPeriod", "recordedDate"}, {"performedDateTime", "performedPeriod"},
                {"occurrenceDateTime", "occurrencePeriod"}]


def with_value(resource: dict, path: tuple, value: Any, alone: bool = False) -> dict:
    """A copy with `value` at `path`; `alone` drops the alternatives the reader would read instead."""
    resource = copy.deepcopy(resource)
    if alone:
        for group in ALTERNATIVES:
            if path[0] in group:
                for other in group - {path[0]}:
                    resource.pop(other, None)
    node = resource
    for step, following in itertools.pairwise(path):
        node = node[step] if isinstance(node, list) else node.setdefault(step, [{}] if isinstance(following, int) else {})
    node[path[-1]] = value
    return resource


def call_with(target: str, resource: dict) -> dict:
    """The clarithromycin order-select call with `resource` added where its target says (Patient: replaced)."""
    body = load_fixture("fires-cyp3a4-clarithromycin-order-select.json")
    key = TARGETS[target][0]
    if key == "draft":
        body["context"]["draftOrders"]["entry"].append({"resource": resource})
    elif key == "patient":
        body["prefetch"]["patient"] = resource
    else:
        body["prefetch"][key]["entry"].append({"resource": resource})
    return body


def post(client, body: dict, path: str = ORDER_SELECT):
    return client.post(path, data=json.dumps(body), content_type="application/json")


def assert_critical_still_fires(response) -> dict:
    assert response.status_code == 200, response.get_data(as_text=True)[:500]
    answer = response.get_json()
    assert_valid_cds_response(answer)
    assert topics_of(answer)[0] == "cyp3a4-interaction" and answer["cards"][0]["indicator"] == "critical"
    return answer


# --- reproduced through the HTTP API: these were 500s that dropped every card ----------------------


@pytest.mark.parametrize("date", ["9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00+14:00", "9999-12-31"])
@pytest.mark.parametrize("target, path", [f for f in FIELDS if "Date" in f[1][-1] or f[1][-1] in ("issued", "start", "end", "effectiveInstant", "authoredOn")],
                         ids=lambda f: str(f))
def test_an_extreme_date_skips_only_its_resource_and_says_so(client, target, path, date):
    resource = with_value(TARGETS[target][1], path, date, alone=True)
    answer = assert_critical_still_fires(post(client, call_with(target, resource)))
    read_fields = path not in {("contained", 0, "batch", "expirationDate"), ("abatementDateTime",), ("end",)}
    if read_fields and target != "Immunization (draft)":  # a not-done draft Immunization is not an order anyone reads
        assert topics_of(answer)[-1] == "checks-incomplete"
        detail = answer["cards"][-1]["detail"]
        if target.startswith("Medication"):  # the drug is still weighed; its date reads as unknown, and is said
            assert "out of range, read as unknown" in detail
        else:  # said per resource type, never with the resource's id
            assert f"1 {resource['resourceType']} could not be read" in detail and str(resource.get("id")) not in detail


@pytest.mark.parametrize("value", [-170, -1, 1.7976931348623157e308, 10**30, 1e9 + 1])
@pytest.mark.parametrize("kind", ["height", "weight"])
def test_a_negative_or_huge_height_or_weight_is_skipped_and_counted(client, kind, value):
    resource = with_value(observation(kind), ("valueQuantity",), {"value": value, "unit": "cm" if kind == "height" else "kg",
                                                                  "code": "cm" if kind == "height" else "kg"})
    answer = assert_critical_still_fires(post(client, call_with(f"Observation:{kind}", resource)))
    assert topics_of(answer)[-1] == "checks-incomplete"


def test_the_snapshot_counts_unreadable_resources_per_type():
    snapshot = snapshot_of(
        hook="patient-view",
        medications=[everolimus()],
        observations=[level("everolimus", 20), level("everolimus", -3), level("everolimus", 1e308, effectiveDateTime="0001-01-01T00:00:00+14:00")],
        conditions=[condition("http://snomed.info/sct", "77386006", "Pregnant", onsetDateTime="9999-12-31")],
    )
    assert dict(snapshot.unreadable) == {"Observation": 2, "Condition": 1}
    assert snapshot.skipped_resources == 3
    assert len(snapshot.labs) == 1 and len(snapshot.medications) == 1 and snapshot.conditions == ()


@pytest.mark.parametrize("fields", [{"authoredOn": "9999-12-31T23:59:59-14:00"}, {"authoredOn": "0001-01-01"},
                                    {"dosageInstruction": [{"doseAndRate": [{"doseQuantity": {"value": -10, "unit": "mg", "code": "mg"}}]}]},
                                    {"dosageInstruction": [{"timing": {"repeat": {"frequency": 1e300, "period": 1e-300, "periodUnit": "d"}}}]}])
def test_a_medication_with_an_out_of_range_date_or_dose_is_still_weighed_and_that_is_said(fields):
    snapshot = snapshot_of(hook="patient-view", medications=[everolimus(**fields)])
    [order] = snapshot.medications
    assert order.mtor_drug == "everolimus" and snapshot.skipped_resources == 0
    assert snapshot.unavailable == ("the start date or dose of 1 medication(s): out of range, read as unknown",)


def test_dates_inside_the_readable_years_are_read_with_their_offset():
    assert READABLE_YEARS.start == 1800 and READABLE_YEARS.stop == 2201
    snapshot = snapshot_of(hook="patient-view", medications=[everolimus(authoredOn="2200-12-31T23:59:59-14:00")])
    assert snapshot.medications[0].authored_on is None  # 2201-01-01 in UTC: outside
    snapshot = snapshot_of(hook="patient-view", medications=[everolimus(authoredOn="1800-01-01T12:00:00+01:00")])
    assert snapshot.unavailable == () and snapshot.medications[0].authored_on.year == 1800


def test_an_mtor_order_with_an_absurd_date_still_gets_its_interaction_card(client):
    body = load_fixture("fires-cyp3a4-carbamazepine-patient-view.json")
    for entry in body["prefetch"]["medications"]["entry"]:
        entry["resource"]["authoredOn"] = "9999-12-31T23:59:59-14:00"
    response = post(client, body, PATIENT_VIEW)
    assert response.status_code == 200
    answer = response.get_json()
    assert topics_of(answer)[0] == "cyp3a4-interaction" and topics_of(answer)[-1] == "checks-incomplete"
    assert "read as unknown" in answer["cards"][-1]["detail"]


def test_an_unreadable_current_medication_is_not_an_all_clear(client):
    body = load_fixture("fires-cyp3a4-carbamazepine-patient-view.json")
    for entry in body["prefetch"]["medications"]["entry"]:
        resource = entry["resource"]
        resource["medicationReference"], resource["contained"] = {"reference": "#med"}, 5  # wrong type: unreadable
        resource.pop("medicationCodeableConcept", None)
    response = post(client, body, PATIENT_VIEW)
    assert response.status_code == 200
    answer = response.get_json()
    assert topics_of(answer) == ["checks-incomplete"]
    assert "current medications" in answer["cards"][0]["detail"]


def test_every_lab_kind_of_the_knowledge_has_a_reader():
    assert {kind for kind, _ in KINDS.values()} == set(_LAB_READERS)


# --- rules run in isolation ----------------------------------------------------------------------


def test_a_rule_that_fails_on_the_data_becomes_a_checks_incomplete_note(client, monkeypatch, caplog):
    def check_overflowing(snapshot, knowledge):
        return [NOW + (NOW - NOW.replace(year=1)) * 10]  # OverflowError, as date arithmetic on extreme dates raises

    monkeypatch.setattr(rules, "RULES", (check_overflowing, *rules.RULES))
    answer = assert_critical_still_fires(post(client, load_fixture("fires-cyp3a4-clarithromycin-order-select.json")))
    assert topics_of(answer) == ["cyp3a4-interaction", "checks-incomplete"]
    assert "the overflowing check" in answer["cards"][-1]["detail"]
    assert "rule check_overflowing failed: OverflowError" in caplog.text


# --- property: every date and number field, any value ---------------------------------------------

_offsets = st.builds(lambda sign, h, m: f"{sign}{h:02d}:{m:02d}", st.sampled_from("+-"), st.integers(0, 14), st.sampled_from([0, 30, 45]))
_fhir_dates = st.one_of(
    st.integers(1, 9999).map(lambda y: f"{y:04d}"),
    st.builds(lambda y, m: f"{y:04d}-{m:02d}", st.integers(1, 9999), st.integers(1, 12)),
    st.dates().map(lambda d: f"{d.year:04d}-{d.month:02d}-{d.day:02d}"),
    st.builds(lambda d, t, z: f"{d.year:04d}-{d.month:02d}-{d.day:02d}T{t.isoformat(timespec='seconds')}{z}",
              st.dates(), st.times(), st.one_of(_offsets, st.just("Z"), st.just(""))),
)
_numbers = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False), st.integers(-(10**30), 10**30), st.sampled_from([0, -0.0, 5e-324, 1.7976931348623157e308]),
)
_wrong_types = st.one_of(st.none(), st.booleans(), st.text(max_size=12), st.just([]), st.just({}), st.lists(st.integers(), max_size=2))


@settings(max_examples=300, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(field=st.sampled_from(FIELDS), value=st.one_of(_fhir_dates, _numbers, _wrong_types))
def test_any_value_in_any_date_or_number_field_never_costs_the_critical_card(app, field, value):
    target, path = field
    response = post(app.test_client(), call_with(target, with_value(TARGETS[target][1], path, value)))
    assert_critical_still_fires(response)
