"""limits.MAX_FHIR_BYTES_PER_CALL: FHIR response bytes read for one call, all queries and pages together (issue 11).
Pages each under CDS_FHIR_MAX_RESPONSE_BYTES can still add up; beyond the cap the data is not complete and is said so."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import responses

from cds_assertions import assert_valid_cds_response, topics_of
from cds_service import limits
from cds_service.errors import FhirUnavailable
from cds_service.fhir import client as fhir_client
from cds_service.fhir.client import Deadline, FhirClient, QueryOutcome
from cds_service.settings import Settings
from test_fhir_faults import BASE, ORDER_SELECT, fallback_call, make_app, serve

README = Path(__file__).resolve().parent.parent / "README.md"


def page(n: int, next_url: str | None) -> dict:
    entries = [{"resource": {"resourceType": "Observation", "id": f"o{i}", "status": "final", "code": {"text": "x" * 200}}} for i in range(n)]
    return {"resourceType": "Bundle", "type": "searchset", "entry": entries,
            "link": [{"relation": "next", "url": next_url}] if next_url else []}


@pytest.fixture
def small_cap(monkeypatch) -> int:
    cap = 20_000
    monkeypatch.setattr(fhir_client, "MAX_FHIR_BYTES_PER_CALL", cap)
    return cap


def test_pages_adding_up_beyond_the_call_cap_fail_the_search(small_cap):
    one_page = len(json.dumps(page(30, f"{BASE}/Observation?page=next")))
    assert one_page < small_cap < 3 * one_page  # each page is small; three are too many
    fhir = FhirClient(BASE, None, Settings(allowed_fhir_servers=(BASE,)), Deadline.after(5))
    pages = iter(range(2, 100))  # each page links to a new one (a link back to a page read is a loop, said as such)
    with responses.RequestsMock() as mock:
        mock.add_callback(responses.GET, f"{BASE}/Observation",
                          callback=lambda _: (200, {}, json.dumps(page(30, f"{BASE}/Observation?page={next(pages)}"))))
        with pytest.raises(FhirUnavailable, match=fhir_client.CALL_BYTES_EXCEEDED):
            fhir.search("Observation?patient=p1")
    assert [t.outcome for t in fhir.timings][-1] is QueryOutcome.RESPONSE_TOO_LARGE
    assert len(fhir.timings) < 4


def test_the_cap_counts_every_query_of_the_call_not_each_alone(small_cap):
    fhir = FhirClient(BASE, None, Settings(allowed_fhir_servers=(BASE,)), Deadline.after(5))
    with responses.RequestsMock() as mock:
        mock.get(f"{BASE}/Observation", json=page(30, None))
        fhir.search("Observation?patient=p1")
        fhir.search("Observation?patient=p1")
        with pytest.raises(FhirUnavailable):
            fhir.search("Observation?patient=p1")


def test_a_call_over_the_cap_answers_its_cards_and_says_which_data_was_cut(tmp_path, small_cap):
    call, server_data = fallback_call()
    with responses.RequestsMock(assert_all_requests_are_fired=False) as fhir:
        pages = iter(range(2, 100))  # an endless chain of new pages
        serve(fhir, server_data, observations=lambda _: (200, {}, json.dumps(page(30, f"{BASE}/Observation?page={next(pages)}"))))
        response = make_app(tmp_path).test_client().post(ORDER_SELECT, json=call)
    answer = response.get_json()
    assert response.status_code == 200
    assert_valid_cds_response(answer)
    assert topics_of(answer) == ["cyp3a4-interaction", "checks-incomplete"]
    assert "lab results" in answer["cards"][-1]["detail"]


def test_the_readme_limits_table_states_the_call_byte_cap():
    section = README.read_text().split("## Limits", 1)[1].split("\n## ", 1)[0]
    row = next(line for line in section.splitlines() if line.startswith("| FHIR response bytes read per call"))
    assert f"| {limits.MAX_FHIR_BYTES_PER_CALL} |" in row and "checks-incomplete" in row and "412" in row
    assert limits.MAX_FHIR_BYTES_PER_CALL == 50_000_000
