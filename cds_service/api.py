"""HTTP and the CDS Hooks wire format: discovery, service calls, errors as OperationOutcome, CORS, request logs.

This module turns a request into a HookCall or a 4xx; it never looks at clinical content.
"""

from __future__ import annotations

import codecs
import contextlib
import functools
import logging
import re
import socket
import threading
from importlib import resources
from typing import Any

import orjson
from flask import Blueprint, Flask, Response, current_app, g, request
from werkzeug.exceptions import HTTPException

from cds_service.app_state import AppState
from cds_service.auth import TokenRefused, expected_audience, www_authenticate
from cds_service.errors import (
    BadRequest,
    CdsError,
    DataUnavailable,
    PayloadTooLarge,
    UnknownService,
    UnsupportedMediaType,
    operation_outcome_body,
)
from cds_service.hooks import Caller, answer_hook
from cds_service.observability import Stopwatch, log_request
from cds_service.services import HookCall, ServiceDefinition
from cds_service.store import parse_feedback

bp = Blueprint("cds", __name__)
_LOG = logging.getLogger("mtor_cds.api")
_JSON_TYPES = {"application/json", "application/fhir+json"}
_HEADER_SAFE = re.compile(r"[!-~]+")  # visible ASCII: what an Authorization header value can carry
_ORDER_FIELDS = {  # field -> hooks that define it
    "selections": {"order-select"}, "draftOrders": {"order-select", "order-sign"}, "appointments": {"appointment-book"},
}


def state() -> AppState:
    return current_app.extensions["mtor_cds"]


def json_response(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status=status, mimetype="application/json")


@bp.get("/cds-services")
def discovery() -> Response:
    return json_response({"services": [s.discovery_entry() for s in state().services.values()]})


@bp.post("/cds-services/<service_id>")
def call_service(service_id: str) -> Response:
    app_state = state()
    service = app_state.services.get(service_id)
    if service is None:
        raise UnknownService(f"no CDS service with id {service_id[:80]!r}")
    g.log_fields["service"] = service.id
    call = parse_hook_call(read_json_body(), service)
    g.log_fields.update(hook=call.hook, hookInstance=call.hook_instance[:80], patient=app_state.hash_patient(call.patient_id))
    now = app_state.clock()
    caller = Caller(issuer=_caller_issuer(), patient_hash=g.log_fields["patient"])
    answer = answer_hook(call, service, app_state.knowledge, app_state.settings, now, app_state.store, caller)
    g.log_fields["fhir_queries"] = [[t.resource_type, t.outcome, t.ms] for t in answer.fhir_timings]
    g.log_fields["cards"] = [[card.topic.value, card.indicator] for card in answer.cards]
    if answer.unmatched_selections:  # an EHR's selections should name its draft orders: the integrator can see it here
        g.log_fields["unmatched_selections"] = answer.unmatched_selections
    if answer.held_back:
        g.log_fields["suppressed"] = answer.suppressed
        app_state.store.record_suppressed(answer.held_back)
    app_state.store.record_cards(answer.records)
    return json_response({"cards": [card.to_json() for card in answer.cards]})


@bp.post("/cds-services/<service_id>/feedback")
def feedback(service_id: str) -> Response:
    app_state = state()
    if service_id not in app_state.services:
        raise UnknownService(f"no CDS service with id {service_id[:80]!r}")
    g.log_fields["service"] = service_id
    entries = parse_feedback(read_json_body(), app_state.clock())
    app_state.store.record_feedback(service_id, _caller_issuer(), entries)
    g.log_fields["feedback"] = [[e.outcome, bool(e.reason_code)] for e in entries]
    return Response(status=200)


@bp.get("/healthz")
def healthz() -> Response:
    return json_response({"status": "ok"})


@bp.get("/openapi.yaml")
def openapi() -> Response:
    return Response(_openapi_document(), mimetype="application/yaml")


@functools.cache
def _openapi_document() -> bytes:
    return resources.files("cds_service").joinpath("openapi.yaml").read_bytes()


@bp.get("/readyz")
def readyz() -> Response:
    app_state = state()
    checks = {"knowledge": bool(app_state.services), "settings": True, "database": app_state.store.is_healthy()}
    ready = all(checks.values())
    return json_response({"status": "ready" if ready else "not ready", "checks": checks}, 200 if ready else 503)


