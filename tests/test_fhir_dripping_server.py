"""A FHIR server that sends its answer a byte at a time: each socket read is quick, so read timeouts never trip.

Found by a robustness audit: a dripping CapabilityStatement or batch answer held the request thread until gunicorn
killed the worker (a 500 after 30 s), and dripping search answers held the FHIR thread pool after the call had
answered, so later calls to a healthy server failed with 412. Every answer now ends at the call's deadline, and the
threads are free again by then. A real local server, because `responses` cannot send slowly.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from cds_assertions import topics_of
from cds_service import create_app
from cds_service.fhir import client as fhir_client
from conftest import FIXTURE_NOW, load_fixture

DEADLINE_S = 1.0
DRIP_S = 0.1  # one byte per this long: far inside any read timeout
MARGIN_S = 0.6  # scheduling on a busy 2-CPU machine


class _Handler(BaseHTTPRequestHandler):
    """/<mode>/...: `ok` answers at once; `drip` drips every answer; `metadrip` drips only the CapabilityStatement;
    `batchdrip` lists batch and drips the batch answer."""

    def log_message(self, *args):  # quiet
        pass

    def _drip(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/fhir+json")
        self.send_header("Content-Length", "100000")
        self.end_headers()
        for _ in range(300):
            try:
                self.wfile.write(b" ")
                self.wfile.flush()
            except OSError:
                return
            time.sleep(DRIP_S)

    def _json(self, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/fhir+json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):  # noqa: N802 (http.server's name)
        mode, _, rest = self.path.lstrip("/").partition("/")
        if rest.startswith("metadata"):
            if mode == "metadrip":
                return self._drip()
            batch = [{"code": "batch"}] if mode == "batchdrip" else []
            return self._json({"resourceType": "CapabilityStatement", "rest": [{"mode": "server", "interaction": batch}]})
        if mode in ("drip", "metadrip", "batchdrip"):
            return self._drip()
        return self._json(self.server.data_for(rest))  # type: ignore[attr-defined]

    def do_POST(self):  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        return self._drip()


class _Server(ThreadingHTTPServer):
    # socketserver's default listen backlog is 5: the healthy call's 8 parallel connects, arriving while the accept
    # thread competes with dozens of dripping threads on a loaded CI machine, overflowed it, and Linux dropped the SYN
    # (retransmitted after 1 s, so a query timed out at the 1 s deadline: CI failure of stop 21)
    request_queue_size = 128
    daemon_threads = True


@pytest.fixture
def fhir_server():
    body = load_fixture("fires-cyp3a4-clarithromycin-order-select.json")
    data = body.pop("prefetch")
    by_type = {"Patient": data["patient"], "MedicationRequest": data["medications"]}

    server = _Server(("127.0.0.1", 0), _Handler)
    server.data_for = lambda rest: by_type.get(rest.split("?")[0].split("/")[0], {"resourceType": "Bundle", "type": "searchset", "entry": []})  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    fhir_client._capabilities.clear()
    yield f"http://127.0.0.1:{server.server_address[1]}", body
    server.shutdown()
    server.server_close()
    fhir_client._capabilities.clear()


def call(fhir_server, mode: str, tmp_path):
    base, body = fhir_server
    request = {**body, "fhirServer": f"{base}/{mode}",
               "fhirAuthorization": {"access_token": "t", "token_type": "Bearer", "expires_in": 300, "scope": "patient/*.read",
                                     "subject": "mtor-cds"}}
    app = create_app(require_jwt=False, fhir_deadline_s=DEADLINE_S, database_url=f"sqlite:///{tmp_path}/cards.sqlite3")
    app.extensions["mtor_cds"].clock = lambda: FIXTURE_NOW
    started = time.monotonic()
    response = app.test_client().post("/cds-services/mtor-safety-order-select", json=request)
    return response, time.monotonic() - started


@pytest.mark.parametrize("mode", ["drip", "batchdrip"])
def test_a_dripping_answer_ends_at_the_deadline_with_a_412(fhir_server, tmp_path, mode):
    response, elapsed = call(fhir_server, mode, tmp_path)
    assert response.status_code == 412
    assert "did not answer in time" in response.get_json()["issue"][0]["diagnostics"]
    assert elapsed < DEADLINE_S + MARGIN_S


def test_a_dripping_capability_statement_costs_at_most_its_share_then_plain_gets_answer(fhir_server, tmp_path):
    assert fhir_client.CAPABILITY_TIMEOUT_S < DEADLINE_S + 2
    response, elapsed = call(fhir_server, "metadrip", tmp_path)  # the searches themselves drip too: 412 at the deadline
    assert response.status_code == 412 and elapsed < DEADLINE_S + MARGIN_S


def test_the_query_threads_are_free_again_after_the_deadline(fhir_server, tmp_path):
    """More dripping calls than the pool has threads, then a call to a healthy server: it is answered in full."""
    for _ in range(6):  # 6 calls x 8 queries > the pool's 32 threads
        assert call(fhir_server, "drip", tmp_path)[0].status_code == 412
    time.sleep(3 * DRIP_S + MARGIN_S)  # each stuck thread gives up at its next byte; a loaded machine schedules late
    response, elapsed = call(fhir_server, "ok", tmp_path)
    assert response.status_code == 200, response.get_data(as_text=True)[:300]
    topics = topics_of(response.get_json())
    assert topics[0] == "cyp3a4-interaction" and "checks-incomplete" not in topics  # every query answered
    assert elapsed < DEADLINE_S


def test_the_integrating_guide_states_that_every_answer_ends_at_the_deadline():
    from pathlib import Path

    text = " ".join((Path(__file__).resolve().parent.parent / "docs" / "integrating.md").read_text(encoding="utf-8").split())
    assert "Every answer ends at the call's deadline (`CDS_FHIR_DEADLINE_S`), however slowly the server sends it" in text
