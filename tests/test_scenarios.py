"""Every fixture in fhir_fixtures/scenarios.json, end to end through the Flask app, as the table says."""

from __future__ import annotations

import pytest

from conftest import SCENARIOS, load_fixture
from cds_assertions import assert_valid_cds_response, topics_of


@pytest.mark.parametrize("scenario", SCENARIOS["scenarios"], ids=lambda s: s["file"])
def test_scenario_answers_as_the_table_says(call_hook, scenario):
    response = call_hook(load_fixture(scenario["file"]))
    assert response.status_code == 200, response.get_data(as_text=True)
    body = response.get_json()
    assert_valid_cds_response(body)
    assert topics_of(body) == scenario["expect_topics"]
    if scenario["expect_indicator"]:
        assert body["cards"][0]["indicator"] == scenario["expect_indicator"]
