"""check_cyp3a4_interactions in isolation: an mTOR inhibitor meets a CYP3A4/P-gp inhibitor or inducer."""

from __future__ import annotations

from datetime import timedelta

from cds_service.cards import render_cards
from cds_service.findings import Severity, Topic
from cds_service.rules.interactions import check_cyp3a4_interactions
from snapshots import (
    ICD10CM,
    NOW,
    condition,
    date,
    everolimus,
    hook_request,
    knowledge,
    med,
    order,
    plain_snapshot,
    ref,
    rule_findings,
    sirolimus,
    snapshot_of,
)

NOW_DAY = NOW.date()
date_days = date


def interactions(*medications, drafts=(), hook="order-sign"):
    return rule_findings(check_cyp3a4_interactions, hook=hook, medications=medications, drafts=drafts)


def advice_indications(finding):
    return {a.indication for a in finding.advice}


def advice_sources(finding):
    return {a.source.key for a in finding.advice}


def test_strong_inhibitor_with_everolimus_is_critical_and_says_avoid():
    clarithromycin = med("clarithromycin 500 MG Oral Tablet", rxnorm="197517")
    [finding] = interactions(everolimus(), clarithromycin)
    assert finding.topic is Topic.CYP3A4_INTERACTION
    assert finding.severity is Severity.CRITICAL
    assert finding.strength == "strong" and finding.effect == "inhibitor"
    assert any("Avoid" in a.action for a in finding.advice)
    assert ref(clarithromycin) in finding.refs


def test_strong_inhibitor_with_sirolimus_is_critical_and_cites_rapamune():
    [finding] = interactions(sirolimus(), med("itraconazole 100 MG Oral Capsule"))
    assert finding.severity is Severity.CRITICAL
    assert finding.source.key == "RAPAMUNE-PI"
    assert advice_sources(finding) == {"RAPAMUNE-PI"}


def test_strong_inducer_with_everolimus_warns():
    [finding] = interactions(everolimus(), med("carbamazepine 200 MG Oral Tablet", rxnorm="308979"))
    assert finding.severity is Severity.WARNING
    assert (finding.effect, finding.strength) == ("inducer", "strong")


def test_strong_inducer_with_sirolimus_warns():
    [finding] = interactions(sirolimus(), med("rifampin 300 MG Oral Capsule"))
    assert finding.severity is Severity.WARNING
    assert finding.strength == "strong"


def test_moderate_inhibitor_with_everolimus_gives_both_fixed_dose_and_trough_guided_advice():
    [finding] = interactions(everolimus(), med("fluconazole 150 MG Oral Tablet", rxnorm="197698"))
    assert finding.severity is Severity.WARNING
    assert finding.strength == "moderate"
    assert advice_indications(finding) == {"fixed-dose", "tdm"}
    actions = " ".join(a.action for a in finding.advice)
    assert "2.5 mg" in actions  # fixed dose: reduce to 2.5 mg daily
    assert "50%" in actions and "trough" in actions  # TDM: halve the dose, recheck the trough


def test_moderate_inhibitor_with_sirolimus_warns_with_rapamunes_own_words():
    # interactions.json diltiazem by_label.rapamune (Rapamune §7.4, verified) overrides the class advice
    [finding] = interactions(sirolimus(), med("diltiazem 120 MG Oral Capsule"))
    assert finding.severity is Severity.WARNING
    assert finding.strength == "moderate"
    assert advice_sources(finding) == {"RAPAMUNE-DDI"}
    assert "Rapamune" in finding.advice[0].action
    assert any("§7.4" in a.section for a in finding.advice)


def test_moderate_inducer_with_everolimus_is_info_only():
    [finding] = interactions(everolimus(), med("efavirenz 600 MG Oral Tablet"))
    assert finding.severity is Severity.INFO
    assert (finding.effect, finding.strength) == ("inducer", "moderate")


def test_rifabutin_counts_as_strong_inducer_for_everolimus_per_its_label():
    [finding] = interactions(everolimus(), med("rifabutin 150 MG Oral Capsule", rxnorm="198200"))
    assert finding.strength == "strong"  # the FDA table says moderate; the Afinitor label says strong
    assert finding.severity is Severity.WARNING  # strong-inducer advice, not the moderate-inducer info


def test_rifapentine_is_strong_for_everolimus_but_moderate_for_sirolimus():
    [with_everolimus] = interactions(everolimus(), med("rifapentine 150 MG Oral Tablet"))
    [with_sirolimus] = interactions(sirolimus(), med("rifapentine 150 MG Oral Tablet"))
    assert with_everolimus.strength == "strong"
    assert with_sirolimus.strength == "moderate"


