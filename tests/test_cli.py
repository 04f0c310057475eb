"""The `mtor-cds` subcommands, in process: report, call (readable, JSON, signed), dev-key, fixtures load."""

from __future__ import annotations

import json
import re
import sys
from datetime import datetime, timedelta, timezone

import jwt
import pytest
import responses

from cds_service.cli import main
from cds_service.devkit import signing
from cds_service.settings import Settings
from cds_service.store import CardRecord, CardStore, FeedbackEntry
from conftest import FIXTURE_NOW, FIXTURES, load_fixture

FHIR = "https://fhir.test/r4"
T0 = datetime(2026, 11, 2, 9, 0, tzinfo=timezone.utc)
CLARITHROMYCIN = str(FIXTURES / "fires-cyp3a4-clarithromycin-order-select.json")
FIXTURE_DAY = FIXTURE_NOW.date().isoformat()  # --as-of the day the fixtures were written for: dates as written


@pytest.fixture(autouse=True)
def cds_environment(monkeypatch, tmp_path):
    """Each test gets its own card store and no settings from the machine running the tests."""
    for name in ("CDS_TRUSTED_ISSUERS", "CDS_PUBLIC_BASE_URL", "CDS_ALLOWED_FHIR_SERVERS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CDS_DATABASE_URL", f"sqlite:///{tmp_path / 'cards.sqlite3'}")
    monkeypatch.setenv("CDS_REQUIRE_JWT", "false")
    monkeypatch.chdir(tmp_path)


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# --- report -------------------------------------------------------------------------------------


@pytest.fixture
def recorded_cards(tmp_path):
    store = CardStore.from_url(f"sqlite:///{tmp_path / 'cards.sqlite3'}")
    store.migrate()
    override_reasons = (("https://mtor-cds.org/override", "benefit-outweighs-risk"),)
    store.record_cards([
        CardRecord(uuid=f"c{n}", service_id="mtor-safety-order-select", hook="order-select",
                   topic="cyp3a4-interaction", indicator="critical", hook_instance=f"h{n}", patient_hash="0" * 64,
                   trigger_key="MedicationRequest/draft-clari-1", issued_at=T0 + timedelta(days=n),
                   topic_display="CYP3A4 interaction", suggestion_ids=("s1",), override_reasons=override_reasons)
        for n in range(4)
    ] + [
        CardRecord(uuid="v0", service_id="mtor-safety-order-sign", hook="order-sign", topic="live-vaccine",
                   indicator="warning", hook_instance="hv", patient_hash="1" * 64,
                   trigger_key="MedicationRequest/draft-mmr-4", issued_at=T0 + timedelta(days=20),
                   topic_display="Live vaccine", suggestion_ids=("s2",))
    ])
    store.flush()
    store.record_feedback("mtor-safety-order-select", "", [
        FeedbackEntry("c0", "accepted", T0 + timedelta(days=1), accepted_suggestions=("s1",)),
        FeedbackEntry("c1", "overridden", T0 + timedelta(days=2), reason_code="benefit-outweighs-risk",
                      reason_system="https://mtor-cds.org/override", reason_display="Benefit outweighs risk",
                      user_comment="Short course; trough in 5 days"),
    ])
    store.close()


