"""Every date a card shows a clinician is written one way, "3 Dec 2026" (or "3 Dec" within the year where a card says
so), never "2026-12-03" beside "3 Dec 2026" in the same response (a whole-response audit found four formats mixed).
Checked over every fixture of fhir_fixtures/scenarios.json, end to end: summaries, details, suggestion labels and
action descriptions. The dates inside FHIR resources stay FHIR dates."""

from __future__ import annotations

import re

import pytest

from conftest import SCENARIOS, load_fixture

ISO_DATE = re.compile(r"\b\d{4}-\d\d-\d\d\b")


def shown_texts(card: dict) -> list[str]:
    texts = [card["summary"], card.get("detail", "")]
    for suggestion in card.get("suggestions", ()):
        texts += [suggestion["label"], *(a.get("description", "") for a in suggestion.get("actions", ()))]
        texts += [a["resource"].get("description", "") for a in suggestion.get("actions", ()) if isinstance(a.get("resource"), dict)]
    return texts


@pytest.mark.parametrize("scenario", SCENARIOS["scenarios"], ids=lambda s: s["file"])
def test_no_card_shows_a_date_in_iso_form(call_hook, scenario):
    body = call_hook(load_fixture(scenario["file"])).get_json()
    for card in body.get("cards", ()):
        for text in shown_texts(card):
            assert not ISO_DATE.search(URL_FREE.sub("", text)), text


URL_FREE = re.compile(r"https?://\S+")


def test_the_check_would_see_an_iso_date():
    card = {"summary": "Plan a trough around 2026-12-03", "detail": "see https://example.org/2026-12-03"}
    assert [t for t in shown_texts(card) if ISO_DATE.search(URL_FREE.sub("", t))] == ["Plan a trough around 2026-12-03"]
