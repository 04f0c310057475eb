"""CDS_SUPPRESS_OVERRIDDEN_HOURS: an identical card overridden with a reason is not shown again for a while."""

from __future__ import annotations

from datetime import timedelta

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


# --- in the hook flow, on Card objects (no HTTP) -----------------------------------------------------


class History:
    """An override history that says every card was overridden, and records what it was asked."""

    def __init__(self):
        self.asked = []

    def overridden_recently(self, patient_hash, topic, trigger_key, since):
        self.asked.append((patient_hash, topic, trigger_key, since))
        return True


def answer(history, hours=24, **resources):
    from cds_service.hooks import answer_hook
    from cds_service.services import build_services
    from cds_service.settings import Settings
    from snapshots import NOW, call_of, hook_request, knowledge

    request = hook_request(**resources)
    call = call_of(request)
    service = next(s for s in build_services(knowledge()).values() if s.hook == call.hook)
    settings = Settings(require_jwt=False, suppress_overridden_hours=hours)
    return answer_hook(call, service, knowledge(), settings, NOW, history, "patient-hash")


def test_hook_flow_suppresses_overridden_cards_by_patient_topic_and_trigger():
    from snapshots import NOW, everolimus, level, ref

    history, drug, high = History(), everolimus(), level("everolimus", 20)
    result = answer(history, medications=[drug], observations=[high])
    assert result.cards == [] and result.suppressed == len(history.asked) >= 1
    [(patient, trigger, since)] = [(p, k, s) for p, topic, k, s in history.asked if topic == "trough-high"]
    assert (patient, since) == ("patient-hash", NOW - timedelta(hours=24))
    assert trigger == "|".join(sorted([ref(drug), ref(high)]))


def test_hook_flow_never_suppresses_critical_cards_or_the_incomplete_checks_card():
    from snapshots import everolimus, hcg

    result = answer(History(), hook="order-sign", drafts=[everolimus(draft=True)], observations=[hcg("positive", 2)],
                    prefetch={"conditions": "garbage"})
    assert {c.topic.value for c in result.cards} == {"pregnancy", "checks-incomplete"}
    assert all(c.indicator == "critical" or c.topic.value == "checks-incomplete" for c in result.cards)


def test_hook_flow_asks_no_history_when_suppression_is_off():
    from snapshots import everolimus, level

    history = History()
    result = answer(history, hours=0, medications=[everolimus()], observations=[level("everolimus", 20)])
    assert "trough-high" in [c.topic.value for c in result.cards] and result.suppressed == 0 and history.asked == []
