"""The fixtures are what they claim to be: valid FHIR R4 resources, listed in scenarios.json, covering every topic."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B import get_fhir_model_class
from pydantic import ValidationError

from cds_service.findings import Topic
from conftest import FIXTURES, SCENARIOS

HOOK_FIXTURES = sorted(p.name for p in FIXTURES.glob("*.json") if p.name.startswith(("fires-", "quiet-")))
SYNTHEA_FIXTURES = sorted(p.name for p in (FIXTURES / "synthea").glob("*.json"))
RULE_TOPICS = [t for t in Topic if t is not Topic.CHECKS_INCOMPLETE]
# A topic's fixtures are named fires-<word>-... / quiet-<word>-...; the word is the topic code unless listed here.
FILE_WORD = {Topic.CYP3A4_INTERACTION: "cyp3a4", Topic.SURGERY_TIMING: "surgery", Topic.TROUGH_HIGH: "trough"}
# Topics that have no quiet fixture yet (fhir_fixtures/ is not ours to edit): reported, not hidden.


def file_word(topic: Topic) -> str:
    return FILE_WORD.get(topic, topic.value)


def resources_in(node: Any, path: str) -> Iterator[tuple[str, dict]]:
    """Every FHIR resource in a hook request: prefetch values, bundle entries, draftOrders entries, contained."""
    if isinstance(node, dict):
        if isinstance(node.get("resourceType"), str):
            yield path, node
            for i, entry in enumerate(node.get("entry") or ()):
                if isinstance(entry, dict) and "resource" in entry:
                    yield from resources_in(entry["resource"], f"{path}.entry[{i}]")
            for i, contained in enumerate(node.get("contained") or ()):
                yield from resources_in(contained, f"{path}.contained[{i}]")
            return
        for key, value in node.items():
            yield from resources_in(value, f"{path}.{key}")


def validation_errors(document: dict) -> list[str]:
    errors = []
    for path, resource in resources_in(document, "$"):
        try:
            get_fhir_model_class(resource["resourceType"]).model_validate(resource)
        except (ValidationError, KeyError, ValueError) as exc:
            errors.append(f"{path} ({resource['resourceType']}/{resource.get('id')}): {str(exc)[:300]}")
    return errors


def load(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text())


def test_there_are_hook_fixtures():
    assert len(HOOK_FIXTURES) >= 10


@pytest.mark.parametrize("name", HOOK_FIXTURES)
def test_every_resource_in_a_hook_fixture_is_valid_fhir_r4(name):
    document = load(name)
    found = list(resources_in(document, "$"))
    assert len(found) >= 2  # at least the patient and the medications bundle
    assert validation_errors(document) == []


@pytest.mark.parametrize("name", SYNTHEA_FIXTURES)
def test_every_resource_in_a_synthea_fixture_is_valid_fhir_r4(name):
    assert validation_errors(json.loads((FIXTURES / "synthea" / name).read_text())) == []


def test_validator_catches_an_invalid_resource():
    broken = {"prefetch": {"medications": {"resourceType": "Bundle", "type": "searchset", "entry": [
        {"resource": {"resourceType": "MedicationRequest", "id": "x", "status": "active", "intent": "order", "subject": {"reference": "Patient/p"},
                      "dosageInstruction": {"text": "not a list"}}}
    ]}}}
    errors = validation_errors(broken)
    assert any("MedicationRequest/x" in e and "dosageInstruction" in e for e in errors)


def test_validator_sees_contained_and_draft_order_resources():
    document = load("fires-cyp3a4-carbamazepine-patient-view.json")
    paths = [path for path, _ in resources_in(document, "$")]
    assert any(".contained[" in p for p in paths)
    assert any("draftOrders" in p for name in HOOK_FIXTURES if "order-" in name for p, _ in resources_in(load(name), "$"))


@pytest.mark.parametrize("name", HOOK_FIXTURES)
def test_hook_fixture_is_a_well_formed_call_of_the_hook_its_name_says(name):
    document = load(name)
    assert name.endswith(f"-{document['hook']}.json")
    uuid.UUID(document["hookInstance"])
    patient_id = document["context"]["patientId"]
    for path, resource in resources_in(document, "$"):
        reference = (resource.get("subject") or resource.get("patient") or {}).get("reference")
        if isinstance(reference, str) and "Patient/" in reference:
            assert reference.endswith(f"Patient/{patient_id}"), f"{path} belongs to {reference}"


def test_hook_instances_are_unique_across_fixtures():
    instances = [load(name)["hookInstance"] for name in HOOK_FIXTURES]
    assert len(instances) == len(set(instances))


# --- scenarios.json ----------------------------------------------------------------------------


def test_scenarios_list_every_fires_and_quiet_fixture_exactly_once():
    listed = [s["file"] for s in SCENARIOS["scenarios"]]
    assert sorted(listed) == HOOK_FIXTURES


def test_every_scenario_says_what_it_shows_and_expects_known_topics():
    for scenario in SCENARIOS["scenarios"]:
        assert scenario["what"].strip()
        assert all(Topic(t) for t in scenario["expect_topics"])
        if scenario["file"].startswith("fires-"):
            assert scenario["expect_topics"] and scenario["expect_indicator"] in ("info", "warning", "critical")
        elif not scenario["expect_topics"]:
            assert scenario["expect_indicator"] is None


def test_every_fixture_name_starts_with_a_topic_word():
    words = sorted((file_word(t) for t in RULE_TOPICS), key=len, reverse=True)
    for name in HOOK_FIXTURES:
        assert any(name.split("-", 1)[1].startswith(f"{word}-") for word in words), name


@pytest.mark.parametrize("topic", RULE_TOPICS, ids=lambda t: t.value)
def test_every_topic_has_a_fires_and_a_quiet_fixture(topic):
    word = file_word(topic)
    fires = [s for s in SCENARIOS["scenarios"] if s["file"].startswith(f"fires-{word}-") and topic.value in s["expect_topics"]]
    quiet = [s for s in SCENARIOS["scenarios"] if s["file"].startswith(f"quiet-{word}-") and topic.value not in s["expect_topics"]]
    assert fires, f"no fires-{word}-*.json fixture expecting {topic.value}"
    assert quiet, f"no quiet-{word}-*.json fixture"


def test_scenarios_now_is_an_utc_instant():
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", SCENARIOS["now"])


def test_fixture_paths_are_inside_the_fixture_folder():
    assert all((FIXTURES / name).resolve().parent == Path(FIXTURES).resolve() for name in HOOK_FIXTURES)
