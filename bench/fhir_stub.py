"""A FHIR server stand-in for the benchmark: answers every query after a fixed delay (an EHR round trip).

    python bench/fhir_stub.py --port 0 --delay-ms 50        # prints "listening on <port>" then serves

    python bench/fhir_stub.py --port 0 --delay-ms 50 --batch   # also FHIR batch (POST a Bundle to the base)

Threaded (one thread per connection) and HTTP/1.1 keep-alive, loopback only. Searches answer a
searchset Bundle of payloads.fhir_resources() for their resource type; Patient/<id> answers the
Patient; GET metadata answers a CapabilityStatement that lists the `batch` interaction only with
--batch. A batch (one round trip, one delay) answers a batch-response with one entry per request.
It counts the HTTP requests it answered and the queries inside batches (GET /_stats), so the
benchmark can check how a hook call asked.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))
from payloads import bundle, fhir_resources

RESOURCE_TYPE_TO_KEY = {
    "MedicationRequest": "medications", "MedicationStatement": "medicationStatements", "Observation": "observations", "Condition": "conditions",
    "Procedure": "procedures", "ServiceRequest": "serviceRequests", "Appointment": "appointments",
}


def build_answers(base: str) -> dict[str, bytes]:
    record = fhir_resources()
    answers = {rtype: json.dumps(bundle(record[key], base)).encode() for rtype, key in RESOURCE_TYPE_TO_KEY.items()}
    answers["Patient"] = json.dumps(record["patient"][0]).encode()
    return answers


NOT_FOUND = b'{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"not-found"}]}'


def capability_statement(batch: bool) -> dict:
    interactions = [{"code": "batch"}] if batch else []
    return {"resourceType": "CapabilityStatement", "status": "active", "kind": "instance", "fhirVersion": "4.0.1",
            "format": ["json"], "rest": [{"mode": "server", "interaction": [{"code": "search-system"}, *interactions]}]}


class StubServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024

    def __init__(self, address, delay_s: float, batch: bool = False):
        super().__init__(address, StubHandler)
        self.delay_s = delay_s
        self.batch = batch
        self.answers = build_answers(f"http://{address[0]}:{self.server_address[1]}/fhir")
        self.count = 0
        self.batched = 0  # queries answered inside batches
        self.count_lock = threading.Lock()


class StubHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as a real FHIR server
    server: StubServer

    def setup(self) -> None:
        super().setup()
        # Without this, Nagle's algorithm holds the body back until the client's delayed ACK of the
        # headers (40 ms on Linux): every query would seem to take 90 ms instead of 50.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def do_GET(self) -> None:  # http.server's naming
        path = urlsplit(self.path).path
        if path == "/_stats":
            return self._send(200, json.dumps({"requests": self.server.count, "batched": self.server.batched}).encode())
        if path == "/fhir/metadata":
            return self._send(200, json.dumps(capability_statement(self.server.batch)).encode())
        time.sleep(self.server.delay_s)
        with self.server.count_lock:
            self.server.count += 1
        status, body = self._answer(path)
        self._send(status, body)

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        request = json.loads(self.rfile.read(length) or b"{}")
        if urlsplit(self.path).path.rstrip("/") != "/fhir" or not self.server.batch or request.get("type") != "batch":
            return self._send(405, NOT_FOUND)
        time.sleep(self.server.delay_s)  # one round trip for all
        entries = []
        for entry in request.get("entry", []):
            status, body = self._answer("/fhir/" + urlsplit(entry["request"]["url"]).path.lstrip("/"))
            entries.append({"resource": json.loads(body), "response": {"status": f"{status} {'OK' if status == 200 else 'Not Found'}"}})
        with self.server.count_lock:
            self.server.count += 1
            self.server.batched += len(entries)
        self._send(200, json.dumps({"resourceType": "Bundle", "type": "batch-response", "entry": entries}).encode())

    def _answer(self, path: str) -> tuple[int, bytes]:
        parts = [p for p in path.split("/") if p]
        rtype = parts[1] if len(parts) >= 2 and parts[0] == "fhir" else ""
        body = self.server.answers.get(rtype)
        return (200, body) if body is not None else (404, NOT_FOUND)

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/fhir+json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:  # quiet
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--delay-ms", type=float, default=50.0)
    parser.add_argument("--batch", action="store_true", help="support FHIR batch (and say so in /metadata)")
    args = parser.parse_args()
    server = StubServer(("127.0.0.1", args.port), args.delay_ms / 1000, batch=args.batch)
    print(f"listening on {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
