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
            "a new connection, within the deadline; nothing else is retried.") in text