def test_erythromycin_is_a_strong_inhibitor_for_sirolimus_per_rapamune_label():
    [finding] = interactions(sirolimus(), med("erythromycin 250 MG Oral Tablet", rxnorm="686355"))
    assert finding.strength == "strong"
    assert finding.severity is Severity.CRITICAL


def test_erythromycin_stays_moderate_for_everolimus():
    [finding] = interactions(everolimus(), med("erythromycin 250 MG Oral Tablet", rxnorm="686355"))
    assert finding.strength == "moderate"
    assert finding.severity is Severity.WARNING


def test_grapefruit_with_everolimus_gets_only_the_grapefruit_advice():
    [finding] = interactions(everolimus(), med("Grapefruit juice"))
    assert finding.kind == "food"
    assert finding.severity is Severity.WARNING
    [advice] = finding.advice  # the product-specific advice replaces the moderate-inhibitor dose advice
    assert "grapefruit" in advice.action.lower()
    assert advice.source.key == "AFINITOR-PI"


def test_grapefruit_with_sirolimus_gets_the_rapamune_grapefruit_advice():
    [finding] = interactions(sirolimus(), med("grapefruit juice 240 mL"))
    [advice] = finding.advice
    assert "Grapefruit juice must not be taken with sirolimus" in advice.action
    assert advice.source.key == "RAPAMUNE-PI"


def test_grapefruit_seed_extract_is_not_grapefruit():
    assert interactions(everolimus(), med("grapefruit seed extract 125 mg capsule")) == []


def test_st_johns_wort_with_everolimus_says_avoid_and_warns():
    [finding] = interactions(everolimus(), med("St. John's Wort 300 mg capsule"))
    assert finding.severity is Severity.WARNING  # a moderate inducer, yet the label says avoid it
    [advice] = finding.advice
    assert "St. John's wort" in advice.action
    assert advice.source.key == "AFINITOR-DDI"


def test_st_johns_wort_with_sirolimus_warns_with_the_moderate_inducer_advice():
    [finding] = interactions(sirolimus(), med("Hypericum perforatum extract"))
    assert finding.severity is Severity.WARNING
    assert advice_sources(finding) == {"RAPAMUNE-PI"}


def test_draft_mtor_order_meets_current_inhibitor():
    draft = everolimus(draft=True)
    current = med("ketoconazole 200 MG Oral Tablet", rxnorm="197853")
    [finding] = interactions(current, drafts=[draft])
    assert finding.severity is Severity.CRITICAL
    assert finding.mtor.ref == ref(draft) and finding.mtor.is_draft
    assert finding.evidence[0].ref == ref(current)


def test_current_mtor_meets_draft_inhibitor():
    current = everolimus()
    draft = med("voriconazole 200 MG Oral Tablet", draft=True)
    [finding] = interactions(current, drafts=[draft])
    assert finding.mtor.ref == ref(current)
    assert finding.evidence[0].ref == ref(draft) and finding.evidence[0].is_draft


def test_non_interacting_drug_gives_no_finding():
    assert interactions(everolimus(), med("levetiracetam 500 MG Oral Tablet", rxnorm="311289")) == []
    assert interactions(sirolimus(), med("amoxicillin 500 MG Oral Capsule", rxnorm="308191")) == []


def test_interacting_drug_without_an_mtor_inhibitor_gives_no_finding():
    assert interactions(med("clarithromycin 500 MG Oral Tablet", rxnorm="197517")) == []


def test_dexamethasone_mouthwash_is_not_a_systemic_inducer():
    mouthwash = med("dexamethasone 0.5 MG per 5 ML mouthwash", rxnorm="3264")
    assert interactions(everolimus(), mouthwash) == []


def test_dexamethasone_swish_and_spit_in_the_dosage_is_excluded():
    rinse = med("dexamethasone 0.5 MG/5ML Oral Solution", dosage_text="10 mL swish for 2 minutes and spit, four times daily")
    assert interactions(everolimus(), rinse) == []


def test_oral_dexamethasone_tablet_still_counts_as_moderate_inducer():
    [finding] = interactions(everolimus(), med("dexamethasone 4 MG Oral Tablet"))
    assert (finding.effect, finding.strength) == ("inducer", "moderate")


def test_topical_ketoconazole_cream_is_excluded():
    assert interactions(sirolimus(), med("ketoconazole 2% topical cream")) == []


def test_each_interacting_order_is_its_own_finding():
    findings = interactions(everolimus(), med("clarithromycin 500 MG Oral Tablet"), med("carbamazepine 200 MG Oral Tablet"))
    assert sorted(f.effect for f in findings) == ["inducer", "inhibitor"]


