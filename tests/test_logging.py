"""Logs: one JSON line per request, and never a token, a JWT or anything that identifies the patient."""

from __future__ import annotations

import io
import json
import logging
import re

import pytest
import requests
import responses

from cds_service import create_app
from cds_service.observability import REQUEST_LOGGER
from conftest import FIXTURE_NOW, load_fixture
from jwt_helpers import bearer, cds_claims, jwk_from_key, jwks_of, make_ec_key, sign_jwt

BASE = "https://ehr.example.org/fhir"
PATIENT_ID = "pt-secret-4242"
ACCESS_TOKEN = "at-9f8e7d6c5b4a-SECRET"
NAME, MRN, BIRTH_DATE = "Zyxwvutsky", "MRN-778899", "1961-07-13"
ISSUER, KID = "https://ehr.example.org", "ehr-key-1"
SERVICE_PATH = "/cds-services/mtor-safety-order-select"


def identifying_call() -> tuple[dict, dict]:
    """The clarithromycin call for a patient with a distinctive id, name, MRN and birth date; and its prefetch."""
    text = json.dumps(load_fixture("fires-cyp3a4-clarithromycin-order-select.json"))
    body = json.loads(text.replace("pt-cyp-1", PATIENT_ID))
    patient = body["prefetch"]["patient"]
    patient.update(name=[{"family": NAME, "given": ["Quentina"]}], identifier=[{"system": "urn:mrn", "value": MRN}], birthDate=BIRTH_DATE)
    return body, body.pop("prefetch")


@pytest.fixture
def service_log():
    """Everything the service's own JSON handlers write (they hold sys.stderr from the app's start)."""
    stream = io.StringIO()
    handlers = [h for name in ("mtor_cds", "cds_service") for h in logging.getLogger(name).handlers if getattr(h, "_mtor_cds", False)]
    previous = [h.setStream(stream) for h in handlers]
    yield stream
    for handler, old in zip(handlers, previous, strict=True):
        handler.setStream(old)


@pytest.fixture
def apps(tmp_path):
    key = make_ec_key("ES384")
    issuers = tmp_path / "issuers.json"
    issuers.write_text(json.dumps({"issuers": {ISSUER: {"jwks": jwks_of(jwk_from_key(key, KID, "ES384"))}}}))
    common = {"allowed_fhir_servers": (BASE,), "fhir_deadline_s": 3.0, "database_url": f"sqlite:///{tmp_path}/cards.sqlite3"}
    open_app = create_app(require_jwt=False, **common)
    jwt_app = create_app(require_jwt=True, trusted_issuers=str(issuers), **common)
    for app in (open_app, jwt_app):
        app.extensions["mtor_cds"].clock = lambda: FIXTURE_NOW
    return open_app.test_client(), jwt_app.test_client(), key


def run_everything(open_client, jwt_client, key) -> tuple[list[str], list[int]]:
    """A full run through the paths that could leak; returns the secrets it used and the statuses it got."""
    call, prefetch = identifying_call()
    fallback = {**call, "fhirServer": BASE, "fhirAuthorization": {"access_token": ACCESS_TOKEN, "token_type": "Bearer"}}
    with responses.RequestsMock(assert_all_requests_are_fired=False) as fhir:
        types = {"patient": "Patient", "medications": "MedicationRequest", "observations": "Observation", "conditions": "Condition",
                 "procedures": "Procedure", "serviceRequests": "ServiceRequest", "appointments": "Appointment"}
        faults = {"observations": {"body": requests.Timeout(f"timeout for {PATIENT_ID}")}, "conditions": {"status": 503, "body": f"down for {NAME}"}}
        for key_name, resource_type in types.items():
            fhir.add(responses.GET, re.compile(re.escape(f"{BASE}/{resource_type}") + ".*"), **faults.get(key_name, {"json": prefetch[key_name]}))
        statuses = [open_client.post(SERVICE_PATH, json=fallback).status_code]  # fallback fetch with faults
        assert fhir.calls and all(c.request.headers["Authorization"] == f"Bearer {ACCESS_TOKEN}" for c in fhir.calls)

    jwt = sign_jwt(key, KID, "ES384", cds_claims(ISSUER, "http://localhost" + SERVICE_PATH))
    statuses.append(jwt_client.post(SERVICE_PATH, json={**call, "prefetch": prefetch}, headers={"Authorization": bearer(jwt)}).status_code)
    bad_jwt = sign_jwt(make_ec_key("ES384"), KID, "ES384", cds_claims(ISSUER, "http://localhost" + SERVICE_PATH, patient=PATIENT_ID))
    statuses.append(jwt_client.post(SERVICE_PATH, json=call, headers={"Authorization": bearer(bad_jwt)}).status_code)

    refused = {**call, "fhirServer": "https://evil.example.com/fhir", "fhirAuthorization": {"access_token": ACCESS_TOKEN}}
    statuses.append(open_client.post(SERVICE_PATH, json=refused).status_code)  # 412: nothing prefetched, server refused

    garbage = {**call, "hookInstance": {"patient": PATIENT_ID, "name": NAME}, "fhirAuthorization": {"access_token": [ACCESS_TOKEN]}}
    statuses.append(open_client.post(SERVICE_PATH, json=garbage).status_code)
    statuses.append(open_client.post(SERVICE_PATH, data=f'{{"{PATIENT_ID}": "{MRN}'.encode(), content_type="application/json").status_code)
    return [ACCESS_TOKEN, jwt, bad_jwt, PATIENT_ID, NAME, "Quentina", MRN, BIRTH_DATE], statuses


