"""A pooled keep-alive connection that the FHIR server closed as it was reused is not a failed query.

Found by an audit: HTTP/1.1 lets a server close an idle keep-alive connection at any time; when that races with the
next request on it, the request never reaches the server and http.client sees the connection end before any answer.
The query failed as "connection failed", and for medications the whole call was a 412. A GET is now sent once more on
a fresh connection, within the deadline. A real local server: `responses` cannot close a socket under a request.
"""

from __future__ import annotations

import json
import socket
import threading

import pytest
import requests

from cds_service.fhir import client as fhir_client
from cds_service.fhir.client import Deadline, FhirClient
from cds_service.settings import Settings

BUNDLE = json.dumps({"resourceType": "Bundle", "type": "searchset", "entry": []}).encode()


class OneAnswerPerConnection:
    """Answers the first request on each connection (keep-alive, no Connection: close) and closes the connection on
    the next one without answering: the race of a server's keep-alive timeout, made certain."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.connections = 0
        self.requests_seen = 0
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}/fhir"

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._connection, args=(conn,), daemon=True).start()

    def _connection(self, conn: socket.socket) -> None:
        with conn:
            for answered in (True, False):
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    data += chunk
                self.requests_seen += 1
                if answered:
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/fhir+json\r\nContent-Length: "
                                 + str(len(BUNDLE)).encode() + b"\r\n\r\n" + BUNDLE)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def server():
    running = OneAnswerPerConnection()
    yield running
    running.close()


def _client(base: str) -> FhirClient:
    settings = Settings(require_jwt=False, allowed_fhir_servers=(base,), fhir_without_token=True)
    return FhirClient(base, None, settings, Deadline.after(5))


def test_a_get_on_a_connection_the_server_closed_is_sent_again_on_a_fresh_one(server):
    client = _client(server.base)
    assert client.search("Condition?patient=pt-1") == []
    assert client.search("Condition?patient=pt-1") == []  # its pooled connection was closed under it: sent again
    assert server.connections == 2 and server.requests_seen == 3


def test_a_connection_refused_is_not_sent_again(monkeypatch):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again: nothing listens there
    sent = []
    real_send = requests.adapters.HTTPAdapter.send
    monkeypatch.setattr(requests.adapters.HTTPAdapter, "send", lambda self, *a, **k: sent.append(1) or real_send(self, *a, **k))
    with pytest.raises(fhir_client.FhirUnavailable):
        _client(f"http://127.0.0.1:{port}/fhir").search("Condition?patient=pt-1")
    assert len(sent) == 1


def test_the_integrating_guide_says_what_is_sent_again():
    from pathlib import Path

    text = " ".join((Path(__file__).resolve().parent.parent / "docs" / "integrating.md").read_text(encoding="utf-8").split())
    assert ("A GET whose kept-alive connection the server closed as it was reused (before any answer) is sent once more on "
            "a new connection, within the deadline; a GET answered `429` or `503` with a `Retry-After` in seconds that the "
            "deadline can wait out (leaving 0.5 s) is asked once more after it; nothing else is retried.") in text
    assert fhir_client.RETRY_AFTER_MARGIN_S == 0.5


def test_a_429_or_503_with_a_retry_after_the_deadline_can_wait_is_asked_once_more():
    """Rate limits (Epic, Cerner and cloud FHIR gateways answer 429 with Retry-After): waited out once when the call's
    deadline allows, else said as the status it is."""
    import responses as mock

    base = "https://ehr.example.org/fhir"
    bundle = {"resourceType": "Bundle", "type": "searchset", "entry": []}
    for status in (429, 503):
        with mock.RequestsMock() as rsps:
            url = f"{base}/Condition"
            rsps.add(mock.GET, url, status=status, headers={"Retry-After": "0"})
            rsps.add(mock.GET, url, json=bundle)
            assert _client(base).search("Condition?patient=pt-1") == []
            assert len(rsps.calls) == 2
    with mock.RequestsMock() as rsps:
        rsps.add(mock.GET, f"{base}/Condition", status=429, headers={"Retry-After": "30"})  # beyond the 5 s deadline
        with pytest.raises(fhir_client.FhirUnavailable, match="http-429"):
            _client(base).search("Condition?patient=pt-1")
        assert len(rsps.calls) == 1
    with mock.RequestsMock() as rsps:
        rsps.add(mock.GET, f"{base}/Condition", status=429, headers={"Retry-After": "Wed, 21 Oct 2026 07:28:00 GMT"})
        with pytest.raises(fhir_client.FhirUnavailable, match="http-429"):
            _client(base).search("Condition?patient=pt-1")
        assert len(rsps.calls) == 1