def test_rule_works_on_a_snapshot_built_by_hand():
    snapshot = plain_snapshot(order("Afinitor 10 mg tablet"), order("posaconazole 100 mg DR tablet"))
    [finding] = check_cyp3a4_interactions(snapshot, knowledge())
    assert finding.severity is Severity.CRITICAL


# --- issue 10 §3: each product's own label overrides the general table (interactions.json by_label) -------------

ZORTRESS = dict(text="Zortress (everolimus) 0.75 MG Oral Tablet", rxnorm="977440", dose_mg=0.75)
RAPAMUNE = dict(text="Rapamune (sirolimus) 2 MG Oral Tablet", rxnorm="404432", dose_mg=2)
FYARRO = dict(text="Fyarro (sirolimus protein-bound particles) 100 MG injectable suspension")


def test_zortress_with_cyclosporine_is_the_labelled_combination_and_gives_no_card():
    # Zortress 2010 label: everolimus is given WITH reduced-dose cyclosporine (by_label.zortress intended-combination)
    assert interactions(med(**ZORTRESS), med("cyclosporine, modified 100 MG Oral Capsule")) == []


def test_rapamune_with_cyclosporine_gives_the_4_hour_timing_advice_as_info_only():
    # Rapamune §2.1 / §7.1: take Rapamune 4 hours after cyclosporine (MODIFIED)
    [finding] = interactions(med(**RAPAMUNE), med("cyclosporine, modified 100 MG Oral Capsule"))
    assert finding.severity is Severity.INFO
    assert advice_sources(finding) == {"RAPAMUNE-DDI"} and "4 hours after cyclosporine" in finding.advice[0].action
    assert finding.trough_recheck is None


def test_erythromycin_is_a_strong_inhibitor_for_sirolimus_per_rapamune():
    # Rapamune §7.2 names erythromycin among strong inhibitors to avoid (strength_by_drug), not moderate as for everolimus
    [finding] = interactions(sirolimus(), med("erythromycin 250 MG Delayed Release Oral Tablet"))
    assert finding.strength == "strong" and finding.severity is Severity.CRITICAL


def test_zortress_never_gets_afinitors_dose_numbers():
    [finding] = interactions(med(**ZORTRESS), med("fluconazole 150 MG Oral Tablet", rxnorm="197698"))
    assert finding.product == "Zortress" and finding.advice == ()  # Afinitor's 2.5 mg / 50% advice is not Zortress's
    assert finding.label is not None and finding.label.key == "ZORTRESS-LABEL"


def test_fyarro_never_gets_rapamunes_advice():
    [finding] = interactions(med(**FYARRO), med("itraconazole 100 MG Oral Capsule"))
    assert finding.product == "Fyarro" and finding.advice == () and finding.trough_recheck is None


def test_fyarro_cards_never_ask_for_a_trough_its_label_does_not_monitor():
    """regimens.json fyarro-pecoma: no TDM (a scenario audit found 'check the sirolimus trough' on Fyarro cards)."""
    body = hook_request("order-sign", medications=[med(**FYARRO)], drafts=[med("carbamazepine 200 MG Oral Tablet", rxnorm="308979", draft=True)])
    [finding] = check_cyp3a4_interactions(snapshot_of(body), knowledge())
    assert not finding.trough_monitored
    [card] = render_cards([finding], snapshot_of(body))
    assert "trough" not in (card.summary + card.detail).lower() and "Fyarro label" in card.summary


def test_unverified_perpetrators_give_no_card():
    # interactions.json perpetrators_unverified (ciprofloxacin, fluvoxamine): classification not read in FDA Table 1
    assert interactions(everolimus(), med("ciprofloxacin 500 MG Oral Tablet")) == []
    assert interactions(everolimus(), med("fluvoxamine maleate 100 MG Oral Tablet")) == []


def test_a_drug_recorded_only_as_a_medication_statement_counts():
    st_johns_wort = {"resourceType": "MedicationStatement", "id": "ms-sjw", "status": "active",
                     "subject": {"reference": "Patient/pt-1"}, "medicationCodeableConcept": {"text": "St. John's wort 300 mg capsule"}}
    [finding] = rule_findings(check_cyp3a4_interactions, hook="patient-view", medications=[everolimus()],
                              medication_statements=[st_johns_wort])
    assert finding.evidence[0].kind == "statement" and finding.effect == "inducer"