def read_json_body() -> Any:
    if request.mimetype not in _JSON_TYPES:
        raise UnsupportedMediaType("the body must be JSON (Content-Type: application/json)")
    limit = state().settings.max_body_bytes
    too_large = f"the request body is larger than the limit of {limit} bytes"
    if (request.content_length or 0) > limit:  # refused before reading (Werkzeug's own 413 would not say the limit)
        raise PayloadTooLarge(too_large)
    # Werkzeug silently cuts a body without Content-Length (chunked) at the limit; one byte more tells
    # "too large" from "exactly the limit".
    request.max_content_length = limit + 1
    try:
        body = request.get_data(cache=False)
    except HTTPException:
        raise
    except Exception:  # raised by the server's reader (gunicorn's InvalidChunkSize, NoMoreData...): the caller's fault
        raise BadRequest("the body could not be read (malformed chunked encoding, or cut short)") from None
    if len(body) > limit:
        raise PayloadTooLarge(too_large)
    if request.content_length is not None and len(body) < request.content_length:  # the server stopped reading it
        raise BadRequest("the body is shorter than its Content-Length (cut short, or not sent in time)")
    try:
        # RFC 8259 §8.1: senders must not add a byte order mark, receivers may ignore one; some Windows stacks add it
        return orjson.loads(body[3:] if body.startswith(codecs.BOM_UTF8) else body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"the body is not valid JSON ({_json_error(exc)})") from None


def _json_error(exc: orjson.JSONDecodeError) -> str:
    return f"line {exc.lineno}, column {exc.colno}" if exc.lineno else "unreadable"


# After a 413 the caller has usually sent, or is still sending, the rest of its body. Closing the connection with those
# bytes unread makes the kernel answer with a reset, and a client that writes its whole body before it reads the answer
# (http.client, for one) sees "broken pipe" or "connection reset" instead of the 413. So, like nginx's lingering
# close, the rest of the body is read and thrown away once the 413 is sent, within two bounds; beyond them the
# connection is just closed. Bytes: a client a few times over the limit (a wrong setting, an oversized bundle) is worth
# its answer, one sending far more is not worth the bandwidth. Time: a client that drips its body must not hold a sync
# worker, which serves no one else meanwhile, for longer than this.
DISCARD_LIMIT_MULTIPLE = 4
DISCARD_DEADLINE_S = 2.0
_DISCARD_READ_BYTES = 64 * 1024


def _discard_rest_of_body(response: Response) -> None:
    """Have `response` (a 413) read and throw away what is left of the request body after it is sent.

    Runs only under a server that hands the connection over (gunicorn, Werkzeug's development server): its socket is
    what enforces the deadline. Reading goes through wsgi.input, which knows where the body ends (Content-Length or
    the last chunk), so a keep-alive connection stays usable.
    """
    environ = request.environ
    connection = environ.get("gunicorn.socket") or environ.get("werkzeug.socket")
    if not isinstance(connection, socket.socket):
        return
    # Declared: nothing of it was read (refused on the header). Chunked: the limit was read, this much more may be.
    budget = DISCARD_LIMIT_MULTIPLE * state().settings.max_body_bytes
    declared = request.content_length
    if declared is not None:
        if declared > budget:
            return  # beyond the bound from the start: closing now beats reading a part of it
        budget = declared
    response.call_on_close(functools.partial(_read_and_discard, environ["wsgi.input"], connection, budget))


def _read_and_discard(stream: Any, connection: socket.socket, budget: int) -> None:
    # A blocking read honours no deadline of ours (gunicorn reads until it has what was asked for, however slowly the
    # bytes come): at the deadline, shutting down the reading side ends it at once, and the connection then closes.
    timer = threading.Timer(DISCARD_DEADLINE_S, _stop_reading, (connection,))
    timer.daemon = True
    timer.start()
    try:
        while budget > 0:
            data = stream.read(min(_DISCARD_READ_BYTES, budget))
            if not data:
                return
            budget -= len(data)
    except Exception:  # a cut or malformed body, a reset: the answer is out, the server closes the connection
        return
    finally:
        timer.cancel()


def _stop_reading(connection: socket.socket) -> None:
    with contextlib.suppress(OSError):  # already closed
        connection.shutdown(socket.SHUT_RD)


