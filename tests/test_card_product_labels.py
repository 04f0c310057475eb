"""Issue 10/13 safety: a card never names or quotes another product's label.

A Zortress order's card never says Afinitor; a sirolimus card never says Afinitor; an everolimus card never says
Rapamune. Checked over every scenario and over synthetic requests: each firing scenario with its mTOR order
swapped to Zortress (everolimus for transplant) or Fyarro (IV sirolimus), which gives each topic's trigger with
those products, plus Zortress with a live vaccine and with an ACE inhibitor.
"""

from __future__ import annotations

import copy
import re

import pytest

from conftest import SCENARIOS, load_fixture

RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
PRODUCTS = {
    "Zortress": {"coding": [{"system": RXNORM, "code": "977440", "display": "everolimus 0.75 MG Oral Tablet [Zortress]"}],
                 "text": "everolimus 0.75 MG Oral Tablet [Zortress]"},
    "Fyarro": {"text": "Fyarro (sirolimus protein-bound particles) 100 mg vial"},
}
MTOR_WORDS = re.compile(r"everolimus|sirolimus|afinitor|rapamune|zortress|fyarro|disperz", re.IGNORECASE)
CARD_TEXT_FIELDS = ("summary", "detail")


def card_text(card: dict) -> str:
    links = " ".join(f"{link.get('label', '')} {link.get('url', '')}" for link in card.get("links", ()))
    suggestions = " ".join(s.get("label", "") for s in card.get("suggestions", ()))
    return " ".join([*(card.get(f, "") for f in CARD_TEXT_FIELDS), card["source"]["label"], links, suggestions])


def _is_mtor(resource: dict, medications: dict[str, dict]) -> bool:
    concept = resource.get("medicationCodeableConcept")
    if concept is None and "medicationReference" in resource:
        ref = resource["medicationReference"]
        target = medications.get(ref.get("reference", "").removeprefix("#").split("/")[-1], {})
        concept = target.get("code", {}) | {"text": ref.get("display", "")}
    return bool(MTOR_WORDS.search(str(concept)))


def with_product(body: dict, product: str) -> dict:
    """The request with every mTOR medication order (prefetched or draft) replaced by the product's own coding."""
    body = copy.deepcopy(body)
    bundles = [b for b in (body.get("prefetch") or {}).values() if isinstance(b, dict) and b.get("entry")]
    bundles += [body["context"]["draftOrders"]] if "draftOrders" in body.get("context", {}) else []
    entries = [e["resource"] for b in bundles for e in b["entry"] if "resource" in e]
    medications = {r.get("id", ""): r for r in entries if r.get("resourceType") == "Medication"}
    for resource in entries:
        contained = {c.get("id", ""): c for c in resource.get("contained", ()) if c.get("resourceType") == "Medication"}
        if resource.get("resourceType") in ("MedicationRequest", "MedicationStatement") and _is_mtor(resource, medications | contained):
            resource.pop("medicationReference", None)
            resource.pop("contained", None)
            resource["medicationCodeableConcept"] = copy.deepcopy(PRODUCTS[product])
    return body


def _everolimus_card(text: str) -> bool:
    return bool(re.search(r"everolimus|afinitor|zortress", text, re.IGNORECASE))


def _sirolimus_card(text: str) -> bool:
    return bool(re.search(r"sirolimus|rapamune|fyarro", text, re.IGNORECASE))


def assert_no_wrong_label(cards: list[dict], product: str | None = None) -> None:
    for card in cards:
        if card["source"]["topic"]["code"] == "checks-incomplete":
            continue
        text = card_text(card)
        topic = card["source"]["topic"]["code"]
        if product == "Zortress":
            assert "afinitor" not in text.lower(), f"{topic} card on a Zortress order names Afinitor: {text}"
        if product == "Fyarro":
            assert "rapamune" not in text.lower() and "afinitor" not in text.lower(), f"{topic} card on Fyarro: {text}"
        if _sirolimus_card(text) and not _everolimus_card(text):
            assert "afinitor" not in text.lower(), f"sirolimus {topic} card names Afinitor: {text}"
        if _everolimus_card(text) and not _sirolimus_card(text):
            assert "rapamune" not in text.lower(), f"everolimus {topic} card names Rapamune: {text}"


FIRING = [s for s in SCENARIOS["scenarios"] if s["expect_topics"]]


@pytest.mark.parametrize("scenario", SCENARIOS["scenarios"], ids=lambda s: s["file"])
def test_scenario_cards_name_only_their_own_products_label(call_hook, scenario):
    body = load_fixture(scenario["file"])
    product = "Zortress" if "Zortress" in str(body) else None
    assert_no_wrong_label(call_hook(body).get_json()["cards"], product)


@pytest.mark.parametrize("product", sorted(PRODUCTS))
@pytest.mark.parametrize("scenario", FIRING, ids=lambda s: s["file"])
def test_each_topics_trigger_on_zortress_or_fyarro_names_no_other_label(call_hook, scenario, product):
    body = with_product(load_fixture(scenario["file"]), product)
    response = call_hook(body)
    assert response.status_code == 200
    assert_no_wrong_label(response.get_json()["cards"], product)


@pytest.mark.parametrize("fixture", ["fires-live-vaccine-mmr-order-sign.json", "fires-angioedema-order-sign.json"])
def test_zortress_with_a_live_vaccine_or_an_ace_inhibitor_still_warns_without_afinitor(call_hook, fixture):
    cards = call_hook(with_product(load_fixture(fixture), "Zortress")).get_json()["cards"]
    topic = {"fires-live-vaccine-mmr-order-sign.json": "live-vaccine", "fires-angioedema-order-sign.json": "angioedema"}[fixture]
    card = next(c for c in cards if c["source"]["topic"]["code"] == topic)
    assert "Zortress" in card["source"]["label"]
    assert "e082a024-7850-400b-a5c2-2a140612562a" in card["source"]["url"]
    assert_no_wrong_label(cards, "Zortress")


def test_the_swap_reaches_the_order(call_hook):
    """The synthetic request really is a Zortress order (else the checks above would prove nothing)."""
    body = with_product(load_fixture("fires-angioedema-order-sign.json"), "Zortress")
    assert "Zortress" in str(body["prefetch"]["medications"]) and "Afinitor" not in str(body["prefetch"]["medications"])