def test_trough_recheck_is_due_the_labels_interval_after_the_inhibitor_was_started():
    # Afinitor (older label) §2: trough about 2 weeks after starting a moderate inhibitor (TDM use)
    from snapshots import condition
    fluconazole = med("fluconazole 150 MG Oral Tablet", rxnorm="197698", authoredOn=date(-3))
    sega = condition("http://snomed.info/sct", "253152008", "Subependymal giant cell astrocytoma")
    tsc = condition("http://snomed.info/sct", "7199000", "Tuberous sclerosis")
    [finding] = rule_findings(check_cyp3a4_interactions, hook="patient-view", medications=[everolimus(), fluconazole],
                              conditions=[tsc, sega])
    assert finding.trough_recheck is not None
    assert finding.trough_recheck.due == NOW.date() - timedelta(days=3) + timedelta(days=finding.trough_recheck.timing.days_after)


# --- cannabidiol (interactions.json label_specific) ----------------------------------------------------------------

EPIDIOLEX = dict(text="Epidiolex (cannabidiol) 100 mg/mL oral solution", rxnorm="2058900")


def test_cannabidiol_with_afinitor_asks_for_a_trough_and_cites_the_literature_not_an_afinitor_label():
    # CBD-MTOR-2020 (Pediatric Neurology 2020); the Afinitor label's CBD text was not read (afinitor_label.verified false)
    [finding] = interactions(everolimus(), med(**EPIDIOLEX, authoredOn=date_days(-14)))
    assert finding.severity is Severity.WARNING
    assert finding.source.key == "CBD-MTOR-2020" and not finding.cites_label
    assert finding.trough_recheck is not None and finding.trough_recheck.due <= NOW_DAY  # 14 days after: due now


def test_cannabidiol_with_zortress_cites_the_zortress_label():
    # Zortress W&P 5.22 / DI 7.13 (FDA SrLC 09/2023)
    [finding] = interactions(med(**ZORTRESS), med(**EPIDIOLEX))
    assert finding.cites_label and finding.source.key == "ZORTRESS-SRLC"


def test_cannabidiol_with_sirolimus_cites_rapamune_and_rechecks_7_to_14_days_after():
    # Rapamune W&P 5.21 / DI 7.5 (FDA SrLC 08/2022); §2.1: 7 to 14 days before further adjustment
    [finding] = interactions(sirolimus(), med(**EPIDIOLEX, authoredOn=date_days(-2)))
    assert finding.source.key == "RAPAMUNE-SRLC"
    timing = finding.trough_recheck.timing
    assert (timing.days_after, timing.days_after_latest) == (7, 14)
    assert finding.trough_recheck.due == NOW_DAY + timedelta(days=5)


def test_a_card_with_cannabidiol_and_carbamazepine_cites_the_study_and_the_label_each():
    """Found by a whole-response audit: a TSC-seizures child on everolimus with cannabidiol and carbamazepine drafts got
    one card citing only the study on cannabidiol, so the label's strong-inducer advice ("double the daily everolimus
    dose") read as the journal's; with a high trough the order flipped and the cannabidiol advice cited Afinitor §2.12."""
    seizures = [condition("http://snomed.info/sct", "7199000", "Tuberous sclerosis syndrome"),
                condition("http://snomed.info/sct", "84757009", "Epilepsy")]
    carbamazepine = med("carbamazepine 200 MG Oral Tablet", rxnorm="197499", draft=True)
    snapshot = snapshot_of(hook="order-sign", medications=[everolimus()], conditions=seizures,
                           drafts=[med(**EPIDIOLEX, draft=True), carbamazepine])
    findings = check_cyp3a4_interactions(snapshot, knowledge())
    [card] = render_cards(findings, snapshot)
    cited = card.detail.split("\nSource: ")[1]
    assert "Pediatr Neurol 2020" in cited and "(Novartis)" in cited and "§2.12" in cited
    assert "double the daily everolimus dose" in card.detail


def test_cbd_recorded_as_a_medication_statement_counts():
    cbd = {"resourceType": "MedicationStatement", "id": "ms-cbd", "status": "active",
           "subject": {"reference": "Patient/pt-1"}, "medicationCodeableConcept": {"text": "CBD oil 25 mg"}}
    [finding] = rule_findings(check_cyp3a4_interactions, hook="patient-view", medications=[everolimus()], medication_statements=[cbd])
    assert finding.interaction.perpetrator == "cannabidiol" and finding.evidence[0].kind == "statement"


