"""The knowledge files, read raw: every entry sourced, every code well-formed, every file reviewed on time;
and the loader reports every problem of a broken copy at once."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import date
from typing import Any

import pytest

from cds_service.knowledge import KnowledgeError, load_knowledge
from cds_service.knowledge.codes import CVX, ICD10CM, LOINC, RXNORM, SNOMED, code_problem, loinc_check_digit, verhoeff_valid
from cds_service.knowledge.loader import FILES, KNOWLEDGE_DIR
from conftest import edit

KNOWLEDGE_FILES = sorted(FILES)
NOT_KNOWLEDGE = {"manifest.json"}  # the manifest describes the files; it is not one of them


def raw(name: str) -> dict:
    return json.loads((KNOWLEDGE_DIR / name).read_text(encoding="utf-8"))


def walk(node: Any, path: str = "$") -> Iterator[tuple[str, Any, Any]]:
    """(path, key, value) for every key of every object, depth first."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield path, key, value
            yield from walk(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, item in enumerate(node):
            yield from walk(item, f"{path}[{i}]")


def list_entries(node: Any, path: str, inherited: str | None) -> Iterator[tuple[str, dict, str | None]]:
    """Every object that is an entry of a list, with the nearest source of an enclosing object."""
    if isinstance(node, dict):
        own = node.get("source", inherited)
        for key, value in node.items():
            yield from list_entries(value, f"{path}.{key}", own)
    elif isinstance(node, list):
        for i, item in enumerate(node):
            if isinstance(item, dict):
                yield f"{path}[{i}]", item, inherited
            yield from list_entries(item, f"{path}[{i}]", inherited)


# --- check digits --------------------------------------------------------------------------------


def test_check_digit_helpers_on_known_codes():
    assert loinc_check_digit("2106") == 3 and loinc_check_digit("50544") == 6 and loinc_check_digit("82810") == 3
    assert verhoeff_valid("387713003") and verhoeff_valid("77386006") and not verhoeff_valid("77386007")


def coded_values(document: dict) -> Iterator[tuple[str, str | None, Any]]:
    """(path, system, code) for {system, code} objects and for the code lists named after their system."""
    list_systems = {"rxnorm": RXNORM, "rxnorm_ingredient": RXNORM, "cvx": CVX, "loinc": LOINC, "qualitative_loinc": LOINC, "quantitative_loinc": LOINC}
    for path, key, value in walk(document):
        if key == "code" and isinstance(value, str):
            continue  # checked with its object below
        if key in list_systems:
            for i, code in enumerate(value if isinstance(value, list) else [value]):
                yield f"{path}.{key}[{i}]", list_systems[key], code
    for path, key, value in walk({"$": document}):
        if isinstance(value, dict) and "system" in value and "code" in value:
            yield f"{path}.{key}", value["system"], value["code"]
        if isinstance(value, list):
            for i, item in enumerate(value):
                if isinstance(item, dict) and "system" in item and "code" in item:
                    yield f"{path}.{key}[{i}]", item["system"], item["code"]


# --- every file ----------------------------------------------------------------------------------


def test_every_knowledge_file_on_disk_is_loaded_and_every_loaded_file_exists():
    on_disk = sorted(p.name for p in KNOWLEDGE_DIR.glob("*.json") if p.name not in NOT_KNOWLEDGE)
    assert on_disk == KNOWLEDGE_FILES


@pytest.mark.parametrize("name", KNOWLEDGE_FILES)
def test_meta_names_subject_version_and_review_dates(name):
    meta = raw(name)["meta"]
    for field in ("subject", "version", "reviewed", "next_review"):
        assert isinstance(meta.get(field), str) and meta[field].strip(), field
    assert re.fullmatch(r"\d{4}\.\d+\.\d+", meta["version"])
    reviewed, next_review = date.fromisoformat(meta["reviewed"]), date.fromisoformat(meta["next_review"])
    assert reviewed <= date.today(), "reviewed in the future"
    assert next_review > date.today(), f"{name} is due for review since {next_review}"
    assert next_review > reviewed


@pytest.mark.parametrize("name", KNOWLEDGE_FILES)
def test_every_source_has_a_label_and_an_absolute_url_when_it_has_one(name):
    for key, source in raw(name)["sources"].items():
        assert isinstance(source, dict) and source.get("label", "").strip(), key
        if "url" in source:
            assert re.fullmatch(r"https?://[^\s/]+\.[^\s]+", source["url"]), f"{key}: {source['url']}"


@pytest.mark.parametrize("name", KNOWLEDGE_FILES)
def test_every_list_entry_has_a_source_that_resolves(name):
    document = raw(name)
    sources = set(document["sources"])
    problems = []
    for key, value in document.items():
        if key in ("meta", "sources"):
            continue
        for path, entry, inherited in list_entries(value, f"$.{key}", None):
            cited = entry.get("source", inherited)
            if cited is None:
                problems.append(f"{path} has no source")
            elif cited not in sources:
                problems.append(f"{path} cites unknown source {cited!r}")
    assert problems == []


@pytest.mark.parametrize("name", KNOWLEDGE_FILES)
def test_every_source_reference_resolves_including_source_lists(name):
    document = raw(name)
    sources = set(document["sources"])
    problems = []
    for path, key, value in walk({k: v for k, v in document.items() if k not in ("meta", "sources")}):
        if key == "source" or key.endswith("_source"):
            if value not in sources:
                problems.append(f"{path}.{key} = {value!r}")
        elif key.endswith("_sources"):
            problems += [f"{path}.{key} has {v!r}" for v in (value if isinstance(value, list) else [value]) if v not in sources]
    assert problems == []


@pytest.mark.parametrize("name", KNOWLEDGE_FILES)
def test_codes_are_well_formed_for_their_system(name):
    problems = []
    for path, system, code in coded_values(raw(name)):
        problem = code_problem(system, code)
        if problem:
            problems.append(f"{path} {system}|{code}: {problem}")
    assert problems == []


def test_code_checker_finds_codes_in_every_coded_file():
    for name in ("mtor_drugs.json", "interactions.json", "vaccines.json", "observations.json", "conditions.json", "procedures.json"):
        assert list(coded_values(raw(name))), name


@pytest.mark.parametrize(
    "system, code",
    [(RXNORM, "84550a"), (CVX, "0003"), (LOINC, "2106-4"), (LOINC, "21063"), (SNOMED, "77386007"), (ICD10CM, "z34.0"), (RXNORM, " 845507")],
)
def test_code_checker_rejects_malformed_codes(system, code):
    assert code_problem(system, code)


def test_no_rxnorm_code_means_two_different_mtor_drugs():
    drugs = raw("mtor_drugs.json")
    owner: dict[str, str] = {}
    for entry in drugs["mtor_inhibitors"]:
        for code in entry["rxnorm"]:
            assert owner.setdefault(code, entry["key"]) == entry["key"]
    for product in drugs["products"]:
        assert owner.setdefault(product["rxnorm"], product["drug"]) == product["drug"], product["rxnorm"]


def test_no_vaccine_code_is_both_live_and_not_live():
    vaccines = raw("vaccines.json")
    def codes(list_name, field):
        return {c for e in vaccines[list_name] for c in e.get(field, ())}
    for field in ("cvx", "rxnorm"):
        assert codes("live_vaccines", field).isdisjoint(codes("not_live", field))
        assert codes("live_vaccines", field).isdisjoint(codes("ambiguous_vaccines", field))


# --- the loader ----------------------------------------------------------------------------------


def test_shipped_knowledge_loads():
    knowledge = load_knowledge()
    assert set(knowledge.mtor_drugs) == {"everolimus", "sirolimus"}


def test_unbroken_copy_loads(knowledge_copy):
    assert load_knowledge(knowledge_copy).mtor_drugs


def test_loader_reports_every_problem_of_a_broken_copy_at_once(knowledge_copy):
    edit(knowledge_copy, "interactions.json", lambda d: d["perpetrators"][0].pop("source"))
    edit(knowledge_copy, "vaccines.json", lambda d: d["live_vaccines"][1].update(source="NO-SUCH-SOURCE"))
    edit(knowledge_copy, "conditions.json", lambda d: d["meta"].pop("next_review"))
    edit(knowledge_copy, "mtor_drugs.json", lambda d: d["mtor_inhibitors"][0]["trough_limit"].update(source="NOPE"))
    (knowledge_copy / "procedures.json").write_text("{ not json")
    with pytest.raises(KnowledgeError) as raised:
        load_knowledge(knowledge_copy)
    message = str(raised.value)
    assert "interactions.json: perpetrators[0] has no source" in message
    assert "vaccines.json" in message and "NO-SUCH-SOURCE" in message
    assert "conditions.json: meta.next_review is missing" in message
    assert "mtor_drugs.json" in message and "NOPE" in message
    assert "procedures.json: cannot be read" in message


def test_loader_reports_a_missing_file(knowledge_copy):
    (knowledge_copy / "vaccines.json").unlink()
    with pytest.raises(KnowledgeError, match="vaccines.json"):
        load_knowledge(knowledge_copy)


def test_loader_reports_a_missing_structure_instead_of_crashing(knowledge_copy):
    edit(knowledge_copy, "observations.json", lambda d: d.pop("hcg_tests"))
    with pytest.raises(KnowledgeError, match="hcg_tests"):
        load_knowledge(knowledge_copy)


def test_loader_rejects_an_unknown_key_in_code_sources(knowledge_copy):
    edit(knowledge_copy, "interactions.json", lambda d: d["perpetrators"][0].update(code_sources=["NO-SUCH-SOURCE"]))
    with pytest.raises(KnowledgeError, match="NO-SUCH-SOURCE"):
        load_knowledge(knowledge_copy)


def test_loader_rejects_a_nested_list_entry_without_source(knowledge_copy):
    edit(knowledge_copy, "observations.json", lambda d: d["result_codes"]["positive"][0].pop("source"))
    edit(knowledge_copy, "observations.json", lambda d: d["result_codes"].pop("source"))
    with pytest.raises(KnowledgeError, match="positive"):
        load_knowledge(knowledge_copy)