def topic_rows(out: str) -> dict[str, list[str]]:
    """The outcomes table: topic -> its nine numbers (the footnote under the table is not a row)."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("Topic ")) + 1
    cells = [re.split(r"\s{2,}", line) for line in lines[start:lines.index("", start)]]
    return {row[0]: row[1:] for row in cells if len(row) == 10}


def test_report_prints_outcomes_per_topic_with_totals_and_override_reasons(capsys, recorded_cards):
    code, out, _ = run(capsys, "report")
    assert code == 0
    rows = topic_rows(out)
    # issued, suppressed, with feedback, coverage, offered a suggestion, accepted, acceptance, overridden, override rate
    assert rows["CYP3A4 interaction"] == ["4", "0", "2", "50.0%", "4", "1", "25.0%", "1", "25.0%"]
    assert rows["Live vaccine"] == ["1", "0", "0", "0.0%", "1", "0", "0.0%", "0", "0.0%"]
    assert rows["Total"] == ["5", "0", "2", "40.0%", "5", "1", "20.0%", "1", "20.0%"]
    assert "Benefit outweighs risk [benefit-outweighs-risk]" in out
    assert "    - Short course; trough in 5 days" in out


def test_report_period_includes_the_until_day_and_excludes_the_rest(capsys, recorded_cards):
    code, out, _ = run(capsys, "report", "--since", "2026-11-03", "--until", "2026-11-04")
    assert code == 0
    assert list(topic_rows(out)) == ["CYP3A4 interaction", "Total"]
    assert topic_rows(out)["Total"][0] == "2"  # the cards of 3 and 4 November


def test_report_for_an_empty_period_says_so_and_writes_html(capsys, recorded_cards, tmp_path):
    code, out, err = run(capsys, "report", "--since", "2027-01-01", "--html", str(tmp_path / "r.html"))
    assert code == 0
    assert out == "No cards were issued in this period.\n"
    assert "<h1>mtor-cds card outcomes</h1>" in (tmp_path / "r.html").read_text()
    assert "r.html" in err


def test_report_html_without_the_report_extra_says_how_to_install_it(capsys, recorded_cards, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # as if matplotlib were not installed
    code, out, err = run(capsys, "report", "--html", str(tmp_path / "r.html"))
    assert code == 2
    assert out == ""
    assert "pip install 'mtor-cds[report]'" in err
    assert not (tmp_path / "r.html").exists()


def test_report_refuses_a_date_it_cannot_read(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["report", "--since", "last tuesday"])
    assert exit_info.value.code == 2
    assert "not an ISO date" in capsys.readouterr().err


# --- call ---------------------------------------------------------------------------------------


def test_call_in_process_prints_cards_readably(capsys):
    code, out, _ = run(capsys, "call", "order-select", "--patient", CLARITHROMYCIN)
    assert code == 0
    assert out.startswith("[1] CRITICAL: ")
    assert "topic: cyp3a4-interaction" in out
    assert "suggestion (recommended): Remove the draft order for clarithromycin" in out
    assert "- delete MedicationRequest/draft-clari-1" in out
    assert "source: afinitor" in out.lower()


def test_call_json_prints_the_raw_response(capsys):
    code, out, _ = run(capsys, "call", "order-select", "--patient", CLARITHROMYCIN, "--json")
    assert code == 0
    body = json.loads(out)
    assert [c["source"]["topic"]["code"] for c in body["cards"]] == ["cyp3a4-interaction"]
    assert body["cards"][0]["suggestions"][0]["actions"][0]["resourceId"] == "MedicationRequest/draft-clari-1"


def test_call_with_a_synthea_bundle_of_a_patient_on_no_mtor_inhibitor_prints_no_cards(capsys):
    synthea = sorted((FIXTURES / "synthea").glob("*.json"))[0]
    code, out, _ = run(capsys, "call", "patient-view", "--patient", str(synthea))
    assert (code, out) == (0, "No cards.\n")


@pytest.fixture
def patient_bundle_and_draft(tmp_path):
    """The clarithromycin fixture split as an integrator has it: the patient's record, and the order."""
    fixture = load_fixture("fires-cyp3a4-clarithromycin-order-select.json")
    record = [fixture["prefetch"]["patient"]]
    for value in fixture["prefetch"].values():
        if value.get("resourceType") == "Bundle":
            record += [e["resource"] for e in value.get("entry", [])]
    stopped = {**record[1], "id": "mr-old", "status": "stopped"}  # not "active": must stay out of prefetch
    bundle = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": r} for r in [*record, stopped]]}
    (tmp_path / "patient.json").write_text(json.dumps(bundle))
    draft = fixture["context"]["draftOrders"]["entry"][0]["resource"]
    (tmp_path / "draft.json").write_text(json.dumps(draft))
    return str(tmp_path / "patient.json"), str(tmp_path / "draft.json")


def test_call_from_a_patient_bundle_and_a_draft_file_builds_prefetch(capsys, patient_bundle_and_draft):
    patient, draft = patient_bundle_and_draft
    code, out, _ = run(capsys, "call", "order-select", "--patient", patient, "--draft", draft,
                       "--select", "MedicationRequest/draft-clari-1", "--json")
    assert code == 0, out
    assert [c["indicator"] for c in json.loads(out)["cards"]] == ["critical"]


