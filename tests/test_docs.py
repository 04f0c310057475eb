"""The README and docs/integrating.md checked against the code: the commands they give run as written (or at
least parse), and every default or behaviour they state is the one the code has."""

from __future__ import annotations

import re
import shlex

import pytest

from cds_assertions import topics_of
from cds_service import cli
from cds_service.devkit import dates
from cds_service.devkit.fixtures import FIXTURE_ID_SYSTEM
from cds_service.settings import Settings
from conftest import FIXTURES, ROOT, SCENARIOS

README = (ROOT / "README.md").read_text(encoding="utf-8")
INTEGRATING = (ROOT / "docs" / "integrating.md").read_text(encoding="utf-8")
CI_RUN = (ROOT / ".ci" / "run").read_text(encoding="utf-8")


def section(document: str, heading: str) -> str:
    start = document.index(heading)
    following = document.find("\n## ", start + len(heading))
    return document[start: following if following >= 0 else None]


def sh_blocks(text: str) -> list[str]:
    return [block.replace("\\\n", " ").strip() for block in re.findall(r"```sh\n(.*?)```", text, re.S)]


def mtor_cds_commands(text: str) -> list[list[str]]:
    """The arguments of every `mtor-cds ...` command in the document's sh blocks (env prefixes, redirections and &
    dropped)."""
    commands = []
    for block in sh_blocks(text):
        for line in block.splitlines():
            line = line.split(" #")[0].strip()
            for part in re.split(r"&&|\|", line):
                words = shlex.split(part.replace(" &", ""), comments=True)
                if "mtor-cds" in words:
                    args = words[words.index("mtor-cds") + 1:]
                    if ">" in args:
                        args = args[:args.index(">")]
                    commands.append(args)
    return commands


# --- README: first contact ------------------------------------------------------------------------


def test_readme_set_up_is_two_commands_in_a_virtualenv_and_ci_runs_the_test_one_as_written():
    install_and_serve, run_tests = sh_blocks(section(README, "## Set up"))
    venv = "python3 -m venv .venv && . .venv/bin/activate && "
    assert install_and_serve == venv + "pip install . && mtor-cds serve"
    assert run_tests == venv + "pip install '.[test]' && python -m pytest"
    ci_commands = [line for line in CI_RUN.splitlines() if line and not line.startswith(("#", " "))]
    assert ci_commands[-1] == run_tests  # the last thing CI does is the README's test command, character for character


def test_readme_first_try_is_trial_mode_so_the_first_request_is_not_a_401():
    first = sh_blocks(section(README, "## Try it"))[0]
    assert first.startswith("CDS_REQUIRE_JWT=false mtor-cds serve")
    assert Settings().require_jwt is True  # the default stays secure: trial mode is asked for, never assumed


def test_readme_curl_example_answers_what_the_readme_says_on_the_real_clock(tmp_path):
    """The curl example sends the fixture as written, on today's clock: its card must not depend on the date."""
    from cds_service import create_app

    curl = next(b for b in sh_blocks(section(README, "## Try it")) if "mtor-safety-order-select" in b)
    fixture = re.search(r"--data @(\S+)", curl).group(1)
    service = re.search(r"/cds-services/(\S+)", curl).group(1)
    app = create_app(require_jwt=False, database_url=f"sqlite:///{tmp_path}/cards.sqlite3")
    body = app.test_client().post(f"/cds-services/{service}", data=(ROOT / fixture).read_bytes(),
                                  content_type="application/json").get_json()
    assert "It answers a `critical` card, topic `cyp3a4-interaction`" in README
    assert topics_of(body) == ["cyp3a4-interaction"] and body["cards"][0]["indicator"] == "critical"
    assert "suggestion that deletes the draft clarithromycin" in README
    assert body["cards"][0]["suggestions"][0]["actions"][0]["type"] == "delete"


@pytest.mark.parametrize("document", ["README.md", "docs/integrating.md"])
def test_every_mtor_cds_command_in_the_docs_parses(document):
    commands = mtor_cds_commands((ROOT / document).read_text(encoding="utf-8"))
    assert len(commands) >= 2
    parser = cli.build_parser()
    for args in commands:
        parser.parse_args(args)  # argparse exits (SystemExit 2) on an option or value the CLI does not have


# --- docs/integrating.md: each stated default and behaviour -------------------------------------------


def test_integrating_names_the_four_services_discovery_lists(client):
    listed = set(re.findall(r"`(mtor-safety-[a-z-]+)`", section(INTEGRATING, "## 1. Discovery")))
    discovered = {s["id"] for s in client.get("/cds-services").get_json()["services"]}
    assert listed == discovered and len(discovered) == 4 and "lists four services" in INTEGRATING


