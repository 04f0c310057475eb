"""Bounded work per call: findings per card, medications weighed, resources read; the README's "Limits" table."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

from cds_assertions import assert_valid_cds_response, topics_of
from cds_service import limits
from cds_service.findings import NotListed, Topic
from cds_service.settings import Settings
from snapshots import everolimus, hook_request, level, med, snapshot_of

README = Path(__file__).resolve().parent.parent / "README.md"
PATIENT_VIEW = "/cds-services/mtor-safety-patient-view"


def clarithromycin(**fields) -> dict:
    return med("clarithromycin 500 MG Oral Tablet", rxnorm="197517", **fields)


def many_orders_request(mtor_orders: int, others: int) -> dict:
    return hook_request("patient-view", medications=[everolimus() for _ in range(mtor_orders)] + [clarithromycin() for _ in range(others)])


def test_a_200_kb_request_whose_findings_multiply_gets_a_bounded_answer_in_bounded_time(client):
    body = json.dumps(many_orders_request(200, 200))
    assert 190_000 < len(body) < 250_000
    started = time.perf_counter()
    response = client.post(PATIENT_VIEW, data=body, content_type="application/json")
    elapsed = time.perf_counter() - started
    answer = response.get_json()
    assert response.status_code == 200
    assert_valid_cds_response(answer)
    assert topics_of(answer)[0] == "cyp3a4-interaction" and answer["cards"][0]["indicator"] == "critical"
    assert len(response.get_data()) < 200_000, len(response.get_data())  # 200 x 200 orders: 40,000 interactions
    assert elapsed < 10, elapsed
    incomplete = answer["cards"][-1]
    assert incomplete["source"]["topic"]["code"] == "checks-incomplete"
    weighed = limits.MAX_MTOR_ORDERS_PER_CALL * (limits.MAX_MEDICATIONS_PER_CALL - limits.MAX_MTOR_ORDERS_PER_CALL)
    assert f"- CYP3A4/P-gp interaction: and {weighed - limits.MAX_FINDINGS_PER_TOPIC} more" in incomplete["detail"]
    assert "current medications" in incomplete["detail"]  # not every order was weighed


def test_at_most_max_findings_per_topic_are_kept_and_the_rest_counted():
    from cds_service.rules import evaluate
    from snapshots import knowledge

    snapshot = snapshot_of(hook="patient-view", medications=[everolimus() for _ in range(3)] + [clarithromycin() for _ in range(10)])
    notes: list = []
    findings = evaluate(snapshot, knowledge(), notes)
    interactions = [f for f in findings if f.topic.value == "cyp3a4-interaction"]
    assert len(interactions) == limits.MAX_FINDINGS_PER_TOPIC
    assert notes == [NotListed(Topic.CYP3A4_INTERACTION, 10)]


def test_medications_beyond_the_cap_are_not_weighed_and_said_so():
    others = [med(f"drug {n}") for n in range(limits.MAX_MEDICATIONS_PER_CALL + 5)]
    snapshot = snapshot_of(hook="patient-view", medications=[*others, everolimus()])
    assert len(snapshot.medications) == limits.MAX_MEDICATIONS_PER_CALL
    assert any(m.mtor_drug for m in snapshot.medications)  # the mTOR inhibitor is kept first
    many_mtor = snapshot_of(hook="patient-view", medications=[everolimus() for _ in range(limits.MAX_MTOR_ORDERS_PER_CALL + 3)])
    assert len(many_mtor.mtor_orders) == limits.MAX_MTOR_ORDERS_PER_CALL and "medications" in many_mtor.unavailable
    assert "medications" in snapshot.unavailable


def test_resources_beyond_the_cap_are_cut_and_said_so(monkeypatch):
    from cds_service.fhir import gather

    monkeypatch.setattr(gather, "MAX_RESOURCES_PER_CALL", 5)
    snapshot = snapshot_of(hook="patient-view", medications=[everolimus()], observations=[level("everolimus", 9) for _ in range(10)])
    assert len(snapshot.labs) == 3  # patient + medication + 3 observations
    assert "observations" in snapshot.unavailable


def test_the_readme_limits_table_states_the_code_values():
    section = README.read_text().split("## Limits", 1)[1].split("\n## ", 1)[0]
    rows = {cells[0]: cells[1] for line in section.splitlines() if line.startswith("| ")
            for cells in [[c.strip() for c in line.strip("|").split("|")]]}
    defaults = Settings()
    assert rows["request body"] == f"`CDS_MAX_BODY_BYTES` ({defaults.max_body_bytes})"
    assert rows["resources read per call (prefetched, draft and fetched)"] == f"{limits.MAX_RESOURCES_PER_CALL}"
    assert rows["medications weighed against each other per call"].startswith(
        f"{limits.MAX_MEDICATIONS_PER_CALL}, of which at most {limits.MAX_MTOR_ORDERS_PER_CALL} mTOR inhibitor orders")
    assert rows["findings listed per card (topic)"].startswith(f"{limits.MAX_FINDINGS_PER_TOPIC} ")
    assert rows["search page size (`_count`)"] == f"{limits.SEARCH_PAGE_SIZE}"
    assert rows["pages followed per search"] == f"`CDS_FHIR_MAX_PAGES` ({defaults.fhir_max_pages})"
    assert rows["one FHIR response"] == f"`CDS_FHIR_MAX_RESPONSE_BYTES` ({defaults.fhir_max_response_bytes})"
    assert (limits.MAX_RESOURCES_PER_CALL, limits.MAX_MEDICATIONS_PER_CALL, limits.MAX_MTOR_ORDERS_PER_CALL,
            limits.MAX_FINDINGS_PER_TOPIC, limits.SEARCH_PAGE_SIZE) == (10_000, 200, 10, 20, 200)
    assert defaults.fhir_max_pages == 60
    assert re.search(r"a `412` names each piece of required data", section + README.read_text(), re.IGNORECASE)