def test_request_built_from_a_patient_bundle_matches_the_prefetch_templates(patient_bundle_and_draft, app):
    from cds_service.devkit.hook_request import draft_orders_bundle, read_json, request_from_fixture

    patient, draft = patient_bundle_and_draft
    templates = app.extensions["mtor_cds"].services["mtor-safety-order-select"].prefetch
    body = request_from_fixture("order-select", read_json(patient), templates, draft_orders=draft_orders_bundle(read_json(draft)))
    assert body["context"]["patientId"] == "pt-cyp-1"
    assert body["context"]["selections"] == ["MedicationRequest/draft-clari-1"]  # every draft, by default
    assert body["context"]["draftOrders"]["type"] == "collection"
    assert body["prefetch"]["patient"]["resourceType"] == "Patient"
    assert [e["resource"]["id"] for e in body["prefetch"]["medications"]["entry"]] == ["mr-eve-1"]  # stopped left out
    assert [e["resource"]["resourceType"] for e in body["prefetch"]["conditions"]["entry"]] == ["Condition"]
    fixture_observations = load_fixture("fires-cyp3a4-clarithromycin-order-select.json")["prefetch"]["observations"]
    assert [e["resource"]["id"] for e in body["prefetch"]["observations"]["entry"]] == [
        e["resource"]["id"] for e in fixture_observations.get("entry", [])
    ]  # the template's LOINC codes choose the same observations the fixture's prefetch holds
    assert set(body["prefetch"]) == set(templates)


def test_call_order_select_without_drafts_is_a_usage_error(capsys):
    code, _, err = run(capsys, "call", "order-select", "--patient", str(FIXTURES / "fires-trough-high-patient-view.json"))
    assert code == 2
    assert "order-select needs draft orders" in err


def test_call_selecting_an_unknown_draft_is_a_usage_error(capsys):
    code, _, err = run(capsys, "call", "order-select", "--patient", CLARITHROMYCIN, "--select", "MedicationRequest/nope")
    assert code == 2
    assert "MedicationRequest/nope" in err


def test_call_http_error_exits_non_zero_with_the_diagnostics(capsys):
    # No prefetch and a FHIR server that refuses connections: the medications cannot be had (412).
    code, out, err = run(capsys, "call", "patient-view", "--patient", "pt-1", "--fhir", "http://127.0.0.1:9/fhir")
    assert code == 1
    assert out == ""
    assert "HTTP 412: required data could not be prefetched or fetched: medications" in err


def test_call_patient_id_without_fhir_server_is_a_usage_error(capsys):
    code, _, err = run(capsys, "call", "patient-view", "--patient", "pt-1")
    assert code == 2 and "needs --fhir" in err


# --- dev-key and signing ------------------------------------------------------------------------

ISSUER = "https://ehr.example.test"


@pytest.fixture
def dev_key(capsys, tmp_path):
    code, out, err = run(capsys, "dev-key", "--issuer", ISSUER, "--out", str(tmp_path / "key.pem"))
    assert code == 0, err
    (tmp_path / "trusted.json").write_text(out)
    return tmp_path / "key.pem", tmp_path / "trusted.json"


def test_dev_key_prints_a_public_only_trusted_issuers_file(dev_key):
    pem, trusted = dev_key
    document = json.loads(trusted.read_text())
    (jwk,) = document["issuers"][ISSUER]["jwks"]["keys"]
    assert jwk["kty"] == "EC" and jwk["crv"] == "P-384" and jwk["alg"] == "ES384" and "d" not in jwk
    assert pem.stat().st_mode & 0o077 == 0  # the private key is readable by its owner only
    assert b"PRIVATE KEY" in pem.read_bytes()


def test_dev_key_never_overwrites_a_key(capsys, dev_key):
    pem, _ = dev_key
    before = pem.read_bytes()
    code, _, err = run(capsys, "dev-key", "--issuer", ISSUER, "--out", str(pem))
    assert code == 2 and "exists" in err
    assert pem.read_bytes() == before


