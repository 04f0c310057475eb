"""Requests gunicorn refuses before the app sees them (a malformed request line, 414, 431) are answered with gunicorn's
status and an OperationOutcome, not its HTML page (CDS Hooks: an OperationOutcome with every non-2xx), and never quote
the request back; a chunked body gunicorn cannot read while the app reads it is a 400 too, not a 500."""

from __future__ import annotations

import json
import socket
import urllib.parse

import gunicorn.util
import pytest
import requests
from gunicorn.workers.gthread import ThreadWorker
from gunicorn.workers.sync import SyncWorker

from cds_service import production
from tests.production_process import production_server

SECRET = "eyJhbGciOiJSUzM4NCJ9-not-echoed"  # stands for anything a request may carry: it must not come back


@pytest.fixture(scope="module", params=[{}, {"GUNICORN_THREADS": "2"}], ids=["sync", "gthread"])
def server(request, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("gunicorn-errors")
    settings = {"CDS_REQUIRE_JWT": "false", "CDS_DATABASE_URL": f"sqlite:///{workdir}/cards.sqlite3", "WEB_CONCURRENCY": "1",
                **request.param}
    with production_server(workdir, settings, lambda base: requests.get(f"{base}/healthz", timeout=5).ok) as (base, _process):
        yield base, workdir / "server.log"


def exchange(base: str, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    url = urllib.parse.urlsplit(base)
    with socket.create_connection((url.hostname, url.port), timeout=10) as client:
        client.sendall(raw)
        answer = b""
        while chunk := client.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in header_lines)}
    return int(status_line.split(" ")[1]), headers, body


REFUSED = {
    "request line too long": (b"GET /cds-services?x=" + SECRET.encode() + b"a" * 20_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
    "malformed request line": (b"GET /" + SECRET.encode() + b" NOT-HTTP\r\nHost: x\r\n\r\n", 400),
    "too many headers": (b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: %s\r\n" % (n, SECRET.encode()) for n in range(150))
                         + b"\r\n", 431),
    "a header too large": (b"GET /healthz HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + SECRET.encode() + b"b" * 9000 + b"\r\n\r\n",
                           431),
    "a header without its colon": (b"GET /healthz HTTP/1.1\r\nHost: x\r\nAuthorization Bearer " + SECRET.encode() + b"\r\n\r\n", 400),
    "a request line gunicorn quotes": (b"GET /healthz HTTP/1.1" + SECRET.encode() + b"\r\nHost: x\r\n\r\n", 400),
    "a bad chunk": (b"POST /cds-services/mtor-safety-patient-view HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    b"Transfer-Encoding: chunked\r\n\r\nzz" + SECRET.encode() + b"\r\n{}\r\n0\r\n\r\n", 400),
}


@pytest.mark.parametrize("case", REFUSED)
def test_a_request_gunicorn_refuses_gets_its_status_with_an_operation_outcome(server, case):
    base, log = server
    raw, expected = REFUSED[case]
    status, headers, body = exchange(base, raw)
    assert status == expected, body
    assert headers["content-type"] == "application/fhir+json" and int(headers["content-length"]) == len(body)
    outcome = json.loads(body)
    assert outcome["resourceType"] == "OperationOutcome"
    (issue,) = outcome["issue"]
    assert issue["severity"] == "error" and issue["code"] in {"invalid", "too-costly"} and 10 < len(issue["diagnostics"]) < 100
    assert SECRET not in body.decode() and b"<html" not in body
    assert requests.get(f"{base}/healthz", timeout=5).json() == {"status": "ok"}
    assert "Traceback" not in log.read_text() and SECRET not in log.read_text()


def test_the_shipped_worker_classes_are_gunicorns_answering_in_json():
    assert production.gunicorn_settings({})["worker_class"] == production.JSON_ERROR_WORKERS["sync"]
    assert production.gunicorn_settings({"GUNICORN_THREADS": "4"})["worker_class"] == production.JSON_ERROR_WORKERS["gthread"]
    assert production.gunicorn_settings({"GUNICORN_WORKER_CLASS": "gthread"})["worker_class"] == production.JSON_ERROR_WORKERS["gthread"]
    assert production.gunicorn_settings({"GUNICORN_WORKER_CLASS": "gevent"})["worker_class"] == "gevent"  # others as given
    assert issubclass(gunicorn.util.load_class(production.JSON_ERROR_WORKERS["sync"]), SyncWorker)
    assert issubclass(gunicorn.util.load_class(production.JSON_ERROR_WORKERS["gthread"]), ThreadWorker)


def test_an_answer_gunicorn_could_not_make_is_still_an_operation_outcome():
    """Had gunicorn's error writing changed (nothing captured), the caller still gets JSON, never HTML or nothing."""
    left, right = socket.socketpair()
    with left, right:
        worker = type("Worker", (), {"log": None})()
        production._answer_in_json(worker, lambda req, client, addr, exc: None, None, left, ("", -1), ValueError("x"))
        status_line, _, rest = right.recv(65536).partition(b"\r\n")
    assert status_line == b"HTTP/1.1 500 Internal Server Error"
    assert json.loads(rest.partition(b"\r\n\r\n")[2])["issue"][0] == {"severity": "fatal", "code": "exception",
                                                                      "diagnostics": "Internal Server Error"}


def test_a_request_a_worker_timed_out_on_is_logged_without_its_query_or_a_traceback(tmp_path):
    """gunicorn logs an exception that leaves the app (its worker timed out while reading a dripping body) as
    "Error handling request POST /path?query" with a traceback: the query may carry anything, the traceback the
    exception's text. The log keeps the method, the path and the kind of error; the caller still gets JSON."""
    settings = {"CDS_REQUIRE_JWT": "false", "CDS_DATABASE_URL": f"sqlite:///{tmp_path}/cards.sqlite3", "WEB_CONCURRENCY": "1",
                "GUNICORN_TIMEOUT": "2"}
    with production_server(tmp_path, settings, lambda base: requests.get(f"{base}/healthz", timeout=5).ok) as (base, _process):
        url = urllib.parse.urlsplit(base)
        with socket.create_connection((url.hostname, url.port), timeout=15) as client:
            client.sendall(b"POST /cds-services/mtor-safety-patient-view?patient=" + SECRET.encode() + b" HTTP/1.1\r\nHost: x\r\n"
                           b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{")
            answer = b""
            try:
                while chunk := client.recv(65536):
                    answer += chunk
            except OSError:
                pass
        assert requests.get(f"{base}/healthz", timeout=10).ok  # a new worker took over
    log = (tmp_path / "server.log").read_text()
    assert "Error handling request POST '/cds-services/mtor-safety-patient-view': SystemExit" in log, log
    assert SECRET not in log and "Traceback" not in log
    if answer:
        assert b"application/fhir+json" in answer and SECRET.encode() not in answer
