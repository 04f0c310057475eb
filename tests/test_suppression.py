"""CDS_SUPPRESS_OVERRIDDEN_HOURS: an identical card overridden with a reason is not shown again for a while,
by the EHR whose clinician overrode it, and never on feedback dated in the future."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
import sqlalchemy as sa

from cds_assertions import topics_of
from cds_service import create_app
from cds_service.store.models import issued_card
from conftest import FIXTURE_NOW, SERVICE_FOR_HOOK, load_fixture
from jwt_helpers import cds_claims, jwk_from_key, jwks_of, make_ec_key, sign_jwt

FIXTURE = "fires-trough-high-patient-view.json"
SERVICE = SERVICE_FOR_HOOK[load_fixture(FIXTURE)["hook"]]


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

    def overridden_recently(self, card, since):
        self.asked.append((card.patient_hash, card.topic, card.trigger_key, since))
        return True


def answer(history, hours=24, **resources):
    from cds_service.hooks import Caller, answer_hook
    from cds_service.services import build_services
    from cds_service.settings import Settings
    from snapshots import NOW, call_of, hook_request, knowledge

    request = hook_request(**resources)
    call = call_of(request)
    service = next(s for s in build_services(knowledge()).values() if s.hook == call.hook)
    settings = Settings(require_jwt=False, suppress_overridden_hours=hours)
    return answer_hook(call, service, knowledge(), settings, NOW, history, Caller(patient_hash="patient-hash"))


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
def test_critical_cards_are_never_suppressed(tmp_path):
    client = make_client(tmp_path, hours=24)
    body = load_fixture("fires-cyp3a4-clarithromycin-order-select.json")
    path = f"/cds-services/{SERVICE_FOR_HOOK[body['hook']]}"
    critical = next(c for c in client.post(path, json=body).get_json()["cards"] if c["indicator"] == "critical")
    reason = critical["overrideReasons"][0]
    entry = {"card": critical["uuid"], "outcome": "overridden",
             "outcomeTimestamp": FIXTURE_NOW.isoformat().replace("+00:00", "Z"),
             "overrideReason": {"reason": {k: reason[k] for k in ("system", "code", "display")}}}
    assert client.post(path + "/feedback", json={"feedback": [entry]}).status_code == 200
    again = client.post(path, json=body).get_json()["cards"]
    assert critical["source"]["topic"]["code"] in [c["source"]["topic"]["code"] for c in again if c["indicator"] == "critical"]


def stored_suppressed(client) -> list[tuple[str, bool]]:
    store = client.application.extensions["mtor_cds"].store
    assert store.flush()
    with store.engine.connect() as connection:
        return sorted(connection.execute(sa.select(issued_card.c.topic, issued_card.c.suppressed)).all())


def test_suppressed_card_is_recorded_as_suppressed_for_the_report(tmp_path):
    client = make_client(tmp_path, hours=24)
    [card] = call(client)["cards"]
    override(client, card)
    assert call(client) == {"cards": []}
    assert stored_suppressed(client) == [("trough-high", False), ("trough-high", True)]


def test_a_held_back_card_takes_no_feedback(tmp_path):
    client = make_client(tmp_path, hours=24)
    [card] = call(client)["cards"]
    override(client, card)
    call(client)
    store = client.application.extensions["mtor_cds"].store
    assert store.flush()
    with store.engine.connect() as connection:
        held_back = connection.scalar(sa.select(issued_card.c.uuid).where(issued_card.c.suppressed.is_(True)))
    entry = {"card": held_back, "outcome": "overridden", "outcomeTimestamp": "2026-01-01T00:00:00Z"}
    response = client.post(f"/cds-services/{SERVICE}/feedback", json={"feedback": [entry]})
    assert response.status_code == 400
    assert "did not send to this caller" in response.get_json()["issue"][0]["diagnostics"]


def test_feedback_dated_in_the_future_is_refused_and_suppresses_nothing(tmp_path):
    client = make_client(tmp_path, hours=24)
    [card] = call(client)["cards"]
    reason = card["overrideReasons"][0]
    entry = {"card": card["uuid"], "outcome": "overridden",
             "outcomeTimestamp": (FIXTURE_NOW + timedelta(days=3650)).isoformat().replace("+00:00", "Z"),
             "overrideReason": {"reason": {k: reason[k] for k in ("system", "code", "display")}}}
    response = client.post(f"/cds-services/{SERVICE}/feedback", json={"feedback": [entry]})
    assert response.status_code == 400
    assert response.mimetype == "application/fhir+json"
    assert "more than 5 minutes in the future" in response.get_json()["issue"][0]["diagnostics"]
    assert topics_of(call(client)) == ["trough-high"]
    entry["outcomeTimestamp"] = (FIXTURE_NOW + timedelta(minutes=4)).isoformat().replace("+00:00", "Z")  # clock skew
    assert client.post(f"/cds-services/{SERVICE}/feedback", json={"feedback": [entry]}).status_code == 200


# --- two EHRs (JWT issuers) sharing one service --------------------------------------------------

EHR_A, EHR_B = "https://ehr-a.example.org", "https://ehr-b.example.org"


@pytest.fixture(scope="module")
def keys():
    return {EHR_A: make_ec_key("ES384"), EHR_B: make_ec_key("ES384")}


def make_jwt_client(tmp_path, keys, hours=24):
    issuers = tmp_path / "trusted-issuers.json"
    issuers.write_text(json.dumps({"issuers": {
        iss: {"jwks": jwks_of(jwk_from_key(key, "k1", "ES384"))} for iss, key in keys.items()
    }}))
    app = create_app(require_jwt=True, trusted_issuers=str(issuers), database_url=f"sqlite:///{tmp_path}/cards.sqlite3",
                     suppress_overridden_hours=hours, allowed_fhir_servers=("https://ehr.example.org/fhir",))
    app.extensions["mtor_cds"].clock = lambda: FIXTURE_NOW
    return app.test_client()


def post_as(client, keys, issuer, path, body):
    token = sign_jwt(keys[issuer], "k1", "ES384", cds_claims(issuer, "http://localhost" + path))
    return client.post(path, json=body, headers={"Authorization": f"Bearer {token}"})


def test_feedback_and_suppression_are_bound_to_the_ehr_that_received_the_card(tmp_path, keys):
    client = make_jwt_client(tmp_path, keys)
    path = f"/cds-services/{SERVICE}"
    body = load_fixture(FIXTURE)
    [card] = post_as(client, keys, EHR_A, path, body).get_json()["cards"]
    reason = card["overrideReasons"][0]
    entry = {"card": card["uuid"], "outcome": "overridden", "outcomeTimestamp": FIXTURE_NOW.isoformat().replace("+00:00", "Z"),
             "overrideReason": {"reason": {k: reason[k] for k in ("system", "code", "display")}}}
    assert client.application.extensions["mtor_cds"].store.flush()

    stolen = post_as(client, keys, EHR_B, path + "/feedback", {"feedback": [entry]})
    assert stolen.status_code == 400
    assert card["uuid"] in stolen.get_json()["issue"][0]["diagnostics"]

    assert post_as(client, keys, EHR_A, path + "/feedback", {"feedback": [entry]}).status_code == 200
    assert post_as(client, keys, EHR_A, path, body).get_json() == {"cards": []}  # suppressed for EHR A
    assert topics_of(post_as(client, keys, EHR_B, path, body).get_json()) == ["trough-high"]  # not for EHR B