def test_signed_call_is_accepted_when_the_service_requires_jwt(capsys, monkeypatch, dev_key):
    pem, trusted = dev_key
    monkeypatch.setenv("CDS_REQUIRE_JWT", "true")
    monkeypatch.setenv("CDS_TRUSTED_ISSUERS", str(trusted))
    monkeypatch.setenv("CDS_ALLOWED_FHIR_SERVERS", "http://127.0.0.1:8090/fhir")  # required with JWT
    code, out, err = run(capsys, "call", "order-select", "--patient", CLARITHROMYCIN,
                         "--sign-key", str(pem), "--issuer", ISSUER, "--json")
    assert code == 0, err
    assert json.loads(out)["cards"][0]["source"]["topic"]["code"] == "cyp3a4-interaction"


def test_unsigned_or_wrongly_signed_call_is_refused(capsys, monkeypatch, dev_key, tmp_path):
    _, trusted = dev_key
    monkeypatch.setenv("CDS_REQUIRE_JWT", "true")
    monkeypatch.setenv("CDS_TRUSTED_ISSUERS", str(trusted))
    monkeypatch.setenv("CDS_ALLOWED_FHIR_SERVERS", "http://127.0.0.1:8090/fhir")  # required with JWT
    code, _, err = run(capsys, "call", "order-select", "--patient", CLARITHROMYCIN)
    assert code == 1 and "HTTP 401" in err
    other = tmp_path / "other.pem"
    other.write_bytes(signing.generate_private_key_pem())
    code, _, err = run(capsys, "call", "order-select", "--patient", CLARITHROMYCIN, "--sign-key", str(other), "--issuer", ISSUER)
    assert code == 1 and "HTTP 401" in err


def test_request_jwt_has_the_claims_cds_hooks_requires(dev_key):
    pem, trusted = dev_key
    key = signing.load_private_key(pem.read_bytes())
    url = "http://127.0.0.1:8080/cds-services/mtor-safety-order-sign"
    token = signing.sign_request_jwt(key, ISSUER, url, now=1_800_000_000)
    header = jwt.get_unverified_header(token)
    (jwk,) = json.loads(trusted.read_text())["issuers"][ISSUER]["jwks"]["keys"]
    assert header == {"alg": "ES384", "typ": "JWT", "kid": jwk["kid"]}
    claims = jwt.decode(token, jwt.PyJWK(jwk).key, algorithms=["ES384"], audience=url,
                        options={"verify_exp": False, "verify_iat": False})
    assert claims["iss"] == ISSUER and claims["aud"] == url
    assert claims["exp"] - claims["iat"] == 300 and claims["iat"] == 1_800_000_000
    assert signing.sign_request_jwt(key, ISSUER, url) != signing.sign_request_jwt(key, ISSUER, url)  # fresh jti


def test_signing_refuses_a_key_that_is_not_p384(tmp_path, capsys):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    p256 = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    (tmp_path / "p256.pem").write_bytes(p256)
    code, _, err = run(capsys, "call", "order-select", "--patient", CLARITHROMYCIN,
                       "--sign-key", str(tmp_path / "p256.pem"), "--issuer", ISSUER)
    assert code == 2 and "P-384" in err


# --- fixtures load ------------------------------------------------------------------------------


def transaction_response(request):
    bundle = json.loads(request.body)
    entries = [{"response": {"status": "200 OK" if e["request"]["method"] == "PUT" else "201 Created"}}
               for e in bundle["entry"]]
    return 200, {}, json.dumps({"resourceType": "Bundle", "type": "transaction-response", "entry": entries})


