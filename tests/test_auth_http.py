"""The JWT over HTTP: every /cds-services call needs a trusted token whose aud is the exact URL called."""

from __future__ import annotations

import json

import pytest

from cds_service import create_app
from cds_service.settings import SettingsError
from conftest import FIXTURE_NOW, load_fixture
from jwt_helpers import bearer, cds_claims, jwk_from_key, jwks_of, make_ec_key, sign_jwt

ISSUER = "https://ehr.example.org"
KID = "ehr-key-1"
LOCAL = "http://localhost"
CALL = load_fixture("fires-cyp3a4-clarithromycin-order-select.json")
FEEDBACK = {"feedback": [{"card": "0d8b4d3e-6b1f-4b8e-9c1a-2f3e4d5c6b7a", "outcome": "overridden", "outcomeTimestamp": "2026-11-23T12:00:00Z"}]}
ENDPOINTS = [
    ("GET", "/cds-services", None),
    ("POST", "/cds-services/mtor-safety-order-select", CALL),
    ("POST", "/cds-services/mtor-safety-order-select/feedback", FEEDBACK),
]


@pytest.fixture(scope="module")
def key():
    return make_ec_key("ES384")


def make_client(tmp_path, key, **overrides):
    issuers = tmp_path / "trusted-issuers.json"
    issuers.write_text(json.dumps({"issuers": {ISSUER: {"jwks": jwks_of(jwk_from_key(key, KID, "ES384"))}}}))
    app = create_app(
        require_jwt=True,
        trusted_issuers=str(issuers),
        database_url=f"sqlite:///{tmp_path}/cards.sqlite3",
        **{"allowed_fhir_servers": ("https://ehr.example.org/fhir",), **overrides},
    )
    app.extensions["mtor_cds"].clock = lambda: FIXTURE_NOW
    return app.test_client()


@pytest.fixture
def client(tmp_path, key):
    return make_client(tmp_path, key)


def token(key, aud: str, **claims) -> str:
    return sign_jwt(key, KID, "ES384", cds_claims(ISSUER, aud, **claims))


def send(client, method: str, path: str, body, authorization: str | None = None, **kwargs):
    headers = {"Authorization": authorization} if authorization else {}
    return client.open(path, method=method, json=body, headers=headers, **kwargs)


def assert_bare_401(response) -> None:
    assert response.status_code == 401
    assert response.get_data() == b""


@pytest.mark.parametrize("method, path, body", ENDPOINTS[:2])
def test_a_good_token_is_let_in(client, key, method, path, body):
    response = send(client, method, path, body, bearer(token(key, LOCAL + path)))
    assert response.status_code == 200, response.get_data(as_text=True)


def test_a_good_token_is_let_in_to_feedback(client, key):
    path = "/cds-services/mtor-safety-order-select"
    card = send(client, "POST", path, CALL, bearer(token(key, LOCAL + path))).get_json()["cards"][0]
    assert client.application.extensions["mtor_cds"].store.flush()
    feedback = {"feedback": [{**FEEDBACK["feedback"][0], "card": card["uuid"]}]}
    response = send(client, "POST", path + "/feedback", feedback, bearer(token(key, LOCAL + path + "/feedback")))
    assert response.status_code == 200, response.get_data(as_text=True)


@pytest.mark.parametrize("method, path, body", ENDPOINTS)
def test_no_token_is_a_bare_401(client, method, path, body):
    assert_bare_401(send(client, method, path, body))


@pytest.mark.parametrize("method, path, body", ENDPOINTS)
@pytest.mark.parametrize(
    "authorization",
    ["Bearer", "Bearer not-a-jwt", "Basic dXNlcjpwYXNz", "Bearer a.b.c", "Bearer " + "x" * 10_000],
    ids=["empty", "opaque", "basic", "garbage-jwt", "huge"],
)
def test_a_malformed_token_is_a_bare_401(client, method, path, body, authorization):
    assert_bare_401(send(client, method, path, body, authorization))


@pytest.mark.parametrize("method, path, body", ENDPOINTS)
def test_a_token_from_an_untrusted_key_is_a_bare_401(client, method, path, body):
    stranger = make_ec_key("ES384")
    assert_bare_401(send(client, method, path, body, bearer(token(stranger, LOCAL + path))))


@pytest.mark.parametrize("method, path, body", ENDPOINTS)
def test_an_expired_token_is_a_bare_401(client, key, method, path, body):
    expired = token(key, LOCAL + path, iat=1_000_000_000, exp=1_000_000_300)
    assert_bare_401(send(client, method, path, body, bearer(expired)))


@pytest.mark.parametrize(
    "aud",
    [
        LOCAL + "/cds-services",  # discovery's URL used for a service call
        LOCAL + "/cds-services/mtor-safety-patient-view",  # another service
        LOCAL + "/cds-services/mtor-safety-order-select/",  # trailing slash
        "https://localhost/cds-services/mtor-safety-order-select",  # another scheme
        "http://localhost:8080/cds-services/mtor-safety-order-select",  # another port
        LOCAL,
    ],
)
def test_aud_must_be_the_exact_url_called(client, key, aud):
    path = "/cds-services/mtor-safety-order-select"
    assert_bare_401(send(client, "POST", path, CALL, bearer(token(key, aud))))


def test_aud_may_be_a_list_holding_the_url_called(client, key):
    path = "/cds-services/mtor-safety-order-select"
    response = send(client, "POST", path, CALL, bearer(token(key, ["https://other.example.org", LOCAL + path])))
    assert response.status_code == 200


