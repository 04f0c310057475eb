"""Card and suggestion ids stay unique across gunicorn's forked workers (issue 11): nothing seeded at import."""

from __future__ import annotations

import json
import multiprocessing

from conftest import SERVICE_FOR_HOOK, load_fixture

FIXTURE = "fires-live-vaccine-mmr-order-sign.json"


def _ids_of(body: dict) -> list[str]:
    return [item["uuid"] for card in body["cards"] for item in (card, *card.get("suggestions", ()))]


def _call_in_child(client, body, service, conn) -> None:
    ids = []
    for _ in range(3):
        ids += _ids_of(client.post(f"/cds-services/{service}", json=body).get_json())
    conn.send(json.dumps(ids))
    conn.close()


def test_card_and_suggestion_ids_do_not_repeat_across_forked_workers(app):
    """Like gunicorn: the app (and everything it creates at import) exists before the workers fork."""
    client = app.test_client()
    body = load_fixture(FIXTURE)
    service = SERVICE_FOR_HOOK[body["hook"]]
    assert _ids_of(client.post(f"/cds-services/{service}", json=body).get_json())  # the fixture does produce cards
    context = multiprocessing.get_context("fork")
    ids: list[str] = []
    for _ in range(4):
        parent, child = context.Pipe()
        process = context.Process(target=_call_in_child, args=(client, body, service, child))
        process.start()
        ids += json.loads(parent.recv())
        process.join(timeout=30)
        assert process.exitcode == 0
    assert len(ids) >= 4 * 3 * 2
    assert len(set(ids)) == len(ids)
