"""A FHIR server stand-in for the benchmark: answers every query after a fixed delay (an EHR round trip).

    python bench/fhir_stub.py --port 0 --delay-ms 50        # prints "listening on <port>" then serves

Threaded (one thread per connection) and HTTP/1.1 keep-alive, loopback only. Searches answer a
searchset Bundle of payloads.fhir_resources() for their resource type; Patient/<id> answers the
Patient. It counts the requests it answered (GET /_stats), so the benchmark can check how many
queries a hook call made.
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


class StubServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024

    def __init__(self, address, delay_s: float, batch: bool = False):
        super().__init__(address, StubHandler)
        self.delay_s = delay_s
        self.batch = batch
        self.answers = build_answers(f"http://{address[0]}:{self.server_address[1]}/fhir")
        self.count = 0
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
            return self._send(200, json.dumps({"requests": self.server.count}).encode())
        parts = [p for p in path.split("/") if p]
        rtype = parts[1] if len(parts) >= 2 and parts[0] == "fhir" else ""
        body = self.server.answers.get(rtype)
        time.sleep(self.server.delay_s)
        with self.server.count_lock:
            self.server.count += 1
        if body is None:
            return self._send(404, b'{"resourceType":"OperationOutcome","issue":[]}')
        self._send(200, body)

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