def parse_hook_call(body: Any, service: ServiceDefinition) -> HookCall:
    """Validate a CDS Hooks 2.0 request for this service; every problem is a BadRequest naming the field."""
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    hook = _string(body, "hook")
    if hook != service.hook:
        raise BadRequest(f"hook {hook[:60]!r} does not match service {service.id!r} (expects {service.hook!r})")
    hook_instance = _string(body, "hookInstance")
    context = body.get("context")
    if not isinstance(context, dict):
        raise BadRequest("context is required and must be an object")
    patient_id = _string(context, "patientId", where="context.")
    if "/" in patient_id or patient_id != patient_id.strip():
        # Patient.id, not a reference: "Patient/123" would make every resource of the record read as another patient's,
        # and the call answer nothing
        raise BadRequest("context.patientId must be the Patient's id (e.g. 123), not a reference (Patient/123) or padded with spaces")
    _string(context, "userId", where="context.")
    if "encounterId" in context and not isinstance(context["encounterId"], str):
        raise BadRequest("context.encounterId must be a string")
    if hook in ("order-select", "order-sign"):
        draft_orders = context.get("draftOrders")
        if not isinstance(draft_orders, dict) or draft_orders.get("resourceType") != "Bundle":
            raise BadRequest("context.draftOrders is required and must be a FHIR Bundle")
        if draft_orders.get("entry") is not None and not isinstance(draft_orders.get("entry"), list):
            raise BadRequest("context.draftOrders.entry must be an array")
    if hook == "order-select":
        selections = context.get("selections")
        if not isinstance(selections, list) or not selections or not all(isinstance(s, str) for s in selections):
            raise BadRequest("context.selections is required and must be a non-empty array of strings")
    if hook == "appointment-book":
        _check_appointments(context.get("appointments"))
    fhir_server = body.get("fhirServer")
    # RFC 3986 §3.1: a scheme is case-insensitive ("HTTPS://ehr.example.org/fhir" is an https URL)
    if fhir_server is not None and not (isinstance(fhir_server, str) and fhir_server[:8].lower().startswith(("http://", "https://"))):
        raise BadRequest("fhirServer must be an absolute http(s) URL")
    authorization = body.get("fhirAuthorization")
    access_token = None
    if authorization is not None:
        if not isinstance(authorization, dict) or not isinstance(authorization.get("access_token"), str):
            raise BadRequest("fhirAuthorization must be an object with an access_token string")
        if not _HEADER_SAFE.fullmatch(authorization["access_token"]):
            raise BadRequest("fhirAuthorization.access_token must be visible ASCII without spaces")
        if fhir_server is None:
            raise BadRequest("fhirServer is required when fhirAuthorization is present")
        access_token = authorization["access_token"]
    prefetch = body.get("prefetch")
    if prefetch is not None and not isinstance(prefetch, dict):
        raise BadRequest("prefetch must be an object")
    if "extension" in body and not isinstance(body["extension"], dict):
        raise BadRequest("extension must be an object")
    foreign = [field for field, hooks in _ORDER_FIELDS.items() if field in context and hook not in hooks]
    if foreign:  # fields of other hooks: ignored like any unknown key, so that nothing below reads them
        context = {k: v for k, v in context.items() if k not in foreign}
    return HookCall(
        hook=hook,
        hook_instance=hook_instance,
        context=context,
        fhir_server=fhir_server,
        access_token=access_token,
        prefetch=prefetch or {},
    )


def _check_appointments(appointments: Any) -> None:
    """appointment-book's context.appointments: a Bundle of Appointments (the hook's table), or a JSON array of
    them (as the CDS Hooks library's own examples send it); every entry must be an Appointment."""
    if isinstance(appointments, list):
        resources, where = appointments, "context.appointments[{}]"
    elif isinstance(appointments, dict) and appointments.get("resourceType") == "Bundle":
        entries = appointments.get("entry", [])
        if not isinstance(entries, list):
            raise BadRequest("context.appointments.entry must be an array")
        resources = [e.get("resource") if isinstance(e, dict) else None for e in entries]
        where = "context.appointments.entry[{}].resource"
    else:
        raise BadRequest("context.appointments is required and must be a FHIR Bundle of Appointment resources")
    for i, resource in enumerate(resources):
        if not isinstance(resource, dict) or resource.get("resourceType") != "Appointment":
            raise BadRequest(f"{where.format(i)} must be an Appointment")


