"""Feedback naming a card and suggestion by the UUIDs this service issued, in whatever case the EHR keeps them."""

from __future__ import annotations

import time

from conftest import load_fixture


def test_feedback_with_uuids_in_upper_case_is_taken(client):
    """Found by the EHR-integration audit: an EHR that keeps card uuids in a SQL Server uniqueidentifier column sends
    them back in upper case; RFC 9562 compares UUIDs case-insensitively, but every such feedback was a 400."""
    body = client.post("/cds-services/mtor-safety-order-select", json=load_fixture("fires-cyp3a4-clarithromycin-order-select.json")).get_json()
    card = body["cards"][0]
    suggestion = card["suggestions"][0]["uuid"]
    time.sleep(0.3)  # the card store writes in the background
    entry = {"card": card["uuid"].upper(), "outcome": "accepted", "acceptedSuggestions": [{"id": suggestion.upper()}],
             "outcomeTimestamp": "2026-11-23T11:59:00Z"}
    response = client.post("/cds-services/mtor-safety-order-select/feedback", json={"feedback": [entry]})
    assert response.status_code == 200, response.get_data(as_text=True)


def test_an_id_that_is_not_a_uuid_is_compared_as_sent(client):
    entry = {"card": "CARD-1", "outcome": "overridden", "outcomeTimestamp": "2026-11-23T11:59:00Z"}
    response = client.post("/cds-services/mtor-safety-order-select/feedback", json={"feedback": [entry]})
    assert response.status_code == 400
    assert "CARD-1" in response.get_data(as_text=True)
