"""A FHIR server that breaks its answers in ways the other fault tests do not reach (found by a FHIR-robustness audit).

- A body cut short (Content-Length larger than the body, a broken chunk), a Content-Encoding the body does not have,
  or a stall in the middle of the body: urllib3 raised these past the client untranslated; the query was logged
  "ok", an ERROR line "FHIR job failed" was written and the 412/card said "internal error".
- A batch-response whose entries come in another order than the queries: the MedicationRequest Bundle was read as
  another key's data and the order-select call answered `{"cards": []}`, the critical interaction lost in silence.
- A search Bundle of another resource type, a `next` link loop (60 pages then "more pages than the limit"), a
  relative `next` link resolved against the base instead of its page, and an `_include` listed in the
  CapabilityStatement but refused with 400 (the medications were then a 412).
"""

from __future__ import annotations

import gzip
import json
import re
import socket
import threading
import time

import pytest
import responses

from cds_assertions import topics_of
from cds_service.fhir import client as fhir_client
from cds_service.fhir.client import Deadline, FhirClient, QueryOutcome
from cds_service.settings import Settings
from conftest import TYPE_OF_PREFETCH_KEY
from test_fhir_batch import BASE, ORDER_SELECT, BatchServer, fallback_call

MR = {"resourceType": "MedicationRequest", "id": "1", "status": "active", "subject": {"reference": "Patient/p1"}}
PAGE = json.dumps({"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": MR}]}).encode()


@pytest.fixture
def raw_server():
    """A loopback server that writes, for every request, the bytes `answer[0]` gives (then sleeps `answer[1]`)."""
    answer: list = [b"", 0.0]
    listener = socket.create_server(("127.0.0.1", 0))

    def serve(conn: socket.socket) -> None:
        with conn:
            conn.recv(65536)
            conn.sendall(answer[0])
            time.sleep(answer[1])

    def accept() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}/fhir", answer
    listener.close()


def _search(base: str, deadline_s: float = 2.0):
    fhir = FhirClient(base, "token", Settings(require_jwt=False), Deadline.after(deadline_s))
    try:
        return fhir, fhir.search("MedicationRequest?patient=p1")
    except Exception as exc:  # noqa: BLE001 -- what it raised is the result under test
        return fhir, exc


@pytest.mark.parametrize("head, body, stall_s, outcome", [
    (b"Content-Length: 100000", PAGE, 0.0, QueryOutcome.CONNECTION_FAILED),  # the body ends before its length
    (b"Transfer-Encoding: chunked", b"ZZ\r\nnot a chunk\r\n", 0.0, QueryOutcome.CONNECTION_FAILED),
    (b"Content-Encoding: gzip\r\nContent-Length: 40", b"\x1f\x8b not gzip at all, but said to be..", 0.0, QueryOutcome.INVALID_JSON),
    (b"Content-Length: 1000", b"{", 3.0, QueryOutcome.TIMEOUT),  # headers and one byte, then nothing
])
def test_a_body_broken_off_or_undecodable_is_a_named_failure_never_ok(raw_server, head, body, stall_s, outcome):
    base, answer = raw_server
    answer[:] = [b"HTTP/1.1 200 OK\r\nConnection: close\r\n" + head + b"\r\n\r\n" + body, stall_s]
    fhir, result = _search(base, deadline_s=0.8)
    assert isinstance(result, fhir_client.FhirUnavailable) and fhir_client.outcome_of(result) is outcome
    assert [t.outcome for t in fhir.timings] == [outcome]


