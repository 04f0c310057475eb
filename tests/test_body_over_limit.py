"""A body over CDS_MAX_BODY_BYTES is answered 413 with an OperationOutcome, also to a client that writes its whole body
before it reads the answer: after the 413 the rest of the body is read and thrown away, within bounds in bytes
(api.DISCARD_LIMIT_MULTIPLE x the limit) and time (api.DISCARD_DEADLINE_S), instead of the kernel resetting the
connection over unread bytes."""

from __future__ import annotations

import contextlib
import http.client
import io
import socket
import time
import urllib.parse

import pytest
import requests
import requests.adapters

from cds_service import api, create_app
from tests.production_process import production_server

LIMIT = 100_000
PATIENT_VIEW = "/cds-services/mtor-safety-patient-view"
DIAGNOSTICS = f"the request body is larger than the limit of {LIMIT} bytes"
SMALL_SEND_BUFFER = 16_384


def chunks(total: int, size: int = 16_384):
    """A body without Content-Length (requests and http.client send a generator chunked)."""
    for start in range(0, total, size):
        yield b" " * min(size, total - start)


# --- the real server ------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=[{"GUNICORN_WORKER_CLASS": "sync"}, {"GUNICORN_WORKER_CLASS": "gthread", "GUNICORN_THREADS": "2"}],
                ids=["sync", "gthread"])
def server(request, tmp_path_factory):
    """`mtor-cds serve --production` with a 100 kB limit and one worker (so 'still answers' asks the same worker)."""
    workdir = tmp_path_factory.mktemp("over-limit")
    settings = {"CDS_REQUIRE_JWT": "false", "CDS_DATABASE_URL": f"sqlite:///{workdir}/cards.sqlite3", "WEB_CONCURRENCY": "1",
                "CDS_MAX_BODY_BYTES": str(LIMIT), **request.param}
    with production_server(workdir, settings, lambda base: requests.get(f"{base}/healthz", timeout=5).ok) as (base, _process):
        yield base, workdir / "server.log"


def post_with_http_client(base: str, body) -> tuple[int, str, bytes]:
    """http.client writes the whole body, then reads the answer. Its send buffer is kept small: on loopback Linux lets
    it grow to megabytes, which would hold the whole body and hide the problem a real network shows."""
    url = urllib.parse.urlsplit(base)
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
    try:
        connection.connect()
        connection.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL_SEND_BUFFER)
        connection.request("POST", PATIENT_VIEW, body=body, headers={"Content-Type": "application/json"},
                           encode_chunked=not isinstance(body, bytes))
        response = connection.getresponse()
        return response.status, response.headers["Content-Type"], response.read()
    finally:
        connection.close()


class SmallSendBuffer(requests.adapters.HTTPAdapter):
    def init_poolmanager(self, *args, **kwargs):
        kwargs["socket_options"] = [(socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL_SEND_BUFFER)]
        super().init_poolmanager(*args, **kwargs)


def post_with_requests(base: str, body) -> tuple[int, str, bytes]:
    with requests.Session() as session:
        session.mount("http://", SmallSendBuffer())
        response = session.post(base + PATIENT_VIEW, data=body, headers={"Content-Type": "application/json"}, timeout=10)
        return response.status_code, response.headers["Content-Type"], response.content


def assert_413(status: int, content_type: str, body: bytes) -> None:
    assert status == 413, body
    assert content_type == "application/fhir+json"
    outcome = requests.models.complexjson.loads(body)
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"] == [{"severity": "error", "code": "too-costly", "diagnostics": DIAGNOSTICS}]


def assert_still_answers(base: str) -> None:
    assert requests.get(f"{base}/healthz", timeout=5).json() == {"status": "ok"}
    small = requests.post(base + PATIENT_VIEW, data=b"{}", headers={"Content-Type": "application/json"}, timeout=5)
    assert small.status_code == 400 and small.json()["resourceType"] == "OperationOutcome"


@pytest.mark.parametrize("post", [post_with_http_client, post_with_requests], ids=["http.client", "requests"])
@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_a_client_that_writes_a_body_over_the_limit_first_gets_the_413_not_a_reset(server, post, framing):
    base, log = server
    for _ in range(3):  # every time, not by luck of timing
        body = b" " * (3 * LIMIT) if framing == "content-length" else chunks(3 * LIMIT + 12_345)
        assert_413(*post(base, body))
        assert_still_answers(base)
    assert "Traceback" not in log.read_text()


