"""Issue 13: every link a card displays goes to a primary publisher (knowledge/publishers.json `card_link_allowed`).

Checked over every fixture of fhir_fixtures/scenarios.json, end to end: the card's source.url, each links[].url and
every URL written in the Markdown detail.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from conftest import SCENARIOS, load_fixture

PUBLISHERS = json.loads((Path(__file__).parents[1] / "cds_service" / "knowledge" / "publishers.json").read_text())
ALLOWED_HOSTS = frozenset(h["host"] for h in PUBLISHERS["hosts"] if h["card_link_allowed"] is True)
URL_IN_TEXT = re.compile(r"https?://[^\s<>\"'\]]+")


def displayed_urls(card: dict) -> list[str]:
    urls = [card["source"]["url"]] if card["source"].get("url") else []
    urls += [link["url"] for link in card.get("links", ())]
    urls += URL_IN_TEXT.findall(card.get("detail", ""))
    return urls


def test_urls_in_markdown_are_found_with_their_host():
    card = {"source": {"url": "https://dailymed.nlm.nih.gov/x"}, "links": [{"url": "https://doi.org/10.1/x"}],
            "detail": "See [a study](https://www.pedneur.com/article/S0887-8994(19)30955-5/fulltext) and http://mirror.example/x."}
    hosts = [urlsplit(u).hostname for u in displayed_urls(card)]
    assert hosts == ["dailymed.nlm.nih.gov", "doi.org", "www.pedneur.com", "mirror.example"]
    assert "mirror.example" not in ALLOWED_HOSTS  # the check below would fail on such a card


@pytest.mark.parametrize("scenario", SCENARIOS["scenarios"], ids=lambda s: s["file"])
def test_every_displayed_card_link_goes_to_an_allowed_publisher(call_hook, scenario):
    body = call_hook(load_fixture(scenario["file"])).get_json()
    for card in body.get("cards", ()):
        for url in displayed_urls(card):
            host = urlsplit(url).hostname
            assert host in ALLOWED_HOSTS, f"{card['source']['topic']['code']} card links {url}: {host} is not card_link_allowed"


def test_the_checks_incomplete_card_links_only_allowed_publishers(call_hook):
    """A request missing a prefetch key, with no FHIR server to fetch it from, gets the checks-incomplete card: its
    source has a label and no url (it rests on this service's data access, not on a clinical publisher)."""
    body = load_fixture("fires-trough-high-patient-view.json")
    body["prefetch"].pop("observations")
    body.pop("fhirServer", None)
    cards = call_hook(body).get_json()["cards"]
    [card] = [c for c in cards if c["source"]["topic"]["code"] == "checks-incomplete"]
    assert card["source"]["label"] and "url" not in card["source"]
    for url in displayed_urls(card):
        assert urlsplit(url).hostname in ALLOWED_HOSTS, url
