"""CDS_SUPPRESS_OVERRIDDEN_HOURS: an identical card overridden with a reason is not shown again for a while."""

from __future__ import annotations

import pytest

from cds_assertions import topics_of
from cds_service import create_app
from conftest import FIXTURE_NOW, SERVICE_FOR_HOOK, load_fixture

FIXTURE = "fires-trough-high-patient-view.json"


def make_client(tmp_path, hours):
    app = create_app(require_jwt=False, database_url=f"sqlite:///{tmp_path}/cards.sqlite3", suppress_overridden_hours=hours)
    app.extensions["mtor_cds"].clock = lambda: FIXTURE_NOW
    return app.test_client()


def override(client, card, with_reason=True):
    entry = {"card": card["uuid"], "outcome": "overridden", "outcomeTimestamp": FIXTURE_NOW.isoformat().replace("+00:00", "Z")}
    if with_reason:
        reason = card["overrideReasons"][0]
        entry["overrideReason"] = {"reason": {"system": reason["system"], "code": reason["code"], "display": reason["display"]}}
    service = SERVICE_FOR_HOOK[load_fixture(FIXTURE)["hook"]]
    assert client.post(f"/cds-services/{service}/feedback", json={"feedback": [entry]}).status_code == 200


def call(client):
    body = load_fixture(FIXTURE)
    return client.post(f"/cds-services/{SERVICE_FOR_HOOK[body['hook']]}", json=body).get_json()


def test_card_overridden_with_a_reason_is_suppressed_within_the_window(tmp_path):
    client = make_client(tmp_path, hours=24)
    [card] = call(client)["cards"]
    override(client, card)
    assert call(client) == {"cards": []}


@pytest.mark.parametrize(("hours", "with_reason"), [(0, True), (24, False)])
def test_card_is_shown_again_when_suppression_is_off_or_no_reason_was_given(tmp_path, hours, with_reason):
    client = make_client(tmp_path, hours=hours)
    [card] = call(client)["cards"]
    override(client, card, with_reason=with_reason)
    assert topics_of(call(client)) == ["trough-high"]
