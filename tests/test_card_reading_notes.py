"""Issue 13: where the knowledge was read (mirrors, copies, aggregators, internal source keys) stays in the knowledge
files (`note`, `read_at`, `section_note`); card text names the publisher, the document and the section only."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from conftest import SCENARIOS, load_fixture

KNOWLEDGE = Path(__file__).parents[1] / "cds_service" / "knowledge"
SOURCE_KEYS = sorted({key for f in KNOWLEDGE.glob("*.json") for key in (json.loads(f.read_text()).get("sources") or {})
                      if "-" in key})  # AFINITOR-PI-P38, RAPAMUNE-FDA-2008 ... (plain words like POLICY are not keys)
READING_NOTES = re.compile(
    r"\bcopy\b|mirror|verbatim|\bread at\b|drugs\.com|davis|\bmims\b|druglib|uptodate|lexicomp|healthline|dr\.?oracle"
    r"|github|older (?:label|version)|unverified|same in|seed document|\bc\. ?(?:19|20)\d\d"
    + "".join(rf"|\b{re.escape(k)}\b" for k in SOURCE_KEYS),
    re.IGNORECASE,
)


def shown_text(card: dict) -> list[str]:
    texts = [card["summary"], card.get("detail", ""), card["source"]["label"]]
    texts += [link["label"] for link in card.get("links", ())]
    texts += [s["label"] for s in card.get("suggestions", ())]
    return texts


def test_the_pattern_finds_reading_notes():
    for note in ("older version (c. 2015-16) mirrored verbatim", "(with §17 counselling, AFINITOR-PI-P38)",
                 "same in DAVIS", "(Drugs.com copy, updated Mar 25, 2024)"):
        assert READING_NOTES.search(note), note
    assert not READING_NOTES.search("Afinitor / Afinitor Disperz (everolimus) US prescribing information (Novartis), §5.4 Angioedema")
    assert not READING_NOTES.search("TSC-SEGA and TSC seizures (trough-guided dosing)")


@pytest.mark.parametrize("scenario", SCENARIOS["scenarios"], ids=lambda s: s["file"])
def test_no_card_text_carries_reading_notes(call_hook, scenario):
    for card in call_hook(load_fixture(scenario["file"])).get_json()["cards"]:
        for text in shown_text(card):
            found = READING_NOTES.search(text)
            assert not found, f"{card['source']['topic']['code']}: {found.group(0)!r} in {text}"


def test_every_card_facing_source_label_is_clean():
    """Every knowledge source a card may cite has a clean label; provenance lives in its note / read_at."""
    for path in KNOWLEDGE.glob("*.json"):
        for key, source in (json.loads(path.read_text()).get("sources") or {}).items():
            if source.get("card_citable") is False or source.get("code_provenance_only"):
                continue
            assert not READING_NOTES.search(source["label"]), f"{path.name} {key}: {source['label']}"


def _sections(value, path=""):
    if isinstance(value, dict):
        for k, v in value.items():
            if k == "section" and isinstance(v, str):
                yield path, v
            else:
                yield from _sections(v, f"{path}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _sections(v, f"{path}[{i}]")


def test_every_section_reference_is_card_clean():
    """`section` is a short reference a card shows ("§5.4 Angioedema"); remarks go to `section_note` / `note`."""
    for path in KNOWLEDGE.glob("*.json"):
        for where, section in _sections(json.loads(path.read_text())):
            assert not READING_NOTES.search(section), f"{path.name}{where}: {section}"
