"""Card text reads its numbers and sources from the finding and the knowledge, never re-typed: the drift these tests
pin (a sirolimus card planning a trough "about 2 weeks" out, printing the everolimus-only +5 mg cap, naming
Afinitor) came from card wording that re-typed numbers the knowledge already held."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from cds_service.cards import TOPICS, Card, render_cards
from cds_service.findings import Topic
from cds_service.rules import evaluate
from snapshots import NOW, SNOMED, condition, everolimus, knowledge, level, med, ref, sirolimus, snapshot_of

LAM = condition(SNOMED, "277844007", "Pulmonary lymphangioleiomyomatosis (disorder)")
TSC = condition(SNOMED, "7199000", "Tuberous sclerosis syndrome (disorder)")


def cards_for(**resources) -> dict[str, Card]:
    snapshot = snapshot_of(**resources)
    return {card.topic.value: card for card in render_cards(evaluate(snapshot, knowledge()), snapshot)}


def text_of(card: Card) -> str:
    return json.dumps(card.to_json(), ensure_ascii=False)


def timing(drug: str, event: str):
    return next(t for t in knowledge().trough_timing if t.drug == drug and t.event == event)


def test_sirolimus_draft_for_lam_plans_the_trough_10_to_20_days_out_as_its_label_says():
    start = timing("sirolimus", "start")
    card = cards_for(hook="order-sign", drafts=[sirolimus(draft=True)], conditions=[LAM])["trough-monitoring"]
    assert f"{start.days_after} to {start.days_after_latest} days" in card.summary
    assert "2 weeks" not in text_of(card)
    due = (NOW + timedelta(days=start.days_after)).date()
    assert f"around {due.day} {due:%b %Y}," in card.summary  # one date format in every card: "3 Dec 2026"
    assert "10 to 20 days later" in card.detail


def test_everolimus_trough_plan_keeps_the_labels_approximately_14_days():
    start = timing("everolimus", "start")
    tsc_seizures = condition(SNOMED, "84757009", "Epilepsy (disorder)")
    card = cards_for(hook="order-sign", drafts=[everolimus(draft=True)], conditions=[TSC, tsc_seizures])["trough-monitoring"]
    assert f"about {start.days_after} days after starting" in card.summary


def test_sirolimus_low_trough_card_has_no_everolimus_titration_cap_and_names_no_afinitor():
    card = cards_for(medications=[sirolimus()], observations=[level("sirolimus", 3)], conditions=[LAM])["trough-low"]
    text = text_of(card)
    assert "+5 mg" not in text and "capped" not in text
    assert "afinitor" not in text.lower()
    dose_change = timing("sirolimus", "dose-change")
    assert f"recheck the trough {dose_change.days_after} to {dose_change.days_after_latest} days after any change" in card.detail


def test_everolimus_low_trough_card_states_the_cap_the_afinitor_label_sets():
    cap = knowledge().titrations["everolimus"].max_increment_mg
    tsc_seizures = condition(SNOMED, "84757009", "Epilepsy (disorder)")
    five_mg = med("everolimus 5 MG Oral Tablet", rxnorm="845509", dose_mg=5)
    card = cards_for(medications=[five_mg], observations=[level("everolimus", 2)], conditions=[TSC, tsc_seizures])["trough-low"]
    assert f"capped at +{cap:g} mg per step" in card.detail


def test_sirolimus_high_trough_card_rechecks_as_the_rapamune_label_says_and_names_no_afinitor():
    card = cards_for(medications=[sirolimus()], observations=[level("sirolimus", 20)], conditions=[LAM])["trough-high"]
    text = text_of(card)
    assert "2 weeks" not in text and "afinitor" not in text.lower()
    assert "7 to 14 days after the change" in card.detail


def test_high_trough_card_states_the_target_range_the_knowledge_holds():
    target = next(t for t in knowledge().trough_targets if t.drug == "sirolimus" and t.indication == "lam")
    card = cards_for(medications=[sirolimus()], observations=[level("sirolimus", 20)], conditions=[LAM])["trough-high"]
    assert f"trough target is {target.low_ng_per_ml:g}-{target.high_ng_per_ml:g} ng/mL" in card.detail


@pytest.mark.parametrize("value", [1, 3, 20, 40])
def test_no_sirolimus_card_names_afinitor(value):
    cards = cards_for(hook="order-sign", medications=[sirolimus()], drafts=[sirolimus(draft=True)],
                      observations=[level("sirolimus", value)], conditions=[LAM])
    assert cards
    for card in cards.values():
        assert "afinitor" not in text_of(card).lower(), card.topic


def test_every_topic_has_one_registry_entry_with_a_title_and_a_renderer():
    assert set(TOPICS) == set(Topic)
    for topic, entry in TOPICS.items():
        assert entry.title and callable(entry.render), topic
        assert topic is Topic.CHECKS_INCOMPLETE or entry.override_reasons, topic


def test_a_card_carries_its_topic_indicator_and_the_resources_it_rests_on():
    drug, high = sirolimus(), level("sirolimus", 20)
    card = cards_for(medications=[drug], observations=[high], conditions=[LAM])["trough-high"]
    assert (card.topic, card.indicator) == (Topic.TROUGH_HIGH, "warning")
    assert card.trigger_refs == {ref(drug), ref(high)} and card.trigger_key == "|".join(sorted(card.trigger_refs))
    assert card.to_json()["source"]["topic"]["code"] == "trough-high"
