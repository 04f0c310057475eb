"""Statements of README.md, docs/feedback.md and cds_service/knowledge/README.md checked against the code: the first
start's address and security, the allowlist rule, which code the benchmark and soak figures measured, the knowledge
files' indexing, the order-select focus and feedback UUID case."""

from __future__ import annotations

import logging
import re
import subprocess

import pytest

from cds_service import cli
from cds_service.settings import Settings, SettingsError
from conftest import ROOT
from snapshots import core_topics, everolimus, hook_request, med

README = (ROOT / "README.md").read_text(encoding="utf-8")
FLAT = " ".join(README.split())


def section(heading: str) -> str:
    text = README[README.index(heading):]
    end = text.find("\n## ", len(heading))
    return " ".join(text[:end if end >= 0 else None].split())


def test_the_first_start_listens_on_loopback_8080_and_refuses_unsigned_calls(tmp_path):
    assert "embedded defaults (http://127.0.0.1:8080, every call must carry a signed JWT)" in FLAT
    serve = cli.build_parser().parse_args(["serve"])
    assert (serve.host, serve.port) == (None, None) and (cli.DEFAULT_HOST, cli.DEFAULT_PORT) == ("127.0.0.1", 8080)
    from cds_service import create_app

    settings = Settings.from_env({})  # the fresh machine: no CDS_* at all; this must start
    assert settings.require_jwt is True
    app = create_app(database_url=f"sqlite:///{tmp_path}/cards.sqlite3", **{
        k: getattr(settings, k) for k in ("require_jwt", "trusted_issuers", "allowed_fhir_servers")})
    client = app.test_client()
    assert client.get("/healthz").status_code == 200
    assert client.post("/cds-services/mtor-safety-order-select", json={}).status_code == 401


def test_the_allowlist_is_required_only_once_an_issuer_is_trusted(tmp_path):
    """README settings row: required when JWT is verified and CDS_TRUSTED_ISSUERS is set (it said "when JWT is verified",
    yet the embedded defaults, JWT on and no issuer, start without it: every call is a 401 then)."""
    assert ("Required when JWT is verified and `CDS_TRUSTED_ISSUERS` is set (the service refuses to start without it); "
            "unset otherwise: any https server or loopback.") in README
    assert Settings.from_env({}).allowed_fhir_servers == ()
    issuers = tmp_path / "issuers.json"
    issuers.write_text('{"issuers": {}}')
    with pytest.raises(SettingsError, match="CDS_ALLOWED_FHIR_SERVERS: required"):
        Settings.from_env({"CDS_TRUSTED_ISSUERS": str(issuers)})
    Settings.from_env({"CDS_TRUSTED_ISSUERS": str(issuers), "CDS_REQUIRE_JWT": "false"})


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


@pytest.mark.parametrize("heading, claim", [("## Performance", "the code of commit (\\w+) \\("),
                                            ("## Soak", "\\(the code of commit (\\w+);")])
def test_figures_name_the_code_they_measured_and_say_when_it_has_changed_since(heading, claim):
    """The soak said "(the code of this README)" and the benchmark "the final code" long after both had changed: the
    section names the commit measured, and if the service's code differs from it the section says it is not measured."""
    text = section(heading)
    commit = re.search(claim, text).group(1)
    if _git("rev-parse", "--git-dir") is None:
        pytest.skip("not a git checkout: which code was measured cannot be compared")
    assert _git("cat-file", "-t", commit) == "commit\n", commit
    changed = _git("diff", "--quiet", commit, "HEAD", "--", "cds_service") is None
    unmeasured = {"## Performance": f"The changes committed after {commit} (the day's audit fixes) have not been benchmarked yet.",
                  "## Soak": "the changes committed after it have not been soaked yet"}[heading]
    assert (unmeasured in text) == changed, f"{heading}: the code {'changed' if changed else 'is unchanged'} since {commit}"


def test_the_soak_run_quoted_is_the_one_recorded():
    soak = (ROOT / "bench" / "results" / "soak.md").read_text(encoding="utf-8")
    day, end = re.search(r"## Soak (\d{4}-\d\d-\d\d) (\d\d:\d\d) UTC: PASS", soak).groups()
    assert re.search(rf"Last run, {day} \d\d:\d\d-{end} UTC", " ".join(section("## Soak").split()))


