"""Why the patient takes an mTOR inhibitor (issue 10 §1): transplant (by organ), TSC uses, LAM, oncology or unknown.

The governing label follows from the use: Zortress for transplant everolimus, Rapamune for oral sirolimus
(renal transplant, LAM), Fyarro for IV sirolimus (PEComa), Afinitor for TSC and oncology everolimus. Evidence is
read from the knowledge data (treatment_contexts.json): the product itself, Condition codes and names, completed
transplant procedures, and a systemic calcineurin inhibitor alongside (supporting evidence of transplant).

Rules ask `treatment_context(snapshot, knowledge, order)` and apply TSC/LAM targets, formulas and wording only
when `context.allows_tsc_lam_rules` (every plausible use is TSC or LAM); a transplant or oncology candidate means
no TSC advice. When several uses are plausible `candidates` lists them and `assumption` says so in plain words.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterable, Mapping
from typing import Any

from cds_service.knowledge import Knowledge
from cds_service.knowledge.loader import contains_phrase, normalize_text
from cds_service.knowledge.records import ProductUse, Source
from cds_service.patient import MedicationOrder, PatientSnapshot, ProcedureEvent

__all__ = ["TreatmentContext", "procedure_transplant_contexts", "regimen_entry", "regimen_for", "treatment_context", "treatment_contexts", "USES"]

USES = ("transplant", "tsc-aml", "tsc-sega", "tsc-seizures", "lam", "oncology", "unknown")
TSC_LAM_USES = frozenset({"tsc-aml", "tsc-sega", "tsc-seizures", "lam"})
# Everolimus strengths only the transplant product carries (treatment_contexts.json resolution rule 1).
TRANSPLANT_EVEROLIMUS_MG = frozenset({0.25, 0.5, 0.75, 1.0})
NOT_CURRENT = frozenset({"stopped", "completed", "cancelled", "entered-in-error", "not-taken"})


@dataclasses.dataclass(frozen=True)
class TreatmentContext:
    """The use an mTOR order serves and the label that governs it."""

    use: str  # one of USES; "unknown" when no use or several of different kinds are plausible
    organ: str | None = None  # "kidney" | "liver" for transplant, when known
    product: str | None = None  # whose label governs: "Zortress", "Afinitor", "Afinitor Disperz", "Rapamune", "Fyarro"
    label: Source | None = None  # the governing label; None when the use is unknown
    regimen: str | None = None  # regimens.json `uses[].key`, when one entry governs
    evidence: tuple[str, ...] = ()  # references: the order, Conditions, Procedures, calcineurin inhibitor orders
    candidates: tuple[str, ...] = ()  # treatment_contexts.json context keys that are plausible ("transplant-kidney", "lam")
    assumption: str | None = None  # what was assumed, in plain words, when the record does not settle the use
    implied_only: bool = False  # no use on record: the candidates are the product's labelled uses

    @property
    def kinds(self) -> frozenset[str]:
        """The uses (coarse) of every plausible candidate."""
        return frozenset(_kind_of(c) for c in self.candidates) or frozenset({self.use})

    @property
    def allows_tsc_lam_rules(self) -> bool:
        """TSC/LAM limits and wording may apply: no transplant use is plausible, and no cancer is on record (Afinitor
        with no use on record keeps the label's TSC trough limit; rules then compute no dose: `implied_only`)."""
        return "transplant" not in self.kinds and ("oncology" not in self.kinds or self.implied_only)

    @property
    def is_transplant_or_oncology(self) -> bool:
        return bool(self.kinds & {"transplant", "oncology"})


def _kind_of(context_key: str) -> str:
    return "transplant" if context_key.startswith("transplant") else "oncology" if context_key.startswith("oncology") else context_key


def treatment_context(snapshot: PatientSnapshot, knowledge: Knowledge, order: MedicationOrder) -> TreatmentContext:
    """The treatment context of one mTOR order (pure: reads only the snapshot and the knowledge).

    Every rule asks it for the same orders: the answer is kept with the snapshot (one per call), keyed by order."""
    cache = snapshot.__dict__.setdefault("_treatment_contexts", {})  # not a field: equality and replace() ignore it
    key = (id(knowledge), order.ref, order.mtor_drug)
    if key not in cache:
        cache[key] = _treatment_context(snapshot, knowledge, order)
    return cache[key]


def _treatment_context(snapshot: PatientSnapshot, knowledge: Knowledge, order: MedicationOrder) -> TreatmentContext:
    drug = order.mtor_drug
    product = _product(order, knowledge)
    evidence: list[str] = [order.ref]
    found = _condition_contexts(snapshot, knowledge)
    procedures = _transplant_procedures(snapshot, knowledge)
    cni = _calcineurin_inhibitors(snapshot, knowledge, order)
    transplant_keys = {k for k in (*found, *procedures) if k.startswith("transplant")}

    candidates: list[str]
    implied_only = False
    if product is not None and product.exclusive:
        candidates = [k for k in product.implies if k in transplant_keys] or list(product.implies)
    else:
        candidates = [k for k in found if _fits_drug(k, drug, product)]
        candidates += [k for k in procedures if k not in candidates]
        if cni and not any(k.startswith("transplant") for k in candidates):
            # A calcineurin inhibitor supports transplant; with oral sirolimus that is the renal-transplant use.
            candidates.append("transplant-kidney" if drug == "sirolimus" else "transplant-other")
        if not candidates and product is not None and snapshot.active_conditions("tsc"):
            # TSC on record, no manifestation coded: the product's TSC uses (rules assume one and say so)
            candidates = [k for k in product.implies if k.startswith("tsc")]
        if not candidates and product is not None:
            candidates, implied_only = list(product.implies), True
    evidence += [ref for key in candidates for ref in found.get(key, ()) + procedures.get(key, ())]
    if any(k.startswith("transplant") for k in candidates):
        evidence += cni
    candidates = _prefer_specific_organ(candidates)

    kinds = {_kind_of(k) for k in candidates}
    use = kinds.pop() if len(kinds) == 1 else "unknown"
    organs = {knowledge.treatment_contexts[k].organ for k in candidates if k.startswith("transplant")}
    organ = organs.pop() if use == "transplant" and len(organs) == 1 else None
    product_name = product.product if product else None
    regimen = _regimen(knowledge, product_name, drug, candidates) if len(candidates) == 1 or use == "oncology" else None
    label = _label(knowledge, regimen, drug, use)
    settled = len(candidates) == 1 and bool(found or procedures or cni or (product and product.exclusive))
    assumption = _assumption(knowledge, candidates, product_name, settled)
    return TreatmentContext(
        use=use,
        organ=organ,
        product=product_name,
        label=label,
        regimen=regimen,
        evidence=tuple(dict.fromkeys(evidence)),
        candidates=tuple(candidates),
        assumption=assumption,
        implied_only=implied_only,
    )


treatment_contexts = treatment_context  # the name used in the phase-2 briefs


def _product(order: MedicationOrder, knowledge: Knowledge) -> ProductUse | None:
    """The product whose label governs an order (treatment_contexts.json product_implies): named by code or name;
    else implied: everolimus in a strength only the transplant product has -> Zortress, a tablet for oral
    suspension -> Afinitor Disperz, other oral everolimus -> Afinitor; IV sirolimus -> Fyarro, oral -> Rapamune
    (generic labels carry the reference product's text; resolution rules 1-4).

    Remembered (Knowledge.remembered) by what it reads: the same orders come with every call."""
    key = (order.product_rxnorm, order.text, order.mtor_drug, order.dose_mg)
    return knowledge.remembered("product", key, lambda: _read_product(knowledge, *key))


def _read_product(knowledge: Knowledge, rxnorm: str | None, text: str, drug: str | None, dose_mg: float | None) -> ProductUse | None:
    coded = knowledge.mtor_products.get(rxnorm or "", {})
    words = _phrase(text)
    named = [
        p for p in knowledge.product_uses
        if p.drug == drug and (coded.get("brand") == p.product or (rxnorm or "") in p.rxnorm
                               or any(contains_phrase(words, _phrase(n)) for n in p.names))
    ]
    if named:  # the longest name wins ("Afinitor Disperz" over "Afinitor")
        return max(named, key=lambda p: len(p.product))
    by_name = {p.product: p for p in knowledge.product_uses}
    strength = coded.get("strength_mg") or dose_mg
    if drug == "everolimus":
        if strength is not None and float(strength) in TRANSPLANT_EVEROLIMUS_MG:
            return by_name.get("Zortress")
        if coded.get("form") == "tablet for oral suspension" or contains_phrase(words, ("suspension",)):
            return by_name.get("Afinitor Disperz")
        return by_name.get("Afinitor")
    if drug == "sirolimus":
        return by_name.get("Fyarro") if _is_intravenous(text) else by_name.get("Rapamune")
    return None


def _is_intravenous(text: str) -> bool:
    words = _phrase(text)
    return any(contains_phrase(words, _phrase(w)) for w in ("injection", "injectable", "intravenous", "infusion"))


def _condition_contexts(snapshot: PatientSnapshot, knowledge: Knowledge) -> dict[str, tuple[str, ...]]:
    """Context key -> active Conditions that show it. TSC uses keep today's reading (ConditionRecord.kinds from
    indications.json, and only with TSC); transplant and oncology are read from treatment_contexts.json.
    The same for every order of the call: kept with the snapshot, like treatment_context()."""
    cache = snapshot.__dict__.setdefault("_condition_contexts", {})
    if id(knowledge) not in cache:
        cache[id(knowledge)] = _read_condition_contexts(snapshot, knowledge)
    return cache[id(knowledge)]


def _read_condition_contexts(snapshot: PatientSnapshot, knowledge: Knowledge) -> dict[str, tuple[str, ...]]:
    found: dict[str, list[str]] = {}
    has_tsc = bool(snapshot.active_conditions("tsc"))
    for condition in snapshot.conditions:
        if not condition.is_active:
            continue
        key = (condition.codes, condition.text, condition.kinds, has_tsc)
        for context in knowledge.remembered("condition-contexts", key, functools.partial(_contexts_of, knowledge, *key)):
            found.setdefault(context, []).append(condition.ref)
    return {k: tuple(v) for k, v in found.items()}


def _contexts_of(knowledge: Knowledge, codes: frozenset[tuple[str, str]], text: str, kinds: frozenset[str],
                 has_tsc: bool) -> tuple[str, ...]:
    """The context keys one active Condition shows, in treatment_contexts.json order."""
    shown = knowledge.transplant_or_oncology_contexts(codes, text)
    return tuple(
        entry.key for entry in knowledge.treatment_contexts.values()
        # shown: transplant and oncology only ("tsc" itself is not a use)
        if (entry.kind in TSC_LAM_USES and entry.key in kinds and (entry.kind == "lam" or has_tsc)) or entry.key in shown
    )


def _transplant_procedures(snapshot: PatientSnapshot, knowledge: Knowledge) -> dict[str, tuple[str, ...]]:
    """Completed transplant procedures -> transplant context keys."""
    found: dict[str, list[str]] = {}
    for procedure in snapshot.procedures:
        for key in procedure_transplant_contexts(knowledge, procedure):
            found.setdefault(key, []).append(procedure.ref)
    return {k: tuple(v) for k, v in found.items()}


def procedure_transplant_contexts(knowledge: Knowledge, procedure: ProcedureEvent) -> frozenset[str]:
    """The transplant context keys a completed (not planned, not draft) Procedure shows: by code, as Conditions are
    read; by name only when it carries no code ("kidney transplant evaluation" coded as an evaluation is not one)."""
    if procedure.is_planned or procedure.is_draft:
        return frozenset()
    shown = knowledge.transplant_or_oncology_contexts(procedure.codes, procedure.text)
    return frozenset(k for k in shown if knowledge.treatment_contexts[k].kind == "transplant")


def _calcineurin_inhibitors(snapshot: PatientSnapshot, knowledge: Knowledge, order: MedicationOrder) -> list[str]:
    """Current systemic tacrolimus or cyclosporine orders (not ointments or eye drops)."""
    refs = []
    for med in snapshot.medications:
        if med is order or med.status in NOT_CURRENT:
            continue
        if _names_a_systemic_cni(knowledge, med.text):
            refs.append(med.ref)
    return refs


@functools.lru_cache(maxsize=4096)
def _names_a_systemic_cni(knowledge: Knowledge, text: str) -> bool:
    """Tacrolimus or cyclosporine by name, not an ointment or eye drops (remembered: drug texts recur)."""
    words = _phrase(text)
    return any(
        any(contains_phrase(words, _phrase(n)) for n in drug.names)
        and not any(contains_phrase(words, _phrase(w)) for w in drug.exclude_if_text_contains)
        for drug in knowledge.supporting_drugs
    )


@functools.lru_cache(maxsize=4096)
def _phrase(text: str) -> tuple[str, ...]:
    """normalize_text, remembered: the knowledge's names and a record's drug texts recur on every call."""
    return normalize_text(text)


def _fits_drug(key: str, drug: str | None, product: ProductUse | None) -> bool:
    """Conditions that are a labelled use of this drug: LAM and PEComa are sirolimus uses (Rapamune, Fyarro); TSC
    and the other cancers are everolimus uses (Afinitor). Sirolimus for TSC is off-label: with no labelled use on
    record, oral sirolimus is read as Rapamune's two uses (resolution rule 3)."""
    if key in ("lam", "oncology-pecoma"):
        return drug == "sirolimus"
    if key.startswith(("oncology", "tsc")):
        return drug == "everolimus"
    return True


def _prefer_specific_organ(candidates: Iterable[str]) -> list[str]:
    keys = list(dict.fromkeys(candidates))
    if "transplant-other" in keys and any(k.startswith("transplant-") and k != "transplant-other" for k in keys):
        keys.remove("transplant-other")  # Z94.0 (Z94.1, ...) is also under the Z94 category: the organ code wins
    return keys


def regimen_for(knowledge: Knowledge, context: TreatmentContext, candidate: str, drug: str | None,
                product: str | None = None) -> Mapping[str, Any] | None:
    """The regimens.json entry governing one plausible use of this order, or of `product` in its place (None when no
    entry covers it)."""
    return regimen_entry(knowledge, _regimen(knowledge, product or context.product, drug, [candidate]))


def regimen_entry(knowledge: Knowledge, key: str | None) -> Mapping[str, Any] | None:
    return next((e for e in knowledge.files["regimens.json"]["uses"] if e["key"] == key), None) if key else None


def _regimen(knowledge: Knowledge, product: str | None, drug: str | None, candidates: list[str]) -> str | None:
    """The regimens.json entry for the product (or, generic, the drug's labelled product) and a single context."""
    uses = knowledge.files["regimens.json"]["uses"]
    wanted = product or {"sirolimus": "Rapamune", "everolimus": "Afinitor"}.get(drug or "")
    if wanted == "Afinitor Disperz":
        wanted = "Afinitor"
    for entry in uses:
        contexts = entry["context"].split("|")
        if entry["product"] == wanted and entry["drug"] == drug and any(c in contexts for c in candidates):
            return str(entry["key"])
    return None


def _label(knowledge: Knowledge, regimen: str | None, drug: str | None, use: str) -> Source | None:
    if regimen is not None:
        entry = next(e for e in knowledge.files["regimens.json"]["uses"] if e["key"] == regimen)
        label: Source = entry["label_source"]
        return label
    if use in TSC_LAM_USES and drug is not None:
        return knowledge.label_sources.get(drug)
    return None


def _assumption(knowledge: Knowledge, candidates: list[str], product: str | None, settled: bool) -> str | None:
    if settled:
        return None
    names = [knowledge.treatment_contexts[k].display for k in candidates]
    if not names:
        return "No indication on record for this mTOR inhibitor."
    what = product or "This mTOR inhibitor"
    if len(names) == 1:
        return f"Assumed {names[0].lower()}: {what} is labelled for it and the record does not say otherwise."
    return f"The record does not say which use: {what} may be for " + ", ".join(n.lower() for n in names) + "."
