"""The issue-10 knowledge (treatment contexts, regimens, products, look-back windows, publisher allowlist) says
what knowledge/README.md and CHANGES-issue10.md say it does, and its fixtures are valid FHIR R4 hook calls."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import urlparse

import pytest

from cds_service.knowledge import load_knowledge
from cds_service.knowledge.loader import FILES, KNOWLEDGE_DIR
from conftest import FIXTURES
from test_fixtures_valid import resources_in, validation_errors

NEW_FILES = ("treatment_contexts.json", "regimens.json", "products.json", "lookback.json", "publishers.json")
ISSUE10_FIXTURES = sorted((FIXTURES / "issue10").glob("fires-*.json")) + sorted((FIXTURES / "issue10").glob("quiet-*.json"))
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"


def raw(name: str) -> dict:
    return json.loads((KNOWLEDGE_DIR / name).read_text(encoding="utf-8"))


def test_new_files_are_registered_and_load():
    assert set(NEW_FILES) <= set(FILES)
    knowledge = load_knowledge()
    assert all(name in knowledge.files for name in NEW_FILES)


def test_every_knowledge_url_is_on_a_listed_publisher_host_and_read_at_is_never_the_link():
    hosts = {h["host"] for h in raw("publishers.json")["hosts"]}
    problems = []
    for name in FILES:
        for key, source in raw(name)["sources"].items():
            url = source.get("url")
            if url and urlparse(url).hostname not in hosts:
                problems.append(f"{name}:{key} {url}")
            if url and source.get("read_at") == url:
                problems.append(f"{name}:{key} read_at repeats the url")
    assert problems == []


@pytest.mark.parametrize("host", ["medthority.com", "www.drugs.com", "download.skyscape.com", "github.com", "www.120ty.net", "prescriberpoint.com"])
def test_secondary_hosts_may_not_be_card_links(host):
    allowed = {h["host"] for h in raw("publishers.json")["hosts"] if h["card_link_allowed"]}
    assert host not in allowed


def test_answer_site_summary_is_marked_not_citable_wherever_it_is_a_source():
    for name in FILES:
        source = raw(name)["sources"].get("TSC-SUMMARY")
        if source:
            assert source["secondary"] is True and source["card_citable"] is False, name


def test_products_imply_known_contexts_and_zortress_and_fyarro_decide_alone():
    contexts = raw("treatment_contexts.json")
    keys = {c["key"] for c in contexts["contexts"]}
    implies = {p["product"]: p for p in contexts["product_implies"]}
    assert all(set(p["implies"]) <= keys for p in implies.values())
    assert implies["Zortress"]["exclusive"] and set(implies["Zortress"]["implies"]) == {"transplant-kidney", "transplant-liver"}
    assert implies["Fyarro"]["exclusive"] and implies["Fyarro"]["implies"] == ["oncology-pecoma"]
    assert set(implies["Rapamune"]["implies"]) == {"transplant-kidney", "lam"} and not implies["Rapamune"]["exclusive"]


def test_transplant_status_codes_and_calcineurin_inhibitors():
    contexts = {c["key"]: c for c in raw("treatment_contexts.json")["contexts"]}
    assert {(c["system"], c["code"]) for c in contexts["transplant-kidney"]["codes"]} >= {(ICD10CM, "Z94.0"), (ICD10CM, "T86.1")}
    assert {(c["system"], c["code"]) for c in contexts["transplant-liver"]["codes"]} >= {(ICD10CM, "Z94.4"), (ICD10CM, "T86.4")}
    cni = {c["key"]: c for c in raw("treatment_contexts.json")["calcineurin_inhibitors"]}
    assert cni["tacrolimus"]["rxnorm_ingredient"] == ["42316"] and cni["cyclosporine"]["rxnorm_ingredient"] == ["3008"]


def test_regimens_point_to_known_contexts_and_keep_zortress_twice_daily():
    contexts = {c["key"] for c in raw("treatment_contexts.json")["contexts"]}
    uses = {u["key"]: u for u in raw("regimens.json")["uses"]}
    for use in uses.values():
        assert set(use["context"].split("|")) <= contexts, use["key"]
    kidney = uses["zortress-kidney"]
    assert kidney["schedule"]["times_per_day"] == 2
    assert kidney["start"]["value"] == {"dose_mg": 0.75, "times_per_day": 2, "daily_mg": 1.5} and kidney["start"]["verified"]
    assert kidney["trough_target_ng_per_ml"]["value"] == {"low": 3, "high": 8}
    assert uses["zortress-liver"]["earliest_start_days_after_transplant"]["value"] == 30
    assert uses["fyarro-pecoma"]["trough_targeting"]["value"] is False


def test_protocol_dependent_targets_forbid_a_computed_dose():
    rapamune = next(u for u in raw("regimens.json")["uses"] if u["key"] == "rapamune-renal-transplant")
    assert rapamune["trough_target_ng_per_ml"]["value"] is None
    assert rapamune["trough_target_ng_per_ml"]["computed_dose"] is False
    assert rapamune["cyclosporine_timing"]["verified"] and "4 hours" in rapamune["cyclosporine_timing"]["value"]
    assert rapamune["steady_state_before_readjust_days"]["value"] == {"min": 7, "max": 14}


def test_every_unverified_fact_says_what_was_read():
    def facts(node):
        if isinstance(node, dict):
            if node.get("verified") is False:
                yield node
            for value in node.values():
                yield from facts(value)
        elif isinstance(node, list):
            for item in node:
                yield from facts(item)

    for name in NEW_FILES:
        for fact in facts(raw(name)):
            assert any(fact.get(k) for k in ("read", "note", "code_note")), (name, fact)


def test_products_list_verified_strengths_and_no_splitting_of_swallow_whole_tablets():
    products = {p["key"]: p for p in raw("products.json")["products"]}
    assert products["afinitor-tablet"]["strengths_mg"] == [2.5, 5, 7.5, 10]
    assert products["afinitor-disperz"]["strengths_mg"] == [2, 3, 5]
    assert products["zortress-tablet"]["strengths_mg"] == [0.25, 0.5, 0.75] and products["zortress-tablet"]["times_per_day"] == 2
    assert products["rapamune-tablet"]["strengths_mg"] == [0.5, 1, 2] and products["rapamune-oral-solution"]["mg_per_ml"] == 1
    assert products["fyarro-vial"]["vial_mg"] == 100
    assert all(p["may_split"] is False for p in products.values() if p["swallow_whole"])


def test_hcg_fallback_threshold_and_quantitative_codes():
    hcg = raw("lookback.json")["hcg_quantitative"]
    assert hcg["negative_below_iu_per_l"] == 5 and hcg["units_equivalent"]["mIU/mL"] == 1
    assert {c["code"] for c in hcg["quantitative_codes"]} >= {"21198-7", "83086-9", "45194-8", "25372-4"}
    assert hcg["order_of_evidence"][0].startswith("Observation.interpretation")


def test_every_evidence_kind_has_a_window_with_a_source():
    windows = {w["evidence"]: w for w in raw("lookback.json")["windows"]}
    for kind in ("trough", "lipids", "pregnancy-condition", "hcg-test", "severe-infection-condition", "surgery-planned", "surgery-past"):
        assert windows[kind]["source"] and ("max_age_days" in windows[kind] or "ahead_days" in windows[kind]), kind


@pytest.mark.parametrize("code, expected", [("A41.9", True), ("R65.21", True), ("B59", True), ("B44.1", True), ("B37.7", True),
                                            ("A15.0", True), ("B25.9", True), ("B16.9", True), ("B37.0", False), ("B18.1", False), ("R76.11", False)])
def test_severe_infection_value_set(code, expected):
    assert ("severe-infection" in load_knowledge().condition_kinds([(ICD10CM, code)], "")) is expected


def test_unverified_perpetrators_stay_out_of_the_card_facing_list():
    interactions = raw("interactions.json")
    card_facing = {p["key"] for p in interactions["perpetrators"]}
    assert {"ciprofloxacin", "fluvoxamine"} & card_facing == set()
    assert {p["key"] for p in interactions["perpetrators_unverified"]} >= {"ciprofloxacin", "fluvoxamine"}


def test_cyclosporine_is_the_intended_partner_of_zortress_and_timed_with_rapamune():
    cyclosporine = next(p for p in raw("interactions.json")["perpetrators"] if p["key"] == "cyclosporine")
    assert cyclosporine["by_label"]["zortress"]["treatment"] == "intended-combination"
    assert cyclosporine["by_label"]["rapamune"]["treatment"] == "timing"


def test_cannabidiol_advice_per_drug_cites_a_label_that_says_it():
    cbd = next(e for e in raw("interactions.json")["label_specific"] if e["key"] == "cannabidiol")
    assert cbd["by_drug"]["everolimus"]["label"]["product"] == "Zortress" and cbd["by_drug"]["everolimus"]["label"]["verified"]
    assert cbd["by_drug"]["sirolimus"]["label"]["product"] == "Rapamune" and cbd["by_drug"]["sirolimus"]["label"]["verified"]
    assert cbd["by_drug"]["everolimus"]["afinitor_label"]["verified"] is False


def test_phlebotomy_and_venipuncture_are_listed_as_never_surgical():
    procedures = raw("procedures.json")
    assert {c["code"] for c in procedures["non_surgical_procedures"]} >= {"396540005", "22778000", "430193006"}
    assert "phlebotomy" in procedures["non_surgical_words"]["words"]


def test_there_are_issue10_fixtures_and_a_proposed_scenario_for_each():
    proposed = json.loads((FIXTURES / "issue10" / "proposed-scenarios-issue10.json").read_text())
    assert sorted(s["file"] for s in proposed["scenarios"]) == sorted(p.name for p in ISSUE10_FIXTURES)
    moved = [s for s in json.loads((FIXTURES / "scenarios.json").read_text())["scenarios"] if s.get("use")]
    assert len(ISSUE10_FIXTURES) + len(moved) >= 10  # a fixture moves up into fhir_fixtures/ when its rule lands


@pytest.mark.parametrize("path", ISSUE10_FIXTURES, ids=lambda p: p.name)
def test_issue10_fixture_is_valid_fhir_for_its_patient_and_hook(path: Path):
    document = json.loads(path.read_text())
    assert validation_errors(document) == []
    assert path.name.endswith(f"-{document['hook']}.json")
    patient_id = document["context"]["patientId"]
    for _, resource in resources_in(document, "$"):
        reference = (resource.get("subject") or resource.get("patient") or {}).get("reference")
        if isinstance(reference, str) and "Patient/" in reference:
            assert reference.endswith(f"Patient/{patient_id}")