def test_knowledge_readme_says_which_new_files_the_loader_indexes(knowledge):
    text = " ".join((ROOT / "cds_service" / "knowledge" / "README.md").read_text(encoding="utf-8").split())
    assert "not yet indexed by `Knowledge`" not in text
    assert ("`Knowledge` indexes what the rules look up often — treatment contexts, lookback windows, label restrictions and "
            "wound-healing cautions from `regimens.json` — and the rest is read via `knowledge.files[...]`") in text
    assert knowledge.product_uses and knowledge.supporting_drugs  # treatment_contexts.json
    assert knowledge.label_restrictions and knowledge.wound_healing_cautions  # regimens.json
    assert knowledge.quantitative_hcg.negative_below_iu_per_l == 5  # lookback.json ("`negative_below_iu_per_l` (5)")
    assert "`negative_below_iu_per_l` (5)" in text
    from cds_service.knowledge.loader import FILES

    new = re.findall(r"^\| `(\w+\.json)` \|", (ROOT / "cds_service" / "knowledge" / "README.md").read_text(encoding="utf-8"), re.M)
    assert new and set(new) <= set(FILES)


def test_feedback_doc_says_uuids_are_compared_in_any_case(client):
    text = " ".join((ROOT / "docs" / "feedback.md").read_text(encoding="utf-8").split())
    assert "Card and suggestion UUIDs are compared case-insensitively" in text
    from conftest import load_fixture

    body = load_fixture("fires-cyp3a4-clarithromycin-order-select.json")
    card = client.post("/cds-services/mtor-safety-order-select", json=body).get_json()["cards"][0]
    entry = {"card": card["uuid"].upper(), "outcome": "accepted", "outcomeTimestamp": "2026-01-01T00:00:00Z",
             "acceptedSuggestions": [{"id": card["suggestions"][0]["uuid"].upper()}]}
    assert client.post("/cds-services/mtor-safety-order-select/feedback", json={"feedback": [entry]}).status_code == 200


class _Fields(logging.Handler):
    def __init__(self):
        super().__init__()
        self.fields: list[dict] = []

    def emit(self, record):
        self.fields.append(getattr(record, "fields", {}))


def test_services_row_a_selection_naming_no_draft_puts_every_draft_in_focus_and_is_logged(call_hook):
    assert ("A selection that names no draft order (a draft sent without an `id`, a reference in another case) puts every "
            "draft in focus, and the request's log line counts it (`unmatched_selections`); a draft without an `id` is known "
            "by its entry's `urn:uuid:` `fullUrl`, which a selection may name, and is never offered for deletion (no "
            "`resourceId` to give)") in FLAT
    from cds_service.observability import REQUEST_LOGGER

    clarithromycin = {k: v for k, v in med("clarithromycin 500 MG Oral Tablet", rxnorm="197517", draft=True).items() if k != "id"}
    request = hook_request("order-select", medications=[everolimus()], drafts=[clarithromycin], selections=["MedicationRequest/x"])
    handler = _Fields()
    logging.getLogger(REQUEST_LOGGER).addHandler(handler)
    try:
        body = call_hook(request).get_json()
    finally:
        logging.getLogger(REQUEST_LOGGER).removeHandler(handler)
    assert core_topics(body) == ["cyp3a4-interaction"]
    assert [f.get("unmatched_selections") for f in handler.fields if "unmatched_selections" in f] == [1]
    assert not [a for c in body["cards"] for s in c.get("suggestions", ()) for a in s["actions"] if a["type"] == "delete"]


def test_services_text_a_searchset_total_above_its_matches_is_incomplete(call_hook):
    assert ("a searchset whose `total` is more than the matches it carries, with no `next` page, counts as incomplete "
            "(`checks-incomplete`), never as all there is") in FLAT
    request = hook_request("patient-view", medications=[everolimus()])
    request["prefetch"]["observations"]["total"] = 5
    assert [c["source"]["topic"]["code"] for c in call_hook(request).get_json()["cards"]] == ["checks-incomplete"]