def test_a_gzip_bomb_is_stopped_by_the_size_cap_after_decompression(raw_server):
    base, answer = raw_server
    bomb = gzip.compress(b" " * 30_000_000, 9)
    answer[:] = [b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n" % len(bomb) + bomb, 0.0]
    fhir, result = _search(base)
    assert fhir_client.outcome_of(result) is QueryOutcome.RESPONSE_TOO_LARGE


@pytest.fixture
def fhir():
    fhir_client._capabilities.clear()
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock
    fhir_client._capabilities.clear()


def test_a_batch_response_out_of_order_is_not_read_as_the_other_queries_data(client, fhir):
    call, data = fallback_call()
    server = BatchServer(fhir, data)
    in_order = server._batch

    def reversed_entries(request):
        status, headers, body = in_order(request)
        answer = json.loads(body)
        return status, headers, json.dumps({**answer, "entry": answer["entry"][::-1]})

    fhir.remove(responses.POST, BASE)
    fhir.add_callback(responses.POST, BASE, callback=reversed_entries)
    answer = client.post(ORDER_SELECT, json=call)
    assert answer.status_code == 200 and topics_of(answer.get_json()) == ["cyp3a4-interaction"]  # asked again as GETs
    assert len(server.calls("GET")) == 1 + len(TYPE_OF_PREFETCH_KEY)  # the metadata, then each query


def test_a_search_answered_with_another_resource_type_is_not_its_data(client, fhir):
    call, data = fallback_call()
    BatchServer(fhir, data, batch=False)
    fhir.add(responses.GET, re.compile(re.escape(f"{BASE}/MedicationRequest?") + ".*"), json=data["observations"])
    fhir._registry.registered.insert(0, fhir._registry.registered.pop())  # before the server's own answer
    response = client.post(ORDER_SELECT, json=call)
    assert response.status_code == 412
    assert "MedicationRequest search answered with Observation resources" in response.get_json(force=True)["issue"][0]["diagnostics"]


def test_an_include_the_server_lists_but_refuses_is_asked_again_without_it_and_not_sent_again(client, fhir):
    call, data = fallback_call()
    server = BatchServer(fhir, data, batch=False, includes=("MedicationRequest:medication",))
    refusal = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "not-supported"}]}
    fhir.add(responses.GET, re.compile(re.escape(f"{BASE}/MedicationRequest?") + ".*_include=.*"), status=400, json=refusal)
    fhir._registry.registered.insert(0, fhir._registry.registered.pop())
    for _ in range(2):
        response = client.post(ORDER_SELECT, json=call)
        assert response.status_code == 200 and topics_of(response.get_json()) == ["cyp3a4-interaction"]
    with_include = [c for c in server.calls("GET", "/MedicationRequest") if "_include" in c.request.url]
    assert len(with_include) == 1  # the second call sent the template's query alone


@pytest.mark.parametrize("links", [("p=A",), ("p=B", "p=A")])
def test_next_links_that_go_round_in_a_loop_stop_at_once_and_say_so(fhir, links):
    fhir_client.remember_capability(BASE, batch=False)
    first = f"{BASE}/MedicationRequest?p=A"
    for here, there in zip(("p=A", *links[:-1]), links, strict=True):
        page = {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": MR}],
                "link": [{"relation": "next", "url": f"{BASE}/MedicationRequest?{there}"}]}
        fhir.add(responses.GET, f"{BASE}/MedicationRequest?{here}", json=page)
    client = FhirClient(BASE, "token", Settings(require_jwt=False), Deadline.after(2.0))
    with pytest.raises(fhir_client.FhirUnavailable, match="lead back to a page already read"):
        client.search(first)
    assert len(fhir.calls) == len(links) and client.timings[-1].outcome is QueryOutcome.NEXT_LINK_LOOP


def test_a_relative_next_link_resolves_against_its_page(fhir):
    page = {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": MR}], "link": [{"relation": "next", "url": "?page=2"}]}
    fhir.add(responses.GET, f"{BASE}/MedicationRequest?patient=p1", json=page)
    second = {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": {**MR, "id": "2"}}]}
    fhir.add(responses.GET, f"{BASE}/MedicationRequest?page=2", json=second)
    client = FhirClient(BASE, "token", Settings(require_jwt=False), Deadline.after(2.0))
    assert [r["id"] for r in client.search("MedicationRequest?patient=p1")] == ["1", "2"]


def test_the_integrating_guide_says_what_a_misbehaving_server_gets():
    from pathlib import Path

    text = " ".join((Path(__file__).resolve().parent.parent / "docs" / "integrating.md").read_text(encoding="utf-8").split())
    assert fhir_client.CAPABILITY_RETRY_S == 300.0
    for said in ("asked the template's own query at once, and gets no `_include` for 5 minutes",
                 "not in the order of the queries", "a `next` link back to a page already read",
                 "redirects (3xx) are never followed"):
        assert said in text, said
