"""The FHIR client's edges: who it says it is, and how refused pages are logged (issues 12 and 14)."""

from __future__ import annotations

import re

import pytest
import responses

import cds_service
from cds_service.errors import FhirUnavailable
from cds_service.fhir.client import USER_AGENT, Deadline, FhirClient, QueryOutcome
from cds_service.settings import Settings

BASE = "https://ehr.example.org/fhir"


def client(**settings) -> FhirClient:
    return FhirClient(BASE, "at-secret", Settings(allowed_fhir_servers=(BASE,), **settings), Deadline.after(5))


def bundle(resource_type: str, n: int, next_url: str | None = None) -> dict:
    entries = [{"resource": {"resourceType": resource_type, "id": f"r{i}"}} for i in range(n)]
    links = [{"relation": "next", "url": next_url}] if next_url else []
    return {"resourceType": "Bundle", "type": "searchset", "entry": entries, "link": links}


def test_requests_say_who_is_asking():
    version = getattr(cds_service, "__version__", None)
    assert re.fullmatch(r"mtor-cds/\d+\.\d+\.\d+\S*", USER_AGENT)
    if version:
        assert f"mtor-cds/{version}" == USER_AGENT
    with responses.RequestsMock() as mock:
        mock.get(f"{BASE}/Patient/p1", json={"resourceType": "Patient", "id": "p1"})
        client().read("Patient/p1")
        assert mock.calls[0].request.headers["User-Agent"] == USER_AGENT


def test_a_refused_next_link_is_logged_with_its_outcome_never_ok():
    """Another host name for the same server: the page is not fetched (the token would go there) and is logged."""
    fhir = client()
    with responses.RequestsMock() as mock:
        mock.get(f"{BASE}/Condition", json=bundle("Condition", 2, "https://EHR-alias.example.org/fhir/Condition?page=2"))
        with pytest.raises(FhirUnavailable):
            fhir.search("Condition?patient=p1")
        assert len(mock.calls) == 1
    assert [(t.resource_type, t.outcome) for t in fhir.timings] == [
        ("Condition", QueryOutcome.OK), ("Condition", QueryOutcome.LEAVES_SERVER)
    ]


def test_a_page_limit_hit_is_logged_with_its_outcome():
    fhir = client(fhir_max_pages=2)
    with responses.RequestsMock() as mock:
        mock.get(f"{BASE}/Observation", json=bundle("Observation", 20, f"{BASE}/Observation?page=next"))
        with pytest.raises(FhirUnavailable, match="CDS_FHIR_MAX_PAGES"):
            fhir.search("Observation?patient=p1")
    outcomes = [t.outcome for t in fhir.timings]
    assert outcomes == [QueryOutcome.OK, QueryOutcome.OK, QueryOutcome.PAGE_LIMIT]


@pytest.mark.parametrize("status, outcome", [(401, "http-401"), (403, "http-403"), (418, "http-4xx"), (503, "http-503"), (599, "http-5xx")])
def test_http_failures_map_to_fixed_outcomes(status, outcome):
    fhir = client()
    with responses.RequestsMock() as mock:
        mock.get(f"{BASE}/Patient/p1", status=status)
        with pytest.raises(FhirUnavailable):
            fhir.read("Patient/p1")
    assert fhir.timings[0].outcome == QueryOutcome(outcome)


def test_the_query_pool_is_made_once_per_process_after_fork(monkeypatch):
    """No pool at import (gunicorn forks workers from a preloaded app: threads do not survive a fork), one per process."""
    import os

    from cds_service.fhir import client as fhir_client

    monkeypatch.setattr(fhir_client, "_pool", None)
    first = fhir_client._executor()
    assert fhir_client._executor() is first  # kept across calls: no pool per call
    real_pid = os.getpid()
    monkeypatch.setattr(fhir_client.os, "getpid", lambda: real_pid + 1)  # as in a forked worker
    assert fhir_client._executor() is not first