def test_a_replayed_token_is_a_bare_401(client, key):
    path = "/cds-services"
    once = bearer(token(key, LOCAL + path))
    assert send(client, "GET", path, None, once).status_code == 200
    assert_bare_401(send(client, "GET", path, None, once))


def test_public_base_url_is_the_audience_behind_a_proxy(tmp_path, key):
    client = make_client(tmp_path, key, public_base_url="https://cds.example.org/mtor")
    path = "/cds-services/mtor-safety-order-select"
    good = bearer(token(key, "https://cds.example.org/mtor" + path))
    assert send(client, "POST", path, CALL, good).status_code == 200
    assert_bare_401(send(client, "POST", path, CALL, bearer(token(key, LOCAL + path))))


def test_the_host_called_is_the_audience_without_public_base_url(client, key):
    path = "/cds-services"
    response = send(client, "GET", path, None, bearer(token(key, "https://cds.example.org" + path)), base_url="https://cds.example.org")
    assert response.status_code == 200


def test_the_401_comes_before_any_input_check(client):
    """An unauthenticated caller learns nothing: not whether a service exists or what its body lacks."""
    assert_bare_401(client.post("/cds-services/no-such-service", data=b"{garbage", content_type="text/plain"))


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/openapi.yaml"])
def test_operations_endpoints_need_no_token(client, path):
    assert client.get(path).status_code == 200


@pytest.mark.parametrize(
    "headers",
    [
        {"X-Forwarded-Host": "cds.example.org", "X-Forwarded-Proto": "https"},
        {"X-Forwarded-Proto": "https"},
        {"Forwarded": "host=cds.example.org;proto=https"},
    ],
)
def test_forwarded_headers_never_make_the_audience(client, key, headers):
    """A token minted for another deployment (cds.example.org) must not pass by forging the proxy's headers."""
    path = "/cds-services"
    for aud in ("https://cds.example.org" + path, LOCAL + path):
        response = client.get(path, headers={"Authorization": bearer(token(key, aud)), **headers})
        assert_bare_401(response)
        assert "CDS_PUBLIC_BASE_URL" in response.headers["WWW-Authenticate"]


def test_with_public_base_url_forwarded_headers_are_ignored(tmp_path, key):
    client = make_client(tmp_path, key, public_base_url="https://cds.example.org/mtor")
    path = "/cds-services"
    forged = {"X-Forwarded-Host": "other.example.org", "Host": "other.example.org"}
    good = bearer(token(key, "https://cds.example.org/mtor" + path))
    assert client.get(path, headers={"Authorization": good, **forged}).status_code == 200
    assert_bare_401(client.get(path, headers={"Authorization": bearer(token(key, "https://other.example.org" + path)), **forged}))


def test_jwt_without_a_fhir_server_allowlist_refuses_to_start(tmp_path, key):
    """Otherwise a trusted caller could send the service, and the access token it hands over, to any host or port."""
    issuers = tmp_path / "trusted-issuers.json"
    issuers.write_text(json.dumps({"issuers": {ISSUER: {"jwks": jwks_of(jwk_from_key(key, KID, "ES384"))}}}))
    with pytest.raises(SettingsError, match="CDS_ALLOWED_FHIR_SERVERS: required when CDS_REQUIRE_JWT is true"):
        create_app(require_jwt=True, trusted_issuers=str(issuers), database_url=f"sqlite:///{tmp_path}/c.sqlite3")
    # Trials without JWT keep the open default (any https server or loopback).
    assert create_app(require_jwt=False, database_url=f"sqlite:///{tmp_path}/c.sqlite3")


def test_docs_list_exactly_the_refusal_reasons_and_the_header_the_service_sends():
    """docs/trusting-ehrs.md, "Why a call was refused", pinned to the code and to literal values."""
    from cds_service.auth import JWKS_FAILURE_RETRY_S, MAX_NUMERIC_DATE, AuthFailure, www_authenticate
    from cds_service.settings import Settings
    from conftest import ROOT

    doc = (ROOT / "docs" / "trusting-ehrs.md").read_text(encoding="utf-8")
    section = doc.split("## Why a call was refused", 1)[1].split("\n## ", 1)[0]
    documented = [line.split("|")[1].strip().strip("`") for line in section.splitlines() if line.startswith("| `")]
    assert documented == [reason.value for reason in AuthFailure]
    assert 'WWW-Authenticate: Bearer error="invalid_token", error_description="<reason>"' in section
    assert "`WWW-Authenticate: Bearer`" in section and "`auth_failure`" in section
    from cds_service.auth import TokenRefused

    assert www_authenticate(TokenRefused(AuthFailure.EXPIRED)) == 'Bearer error="invalid_token", error_description="expired"'
    assert www_authenticate(TokenRefused(AuthFailure.NO_TOKEN)) == "Bearer"
    # Documented literal defaults.
    assert JWKS_FAILURE_RETRY_S == 10 and "remembered for 10 s" in doc
    assert Settings().jwt_max_lifetime_s == 300 and "`CDS_JWT_MAX_LIFETIME_S` (default 300 s" in doc
    assert MAX_NUMERIC_DATE == 253402300799 and "253402300799" in doc
    assert "`ignore_jku`" in doc and "refuses to start without it" in doc
    assert "shared by every worker" in doc and "per process" not in doc.replace("\n", " ")
