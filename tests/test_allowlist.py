"""CDS_ALLOWED_FHIR_SERVERS: a fhirServer outside it is never contacted; the call is answered from prefetch or 412."""

from __future__ import annotations

import re

import pytest
import responses

from cds_assertions import topics_of
from cds_service import create_app
from cds_service.errors import FhirNotAllowed
from cds_service.fhir.client import check_allowed
from cds_service.settings import Settings, SettingsError
from conftest import FIXTURE_NOW, load_fixture

ORDER_SELECT = "/cds-services/mtor-safety-order-select"
ALLOWED = ("https://ehr.example.org/fhir", "https://other-ehr.example.net:8443/r4/")


@pytest.mark.parametrize(
    "url",
    [
        "https://ehr.example.org/fhir",
        "https://ehr.example.org/fhir/",
        "https://EHR.Example.org/fhir",
        "https://ehr.example.org:443/fhir",
        "https://ehr.example.org/fhir/tenant-7",
        "https://other-ehr.example.net:8443/r4",
    ],
)
def test_servers_under_an_allowed_prefix_are_allowed(url):
    check_allowed(url, Settings(allowed_fhir_servers=ALLOWED))


@pytest.mark.parametrize(
    "url",
    [
        "https://ehr.example.org.evil.com/fhir",  # the prefix as a subdomain of another host
        "https://ehr.example.org@evil.com/fhir",  # userinfo: the host is evil.com
        "https://evil.com@ehr.example.org/fhir",  # userinfo in front of the right host: still refused
        "https://ehr.example.org%40evil.com/fhir",
        "https://ehr.example.org/fhir/../admin",  # path traversal out of the prefix
        "https://ehr.example.org/fhir/%2e%2e/admin",
        "https://ehr.example.org/fhir/%2E%2E%2Fadmin",
        "https://ehr.example.org/fhir/..%2f..%2fadmin",
        "https://ehr.example.org/fhir/./x",
        "https://ehr.example.org/fhir\\..\\admin",
        "https://ehr.example.org/fhirevil",  # prefixes end on a segment boundary
        "https://ehr.example.org/fhi",
        "https://ehr.example.org/",
        "https://ehr.example.org:8443/fhir",  # another port is another server
        "http://ehr.example.org/fhir",  # the scheme is part of the prefix (and http is not allowed)
        "https://ehr.example.org/fhir?_format=json",
        "https://ehr.example.org/fhir#x",
        "https://ehr.example.org:99999/fhir",
        "https://ehr.example.org/fh ir",
        "https://ehr.example.org/fhir\n",
        "https://[::1/fhir",
        "ftp://ehr.example.org/fhir",
        "https:///fhir",
        "https://other-ehr.example.net/r4",  # default port, not 8443
        "https://еhr.example.org/fhir",  # Cyrillic "е"
        # What HAPI/Jetty resolve outside the base: ;path-parameters, encoded dots and slashes, double
        # encoding, and case variants of the base path (issue 11).
        "https://ehr.example.org/fhir/..;/admin",
        "https://ehr.example.org/fhir;x=1/../admin",
        "https://ehr.example.org/fhir/;/Patient",
        "https://ehr.example.org/fhir/%2e%2e;/admin",
        "https://ehr.example.org/fhir/%252e%252e/admin",
        "https://ehr.example.org/fhir/%252E%252E%252Fadmin",
        "https://ehr.example.org/fhir/Patient%2f..%2f..%2fadmin",
        "https://ehr.example.org/fhir/%5c..%5cadmin",
        "https://ehr.example.org/fhir/.%2e/admin",
        "https://ehr.example.org/FHIR",
        "https://ehr.example.org/Fhir/Patient",
        "https://other-ehr.example.net:8443/R4",
    ],
)
def test_prefix_trickery_is_refused(url):
    with pytest.raises(FhirNotAllowed):
        check_allowed(url, Settings(allowed_fhir_servers=ALLOWED))


@pytest.mark.parametrize("url", ["http://localhost:8080/fhir", "http://127.0.0.1/fhir", "http://[::1]:9/fhir", "https://any.example.com/fhir"])
def test_without_an_allowlist_any_https_or_loopback_server_is_allowed(url):
    check_allowed(url, Settings())


@pytest.mark.parametrize("url", ["http://ehr.example.org/fhir", "http://localhost.evil.com/fhir", "http://127.0.0.1@evil.com/fhir", "http://10.0.0.5/fhir"])
def test_without_an_allowlist_plain_http_is_refused_except_loopback(url):
    with pytest.raises(FhirNotAllowed):
        check_allowed(url, Settings())


def test_an_http_prefix_that_is_not_loopback_stops_the_start():
    with pytest.raises(SettingsError, match="CDS_ALLOWED_FHIR_SERVERS"):
        Settings.from_env({"CDS_ALLOWED_FHIR_SERVERS": "https://ok.example.org/fhir,http://ehr.example.org/fhir"})