@responses.activate
def test_fixtures_load_puts_each_fixture_patient_and_posts_synthea_as_is(capsys):
    responses.add_callback(responses.POST, FHIR, callback=transaction_response)
    code, out, err = run(capsys, "fixtures", "load", "--fhir", FHIR, "--dir", str(FIXTURES), "--as-of", FIXTURE_DAY)
    assert code == 0, err
    hook_fixtures = sorted(p.name for p in FIXTURES.glob("*-*.json"))
    synthea = sorted(p.name for p in (FIXTURES / "synthea").glob("*.json"))
    patients = [load_fixture(n)["context"]["patientId"] for n in hook_fixtures]
    assert out.splitlines() == [f"loaded {n}: Patient/{p}" for n, p in zip(hook_fixtures, patients, strict=True)] + [
        f"loaded synthea/{n}" for n in synthea]  # the mock's answers carry no location: no server-chosen id to show
    bodies = [json.loads(call.request.body) for call in responses.calls]
    assert len(bodies) == len(hook_fixtures) + len(synthea)
    vaccine = bodies[hook_fixtures.index("fires-live-vaccine-mmr-order-sign.json")]
    assert vaccine["type"] == "transaction"
    urls = [e["request"]["url"] for e in vaccine["entry"]]
    assert {"Patient/pt-vax-1", "MedicationRequest/mr-rapa-4", "Medication/rapa-1"} <= set(urls)
    assert {e["request"]["method"] for e in vaccine["entry"]} == {"PUT"}
    assert all(e["resource"]["id"] == e["request"]["url"].split("/")[1] for e in vaccine["entry"])
    assert len(urls) == len(set(urls))
    assert not any(e["resource"]["id"].startswith("draft-") for b in bodies[:len(hook_fixtures)] for e in b["entry"])
    assert bodies[len(hook_fixtures)] == json.loads((FIXTURES / "synthea" / synthea[0]).read_text())


@responses.activate
def test_fixtures_load_stops_on_a_refused_entry_naming_the_fixture(capsys):
    def refuse(request):
        bundle = json.loads(request.body)
        entries = [{"response": {"status": "400 Bad Request"}} for _ in bundle["entry"]]
        return 200, {}, json.dumps({"resourceType": "Bundle", "type": "transaction-response", "entry": entries})

    responses.add_callback(responses.POST, FHIR, callback=refuse)
    code, _, err = run(capsys, "fixtures", "load", "--fhir", FHIR, "--dir", str(FIXTURES))
    assert code == 1
    first_fixture = sorted(p.name for p in FIXTURES.glob("*-*.json"))[0]
    assert f"mtor-cds: {first_fixture}: " in err and "400 Bad Request" in err
    assert len(responses.calls) == 1


@responses.activate
def test_fixtures_load_reports_the_servers_operation_outcome(capsys):
    outcome = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "invalid", "diagnostics": "bad bundle"}]}
    responses.add(responses.POST, FHIR, json=outcome, status=422)
    code, _, err = run(capsys, "fixtures", "load", "--fhir", FHIR, "--dir", str(FIXTURES))
    assert code == 1 and "HTTP 422: bad bundle" in err


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_serve_is_still_a_subcommand(monkeypatch):
    started = {}
    port = free_port()  # serve checks the port is free before it claims to listen
    monkeypatch.setattr("flask.Flask.run", lambda self, **kw: started.update(kw))
    assert main(["serve", "--port", str(port)]) == 0
    assert started["port"] == port and started["host"] == "127.0.0.1"


# --- the kit with real servers: access token, same-server pages, unknown patient, other patient's draft ---------

TOKEN = "fhir-token-abc123"