def test_integrating_medications_are_required_or_412(client):
    assert "The medications are required" in INTEGRATING
    services = client.get("/cds-services").get_json()["services"]
    assert all("medications" in s["prefetch"] for s in services)
    body = {"hook": "patient-view", "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
            "fhirServer": "https://ehr.example.org/fhir", "context": {"userId": "Practitioner/1", "patientId": "p1"}}
    import responses

    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        mock.add(responses.GET, re.compile(r"https://ehr\.example\.org/fhir/.*"), status=503)
        assert client.post("/cds-services/mtor-safety-patient-view", json=body).status_code == 412


def test_integrating_cors_is_open_by_default():
    assert "CORS is open by default: `CDS_CORS_ORIGINS`" in INTEGRATING
    assert Settings().cors_origins == ("*",)


def test_integrating_fhir_server_must_be_https_or_loopback():
    from cds_service.errors import FhirNotAllowed
    from cds_service.fhir.client import check_allowed

    assert "Only `https` is accepted, plain `http` only on loopback" in INTEGRATING
    check_allowed("https://ehr.example.org/fhir/r4", Settings())
    check_allowed("http://127.0.0.1:8090/fhir", Settings())
    with pytest.raises(FhirNotAllowed):
        check_allowed("http://ehr.example.org/fhir/r4", Settings())


def test_integrating_call_exit_statuses_and_token_variable():
    assert "A non-200 answer exits with status 1" in INTEGRATING and cli.EXIT_HTTP_ERROR == 1
    assert "is refused (status 2)" in INTEGRATING and cli.EXIT_USAGE == 2
    assert "serve` on a port already in use exits with status 1" in INTEGRATING and cli.EXIT_FAILED == 1
    assert f"environment variable `{cli.FHIR_TOKEN_VARIABLE}`" in INTEGRATING


def test_integrating_page_limit_is_the_services_default():
    match = re.search(r"no more than `CDS_FHIR_MAX_PAGES` pages \(default (\d+)\)", INTEGRATING)
    assert int(match.group(1)) == Settings().fhir_max_pages


def test_integrating_fixture_identifier_and_reference_day_are_the_codes():
    assert f"system `{FIXTURE_ID_SYSTEM}`" in INTEGRATING
    assert "`now` in\n`fhir_fixtures/scenarios.json`" in INTEGRATING or "`now` in `fhir_fixtures/scenarios.json`" in INTEGRATING
    assert dates.reference_day(FIXTURES).isoformat() == SCENARIOS["now"][:10]


def test_integrating_jwt_aud_is_the_exact_url_called(monkeypatch):
    from cds_service.devkit import transport

    assert "The JWT's `aud` is the exact URL called" in INTEGRATING
    seen = []
    monkeypatch.setattr(transport.requests, "post", lambda url, **kw: seen.append((url, kw)) or _Answer())
    transport.post_hook({}, "mtor-safety-order-sign", "http://127.0.0.1:8080/", lambda url: seen.append(url) or "t")
    assert seen[0] == "http://127.0.0.1:8080/cds-services/mtor-safety-order-sign" == seen[1][0]


class _Answer:
    status_code, content = 200, b"{}"


def test_services_table_and_discovery_descriptions_agree_on_the_order_hooks_focus(client):
    descriptions = {s["id"]: s["description"] for s in client.get("/cds-services").get_json()["services"]}
    services = section(README, "## Services")
    assert "findings that rest on a *selected* draft order" in services
    assert "findings that rest on a selected order" in descriptions["mtor-safety-order-select"]
    assert "findings that rest on any draft order or the current record" in services
    assert "on the current record and all draft orders" in descriptions["mtor-safety-order-sign"]


def test_integrating_a_server_off_the_allowlist_is_answered_from_prefetch_with_an_info_card(call_hook):
    from conftest import load_fixture

    assert "A call naming another server is answered from prefetch alone, with an\n`info` card" in INTEGRATING
    body = load_fixture("fires-cyp3a4-clarithromycin-order-select.json")
    body["fhirServer"] = "https://other.example.com/fhir"  # the app allows only https://ehr.example.org/fhir
    del body["prefetch"]["conditions"]
    cards = call_hook(body).get_json()["cards"]
    assert [(c["source"]["topic"]["code"], c["indicator"]) for c in cards] == [
        ("cyp3a4-interaction", "critical"), ("checks-incomplete", "info")]
