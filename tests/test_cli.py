"""The `mtor-cds` subcommands, in process: report, call (readable, JSON, signed), dev-key, fixtures load."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import jwt
import pytest
import responses

from cds_service.cli import main
from cds_service.devkit import signing
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
    store.record_cards([
        CardRecord(uuid=f"c{n}", service_id="mtor-safety-order-select", hook="order-select",
                   topic="cyp3a4-interaction", indicator="critical", hook_instance=f"h{n}", patient_hash="0" * 64,
                   trigger_key="MedicationRequest/draft-clari-1", issued_at=T0 + timedelta(days=n))
        for n in range(4)
    ] + [
        CardRecord(uuid="v0", service_id="mtor-safety-order-sign", hook="order-sign", topic="live-vaccine",
                   indicator="warning", hook_instance="hv", patient_hash="1" * 64,
                   trigger_key="MedicationRequest/draft-mmr-4", issued_at=T0 + timedelta(days=20))
    ])
    store.flush()
    store.record_feedback("mtor-safety-order-select", [
        FeedbackEntry("c0", "accepted", T0 + timedelta(days=1), accepted_suggestions=("s1",)),
        FeedbackEntry("c1", "overridden", T0 + timedelta(days=2), reason_code="benefit-outweighs-risk",
                      reason_system="https://mtor-cds.org/override", reason_display="Benefit outweighs risk"),
    ])
    store.close()


def test_report_prints_outcomes_per_topic_with_override_reasons(capsys, recorded_cards):
    code, out, _ = run(capsys, "report")
    assert code == 0
    rows = {line.split()[0]: line.split() for line in out.split("\n\n")[0].splitlines()[1:]}
    assert rows["cyp3a4-interaction"] == ["cyp3a4-interaction", "critical", "4", "1", "1", "2", "50.0%"]
    assert rows["live-vaccine"] == ["live-vaccine", "warning", "1", "0", "0", "1", "-"]
    assert "Benefit outweighs risk [benefit-outweighs-risk]" in out.split("\n\n")[1]


def test_report_period_includes_the_until_day_and_excludes_the_rest(capsys, recorded_cards):
    code, out, _ = run(capsys, "report", "--since", "2026-11-03", "--until", "2026-11-04")
    assert code == 0
    (row,) = out.split("\n\n")[0].splitlines()[1:]
    assert row.split()[:3] == ["cyp3a4-interaction", "critical", "2"]  # the cards of 3 and 4 November


def test_report_for_an_empty_period_says_so_and_writes_html(capsys, recorded_cards, tmp_path):
    code, out, err = run(capsys, "report", "--since", "2027-01-01", "--html", str(tmp_path / "r.html"))
    assert code == 0
    assert out == "No cards were issued in this period.\n"
    assert "<h1>mtor-cds card outcomes</h1>" in (tmp_path / "r.html").read_text()
    assert "r.html" in err


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
    assert "source: Afinitor" in out


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
    code, out, err = run(capsys, "call", "order-select", "--patient", CLARITHROMYCIN,
                         "--sign-key", str(pem), "--issuer", ISSUER, "--json")
    assert code == 0, err
    assert json.loads(out)["cards"][0]["source"]["topic"]["code"] == "cyp3a4-interaction"


def test_unsigned_or_wrongly_signed_call_is_refused(capsys, monkeypatch, dev_key, tmp_path):
    _, trusted = dev_key
    monkeypatch.setenv("CDS_REQUIRE_JWT", "true")
    monkeypatch.setenv("CDS_TRUSTED_ISSUERS", str(trusted))
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
    assert out.splitlines() == [f"loaded {n}: Patient/{p}" for n, p in zip(hook_fixtures, patients)] + [
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


def test_serve_is_still_a_subcommand(monkeypatch):
    started = {}
    monkeypatch.setattr("flask.Flask.run", lambda self, **kw: started.update(kw))
    assert main(["serve", "--port", "8181"]) == 0
    assert started["port"] == 8181 and started["host"] == "127.0.0.1"
