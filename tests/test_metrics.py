"""Prometheus metrics: /metrics, what each request counts, bounded labels, per-app registries, multiprocess mode."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import responses
from prometheus_client.parser import text_string_to_metric_families

from cds_service import create_app, metrics
from tests.conftest import ROOT, load_fixture

FHIR = "https://ehr.example.org/fhir"


@pytest.fixture
def metered_app(app):
    metrics.init_app(app)  # a no-op once create_app() calls it itself
    return app


@pytest.fixture
def metered_client(metered_app):
    return metered_app.test_client()


def samples(client) -> dict[tuple[str, frozenset], float]:
    """Every sample of /metrics as {(name, frozenset(labels)): value}."""
    response = client.get("/metrics")
    assert response.status_code == 200
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.get_data(as_text=True))
        for sample in family.samples
    }


def value(found: dict, name: str, **labels) -> float:
    return found.get((name, frozenset(labels.items())), 0.0)


def test_metrics_endpoint_serves_the_prometheus_text_format(metered_client):
    response = metered_client.get("/metrics")
    assert response.status_code == 200
    assert response.content_type.startswith("text/plain; version=")
    text = response.get_data(as_text=True)
    for name in ("mtor_cds_requests", "mtor_cds_request_duration_seconds", "mtor_cds_cards",
                 "mtor_cds_fhir_queries", "mtor_cds_fhir_query_duration_seconds"):
        assert f"# TYPE {name}" in text


def test_a_hook_call_counts_its_service_status_latency_and_cards(metered_client):
    body = load_fixture("fires-cyp3a4-clarithromycin-order-select.json")
    assert metered_client.post("/cds-services/mtor-safety-order-select", json=body).status_code == 200

    found = samples(metered_client)
    service = "mtor-safety-order-select"
    assert value(found, "mtor_cds_requests_total", endpoint="cds.call_service", service=service, status="200") == 1
    assert value(found, "mtor_cds_request_duration_seconds_count", endpoint="cds.call_service", service=service) == 1
    assert value(found, "mtor_cds_request_duration_seconds_sum", endpoint="cds.call_service", service=service) > 0
    assert value(found, "mtor_cds_cards_total", service=service, topic="cyp3a4-interaction", indicator="critical") == 1
    # Everything was prefetched: no FHIR query was made.
    assert not any(name == "mtor_cds_fhir_queries_total" for name, _ in found)


def test_errors_are_counted_by_status_without_the_unknown_service_id(metered_client):
    assert metered_client.post("/cds-services/no-such-service", json={}).status_code == 404
    assert metered_client.post(
        "/cds-services/mtor-safety-patient-view", data=b"{not json", content_type="application/json"
    ).status_code == 400
    assert metered_client.get("/nowhere").status_code == 404

    found = samples(metered_client)
    assert value(found, "mtor_cds_requests_total", endpoint="cds.call_service", service="", status="404") == 1
    assert value(
        found, "mtor_cds_requests_total", endpoint="cds.call_service", service="mtor-safety-patient-view", status="400"
    ) == 1
    assert value(found, "mtor_cds_requests_total", endpoint="unmatched", service="", status="404") == 1
    assert not any("no-such-service" in str(labels) for _, labels in found)


def test_fhir_queries_are_counted_by_resource_type_and_outcome(metered_client):
    body = load_fixture("fires-cyp3a4-clarithromycin-order-select.json")
    medications = body["prefetch"]["medications"]
    body["prefetch"] = {"patient": body["prefetch"]["patient"]}  # everything else is fetched
    body["fhirServer"] = FHIR
    body["fhirAuthorization"] = {"access_token": "t", "token_type": "Bearer", "scope": "patient/*.read", "subject": "cds"}
    empty = {"resourceType": "Bundle", "type": "searchset", "entry": []}
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        mock.get(f"{FHIR}/MedicationRequest", json=medications)
        mock.get(f"{FHIR}/Observation", status=503)
        for resource_type in ("Condition", "Procedure", "ServiceRequest", "Appointment"):
            mock.get(f"{FHIR}/{resource_type}", json=empty)
        assert metered_client.post("/cds-services/mtor-safety-order-select", json=body).status_code == 200

    found = samples(metered_client)
    assert value(found, "mtor_cds_fhir_queries_total", resource_type="MedicationRequest", outcome="ok") == 1
    assert value(found, "mtor_cds_fhir_queries_total", resource_type="Observation", outcome="http-503") == 1
    assert value(found, "mtor_cds_fhir_queries_total", resource_type="Condition", outcome="ok") == 1
    assert value(found, "mtor_cds_fhir_query_duration_seconds_count", resource_type="MedicationRequest") == 1


def test_labels_never_carry_ids_or_free_text():
    assert metrics.fhir_resource_type_label("MedicationRequest") == "MedicationRequest"
    assert metrics.fhir_resource_type_label("pt-cyp-1") == "other"  # the id of a read such as Patient/pt-cyp-1
    assert metrics.fhir_resource_type_label("12345") == "other"
    assert metrics.fhir_outcome_label("http-503") == "http-503"
    assert metrics.fhir_outcome_label("deadline passed") == "deadline-passed"
    assert metrics.fhir_outcome_label("expected a Bundle, got Patient") == "error"


def test_a_broken_log_field_never_breaks_the_answer(metered_app):
    # Simulates an api change that records a field in a shape this module does not know.
    @metered_app.get("/odd")
    def odd():
        from flask import g

        g.log_fields.update(cards=[["x"]], fhir_queries="garbage", service=object())
        return "ok"

    client = metered_app.test_client()
    assert client.get("/odd").status_code == 200
    found = samples(client)
    assert value(found, "mtor_cds_requests_total", endpoint="odd", service="other", status="200") == 1


def test_each_app_counts_on_its_own_registry(tmp_path):
    apps = [create_app(require_jwt=False, database_url=f"sqlite:///{tmp_path}/cards{i}.sqlite3") for i in range(3)]
    for app in apps:
        metrics.init_app(app)
        metrics.init_app(app)  # idempotent: no second route, no double counting
    apps[0].test_client().get("/cds-services")
    apps[0].test_client().get("/cds-services")
    apps[1].test_client().get("/cds-services")
    counts = [
        value(samples(app.test_client()), "mtor_cds_requests_total", endpoint="cds.discovery", service="", status="200")
        for app in apps
    ]
    assert counts == [2, 1, 0]


def test_multiprocess_mode_adds_up_every_process(tmp_path):
    """Two worker processes each answer a call; a third process's /metrics shows both."""
    directory = tmp_path / "prometheus"
    script = textwrap.dedent(
        f"""
        import sys
        from cds_service import create_app, metrics
        app = create_app(require_jwt=False, database_url="sqlite:///{tmp_path}/cards.sqlite3")
        metrics.init_app(app)
        client = app.test_client()
        if sys.argv[1] == "call":
            assert client.get("/cds-services").status_code == 200
        else:
            sys.stdout.write(client.get("/metrics").get_data(as_text=True))
        """
    )
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory), "PYTHONPATH": str(ROOT)}
    for mode in ("call", "call", "scrape"):
        done = subprocess.run(
            [sys.executable, "-c", script, mode], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False
        )
        assert done.returncode == 0, done.stderr
    found = {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(done.stdout)
        for sample in family.samples
    }
    assert value(found, "mtor_cds_requests_total", endpoint="cds.discovery", service="", status="200") == 2
    assert len(list(directory.glob("*.db"))) >= 2



