"""CORS: browser EHRs preflight every call (it carries Authorization and a JSON body); preflight needs no JWT."""

from __future__ import annotations

import pytest

from cds_service import create_app

PREFLIGHT = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization, content-type"}
PATHS = ["/cds-services", "/cds-services/mtor-safety-patient-view", "/cds-services/mtor-safety-order-sign/feedback"]


def make_client(tmp_path, **overrides):
    app = create_app(**{"require_jwt": True, "database_url": f"sqlite:///{tmp_path}/cards.sqlite3", **overrides})
    return app.test_client()


def allowed_headers(response) -> set[str]:
    return {h.strip().lower() for h in response.headers["Access-Control-Allow-Headers"].split(",")}


@pytest.mark.parametrize("path", PATHS)
def test_preflight_is_204_with_cors_headers_and_needs_no_jwt(tmp_path, path):
    client = make_client(tmp_path)  # JWT required, and no token is sent
    response = client.options(path, headers={"Origin": "https://ehr.example.org", **PREFLIGHT})
    assert response.status_code == 204
    assert response.get_data() == b""
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    assert {"GET", "POST", "OPTIONS"} <= {m.strip() for m in response.headers["Access-Control-Allow-Methods"].split(",")}
    assert {"authorization", "content-type"} <= allowed_headers(response)
    assert int(response.headers["Access-Control-Max-Age"]) > 0


def test_configured_origins_are_echoed_and_others_get_no_cors_headers(tmp_path):
    client = make_client(tmp_path, cors_origins=("https://ehr.example.org", "https://sandbox.example.net"))
    allowed = client.options("/cds-services", headers={"Origin": "https://sandbox.example.net", **PREFLIGHT})
    assert allowed.status_code == 204
    assert allowed.headers["Access-Control-Allow-Origin"] == "https://sandbox.example.net"
    assert "Origin" in allowed.headers["Vary"]
    refused = client.options("/cds-services", headers={"Origin": "https://evil.example.com", **PREFLIGHT})
    assert "Access-Control-Allow-Origin" not in refused.headers


def test_cors_origins_come_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("CDS_CORS_ORIGINS", "https://a.example.org, https://b.example.org")
    client = make_client(tmp_path)
    response = client.options("/cds-services", headers={"Origin": "https://b.example.org", **PREFLIGHT})
    assert response.headers["Access-Control-Allow-Origin"] == "https://b.example.org"
    assert "Access-Control-Allow-Origin" not in client.options("/cds-services", headers={"Origin": "https://c.example.org"}).headers


def test_actual_responses_carry_cors_headers_so_a_browser_can_read_them(tmp_path):
    client = make_client(tmp_path)
    unauthorised = client.get("/cds-services", headers={"Origin": "https://ehr.example.org"})
    assert unauthorised.status_code == 401
    assert unauthorised.headers["Access-Control-Allow-Origin"] == "*"
    # a browser script may read why: the 401's reason is in WWW-Authenticate, which CORS hides unless exposed
    assert "www-authenticate" in unauthorised.headers["Access-Control-Expose-Headers"].lower()
    assert unauthorised.headers["WWW-Authenticate"].startswith("Bearer")
    bad = make_client(tmp_path, require_jwt=False).post(
        "/cds-services/mtor-safety-patient-view", data=b"{", content_type="application/json", headers={"Origin": "https://ehr.example.org"}
    )
    assert bad.status_code == 400 and bad.headers["Access-Control-Allow-Origin"] == "*"


def test_no_origin_no_cors_headers(tmp_path):
    response = make_client(tmp_path, require_jwt=False).get("/cds-services")
    assert "Access-Control-Allow-Origin" not in response.headers


def test_preflight_of_an_unknown_path_is_404(tmp_path):
    response = make_client(tmp_path).options("/nope", headers={"Origin": "https://ehr.example.org", **PREFLIGHT})
    assert response.status_code == 404