def searchset(*resources, next_url: str | None = None) -> dict:
    bundle = {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": r} for r in resources]}
    if next_url:
        bundle["link"] = [{"relation": "next", "url": next_url}]
    return bundle


def mock_fhir_patient(patient_id: str = "pt-cyp-1", next_url: str | None = None) -> None:
    """A FHIR server holding one patient on everolimus; every other search answers an empty page."""
    fixture = load_fixture("fires-cyp3a4-clarithromycin-order-select.json")
    responses.get(f"{FHIR}/Patient/{patient_id}", json=fixture["prefetch"]["patient"])
    medications = [e["resource"] for e in fixture["prefetch"]["medications"]["entry"]]
    responses.get(f"{FHIR}/MedicationRequest", json=searchset(*medications, next_url=next_url))
    for resource_type in ("MedicationStatement", "Observation", "Condition", "Procedure", "ServiceRequest", "Appointment",
                          "Medication"):
        responses.get(f"{FHIR}/{resource_type}", json=searchset())


@responses.activate
@pytest.mark.parametrize("prefetch", [True, False], ids=["kit-prefetches", "service-fetches"])
def test_call_sends_the_fhir_token_from_the_environment_on_every_fhir_request(capsys, monkeypatch, prefetch):
    monkeypatch.setenv("MTOR_CDS_FHIR_TOKEN", TOKEN)
    monkeypatch.setenv("CDS_ALLOWED_FHIR_SERVERS", FHIR)
    mock_fhir_patient()
    code, out, err = run(capsys, "call", "patient-view", "--patient", "pt-cyp-1", "--fhir", FHIR, "--json",
                         *(["--prefetch"] if prefetch else []))
    assert code == 0, err
    assert isinstance(json.loads(out)["cards"], list)
    assert len(responses.calls) >= 2
    assert {call.request.headers.get("Authorization") for call in responses.calls} == {f"Bearer {TOKEN}"}
    assert TOKEN not in out + err


@responses.activate
def test_call_fhir_token_option_wins_over_the_environment(capsys, monkeypatch):
    monkeypatch.setenv("MTOR_CDS_FHIR_TOKEN", "from-environment")
    mock_fhir_patient()
    code, _, err = run(capsys, "call", "patient-view", "--patient", "pt-cyp-1", "--fhir", FHIR, "--prefetch",
                       "--fhir-token", TOKEN)
    assert code == 0, err
    assert {call.request.headers.get("Authorization") for call in responses.calls} == {f"Bearer {TOKEN}"}


@responses.activate
@pytest.mark.parametrize("next_url", [
    "https://other.test/r4/MedicationRequest?page=2",  # another host
    "http://fhir.test/r4/MedicationRequest?page=2",  # another scheme
    "https://fhir.test:8443/r4/MedicationRequest?page=2",  # another port
    "https://fhir.test/admin/MedicationRequest?page=2",  # outside the base path
])
def test_call_prefetch_follows_next_links_only_on_the_same_server(capsys, next_url):
    mock_fhir_patient(next_url=next_url)
    code, _, err = run(capsys, "call", "patient-view", "--patient", "pt-cyp-1", "--fhir", FHIR, "--prefetch",
                       "--fhir-token", TOKEN)
    assert code == 1
    assert "next link leaves the FHIR server" in err
    assert all(call.request.url.startswith(FHIR + "/") for call in responses.calls)  # the token went nowhere else


@responses.activate
def test_call_prefetch_stops_a_server_that_pages_forever(capsys):
    mock_fhir_patient()
    responses.replace(responses.GET, f"{FHIR}/MedicationRequest", json=searchset(next_url=f"{FHIR}/MedicationRequest?page=n"))
    code, _, err = run(capsys, "call", "patient-view", "--patient", "pt-cyp-1", "--fhir", FHIR, "--prefetch")
    assert code == 1 and f"the medications search has more than {Settings().fhir_max_pages} pages" in err  # as the service does
    assert len([c for c in responses.calls if "/MedicationRequest" in c.request.url]) == Settings().fhir_max_pages


@responses.activate
def test_call_for_a_patient_the_fhir_server_does_not_have_says_so(capsys):
    responses.get(f"{FHIR}/Patient/pt-nobody", status=404, json={"resourceType": "OperationOutcome", "issue": []})
    for prefetch in ([], ["--prefetch"]):
        code, out, err = run(capsys, "call", "patient-view", "--patient", "pt-nobody", "--fhir", FHIR, *prefetch)
        assert (code, out) == (1, "")
        assert "the FHIR server has no Patient/pt-nobody (HTTP 404" in err
        assert "No cards" not in out + err


@responses.activate
def test_call_refused_by_the_fhir_server_asks_for_a_token(capsys):
    responses.get(f"{FHIR}/Patient/pt-cyp-1", status=401)
    code, _, err = run(capsys, "call", "patient-view", "--patient", "pt-cyp-1", "--fhir", FHIR)
    assert code == 1 and "answered 401" in err and "--fhir-token" in err


def test_call_with_a_draft_order_for_another_patient_says_so(capsys, patient_bundle_and_draft, tmp_path):
    patient, draft = patient_bundle_and_draft
    other = json.loads((tmp_path / "draft.json").read_text())
    other["subject"] = {"reference": "Patient/pt-someone-else"}
    (tmp_path / "other-draft.json").write_text(json.dumps(other))
    code, out, err = run(capsys, "call", "order-select", "--patient", patient, "--draft", str(tmp_path / "other-draft.json"))
    assert (code, out) == (2, "")
    assert "draft order MedicationRequest/draft-clari-1 is for Patient/pt-someone-else, not Patient/pt-cyp-1" in err


@responses.activate
def test_fixtures_load_sends_the_fhir_token(capsys, monkeypatch):
    monkeypatch.setenv("MTOR_CDS_FHIR_TOKEN", TOKEN)
    responses.add_callback(responses.POST, FHIR, callback=transaction_response)
    code, _, err = run(capsys, "fixtures", "load", "--fhir", FHIR)
    assert code == 0, err
    assert {call.request.headers.get("Authorization") for call in responses.calls} == {f"Bearer {TOKEN}"}
    assert TOKEN not in err


@responses.activate
def test_fixtures_load_refused_for_want_of_a_token_says_so(capsys):
    responses.post(FHIR, status=401)
    code, _, err = run(capsys, "fixtures", "load", "--fhir", FHIR)
    assert code == 1 and "HTTP 401" in err and "--fhir-token" in err
    assert "--server-ids" not in err  # a question of access, not of ids


# --- fixtures load into a server that assigns its own ids ---------------------------------------------


def assigning_server():
    """A FHIR server that chooses every id: PUT to a type/id is refused; conditional updates create."""
    stored: dict[str, str] = {}  # fixture identifier -> server id

    def answer(request):
        bundle = json.loads(request.body)
        entries = []
        for entry in bundle["entry"]:
            method, url = entry["request"]["method"], entry["request"]["url"]
            resource_type = entry["resource"]["resourceType"]
            if method == "PUT" and "?" not in url:
                return 405, {}, json.dumps({"resourceType": "OperationOutcome", "issue": [
                    {"severity": "error", "code": "not-supported", "diagnostics": "client-assigned ids are not allowed"}]})
            key = url.split("?", 1)[1] if "?" in url else entry["fullUrl"]
            created = key not in stored
            stored.setdefault(key, f"srv-{len(stored) + 1}")
            entries.append({"response": {"status": "201 Created" if created else "200 OK",
                                         "location": f"{resource_type}/{stored[key]}/_history/1"}})
        return 200, {}, json.dumps({"resourceType": "Bundle", "type": "transaction-response", "entry": entries})

    return answer


@responses.activate
def test_fixtures_load_into_a_server_that_assigns_ids(capsys):
    responses.add_callback(responses.POST, FHIR, callback=assigning_server())
    code, _, err = run(capsys, "fixtures", "load", "--fhir", FHIR)
    assert code == 1 and "client-assigned ids are not allowed" in err and "--server-ids" in err

    responses.calls.reset()
    code, out, err = run(capsys, "fixtures", "load", "--fhir", FHIR, "--server-ids")
    assert code == 0, err
    first = out.splitlines()[0]
    assert first.startswith("loaded fires-angioedema-order-sign.json: Patient/srv-")
    vaccine = json.loads(responses.calls[sorted(p.name for p in FIXTURES.glob("*-*.json")).index(
        "fires-live-vaccine-mmr-order-sign.json")].request.body)
    full_url = {e["resource"]["identifier"][-1]["value"]: e["fullUrl"] for e in vaccine["entry"]}
    by_name = {e["resource"]["identifier"][-1]["value"]: e["resource"] for e in vaccine["entry"]}
    assert all(url.startswith("urn:uuid:") for url in full_url.values())
    assert all("id" not in resource for resource in by_name.values())
    order = by_name["MedicationRequest/mr-rapa-4"]
    assert order["subject"]["reference"] == full_url["Patient/pt-vax-1"]
    assert order["medicationReference"]["reference"] == full_url["Medication/rapa-1"]
    assert {e["request"]["method"] for e in vaccine["entry"]} == {"PUT"}
    assert vaccine["entry"][0]["request"]["url"].startswith(vaccine["entry"][0]["resource"]["resourceType"] + "?identifier=")

    again = run(capsys, "fixtures", "load", "--fhir", FHIR, "--server-ids")[1]
    assert again == out  # loading twice updates the same resources: the same ids


def test_fixtures_load_works_from_any_directory(capsys, monkeypatch, tmp_path):
    from cds_service.cli import default_fixture_dir

    monkeypatch.chdir(tmp_path)  # no fhir_fixtures/ here
    assert default_fixture_dir() == FIXTURES


def test_fixtures_load_moves_the_dates_to_today(capsys, monkeypatch):
    from cds_service.devkit import dates

    monkeypatch.setattr(dates, "today", lambda: FIXTURE_NOW.date() + timedelta(days=10))
    with responses.RequestsMock() as mock:
        mock.add_callback(responses.POST, FHIR, callback=transaction_response)
        code, _, err = run(capsys, "fixtures", "load", "--fhir", FHIR)
        bodies = [json.loads(call.request.body) for call in mock.calls]
    assert code == 0 and "dates moved by +10 days" in err
    hook_fixtures = sorted(p.name for p in FIXTURES.glob("*-*.json"))
    surgery = bodies[hook_fixtures.index("fires-surgery-planned-patient-view.json")]
    original = load_fixture("fires-surgery-planned-patient-view.json")
    (patient,) = [e["resource"] for e in surgery["entry"] if e["resource"]["resourceType"] == "Patient"]
    birth = datetime.fromisoformat(original["prefetch"]["patient"]["birthDate"])
    assert patient["birthDate"] == (birth + timedelta(days=10)).date().isoformat()


# --- first contact: version, busy port, missing report database, one-line errors ----------------------


def test_version_prints_the_package_version(capsys):
    import tomllib

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    expected = tomllib.loads((FIXTURES.parent / "pyproject.toml").read_text())["project"]["version"]
    assert exit_info.value.code == 0
    assert capsys.readouterr().out == f"mtor-cds {expected}\n"


@pytest.mark.parametrize("production", [[], ["--production"]], ids=["flask", "gunicorn"])
def test_serve_on_a_busy_port_exits_non_zero_without_claiming_to_listen(capsys, monkeypatch, production):
    import socket

    started = []
    monkeypatch.setattr("flask.Flask.run", lambda self, **kw: started.append(kw))
    monkeypatch.setattr("cds_service.production.run_gunicorn", lambda host, port: started.append(port) or 0)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        code, _, err = run(capsys, "serve", "--port", str(port), *production)
    assert code == 1 and started == []
    assert f"cannot listen on 127.0.0.1:{port}" in err and "listening" not in err


def test_report_on_a_missing_database_fails_without_creating_one(capsys, tmp_path, monkeypatch):
    missing = tmp_path / "nowhere" / "cards.sqlite3"
    monkeypatch.setenv("CDS_DATABASE_URL", f"sqlite:///{missing}")
    code, out, err = run(capsys, "report")
    assert (code, out) == (2, "")
    assert f"no card store at {missing}" in err
    monkeypatch.delenv("CDS_DATABASE_URL")  # the default: a file in the working directory (tmp_path, empty)
    code, _, err = run(capsys, "report")
    assert code == 2 and "no card store at mtor-cds.sqlite3" in err
    assert list(tmp_path.iterdir()) == []


def test_an_unexpected_failure_is_one_line_not_a_traceback(capsys, monkeypatch):
    def broken(*_args, **_kwargs):
        raise RuntimeError("knowledge exploded")

    monkeypatch.setattr("cds_service.create_app", broken)
    code, out, err = run(capsys, "call", "order-select", "--patient", CLARITHROMYCIN)
    assert (code, out) == (1, "")
    assert err.splitlines()[-1] == "mtor-cds: call failed: RuntimeError: knowledge exploded"
    assert "Traceback" not in err


def test_serve_with_jwt_required_and_no_trusted_issuer_says_how_to_try_it(capsys, monkeypatch):
    monkeypatch.setattr("flask.Flask.run", lambda self, **kw: None)
    monkeypatch.setenv("CDS_REQUIRE_JWT", "true")
    code, _, err = run(capsys, "serve", "--port", str(free_port()))
    assert code == 0
    assert "every call will be refused (401)" in err and "CDS_REQUIRE_JWT=false" in err
    monkeypatch.setenv("CDS_REQUIRE_JWT", "false")
    err = run(capsys, "serve", "--port", str(free_port()))[2]
    assert not [line for line in err.splitlines() if line.startswith("mtor-cds: no CDS_TRUSTED_ISSUERS")]


def test_a_bare_401_says_how_to_sign_or_try_without_jwt():
    from cds_service.devkit.output import format_error

    line = format_error(401, b"")
    assert line.startswith("HTTP 401: ") and "--sign-key" in line and "CDS_REQUIRE_JWT=false" in line