def test_a_call_refused_before_routing_is_still_counted(tmp_path):
    app = create_app(require_jwt=True, database_url=f"sqlite:///{tmp_path}/cards.sqlite3")
    metrics.init_app(app)
    client = app.test_client()
    assert client.post("/cds-services/mtor-safety-patient-view", json={}).status_code == 401
    found = samples(client)
    assert value(found, "mtor_cds_requests_total", endpoint="cds.call_service", service="", status="401") == 1
    assert value(found, "mtor_cds_request_duration_seconds_count", endpoint="cds.call_service", service="") == 1


def test_labels_come_only_from_fixed_sets(metered_client):
    """A `next` link's path, an unknown service id or an odd indicator never makes a new series."""
    body = load_fixture("fires-cyp3a4-clarithromycin-order-select.json")
    medications = dict(body["prefetch"]["medications"])
    medications["link"] = [{"relation": "next", "url": f"{FHIR}/ZzUnlikelyPath?page=2"}]
    body["prefetch"] = {"patient": body["prefetch"]["patient"]}
    body["fhirServer"] = FHIR
    body["fhirAuthorization"] = {"access_token": "t", "token_type": "Bearer", "scope": "patient/*.read", "subject": "cds"}
    empty = {"resourceType": "Bundle", "type": "searchset", "entry": []}
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        mock.get(f"{FHIR}/MedicationRequest", json=medications)
        mock.get(f"{FHIR}/ZzUnlikelyPath", json=empty)
        for resource_type in ("Observation", "Condition", "Procedure", "ServiceRequest", "Appointment"):
            mock.get(f"{FHIR}/{resource_type}", json=empty)
        metered_client.post("/cds-services/mtor-safety-order-select", json=body)
    found = samples(metered_client)
    label_values = {v for _, labels in found for _, v in labels}
    assert not any("ZzUnlikelyPath" in v for v in label_values)
    assert value(found, "mtor_cds_fhir_queries_total", resource_type="other", outcome="ok") == 1

    app_metrics = metered_client.application.extensions[metrics.EXTENSION_KEY]
    known = frozenset(metered_client.application.extensions["mtor_cds"].services)
    app_metrics.observe("cds.call_service", 200, 0.01, {"service": "made-up-service", "cards": [["t", "urgent"]]}, known)
    found = samples(metered_client)
    assert value(found, "mtor_cds_requests_total", endpoint="cds.call_service", service="other", status="200") == 1
    assert value(found, "mtor_cds_cards_total", service="other", topic="t", indicator="other") == 1
    assert not any("made-up-service" in str(labels) or "urgent" in str(labels) for _, labels in found)


def test_fixed_label_sets_cover_what_the_service_queries_and_every_client_outcome():
    from cds_service.fhir.client import QueryOutcome
    from tests.conftest import TYPE_OF_PREFETCH_KEY

    assert set(TYPE_OF_PREFETCH_KEY.values()) | {"Medication"} <= metrics.FHIR_RESOURCE_TYPES
    for outcome in QueryOutcome:
        assert metrics.fhir_outcome_label(outcome) == outcome.value.replace(" ", "-")
    assert metrics.fhir_outcome_label("http-999") == "error"


def test_a_metrics_directory_someone_else_can_write_is_refused(tmp_path, monkeypatch):
    shared = tmp_path / "metrics"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)
    with pytest.raises(RuntimeError, match="writable only by it"):
        metrics._check_private_directory(str(shared))
    fresh = tmp_path / "fresh"
    metrics._check_private_directory(str(fresh))
    assert (fresh.stat().st_mode & 0o777) == 0o700
