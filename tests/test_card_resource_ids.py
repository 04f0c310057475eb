"""Issue 13: resource ids stay in the card's machine-readable parts, never in the text a clinician reads."""

from __future__ import annotations

import re

import pytest

from conftest import SCENARIOS, load_fixture

RESOURCE_TYPES = ("MedicationRequest", "MedicationStatement", "Medication", "Observation", "Condition", "Procedure",
                  "ServiceRequest", "Appointment", "Immunization", "Patient", "Encounter", "Practitioner", "Bundle")
RESOURCE_ID = re.compile(rf"\b(?:{'|'.join(RESOURCE_TYPES)})/[A-Za-z0-9\-.]+")


def shown_text(card: dict) -> list[str]:
    texts = [card["summary"], card.get("detail", ""), card["source"]["label"]]
    texts += [link["label"] for link in card.get("links", ())]
    texts += [s["label"] for s in card.get("suggestions", ())]
    return texts


def test_the_pattern_finds_a_resource_id():
    assert RESOURCE_ID.search("from MedicationRequest/mr-eve-19 (active)")
    assert RESOURCE_ID.search("Observation/lvl-4 on 2026-11-21")
    assert not RESOURCE_ID.search("18.2 ng/mL on 2026-11-21; 4.5 mg/m2")


@pytest.mark.parametrize("scenario", SCENARIOS["scenarios"], ids=lambda s: s["file"])
def test_no_card_text_shows_a_resource_id(call_hook, scenario):
    body = load_fixture(scenario["file"])
    ids = {e["resource"]["id"] for b in body.get("prefetch", {}).values() if isinstance(b, dict)
           for e in b.get("entry", ()) if "id" in e.get("resource", {})}
    for card in call_hook(body).get_json()["cards"]:
        for text in shown_text(card):
            assert not RESOURCE_ID.search(text), f"{card['source']['topic']['code']}: {text}"
            assert not any(re.search(rf"(?<![\w-]){re.escape(i)}(?![\w-])", text) for i in ids if len(i) > 4), text
