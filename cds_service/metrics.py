"""Prometheus metrics: requests, latency, cards and FHIR queries, served on `GET /metrics`.

    init_app(app)    registers /metrics and the hooks that count each request

The counts come from what the api layer already records per request in ``flask.g.log_fields``
(service, cards = [[topic, indicator], ...], fhir_queries = [[resource_type, outcome, ms], ...]);
status and latency are taken here from the response and api's stopwatch (``g.stopwatch``), because
this module's after_request hook may run before the api's one (Flask runs them in reverse order of
registration).

Every app has its own CollectorRegistry, so tests that create many apps never register the same
metric twice. With several gunicorn worker processes set ``PROMETHEUS_MULTIPROC_DIR`` (before the
process starts: prometheus_client reads it at import): each process then writes its values to files
there, and /metrics adds up every process's files with a MultiProcessCollector.

A FHIR batch (cds_service/fhir/client.py) counts as the queries inside it, each with the batch's time, so the
query counts mean the same whichever way a server was asked.

Labels come only from fixed sets: service ids from the app's service definitions, indicators from
the CDS Hooks three, FHIR resource types from the types the service queries, FHIR outcomes from the
client's QueryOutcome enum; anything else is "other" (a resource id, an unknown service id or a `next`
link's path must never become a label: it could carry a patient id and grows without limit).
"""

from __future__ import annotations

import logging
import os
import re
import stat
import time

from flask import Flask, Response, current_app, g, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)

from cds_service.fhir.client import QueryOutcome

__all__ = ["EXTENSION_KEY", "MULTIPROC_ENV", "ServiceMetrics", "init_app"]

EXTENSION_KEY = "mtor_cds_metrics"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# Seconds. A hook call with prefetch takes a few ms; one without waits for the EHR's FHIR server,
# bounded by CDS_FHIR_DEADLINE_S (3 s by default).
REQUEST_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
FHIR_BUCKETS_S = (0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0)

# Every type the service's prefetch templates and reads ask for (tests/test_metrics.py keeps it complete).
FHIR_RESOURCE_TYPES = frozenset({
    "Patient", "MedicationRequest", "MedicationStatement", "Medication", "Observation", "Condition", "Procedure", "ServiceRequest",
    "Appointment",
})
INDICATORS = frozenset({"info", "warning", "critical"})
_FHIR_OUTCOMES = frozenset(QueryOutcome)
_LABEL_TEXT = re.compile(r"[a-z0-9][a-z0-9._-]{0,99}")
_LOG = logging.getLogger("mtor_cds.metrics")


class ServiceMetrics:
    """The metrics of one app, on its own registry."""

    def __init__(self, registry: CollectorRegistry | None = None, multiprocess_dir: str | None = None):
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self.multiprocess_dir = multiprocess_dir
        self.requests = Counter(
            "mtor_cds_requests", "HTTP requests answered, by route, CDS service and status.",
            ["endpoint", "service", "status"], registry=self.registry,
        )
        self.request_duration = Histogram(
            "mtor_cds_request_duration_seconds", "Time to answer an HTTP request, by route and CDS service.",
            ["endpoint", "service"], buckets=REQUEST_BUCKETS_S, registry=self.registry,
        )
        self.cards = Counter(
            "mtor_cds_cards", "Cards returned, by CDS service, topic and indicator.",
            ["service", "topic", "indicator"], registry=self.registry,
        )
        self.fhir_queries = Counter(
            "mtor_cds_fhir_queries", "FHIR queries sent to the EHR's server, by resource type and outcome.",
            ["resource_type", "outcome"], registry=self.registry,
        )
        self.fhir_duration = Histogram(
            "mtor_cds_fhir_query_duration_seconds", "Time of one FHIR query, by resource type.",
            ["resource_type"], buckets=FHIR_BUCKETS_S, registry=self.registry,
        )

    def observe(
        self, endpoint: str, status: int, duration_s: float, fields: dict, services: frozenset[str] | None = None
    ) -> None:
        """Count one answered request from its status, duration and the api's log fields.

        `services`: the app's service ids, the only service labels (None: any kebab-case code, for bare apps).
        """
        service = _label(fields.get("service"))
        if services is not None and service not in services and service != "":
            service = "other"
        self.requests.labels(endpoint, service, str(status)).inc()
        self.request_duration.labels(endpoint, service).observe(duration_s)
        for entry in fields.get("cards") or ():
            if isinstance(entry, (list, tuple)) and len(entry) == 2:
                indicator = entry[1] if entry[1] in INDICATORS else "other"
                self.cards.labels(service, _label(entry[0]), indicator).inc()
        for entry in fields.get("fhir_queries") or ():
            if isinstance(entry, (list, tuple)) and len(entry) == 3:
                resource_type = fhir_resource_type_label(entry[0])
                self.fhir_queries.labels(resource_type, fhir_outcome_label(entry[1])).inc()
                if isinstance(entry[2], (int, float)):
                    self.fhir_duration.labels(resource_type).observe(max(entry[2], 0) / 1000)

    def exposition(self) -> bytes:
        """The text format of every metric: this process's, or all worker processes' in multiprocess mode."""
        if self.multiprocess_dir:
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry, path=self.multiprocess_dir)
            return generate_latest(registry)
        return generate_latest(self.registry)


