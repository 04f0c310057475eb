"""Load the knowledge files, check every entry names a source, and index them for O(1) look-ups.

Each file has `meta` (subject, version, reviewed, next_review), `sources` (key -> label, url) and lists
of entries. Every `source` or `*_source` value must be a key of the file's `sources`; the loader
replaces it with a `Source`. Problems are collected and reported together, never one at a time.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import json
import re
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timedelta
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeVar

from cds_service.knowledge.codes import code_problems
from cds_service.knowledge.records import (
    ConditionAdvice,
    ContextEntry,
    ContraceptionAdvice,
    EarliestStart,
    HepaticDose,
    IndicationEntry,
    InteractionAdvice,
    LabelInteraction,
    LabelOverride,
    LabelRestriction,
    LabelStatement,
    LevelTest,
    LipidAction,
    LipidAnalyte,
    LipidGrade,
    LookbackWindow,
    PediatricNote,
    Perpetrator,
    PregnancyAdvice,
    ProductAdvice,
    ProductStrengths,
    ProductUse,
    QuantitativeHcg,
    Source,
    StartingDose,
    SupportingDrug,
    SurgeryWindow,
    Titration,
    TroughLimit,
    TroughTarget,
    TroughTiming,
    WoundHealingCaution,
    build,
)

KNOWLEDGE_DIR = Path(__file__).parent
FILES = (
    "mtor_drugs.json",
    "interactions.json",
    "vaccines.json",
    "ace_inhibitors.json",
    "observations.json",
    "conditions.json",
    "procedures.json",
    "indications.json",
    "monitoring.json",
    "dosing.json",
    "clinical_conditions.json",
    "code_systems.json",
    # Issue 10 data, read by the rules of the refactored codebase (see knowledge/README.md)
    "treatment_contexts.json",
    "regimens.json",
    "products.json",
    "lookback.json",
    "publishers.json",
)
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
CVX = "http://hl7.org/fhir/sid/cvx"
LOINC = "http://loinc.org"
_T = TypeVar("_T")
MEMO_LIMIT = 8192  # answers Knowledge.remembered keeps per table and process; a full table is cleared


class KnowledgeError(ValueError):
    """The knowledge files are missing, malformed or cite unknown sources; lists every problem."""


class DrugRole(str, enum.Enum):
    MTOR_INHIBITOR = "mtor-inhibitor"
    CYP3A_PERPETRATOR = "cyp3a-perpetrator"
    LIVE_VACCINE = "live-vaccine"
    AMBIGUOUS_VACCINE = "ambiguous-vaccine"
    NOT_LIVE_VACCINE = "not-live-vaccine"
    ACE_INHIBITOR = "ace-inhibitor"
    LABEL_INTERACTION = "label-interaction"  # raises mTOR levels outside the CYP3A classes (cannabidiol)


@dataclasses.dataclass(frozen=True)
class DrugConcept:
    """One recognisable drug or vaccine: what it is and the knowledge entry behind it."""

    key: str
    role: DrugRole
    display: str
    entry: Mapping[str, Any] = dataclasses.field(compare=False, repr=False)
    exclude_words: tuple[tuple[str, ...], ...] = dataclasses.field(default=(), compare=False, repr=False)


_APOSTROPHES = re.compile(r"['’`]")
_NON_WORD = re.compile(r"[^0-9a-zµ]+")


@functools.lru_cache(maxsize=16384)  # the same drug names recur across calls
def normalize_text(text: str) -> tuple[str, ...]:
    """Lowercase words: apostrophes dropped, other punctuation splits ("St. John's wort" -> st johns wort)."""
    return tuple(_NON_WORD.sub(" ", _APOSTROPHES.sub("", text.lower())).split())


# The words an order uses for "a vaccine being given": "Yellow fever vaccination" and "yellow fever immunisation" name
# the same product as the knowledge's "yellow fever vaccine". Drug names are matched with each read as "vaccine".
VACCINE_WORD = "vaccine"
VACCINATION_WORDS = frozenset({
    "vaccine", "vaccines", "vaccination", "vaccinations",
    "immunization", "immunizations", "immunisation", "immunisations",
})


def as_drug_name_words(words: tuple[str, ...]) -> tuple[str, ...]:
    """Words as drug names are matched: every vaccination word read as "vaccine" (see VACCINATION_WORDS)."""
    return tuple(VACCINE_WORD if w in VACCINATION_WORDS else w for w in words)


class PhraseIndex:
    """Finds whole-word phrases in free text in one pass, keyed by each phrase's first word. With `words` (e.g.
    as_drug_name_words) both the phrases and the text are read through it."""

    def __init__(self, words: Callable[[tuple[str, ...]], tuple[str, ...]] | None = None) -> None:
        self._by_first_word: dict[str, list[tuple[tuple[str, ...], Any]]] = {}
        self._words = words

    def add(self, phrase: str, value: Any) -> None:
        words = normalize_text(phrase)
        words = self._words(words) if self._words else words
        if words:
            self._by_first_word.setdefault(words[0], []).append((words, value))

    def find(self, words: tuple[str, ...]) -> list[Any]:
        words = self._words(words) if self._words else words
        found = []
        for i, word in enumerate(words):
            for phrase, value in self._by_first_word.get(word, ()):
                if words[i : i + len(phrase)] == phrase and value not in found:
                    found.append(value)
        return found


def contains_phrase(words: tuple[str, ...], phrase: tuple[str, ...]) -> bool:
    n = len(phrase)
    return any(words[i : i + n] == phrase for i in range(len(words) - n + 1))


class Knowledge:
    """Read-only, indexed view of the knowledge files. Build it with `load_knowledge()`."""

    def __init__(self, files: Mapping[str, Mapping[str, Any]]):
        self.files = MappingProxyType(dict(files))
        self._memo: dict[str, dict[Any, Any]] = {}  # Knowledge.remembered: table -> key -> answer
        drugs = files["mtor_drugs.json"]
        self.mtor_drugs: Mapping[str, Mapping] = {e["key"]: e for e in drugs["mtor_inhibitors"]}
        self.mtor_products: Mapping[str, Mapping] = {p["rxnorm"]: p for p in drugs["products"]}
        interactions = files["interactions.json"]
        self.perpetrators: Mapping[str, Perpetrator] = {e["key"]: build(Perpetrator, e) for e in interactions["perpetrators"]}
        self.interaction_advice = tuple(build(InteractionAdvice, a) for a in interactions["advice"])
        self.label_overrides: Mapping[tuple[str, str], LabelOverride] = {
            (e["key"], product): build(LabelOverride, o, perpetrator=e["key"], product=product)
            for e in interactions["perpetrators"]
            for product, o in e.get("by_label", {}).items()
            if o.get("verified") is True  # an unread label statement never reaches a card
        }
        self.label_interactions: Mapping[tuple[str, str], LabelInteraction] = {
            (e["key"], drug): _label_interaction(e, drug, advice) for e in interactions["label_specific"]
            for drug, advice in e["by_drug"].items()
        }
        self._build_lookback(files["lookback.json"], obs_quantitative=files["observations.json"]["hcg_tests"])
        self.product_advice = tuple(
            build(ProductAdvice, fact, product=use["product"], topic=topic, text=fact["value"])
            for use in files["regimens.json"]["uses"]
            for topic in ("vaccination", "hepatic", "ace_inhibitor_angioedema")
            if isinstance(fact := use.get(topic), dict) and fact.get("verified") is True and isinstance(fact.get("value"), str)
        )
        self.live_vaccine_statements: Mapping[str, LabelStatement] = {
            s["drug"]: build(LabelStatement, s) for s in files["vaccines.json"]["label_statements"]
        }
        self.angioedema_statement = build(LabelStatement, files["ace_inhibitors.json"]["label_statement"])
        self.angioedema_statements: Mapping[str, LabelStatement] = {
            s.drug: s for s in (self.angioedema_statement, *(
                build(LabelStatement, e) for e in files["ace_inhibitors.json"].get("label_statements_by_drug", ())
                if e.get("verified") is True
            ))
        }
        self.label_sources: Mapping[str, Source] = {k: e["label_source"] for k, e in self.mtor_drugs.items()}
        # Only intervals read in the drug's own label: sirolimus's 7/14 days are `verified: false` (a secondary
        # summary; Rapamune sets no interval), so sirolimus has no window and its card quotes the label's warning.
        self.surgery_windows = {
            k: build(SurgeryWindow, e["surgery"]) for k, e in self.mtor_drugs.items() if e["surgery"].get("verified", True)
        }
        self.wound_healing_cautions = _wound_healing_cautions(files["regimens.json"])
        # How far ahead a booked or planned surgery is worth planning for (lookback.json, project policy).
        self.surgery_planning_days: int = next(
            w["ahead_days"] for w in files["lookback.json"]["windows"] if w["evidence"] == "surgery-planned"
        )
        self.trough_limits = {k: build(TroughLimit, e["trough_limit"]) for k, e in self.mtor_drugs.items()}
        self.pregnancy_advice = {k: build(PregnancyAdvice, e["pregnancy"]) for k, e in self.mtor_drugs.items()}
        obs = files["observations.json"]
        self.drug_level_loinc: Mapping[str, str] = {c: e["drug"] for e in obs["drug_levels"] for c in e["loinc"]}
        self.level_tests: Mapping[str, LevelTest] = {
            e["drug"]: LevelTest(e["drug"], e["loinc"][0], e["display"]) for e in obs["drug_levels"]
        }
        self.pregnancy_status = obs["pregnancy_status"]
        self.hcg_tests = obs["hcg_tests"]
        self.hcg_loinc = (frozenset(self.hcg_tests["qualitative_loinc"]) | frozenset(self.hcg_tests["quantitative_loinc"])
                          | self.quantitative_hcg.loinc)
        results = obs["result_codes"]
        self.result_positive = _coding_set(results["positive"]) | _coding_set(results["positive_interpretations"])
        self.result_negative = _coding_set(results["negative"]) | _coding_set(results["negative_interpretations"])
        self.result_positive_words = frozenset(results["positive_words"])
        self.result_negative_words = frozenset(results["negative_words"])
        # Unit look-ups ignore case: EHRs send "ng/ml", "ug/l" as often as UCUM's "ng/mL", "ug/L".
        mass = obs["mass_concentration_units"]
        self.ng_per_ml_factor = {u.lower(): f for u, f in mass["to_ng_per_ml"].items()}
        self.nmol_per_l_factor = {u.lower(): f for u, f in mass["molar_to_nmol_per_l"].items()}
        self.cm_factor = {u.lower(): f for u, f in obs["body_units"]["height_to_cm"].items()}
        self.kg_factor = {u.lower(): f for u, f in obs["body_units"]["weight_to_kg"].items()}
        self.mg_dl_factor = {u.lower(): f for u, f in obs["lipid_units"]["to_mg_dl"].items()}
        self._index_conditions(files)
        self.indications: Mapping[str, IndicationEntry] = {
            e["key"]: build(IndicationEntry, e) for e in files["indications.json"]["indications"]
        }
        monitoring = files["monitoring.json"]
        self.trough_targets = tuple(build(TroughTarget, t) for t in monitoring["trough_targets"])
        self.trough_timing = tuple(build(TroughTiming, t) for t in monitoring["trough_timing"])
        lipids = monitoring["lipids"]
        self.lipid_actions = tuple(build(LipidAction, a) for a in lipids["actions"])
        self.lipid_analytes: Mapping[str, LipidAnalyte] = {
            analyte: build(LipidAnalyte, lipids[analyte], analyte=analyte, grades=tuple(build(LipidGrade, g) for g in lipids[analyte]["grades"]))
            for analyte in ("triglycerides", "cholesterol")
        }
        self.lipid_panel_interval_days: int = lipids["panel_interval_days"]
        self.lipid_panel_interval_source: Source = lipids["panel_interval_source"]
        self.lipid_loinc: Mapping[str, str] = {code: a.analyte for a in self.lipid_analytes.values() for code in a.loinc}
        body = monitoring["body_measurements"]
        self.body_loinc: Mapping[str, str] = {
            **{c: "height" for c in body["height_loinc"]}, **{c: "weight" for c in body["weight_loinc"]}
        }
        self.dosing = files["dosing.json"]
        self._build_dosing(self.dosing)
        # One LOINC look-up tells which kind of observation a rule reads (and of which analyte).
        self.observation_kinds: Mapping[str, tuple[str, str | None]] = {
            **{c: ("drug-level", drug) for c, drug in self.drug_level_loinc.items()},
            **{c: ("pregnancy-status", None) for c in self.pregnancy_status["loinc"]},
            **{c: ("hcg", None) for c in self.hcg_loinc},
            **{c: ("lipid", analyte) for c, analyte in self.lipid_loinc.items()},
            **{c: (kind, None) for c, kind in self.body_loinc.items()},
        }
        self.pregnant_codes = _coding_set(self.pregnancy_status["pregnant_codes"])
        self.not_pregnant_codes = _coding_set(self.pregnancy_status["not_pregnant_codes"])
        self.pregnant_words = frozenset(normalize_text(w) for w in self.pregnancy_status["pregnant_words"])
        self.not_pregnant_words = frozenset(normalize_text(w) for w in self.pregnancy_status["not_pregnant_words"])
        self.condition_advice = tuple(build(ConditionAdvice, a) for a in files["clinical_conditions.json"]["label_advice"])
        procedures = files["procedures.json"]
        self.surgical_categories = _coding_set(procedures["surgical_categories"])
        # Major operations by their own SNOMED CT code (an order or procedure with no surgical category or word)
        self.surgical_procedures: Mapping[tuple[str, str], str] = MappingProxyType(
            {(c["system"], c["code"]): c["display"] for c in procedures.get("surgical_procedures", ())}
        )
        self.surgical_words = frozenset(procedures["surgical_words"]["words"])
        self.surgical_suffixes = tuple(procedures["surgical_words"]["suffixes"])
        self.non_surgical_codes = _coding_set(procedures["non_surgical_procedures"])
        self.non_surgical_phrases = tuple(normalize_text(w) for w in procedures["non_surgical_words"]["words"])
        appointments = procedures["surgical_appointment"]
        self.surgical_service_types = _coding_set(appointments["service_types"])
        self.surgical_specialties = _coding_set(appointments["specialties"])
        self.clinic_visit_appointment_types = _coding_set(procedures["clinic_visit_appointment_types"]["codes"])
        self.planned_statuses = {k: frozenset(v) for k, v in procedures["planned_statuses"].items() if k != "source"}
        self.done_statuses = {k: frozenset(v) for k, v in procedures["done_statuses"].items() if k != "source"}
        self.system_aliases: Mapping[str, str] = {
            alias: s["uri"] for s in files["code_systems.json"]["systems"] for alias in s["aliases"]
        }
        self._index_drugs(files)
        self._build_treatment_contexts(files["treatment_contexts.json"])
        self._build_label_restrictions(files["regimens.json"])

    def _build_label_restrictions(self, regimens: Mapping[str, Any]) -> None:
        """Transplant uses a label advises against, and its earliest start after transplant (verified facts only)."""
        self.label_restrictions = tuple(
            build(LabelRestriction, e, reasons=tuple(e["reasons"].items())) for e in regimens.get("label_restrictions", ()) if e.get("verified") is True
        )
        self.earliest_starts = tuple(
            EarliestStart(source=fact["source"], section=str(fact.get("card_section") or fact.get("section", "")),
                          product=use["product"], drug=use["drug"], context=context, days=fact["value"], reason=fact["reason"])
            for use in regimens["uses"]
            if isinstance(fact := use.get("earliest_start_days_after_transplant"), dict) and fact.get("verified") is True
            for context in use["context"].split("|")
        )
        problems = [f"{r.key} names unknown context {c!r}" for r in self.label_restrictions for c in r.contexts
                    if c not in self.treatment_contexts]
        problems += [f"{r.key} has no reason for {c!r}" for r in self.label_restrictions for c in r.contexts if c not in dict(r.reasons)]
        if problems:
            raise ValueError("regimens.json label_restrictions: " + "; ".join(problems))

    def _build_treatment_contexts(self, data: Mapping[str, Any]) -> None:
        """Why a patient takes an mTOR inhibitor (issue 10): contexts by code/name, products' uses, CNIs."""
        contexts = []
        for e in data["contexts"]:
            codes = [c for c in e.get("codes", ()) if c.get("verified", True)]  # unverified codes are not evidence
            contexts.append(ContextEntry(
                key=e["key"], kind=e["kind"], display=e["display"], organ=e.get("organ"), source=e["source"],
                codes=frozenset((c["system"], c["code"]) for c in codes if not c.get("prefix")),
                prefixes=tuple((c["system"], c["code"]) for c in codes if c.get("prefix")),
                exclude_codes=frozenset((c["system"], c["code"]) for c in e.get("exclude_codes", ())),
                names=tuple(e.get("names", ())),
            ))
        self.treatment_contexts: Mapping[str, ContextEntry] = {c.key: c for c in contexts}
        # The code systems the contexts are written in (SNOMED CT, ICD-10-CM): a record coded only in another
        # system (CPT, a local code) is read by its name, as an uncoded one is.
        self.context_code_systems = frozenset(
            system for c in contexts for system, _ in (*c.codes, *c.prefixes, *c.exclude_codes)
        )
        self.product_uses = tuple(build(ProductUse, e) for e in data["product_implies"])
        self.supporting_drugs = tuple(build(SupportingDrug, e) for e in data["calcineurin_inhibitors"])
        problems = [
            f"{p.product} implies unknown context {key!r}"
            for p in self.product_uses for key in p.implies if key not in self.treatment_contexts
        ]
        if problems:
            raise ValueError("treatment_contexts.json: " + "; ".join(problems))

    def _build_lookback(self, lookback: Mapping[str, Any], obs_quantitative: Mapping[str, Any]) -> None:
        self.lookback: Mapping[str, LookbackWindow] = {w["evidence"]: build(LookbackWindow, w) for w in lookback["windows"]}
        self.stale_evidence_source: Source = lookback["stale_evidence"]["source"]
        q = lookback["hcg_quantitative"]
        codes = q["quantitative_codes"]
        self.quantitative_hcg = QuantitativeHcg(
            source=q["source"],
            loinc=frozenset(c["code"] for c in codes) | frozenset(obs_quantitative["quantitative_loinc"]),
            threshold_loinc=frozenset(c["code"] for c in codes if c["cutoff_applies"]),
            negative_below_iu_per_l=q["negative_below_iu_per_l"],
            iu_per_l_factor={u.lower(): f for u, f in q["units_equivalent"].items()},
            positive_interpretations=_coding_set(q["interpretations"]["positive"]),
            negative_interpretations=_coding_set(q["interpretations"]["negative"]),
        )

    def lookback_start(self, evidence: str, now: datetime) -> datetime:
        """The oldest time evidence of this kind may be from and still drive advice (lookback.json)."""
        days = self.lookback[evidence].max_age_days
        if days is None:
            raise KeyError(f"lookback window {evidence!r} has no max_age_days")
        return now - timedelta(days=days)

    def _build_dosing(self, dosing: Mapping[str, Any]) -> None:
        self.product_strengths = tuple(build(ProductStrengths, e) for e in dosing["strengths"])
        self.starting_doses = tuple(build(StartingDose, e) for e in dosing["starting_doses"])
        self.hepatic_doses = tuple(build(HepaticDose, e) for e in dosing["hepatic"])
        self.pediatric_notes = tuple(build(PediatricNote, e) for e in dosing["pediatric"])
        self.contraception_advice = tuple(build(ContraceptionAdvice, e) for e in dosing["contraception"])
        # One titration entry per drug (an object or a list). The shipped entry cites the Afinitor label (§2.8, the
        # +5 mg cap) and names no drug: it is everolimus's. A drug without an entry gets no cap and no Afinitor
        # citation; its dose proposal cites its own trough target's label section.
        entries = dosing["titration"] if isinstance(dosing["titration"], list) else [dosing["titration"]]
        self.titrations: Mapping[str, Titration] = {
            t.drug: t for t in (build(Titration, e, drug=e.get("drug", "everolimus")) for e in entries)
        }
        self.bsa_source: Source = dosing["bsa"]["source"]

    def _index_conditions(self, files: Mapping[str, Mapping]) -> None:
        """Condition kinds ("pregnancy", "tsc", "tsc-aml", "hepatic-impairment", ...) by code, code prefix or name."""
        self._condition_codes: dict[tuple[str, str], set[str]] = {}
        self._condition_prefixes: list[tuple[str, str, str]] = []
        self._condition_names = PhraseIndex()
        self._condition_name_excludes: dict[str, tuple[tuple[str, ...], ...]] = {}  # kind -> phrases that veto its names

        def add(kind: str, codes: Iterable[Mapping], names: Iterable[str] = (), excludes: Iterable[str] = ()) -> None:
            for c in codes:
                kinds = {kind} | ({f"child-pugh-{c['child_pugh']}"} if c.get("child_pugh") else set())
                if c.get("prefix"):
                    self._condition_prefixes += [(c["system"], c["code"], k) for k in kinds]
                else:
                    self._condition_codes.setdefault((c["system"], c["code"]), set()).update(kinds)
            for name in names:
                self._condition_names.add(name, kind)
            if excludes:
                self._condition_name_excludes[kind] = tuple(normalize_text(e) for e in excludes)

        add("pregnancy", files["conditions.json"]["pregnancy"])
        add("pregnancy-ended", files["conditions.json"]["pregnancy_ended"])
        indications = files["indications.json"]
        add("tsc", indications["tsc"]["codes"], indications["tsc"].get("names", ()))
        for entry in indications["indications"]:
            add(entry["key"], entry.get("codes", ()), entry.get("names", ()))
        clinical = files["clinical_conditions.json"]
        add("hepatic-impairment", clinical["hepatic_impairment"])
        infection_names = clinical["severe_infection_names"]
        add("severe-infection", clinical["severe_infections"], infection_names["names"], infection_names.get("exclude_if_text_contains", ()))
        add("pneumonitis", clinical["pneumonitis"])

    def transplant_or_oncology_contexts(self, codes: frozenset[tuple[str, str]], text: str) -> frozenset[str]:
        """Keys of the transplant and oncology contexts a Condition (or Procedure) shows: by code; by name only when it
        carries no code in a system the contexts are written in (names like "kidney transplant" also occur in
        "evaluation for kidney transplant", which a SNOMED- or ICD-10-coded record would say with another code; a
        CPT- or locally-coded one is read by its name).

        Remembered per codes and name: the reader and several rules ask it of the same records on every call."""
        return self.remembered("contexts", (codes, text), lambda: self._contexts_shown(codes, text))

    def remembered(self, table: str, key: Any, compute: Callable[[], _T]) -> _T:
        """compute(), remembered in `table` under `key`: for pure functions of this (immutable) knowledge and their
        arguments, asked again on every call because the same drugs, labs and conditions recur. Each Knowledge keeps
        its own memo (it goes when the knowledge goes), at most MEMO_LIMIT answers per table so that no request can
        grow it without limit. Made per worker process: the master's (empty at fork) is copied, not shared."""
        try:
            return self._memo[table][key]  # the common case: known
        except KeyError:
            pass
        memo = self._memo.setdefault(table, {})
        if len(memo) >= MEMO_LIMIT:
            memo.clear()
        found = memo[key] = compute()
        return found

    def _contexts_shown(self, codes: frozenset[tuple[str, str]], text: str) -> frozenset[str]:
        coded = any(system in self.context_code_systems for system, _ in codes)
        words = () if coded else normalize_text(text)
        return frozenset(
            entry.key for entry in self.treatment_contexts.values()
            if entry.kind in ("transplant", "oncology")
            and (entry.matches_codes(codes) if coded else any(contains_phrase(words, normalize_text(n)) for n in entry.names))
        )

    def condition_kinds(self, codes: Iterable[tuple[str, str]], text: str) -> frozenset[str]:
        kinds: set[str] = set()
        matched_code = False
        for system, code in codes:
            found = self._condition_codes.get((system, code))
            if found:
                kinds |= found
                matched_code = True
            for p_system, prefix, kind in self._condition_prefixes:
                if system == p_system and code.startswith(prefix):
                    kinds.add(kind)
                    matched_code = True
        if not matched_code and text:
            words = normalize_text(text)
            kinds.update(kind for kind in self._condition_names.find(words)
                         if not any(contains_phrase(words, e) for e in self._condition_name_excludes.get(kind, ())))
        return frozenset(kinds)

    def _index_drugs(self, files: Mapping[str, Mapping]) -> None:
        self.rxnorm: dict[str, list[DrugConcept]] = {}
        self.cvx: dict[str, list[DrugConcept]] = {}
        self.names = PhraseIndex(as_drug_name_words)
        self.concepts: dict[tuple[DrugRole, str], DrugConcept] = {}

        def add(role: DrugRole, entry: Mapping, codes: Iterable[str] = (), cvx: Iterable[str] = ()) -> None:
            concept = DrugConcept(
                key=entry["key"],
                role=role,
                display=entry.get("display", entry["key"]),
                entry=entry,
                exclude_words=tuple(normalize_text(w) for w in entry.get("exclude_if_text_contains", ())),
            )
            self.concepts[(role, concept.key)] = concept
            for code in codes:
                self.rxnorm.setdefault(code, []).append(concept)
            for code in cvx:
                self.cvx.setdefault(code, []).append(concept)
            for name in entry.get("names", ()):
                self.names.add(name, concept)

        for entry in self.mtor_drugs.values():
            product_codes = [p["rxnorm"] for p in self.mtor_products.values() if p["drug"] == entry["key"]]
            add(DrugRole.MTOR_INHIBITOR, entry, [*entry["rxnorm"], *product_codes])
        for entry in files["interactions.json"]["perpetrators"]:
            add(DrugRole.CYP3A_PERPETRATOR, entry, entry.get("rxnorm", ()))
        vaccines = files["vaccines.json"]
        for role, list_name in (
            (DrugRole.LIVE_VACCINE, "live_vaccines"),
            (DrugRole.AMBIGUOUS_VACCINE, "ambiguous_vaccines"),
            (DrugRole.NOT_LIVE_VACCINE, "not_live"),
        ):
            for entry in vaccines.get(list_name, ()):
                add(role, entry, entry.get("rxnorm", ()), entry.get("cvx", ()))
        for entry in files["ace_inhibitors.json"]["ace_inhibitors"]:
            add(DrugRole.ACE_INHIBITOR, entry, entry.get("rxnorm", ()))
        for entry in files["interactions.json"]["label_specific"]:
            add(DrugRole.LABEL_INTERACTION, {"key": entry["key"], **entry["perpetrator"]}, entry["perpetrator"].get("rxnorm", ()))

    def recognize_medication(self, codings: Iterable[Mapping], texts: Iterable[str]) -> tuple[DrugConcept, ...]:
        """What a medication is: by RxNorm or CVX code first, by generic or brand name when no code is known."""
        words = normalize_text(" ".join(t for t in texts if isinstance(t, str)))
        found: list[DrugConcept] = []
        for coding in codings:
            system, code = coding.get("system"), coding.get("code")
            if not isinstance(code, str):
                continue
            table = self.rxnorm if system == RXNORM else self.cvx if system == CVX else None
            for concept in (table or {}).get(code.strip(), ()):
                if concept not in found:
                    found.append(concept)
        if not found:
            found = self.names.find(words)
            roles = {c.role for c in found}
            if DrugRole.NOT_LIVE_VACCINE in roles:
                # "zoster vaccine recombinant" must not be read as a live zoster vaccine by a shared word.
                found = [c for c in found if c.role is not DrugRole.LIVE_VACCINE]
            if roles & {DrugRole.NOT_LIVE_VACCINE, DrugRole.LIVE_VACCINE}:
                # "Typhoid Vaccine Live Ty21a" also names the ambiguous "typhoid vaccine": the specific name wins.
                found = [c for c in found if c.role is not DrugRole.AMBIGUOUS_VACCINE]
        return tuple(c for c in found if not any(contains_phrase(words, w) for w in c.exclude_words))

    def advice_for(
        self, drug: str, effect: str, strength: str, perpetrator: str, indication: str | None = None
    ) -> list[InteractionAdvice]:
        """The label's advice for an mTOR drug and interacting product: product-specific advice (grapefruit,
        St John's wort) wins over the class advice; with no known indication, every indication's advice."""
        matches = [
            a for a in self.interaction_advice
            if a.drug == drug and a.effect == effect and a.strength == strength
            and a.perpetrator in (None, perpetrator)
            and (indication is None or a.indication in (None, "all", indication))
        ]
        specific = [a for a in matches if a.perpetrator == perpetrator]
        return specific or matches