def test_a_body_beyond_the_discard_bound_is_cut_off_and_the_server_carries_on(server):
    base, log = server
    too_much = (api.DISCARD_LIMIT_MULTIPLE + 2) * LIMIT
    for body in (b" " * too_much, chunks(too_much)):
        # The connection closes (all that is promised beyond the bound), or the kernel's buffers happened to hold the rest.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            assert_413(*post_with_http_client(base, body))
        assert_still_answers(base)
    assert "Traceback" not in log.read_text()


def test_a_client_dripping_the_rest_of_its_body_is_cut_off_at_the_deadline(server):
    """Sent the 413 after the limit's worth of a chunked body, then one byte at a time: the connection closes after about
    DISCARD_DEADLINE_S, not when the client stops (a sync worker serves no one else meanwhile)."""
    base, _log = server
    url = urllib.parse.urlsplit(base)
    with socket.create_connection((url.hostname, url.port), timeout=10) as client:
        head = f"POST {PATIENT_VIEW} HTTP/1.1\r\nHost: {url.netloc}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        client.sendall(head.encode() + b"%x\r\n" % (LIMIT + 1) + b" " * (LIMIT + 1) + b"\r\n")
        answer = b""
        while b"\r\n\r\n" not in answer:
            answer += client.recv(65536)
        assert answer.startswith(b"HTTP/1.1 413 ")
        started = time.monotonic()
        client.setblocking(False)
        closed = False
        while not closed and time.monotonic() - started < api.DISCARD_DEADLINE_S + 10:
            try:
                client.send(b"1\r\n \r\n")
                while client.recv(65536):  # the rest of the 413, then the end of the connection
                    pass
                closed = True
            except BlockingIOError:
                time.sleep(0.05)
            except OSError:  # reset
                closed = True
        elapsed = time.monotonic() - started
    assert closed and elapsed < api.DISCARD_DEADLINE_S + 3, elapsed
    assert_still_answers(base)


# --- through the Flask test client ------------------------------------------------------------------


@pytest.fixture
def app(tmp_path):
    return create_app(require_jwt=False, max_body_bytes=LIMIT, database_url=f"sqlite:///{tmp_path}/cards.sqlite3")


def post_through(app, body: bytes, chunked: bool, connection: socket.socket | None):
    """POST as gunicorn hands it over: the connection in environ, a chunked body terminated by the server."""
    stream = io.BytesIO(body)
    environ = {"gunicorn.socket": connection} if connection else {}
    headers = {}
    if chunked:
        environ["wsgi.input_terminated"] = True
        headers["Transfer-Encoding"] = "chunked"
    else:
        environ["CONTENT_LENGTH"] = str(len(body))
    response = app.test_client().post(PATIENT_VIEW, input_stream=stream, content_type="application/json", headers=headers,
                                      environ_overrides=environ)
    return response, stream


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_the_413_says_the_limit_and_the_rest_of_the_body_is_read_after_it(app, chunked):
    left, right = socket.socketpair()
    with left, right:
        response, stream = post_through(app, b" " * (3 * LIMIT), chunked, left)
        assert response.status_code == 413
        assert response.get_json(force=True)["issue"][0]["diagnostics"] == DIAGNOSTICS
        response.close()  # the server closes the answer once it is sent: the rest is read then
        assert stream.tell() == 3 * LIMIT


def test_nothing_is_read_beyond_the_bound_or_without_a_connection_to_bound_the_time(app):
    left, right = socket.socketpair()
    with left, right:
        too_much = (api.DISCARD_LIMIT_MULTIPLE + 2) * LIMIT
        response, stream = post_through(app, b" " * too_much, False, left)
        response.close()
        assert response.status_code == 413 and stream.tell() == 0  # declared beyond the bound: not worth reading
        response, stream = post_through(app, b" " * too_much, True, left)
        response.close()
        assert response.status_code == 413 and stream.tell() == LIMIT + 1 + api.DISCARD_LIMIT_MULTIPLE * LIMIT
    response, stream = post_through(app, b" " * (3 * LIMIT), False, None)
    response.close()
    assert response.status_code == 413 and stream.tell() == 0


def test_the_discarding_read_stops_at_the_deadline(monkeypatch):
    monkeypatch.setattr(api, "DISCARD_DEADLINE_S", 0.3)
    left, right = socket.socketpair()
    with left, right, left.makefile("rb") as stream:
        right.sendall(b"x" * 1000)  # then nothing more: a read for the rest would wait for ever
        started = time.monotonic()
        api._read_and_discard(stream, left, budget=10 * 1000)
        assert 0.25 < time.monotonic() - started < 2