def fhir_resource_type_label(value: object) -> str:
    """A resource type the service queries, or "other" (a resource id, a `next` link's path, ...)."""
    return value if isinstance(value, str) and value in FHIR_RESOURCE_TYPES else "other"


def fhir_outcome_label(value: object) -> str:
    """One of the FHIR client's QueryOutcome values; anything else (free text) is "error"."""
    if isinstance(value, str) and value in _FHIR_OUTCOMES:
        return value.replace(" ", "-")
    return "error"


def _label(value: object) -> str:
    """Service ids, topics and indicators are kebab-case codes; anything else is not a label value."""
    if value is None or value == "":
        return ""
    return value if isinstance(value, str) and _LABEL_TEXT.fullmatch(value) else "other"


def init_app(app: Flask) -> ServiceMetrics:
    """Give the app its metrics, the /metrics route and the hooks that count every request.

    Idempotent: a second call on the same app returns the metrics it already has.
    """
    if EXTENSION_KEY in app.extensions:
        return app.extensions[EXTENSION_KEY]
    directory = os.environ.get(MULTIPROC_ENV) or None
    if directory:
        _check_private_directory(directory)
    metrics = ServiceMetrics(multiprocess_dir=directory)
    app.extensions[EXTENSION_KEY] = metrics
    app.before_request(_start_timer)
    app.after_request(_count_request)
    app.add_url_rule("/metrics", "metrics", _metrics_endpoint, methods=["GET"])
    return metrics


def _check_private_directory(directory: str) -> None:
    """The metrics directory must be ours alone: another local user's files there would become our metrics."""
    os.makedirs(directory, mode=0o700, exist_ok=True)  # values are written there from the first request on
    info = os.lstat(directory)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o022:
        raise RuntimeError(f"{MULTIPROC_ENV}={directory!r} must be a directory owned by this user, writable only by it")


def _start_timer() -> None:
    g.metrics_started = time.perf_counter()


def _count_request(response: Response) -> Response:
    metrics: ServiceMetrics = current_app.extensions[EXTENSION_KEY]
    # The api's stopwatch starts in its before_request, which is registered first and so runs
    # first; when that hook answers early (401, CORS preflight) ours never ran.
    stopwatch = getattr(g, "stopwatch", None)
    started = stopwatch.started if stopwatch is not None else getattr(g, "metrics_started", None)
    duration_s = time.perf_counter() - started if started is not None else 0.0
    endpoint = request.endpoint or "unmatched"  # route names, never raw paths (bounded)
    try:
        app_state = current_app.extensions.get("mtor_cds")
        services = frozenset(app_state.services) if app_state is not None else None
        metrics.observe(endpoint, response.status_code, duration_s, getattr(g, "log_fields", None) or {}, services)
    except Exception as exc:  # noqa: BLE001 (counting must never turn an answer into an error)
        _LOG.error("metrics not counted: %s", type(exc).__name__)
    return response


def _metrics_endpoint() -> Response:
    body = current_app.extensions[EXTENSION_KEY].exposition()
    return Response(body, status=200, headers={"Content-Type": CONTENT_TYPE_LATEST, "Cache-Control": "no-store"})