# --- end to end: a refused server is never contacted -----------------------------------------------


@pytest.fixture
def fhir():
    """Every URL answers, so a call that should not happen would succeed (and be recorded)."""
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        rsps.add(responses.GET, re.compile(r".*"), json={"resourceType": "Bundle", "type": "searchset", "entry": []})
        yield rsps


def call_to(fhir_server: str, prefetch_keys: tuple[str, ...] | None) -> dict:
    body = load_fixture("fires-cyp3a4-clarithromycin-order-select.json")
    body["prefetch"] = {k: v for k, v in body["prefetch"].items() if prefetch_keys is None or k in prefetch_keys}
    body["fhirServer"] = fhir_server
    body["fhirAuthorization"] = {"access_token": "secret-token", "token_type": "Bearer", "expires_in": 300, "scope": "x", "subject": "y"}
    return body


REFUSED = [
    "https://evil.example.com/fhir",
    "https://ehr.example.org.evil.com/fhir",
    "https://ehr.example.org@evil.com/fhir",
    "https://ehr.example.org/fhir/../admin",
    "http://ehr.example.org/fhir",
]


@pytest.mark.parametrize("server", REFUSED)
def test_a_refused_server_with_full_prefetch_is_answered_from_prefetch(client, fhir, server):
    response = client.post(ORDER_SELECT, json=call_to(server, prefetch_keys=None))
    assert response.status_code == 200
    assert topics_of(response.get_json()) == ["cyp3a4-interaction"]
    assert not fhir.calls


@pytest.mark.parametrize("server", REFUSED)
def test_a_refused_server_with_partial_prefetch_says_what_was_not_checked(client, fhir, server):
    response = client.post(ORDER_SELECT, json=call_to(server, prefetch_keys=("medications", "patient")))
    assert response.status_code == 200
    body = response.get_json()
    assert topics_of(body) == ["cyp3a4-interaction", "checks-incomplete"]
    assert "allowlist" in body["cards"][1]["detail"]
    assert not fhir.calls


@pytest.mark.parametrize("server", REFUSED)
def test_a_refused_server_without_prefetched_medications_is_412(client, fhir, server):
    response = client.post(ORDER_SELECT, json=call_to(server, prefetch_keys=("patient",)))
    assert response.status_code == 412
    assert response.get_json(force=True)["resourceType"] == "OperationOutcome"
    assert not fhir.calls


def test_an_allowed_server_is_contacted(client, fhir):
    response = client.post(ORDER_SELECT, json=call_to("https://ehr.example.org/fhir", prefetch_keys=("medications",)))
    assert response.status_code == 200
    assert fhir.calls and all(c.request.url.startswith("https://ehr.example.org/fhir/") for c in fhir.calls)


@pytest.mark.parametrize("server, contacted", [("http://127.0.0.1:8081/fhir", True), ("http://localhost/fhir", True), ("http://ehr.example.org/fhir", False)])
def test_https_is_required_except_for_loopback(tmp_path, fhir, server, contacted):
    app = create_app(require_jwt=False, database_url=f"sqlite:///{tmp_path}/cards.sqlite3")
    app.extensions["mtor_cds"].clock = lambda: FIXTURE_NOW
    response = app.test_client().post(ORDER_SELECT, json=call_to(server, prefetch_keys=("medications",)))
    assert response.status_code == 200
    assert bool(fhir.calls) is contacted


def test_an_allowlist_entry_with_path_parameters_or_encodings_stops_the_start():
    for prefix in ("https://ehr.example.org/fhir;jsessionid=1", "https://ehr.example.org/fhir%2fr4"):
        with pytest.raises(SettingsError, match="plain base URL"):
            Settings.from_env({"CDS_ALLOWED_FHIR_SERVERS": prefix})


def test_the_https_or_loopback_rule_is_written_once():
    """Settings, the FHIR client and the trusted-issuers file all ask settings.is_secure_url."""
    import inspect

    from cds_service import auth, settings
    from cds_service.fhir import client

    assert settings.is_secure_url("https://x.example/f") and settings.is_secure_url("http://[::1]:9/f")
    assert not settings.is_secure_url("http://x.example/f") and not settings.is_secure_url("http://localhost.evil.com/")
    for module in (auth, client):
        source = inspect.getsource(module)
        assert "is_secure_url" in source and "is_loopback_host" not in source, module.__name__


def test_a_scheme_in_upper_case_is_an_https_url(client, fhir):
    """Found by the EHR-integration audit: "HTTPS://ehr.example.org/fhir" (RFC 3986: schemes are case-insensitive) was a
    400 for the whole call, its prefetch unread."""
    response = client.post(ORDER_SELECT, json=call_to("HTTPS://ehr.example.org/fhir", prefetch_keys=("medications",)))
    assert response.status_code == 200, response.get_data(as_text=True)
    assert fhir.calls and all(c.request.url.startswith("https://ehr.example.org/fhir/") for c in fhir.calls)