def test_cannabidiol_card_says_now_for_a_date_already_reached_and_orders_the_trough():
    from cds_service.cards import render_cards
    from snapshots import snapshot_of
    snapshot = snapshot_of(hook="patient-view", medications=[everolimus(), med(**EPIDIOLEX, authoredOn=date_days(-20))])
    [card] = render_cards(check_cyp3a4_interactions(snapshot, knowledge()), snapshot)
    assert "trough now" in card.summary and "AFINITOR label" not in card.detail
    assert [s["actions"][0]["type"] for s in card.suggestions] == ["create"]  # the trough order; nothing deleted


def test_statement_card_offers_no_deletion():
    from cds_service.cards import render_cards
    from snapshots import snapshot_of
    sjw = {"resourceType": "MedicationStatement", "id": "ms-sjw", "status": "active",
           "subject": {"reference": "Patient/pt-1"}, "medicationCodeableConcept": {"text": "St. John's wort 300 mg capsule"}}
    snapshot = snapshot_of(hook="patient-view", medications=[everolimus()], medication_statements=[sjw])
    [card] = render_cards(check_cyp3a4_interactions(snapshot, knowledge()), snapshot)
    assert not [a for s in card.suggestions for a in s["actions"] if a["type"] == "delete"]
    assert "recorded as taken" in card.detail and "St. John's wort" in card.summary


def test_no_trough_recheck_when_one_was_drawn_after_the_due_date():
    from snapshots import condition, level
    fluconazole = med("fluconazole 150 MG Oral Tablet", rxnorm="197698", authoredOn=date(-40))
    conditions = [condition("http://snomed.info/sct", "7199000", "Tuberous sclerosis"),
                  condition("http://snomed.info/sct", "253152008", "Subependymal giant cell astrocytoma")]
    [finding] = rule_findings(check_cyp3a4_interactions, hook="patient-view", medications=[everolimus(), fluconazole],
                              conditions=conditions, observations=[level("everolimus", 8, days_ago=5)])
    assert finding.trough_recheck is None


def test_everolimus_for_a_cancer_gets_only_the_fixed_dose_advice_never_the_tsc_trough_advice():
    """Afinitor §2.11/§2.12 give its cancer uses the fixed-dose advice; the TSC-SEGA/seizures trough-guided advice
    (double the dose, target 5-15 ng/mL) must not reach an oncology patient's card."""
    breast_cancer = condition(ICD10CM, "C50.911", "Malignant neoplasm of right female breast")
    for perpetrator in (med("carbamazepine 200 MG Oral Tablet", rxnorm="308979"), med("fluconazole 150 MG Oral Tablet", rxnorm="197698")):
        [finding] = rule_findings(check_cyp3a4_interactions, hook="order-sign", medications=[everolimus(), perpetrator],
                                  conditions=[breast_cancer])
        assert advice_indications(finding) == {"fixed-dose"}, perpetrator["medicationCodeableConcept"]
        assert not any("trough" in a.action for a in finding.advice)


def test_everolimus_with_no_use_on_record_still_gets_every_uses_advice():
    [finding] = interactions(everolimus(), med("carbamazepine 200 MG Oral Tablet", rxnorm="308979"))
    assert advice_indications(finding) == {"fixed-dose", "tdm"}


def test_signing_the_discontinuation_of_an_inhibitor_gives_no_card():
    clarithromycin = med("clarithromycin 500 MG Oral Tablet", rxnorm="197517", id="mr-clari")
    discontinued = med("clarithromycin 500 MG Oral Tablet", rxnorm="197517", id="mr-clari", status="cancelled")
    assert interactions(everolimus(), clarithromycin, drafts=[discontinued]) == []


def test_the_summary_is_the_advices_first_sentence_never_cut_mid_sentence():
    """Found by a whole-response audit: carbamazepine with everolimus for TSC seizures gave the 138-character summary
    "... avoid strong CYP3A4 inducers if an alternative exists. If one is required, double the daily everolimus dose,…"
    cut mid-sentence. The summary takes the advice's first sentence; the detail keeps the whole advice."""
    seizures = [condition("http://snomed.info/sct", "7199000", "Tuberous sclerosis syndrome"),
                condition("http://snomed.info/sct", "84757009", "Epilepsy")]
    carbamazepine = med("carbamazepine 200 MG Oral Tablet", rxnorm="197499", draft=True)
    snapshot = snapshot_of(hook="order-sign", medications=[everolimus()], conditions=seizures, drafts=[carbamazepine])
    [card] = render_cards(check_cyp3a4_interactions(snapshot, knowledge()), snapshot)
    assert card.summary.endswith(": avoid strong CYP3A4 inducers if an alternative exists"), card.summary
    assert "double the daily everolimus dose" in card.detail
    from cds_service.cards import _first_clause

    assert _first_clause("Avoid St. John's wort: it may decrease everolimus exposure.") == "avoid St. John's wort"
