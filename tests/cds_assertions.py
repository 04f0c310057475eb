"""Checks of a CDS Hooks 2.0 response against the spec's MUSTs (used by several test modules)."""

from __future__ import annotations

import uuid

from cds_service.findings import TOPIC_SYSTEM, Topic

INDICATORS = {"info", "warning", "critical"}


def assert_no_empty_values(value, path="$"):
    assert value is not None, f"{path} is null"
    if isinstance(value, (str, list, dict)):
        assert len(value) > 0 or path == "$.cards", f"{path} is empty"
    if isinstance(value, dict):
        for key, item in value.items():
            assert_no_empty_values(item, f"{path}.{key}")
    if isinstance(value, list):
        for i, item in enumerate(value):
            assert_no_empty_values(item, f"{path}[{i}]")


def assert_valid_cds_response(body: dict) -> None:
    assert set(body) <= {"cards", "systemActions"}
    assert isinstance(body["cards"], list)
    assert_no_empty_values(body)
    topics = set()
    for card in body["cards"]:
        uuid.UUID(card["uuid"])
        assert isinstance(card["summary"], str) and 0 < len(card["summary"]) < 140
        assert card["indicator"] in INDICATORS
        source = card["source"]
        assert source["label"]
        if "url" in source:
            assert source["url"].startswith(("https://", "http://"))
        assert source["topic"]["system"] == TOPIC_SYSTEM
        topic = Topic(source["topic"]["code"])
        assert topic not in topics, "one card per topic"
        topics.add(topic)
        for reason in card.get("overrideReasons", []):
            assert reason["display"] and reason["code"] and reason["system"]
        suggestions = card.get("suggestions")
        if suggestions:
            assert card["selectionBehavior"] in ("at-most-one", "any")
            if card["selectionBehavior"] == "at-most-one":
                assert sum(1 for s in suggestions if s.get("isRecommended")) <= 1
            for suggestion in suggestions:
                assert suggestion["label"]
                uuid.UUID(suggestion["uuid"])
                for action in suggestion["actions"]:
                    assert action["type"] in ("create", "update", "delete")
                    assert action["description"]
                    if action["type"] == "delete":
                        assert "/" in action["resourceId"]
                    else:
                        assert action["resource"]["resourceType"]
        else:
            assert "selectionBehavior" not in card


def topics_of(body: dict) -> list[str]:
    return [card["source"]["topic"]["code"] for card in body["cards"]]