def _string(obj: dict, field: str, where: str = "") -> str:
    value = obj.get(field)
    if not isinstance(value, str) or not value.strip():
        raise BadRequest(f"{where}{field} is required and must be a non-empty string")
    return value


# --- cross-cutting: auth, CORS, errors, the request log ------------------------------------------


def init_app(app: Flask) -> None:
    app.before_request(_start_request)
    app.after_request(_finish_request)
    app.register_error_handler(CdsError, _cds_error)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected_error)


def _start_request() -> Response | None:
    g.stopwatch = Stopwatch()
    g.log_fields = {"method": request.method, "path": request.path[:120]}
    if request.method == "OPTIONS" and request.url_rule is not None:
        return Response(status=204)  # CORS preflight: answered without credentials
    app_state = state()
    if app_state.verifier is not None and request.path.startswith("/cds-services"):
        try:
            audience = expected_audience(app_state.settings.public_base_url, request.path, request.host_url, request.headers)
            g.caller_issuer = app_state.verifier.verify(request.headers.get("Authorization"), audience)["iss"]
        except TokenRefused as refused:  # one log line says why (never the token); the 401 header says it too
            g.log_fields.update(auth_failure=refused.reason.value, auth_detail=refused.message)
            raise
    return None


def _caller_issuer() -> str:
    """Who is calling: the JWT's iss, or "" when JWTs are off. Cards and feedback are bound to it."""
    return getattr(g, "caller_issuer", "")


def _finish_request(response: Response) -> Response:
    origins = state().settings.cors_origins
    origin = request.headers.get("Origin")
    if origin and ("*" in origins or origin in origins):
        response.headers["Access-Control-Allow-Origin"] = "*" if "*" in origins else origin
        response.headers["Access-Control-Allow-Methods"] = "GET, POST, OPTIONS"
        response.headers["Access-Control-Allow-Headers"] = "Authorization, Content-Type"
        response.headers["Access-Control-Max-Age"] = "600"
        # a browser client (the CDS Hooks sandbox) may read why a 401 was refused (RFC 6750 puts it in this header)
        response.headers["Access-Control-Expose-Headers"] = "WWW-Authenticate"
        if "*" not in origins:
            response.headers["Vary"] = "Origin"
    fields = getattr(g, "log_fields", None)
    if fields is not None and request.path != "/healthz":
        fields.update(status=response.status_code, duration_ms=g.stopwatch.ms())
        log_request(fields)
    return response


def operation_outcome(status: int, code: str, message: str) -> Response:
    return Response(orjson.dumps(operation_outcome_body(status, code, message)), status=status, mimetype="application/fhir+json")


def _cds_error(error: CdsError) -> Response:
    if hasattr(g, "log_fields"):
        g.log_fields["error"] = type(error).__name__
        if isinstance(error, DataUnavailable) and error.fhir_timings:  # a 412 logs the queries tried and how each ended
            g.log_fields["fhir_queries"] = [[t.resource_type, t.outcome, t.ms] for t in error.fhir_timings]
    if error.status == 401:  # no body, as the CDS Hooks best practices ask; RFC 6750 says why in the header
        return Response(status=401, headers={"WWW-Authenticate": www_authenticate(error)})
    response = operation_outcome(error.status, error.code, error.message)
    if isinstance(error, PayloadTooLarge):
        _discard_rest_of_body(response)
    return response


def _http_error(error: HTTPException) -> Response:
    """Werkzeug's own errors (404, 405, 413, ...) as OperationOutcome, keeping headers such as Allow."""
    codes = {404: "not-found", 405: "not-supported", 413: "too-costly", 415: "not-supported"}
    status = error.code or 400
    response = operation_outcome(status, codes.get(status, "invalid"), error.description or error.name)
    for name, value in error.get_headers():
        if name.lower() != "content-type":
            response.headers[name] = value
    return response


def _unexpected_error(error: Exception) -> Response:
    # The type only: exception messages can carry patient data.
    _LOG.error("unexpected error: %s", type(error).__name__)
    if hasattr(g, "log_fields"):
        g.log_fields["error"] = type(error).__name__
    return operation_outcome(500, "exception", "internal error; the request was logged")
