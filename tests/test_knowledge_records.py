"""Knowledge entries that reach cards are typed records, built and checked when the knowledge loads: a bad code or
a missing field fails at start-up, not in a card."""

from __future__ import annotations

import pytest

from cds_service.knowledge import KnowledgeError, load_knowledge
from cds_service.knowledge.codes import code_problem
from cds_service.knowledge.records import InteractionAdvice, Source, TroughTarget, TroughTiming
from conftest import edit

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"


def test_shipped_knowledge_gives_typed_records():
    knowledge = load_knowledge()
    assert all(isinstance(a, InteractionAdvice) and isinstance(a.source, Source) for a in knowledge.interaction_advice)
    assert all(isinstance(t, TroughTarget) for t in knowledge.trough_targets)
    assert {t.event for t in knowledge.trough_timing if t.drug == "sirolimus"} >= {"start", "dose-change"}
    assert knowledge.level_tests["everolimus"].loinc == "50544-6"


def test_a_wrong_loinc_check_digit_is_refused_at_load(knowledge_copy):
    edit(knowledge_copy, "observations.json", lambda d: d["drug_levels"][0].update(loinc=["50544-7"]))
    with pytest.raises(KnowledgeError, match=r"observations.json: \$.drug_levels\[0\].loinc\[0\].*check digit"):
        load_knowledge(knowledge_copy)


def test_a_wrong_snomed_check_digit_is_refused_at_load(knowledge_copy):
    edit(knowledge_copy, "indications.json", lambda d: d["tsc"]["codes"][0].update(code="7199001"))
    with pytest.raises(KnowledgeError, match="indications.json.*Verhoeff"):
        load_knowledge(knowledge_copy)


def test_a_record_missing_a_field_a_card_needs_is_refused_at_load(knowledge_copy):
    edit(knowledge_copy, "interactions.json", lambda d: d["advice"][0].pop("action"))
    with pytest.raises(KnowledgeError, match="action"):
        load_knowledge(knowledge_copy)


def test_an_inverted_trough_target_is_refused_at_load(knowledge_copy):
    edit(knowledge_copy, "monitoring.json", lambda d: d["trough_targets"][0].update(low_ng_per_ml=20))
    with pytest.raises(KnowledgeError, match="low must be below high"):
        load_knowledge(knowledge_copy)


@pytest.mark.parametrize(("system", "code"), [(LOINC, "2106-4"), (SNOMED, "77386007"), (LOINC, " 2106-3")])
def test_code_checker_names_what_is_wrong(system, code):
    assert code_problem(system, code)


@pytest.mark.parametrize(("system", "code"), [(LOINC, "2106-3"), (LOINC, "LA6576-8"), (SNOMED, "387713003")])
def test_code_checker_accepts_well_formed_codes(system, code):
    assert code_problem(system, code) is None


def test_trough_timing_states_the_labels_range_in_words():
    source = Source("S", "label")
    assert TroughTiming(source, drug="sirolimus", event="start", days_after=10, days_after_latest=20).days_text == "10 to 20 days"
    assert TroughTiming(source, drug="everolimus", event="start", days_after=14).days_text == "14 days"


def test_perpetrators_and_lipid_grades_are_typed_records():
    knowledge = load_knowledge()
    erythromycin = knowledge.perpetrators["erythromycin"]
    assert (erythromycin.effect, erythromycin.strength, erythromycin.strength_for("sirolimus")) == ("inhibitor", "moderate", "strong")
    assert erythromycin.strength_for("everolimus") == "moderate"  # the FDA table's, where the label says nothing else
    triglycerides = knowledge.lipid_analytes["triglycerides"]
    assert [triglycerides.grade_of(v) for v in (300, 301, 500, 501, 1001)] == [None, 2, 2, 3, 4]  # CTCAE: above the threshold
    assert knowledge.lipid_loinc["2571-8"] == "triglycerides"


@pytest.mark.parametrize("change", [
    lambda d: d["perpetrators"][0].update(strength="weak"),
    lambda d: d["perpetrators"][0].update(effect="substrate"),
    lambda d: d["perpetrators"][0].update(strength_by_drug={"sirolimus": "mild"}),
], ids=["strength", "effect", "strength by drug"])
def test_a_perpetrator_classified_in_words_no_rule_knows_is_refused_at_load(knowledge_copy, change):
    edit(knowledge_copy, "interactions.json", change)
    with pytest.raises(KnowledgeError, match="is not known"):
        load_knowledge(knowledge_copy)


def test_a_lipid_grade_without_its_threshold_is_refused_at_load(knowledge_copy):
    edit(knowledge_copy, "monitoring.json", lambda d: d["lipids"]["cholesterol"]["grades"][0].pop("above_mg_dl"))
    with pytest.raises(KnowledgeError, match="above_mg_dl"):
        load_knowledge(knowledge_copy)


def test_labelled_uses_are_typed_records():
    uses = load_knowledge().indications
    assert {(u.key, u.dosing, u.drugs, u.requires_tsc) for u in uses.values()} >= {
        ("tsc-aml", "fixed", ("everolimus",), True), ("lam", "tdm", ("sirolimus",), False)}


@pytest.mark.parametrize("change", [lambda d: d["indications"][0].update(dosing="weekly"), lambda d: d["indications"][0].update(drugs=[])],
                         ids=["dosing", "no drug"])
def test_a_labelled_use_with_an_unknown_dosing_or_no_drug_is_refused_at_load(knowledge_copy, change):
    edit(knowledge_copy, "indications.json", change)
    with pytest.raises(KnowledgeError, match="is not known, or it names no drug"):
        load_knowledge(knowledge_copy)