def _label_interaction(entry: Mapping[str, Any], drug: str, advice: Mapping[str, Any]) -> LabelInteraction:
    """`source` is the literature the entry rests on; `label_*` the mTOR product label that states it, when read."""
    label = advice.get("label") or {}
    verified_label = label.get("verified") is True
    literature = (entry.get("literature") or {}).get("source") or entry["source"]
    return LabelInteraction(
        source=literature,
        perpetrator=entry["key"],
        display=entry["perpetrator"]["display"],
        drug=drug,
        indicator=advice["indicator"],
        action=advice["action"],
        recheck_days=advice.get("recheck_days", advice.get("recheck_days_min")),
        recheck_days_latest=advice.get("recheck_days_max"),
        recheck_source=advice["recheck_source"],
        label_product=label.get("product") if verified_label else None,
        label_source=label.get("source") if verified_label else None,
        label_section=label.get("section", "") if verified_label else "",
        label_text=label.get("text") if verified_label else None,
    )


def _wound_healing_cautions(regimens: Mapping[str, Any]) -> Mapping[str, WoundHealingCaution]:
    """Product -> its label's wound-healing warning with no hold interval (regimens.json `surgery`/`wound_healing`
    entries whose value has a `heading` and `label_hold_days: null`)."""
    cautions = {}
    for use in regimens["uses"]:
        for field in ("surgery", "wound_healing"):
            entry = use.get(field)
            value = entry.get("value") if isinstance(entry, dict) else None
            if isinstance(value, dict) and value.get("heading") and value.get("label_hold_days") is None:
                cautions[use["product"]] = WoundHealingCaution(
                    source=entry["source"], section=entry["card_section"], product=use["product"], drug=use["drug"],
                    heading=value["heading"],
                )
    return cautions