def test_no_secret_or_patient_data_reaches_any_log(apps, service_log, caplog, capsys):
    caplog.set_level(logging.DEBUG)
    secrets, statuses = run_everything(*apps)
    assert statuses == [200, 200, 401, 412, 400, 400]
    captured = capsys.readouterr()
    everything = "\n".join([service_log.getvalue(), caplog.text, captured.out, captured.err, *(r.getMessage() for r in caplog.records)])
    everything += "\n".join(json.dumps(getattr(r, "fields", None), default=str) for r in caplog.records)
    assert service_log.getvalue().count("\n") >= len(statuses)  # the handler did write: the check is not vacuous
    for secret in secrets:
        assert secret not in everything, f"{secret[:12]}... leaked into the logs"
    for part in secrets[1].split(".")[:2]:  # not even the JWT's header or claims
        assert part not in everything


def test_one_json_line_per_request_with_what_operations_need(apps, service_log):
    open_client, _, _ = apps
    call, prefetch = identifying_call()
    del prefetch["conditions"]
    fallback = {**call, "prefetch": prefetch, "fhirServer": BASE, "fhirAuthorization": {"access_token": ACCESS_TOKEN}}
    with responses.RequestsMock() as fhir:
        fhir.add(responses.GET, re.compile(re.escape(f"{BASE}/Condition") + ".*"), status=503)
        assert open_client.post(SERVICE_PATH, json=fallback).status_code == 200
    open_client.get("/cds-services")
    open_client.get("/healthz")  # probes are not logged

    lines = [json.loads(line) for line in service_log.getvalue().splitlines()]
    requests_logged = [line for line in lines if line["logger"] == REQUEST_LOGGER]
    assert len(requests_logged) == 2
    hook_call, discovery = requests_logged
    assert hook_call["service"] == "mtor-safety-order-select" and hook_call["hook"] == "order-select"
    assert hook_call["hookInstance"] == call["hookInstance"]
    assert hook_call["status"] == 200 and hook_call["duration_ms"] >= 0
    assert hook_call["cards"] == [["cyp3a4-interaction", "critical"], ["checks-incomplete", "info"]]
    [(resource_type, outcome, ms)] = hook_call["fhir_queries"]
    assert (resource_type, outcome) == ("Condition", "http-503") and ms >= 0
    assert re.fullmatch(r"[0-9a-f]{32}", hook_call["patient"])
    assert discovery["path"] == "/cds-services" and discovery["status"] == 200


def test_a_patient_read_is_logged_by_type_not_by_id(apps, service_log):
    open_client, _, _ = apps
    call, prefetch = identifying_call()
    del prefetch["patient"]
    fallback = {**call, "prefetch": prefetch, "fhirServer": BASE, "fhirAuthorization": {"access_token": ACCESS_TOKEN}}
    with responses.RequestsMock() as fhir:
        fhir.add(responses.GET, f"{BASE}/Patient/{PATIENT_ID}", json={"resourceType": "Patient", "id": PATIENT_ID})
        assert open_client.post(SERVICE_PATH, json=fallback).status_code == 200
    [hook_call] = [json.loads(line) for line in service_log.getvalue().splitlines() if REQUEST_LOGGER in line]
    assert [q[:2] for q in hook_call["fhir_queries"]] == [["Patient", "ok"]]
    assert PATIENT_ID not in service_log.getvalue()


def test_errors_are_logged_by_type_only(apps, service_log, monkeypatch):
    open_client, _, _ = apps

    def explode(*args, **kwargs):
        raise ValueError(f"cannot read {NAME} born {BIRTH_DATE}")

    monkeypatch.setattr("cds_service.api.answer_hook", explode)
    call, prefetch = identifying_call()
    assert open_client.post(SERVICE_PATH, json={**call, "prefetch": prefetch}).status_code == 500
    text = service_log.getvalue()
    assert "ValueError" in text and NAME not in text and BIRTH_DATE not in text and "Traceback" not in text
    [request_line] = [json.loads(line) for line in text.splitlines() if REQUEST_LOGGER in line]
    assert request_line["status"] == 500 and request_line["error"] == "ValueError"


def test_a_refused_jwt_logs_one_line_with_its_reason_and_the_401_says_it_never_the_token(apps, service_log):
    _, jwt_client, key = apps
    expired = sign_jwt(key, KID, "ES384", cds_claims(ISSUER, "http://localhost" + SERVICE_PATH, iat=1_000_000_000, exp=1_000_000_300))
    unknown_kid = sign_jwt(key, "no-such-kid", "ES384", cds_claims(ISSUER, "http://localhost" + SERVICE_PATH))
    cases = [
        (expired, "expired"),
        (unknown_kid, "unknown kid"),
        (sign_jwt(key, KID, "ES384", cds_claims("https://evil.example", "http://localhost" + SERVICE_PATH)), "unknown issuer"),
        (sign_jwt(key, KID, "ES384", cds_claims(ISSUER, "https://other-deployment.example" + SERVICE_PATH)), "aud mismatch"),
    ]
    for token, reason in cases:
        service_log.seek(0)
        service_log.truncate()
        response = jwt_client.post(SERVICE_PATH, json={}, headers={"Authorization": bearer(token)})
        assert response.status_code == 401 and response.get_data() == b""
        assert response.headers["WWW-Authenticate"] == f'Bearer error="invalid_token", error_description="{reason}"'
        lines = [json.loads(line) for line in service_log.getvalue().splitlines()]
        refused = [line for line in lines if line.get("auth_failure")]
        assert len(refused) == 1 and refused[0]["auth_failure"] == reason and refused[0]["status"] == 401
        assert token not in service_log.getvalue() and token.split(".")[2] not in service_log.getvalue()
    response = jwt_client.get("/cds-services")
    assert response.status_code == 401 and response.headers["WWW-Authenticate"] == "Bearer"