def _coding_set(codings: Iterable[Mapping]) -> frozenset[tuple[str, str]]:
    return frozenset((c["system"], c["code"]) for c in codings)


def load_knowledge(directory: Path = KNOWLEDGE_DIR) -> Knowledge:
    """Load, validate and index every knowledge file; raise KnowledgeError listing all problems."""
    problems: list[str] = []
    files: dict[str, Mapping] = {}
    for name in FILES:
        path = directory / name
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            problems.append(f"{name}: cannot be read: {exc}")
            continue
        files[name] = _resolve_sources(name, raw, problems)
        problems += [f"{name}: {problem}" for problem in code_problems(raw)]
    if not problems:
        try:
            knowledge = Knowledge(files)
        except (KeyError, TypeError, ValueError) as exc:
            problems.append(f"knowledge structure: missing or malformed {exc}")
    if problems:
        raise KnowledgeError("knowledge files are invalid:\n  " + "\n  ".join(problems))
    return knowledge


def _resolve_sources(file_name: str, raw: Any, problems: list[str]) -> Mapping:
    if not isinstance(raw, dict):
        problems.append(f"{file_name}: top level must be an object")
        return {}
    meta = raw.get("meta")
    for field in ("subject", "version", "reviewed", "next_review"):
        if not isinstance(meta, dict) or not meta.get(field):
            problems.append(f"{file_name}: meta.{field} is missing")
    sources = {}
    for key, value in (raw.get("sources") or {}).items():
        if not isinstance(value, dict) or not value.get("label"):
            problems.append(f"{file_name}: source {key!r} has no label")
            continue
        sources[key] = Source(key=key, label=value["label"], url=value.get("url"), read_at=value.get("read_at"))

    def resolve(node: Any, path: str, inherited: bool) -> Any:
        """Replace source keys by Source objects; every object in a list must cite a source, its own or a parent's."""
        if isinstance(node, list):
            for i, item in enumerate(node):
                if isinstance(item, dict) and "source" not in item and not inherited:
                    problems.append(f"{file_name}: {path}[{i}] has no source")
            return [resolve(item, f"{path}[{i}]", inherited) for i, item in enumerate(node)]
        if not isinstance(node, dict):
            return node
        has_source = inherited or "source" in node
        out = {}
        for key, value in node.items():
            if key == "source" or key.endswith("_source"):
                out[key] = check(value, f"{path}.{key}")
            elif key.endswith("_sources"):
                out[key] = [check(v, f"{path}.{key}") for v in (value if isinstance(value, list) else [value])]
            else:
                out[key] = resolve(value, f"{path}.{key}", has_source)
        return out

    def check(value: Any, where: str) -> Any:
        if value not in sources:
            problems.append(f"{file_name}: {where} = {value!r} is not a key of 'sources'")
        return sources.get(value, value)

    resolved = {k: (resolve(v, k, False) if k not in ("meta", "sources") else v) for k, v in raw.items()}
    resolved["sources"] = sources
    return resolved
