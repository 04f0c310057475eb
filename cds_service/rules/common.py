"""Small helpers several rules share: which mTOR order a finding is about, dose arithmetic from the label."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable

from cds_service.knowledge import Knowledge
from cds_service.knowledge.records import ProductStrengths, Source, TroughTarget, TroughTiming
from cds_service.patient import MedicationOrder, PatientSnapshot
from cds_service.rules.treatment_context import treatment_context


def drug_of(order: MedicationOrder) -> str:
    """The mTOR drug of an order from `snapshot.mtor_orders` (which holds only orders that have one)."""
    if order.mtor_drug is None:
        raise ValueError(f"{order.ref} is not an mTOR inhibitor order")
    return order.mtor_drug


def preferred_mtor(snapshot: PatientSnapshot, prefer_draft: bool) -> MedicationOrder:
    """The mTOR order a card is about: the draft being ordered, or the current one."""
    wanted = [m for m in snapshot.mtor_orders if m.is_draft == prefer_draft]
    return (wanted or list(snapshot.mtor_orders))[0]


def product_strengths(order: MedicationOrder, knowledge: Knowledge) -> ProductStrengths | None:
    """The strengths entry for the order's product (brand or form), else the drug's first product."""
    product = knowledge.mtor_products.get(order.product_rxnorm or "", {})
    text = order.text.lower()
    unit_forms = [e for e in knowledge.product_strengths if e.drug == drug_of(order) and not e.strengths_mg]
    if any(e.form and (e.form == product.get("form") or e.form in text) for e in unit_forms):
        return None  # an oral solution: no tablet strengths to round to (and no tablet product to name)
    entries = [e for e in knowledge.product_strengths if e.drug == drug_of(order) and e.strengths_mg]
    for entry in entries:  # most specific first: brand names, then the product's form
        names = [n.lower() for n in entry.names]
        if product.get("brand") in entry.names or any(n in text for n in names if " " in n):
            return entry
    for entry in entries:
        if product.get("form") and product.get("form") == entry.form:
            return entry
    for entry in entries:
        if any(n.lower() in text for n in entry.names):
            return entry
    return entries[0] if entries else None


def achievable_doses(strengths_mg: Iterable[float], max_units: int = 4) -> list[float]:
    """Daily doses made of up to `max_units` units of one product's strengths (never mixing products)."""
    doses = {round(sum(combo), 3) for n in range(1, max_units + 1) for combo in itertools.combinations_with_replacement(strengths_mg, n)}
    return sorted(doses)


def proportional_dose(current_mg: float, target: float, measured: float) -> float:
    """The label's formula: new dose = current dose x (target concentration / measured concentration)."""
    return current_mg * target / measured


def round_down_to(doses: list[float], value: float) -> float | None:
    below = [d for d in doses if d <= value + 1e-9]
    return below[-1] if below else None


def round_to_nearest(doses: list[float], value: float) -> float:
    return min(doses, key=lambda d: (abs(d - value), d))


def within_reproductive_ages(knowledge: Knowledge, sex: str | None, age_years: float | None) -> bool | None:
    """Whether an age is inside dosing.json's reproductive-potential ages for that sex (policy, not a clinical fact);
    None when the age is unknown or the knowledge gives no ages for that sex."""
    potential = knowledge.dosing["reproductive_potential"]
    low, high = potential.get(f"{sex}_min_age_years"), potential.get(f"{sex}_max_age_years")
    if age_years is None or low is None or high is None:
        return None
    return bool(low <= age_years <= high)


def mosteller_bsa(height_cm: float, weight_kg: float) -> float:
    return math.sqrt(height_cm * weight_kg / 3600)


def trough_target(knowledge: Knowledge, drug: str, indication: str | None) -> TroughTarget | None:
    return next((t for t in knowledge.trough_targets if t.drug == drug and t.indication == indication), None)


def trough_timing(knowledge: Knowledge, drug: str, event: str) -> TroughTiming | None:
    return next((t for t in knowledge.trough_timing if t.drug == drug and t.event == event), None)



def mtor_product(order: MedicationOrder, knowledge: Knowledge, snapshot: PatientSnapshot) -> str | None:
    """The product whose label governs an mTOR order: "Zortress", "Afinitor", "Rapamune", "Fyarro", or None.

    The treatment context's product (by code, name or a transplant-only strength); else oral sirolimus is
    Rapamune's (its generics carry Rapamune's label) and everolimus for a transplant use is Zortress's (the only
    everolimus transplant label). Everolimus otherwise stays None (Afinitor's table applies, as before issue 10).
    """
    context = treatment_context(snapshot, knowledge, order)
    product = "Afinitor" if context.product == "Afinitor Disperz" else context.product
    if product is None and drug_of(order) == "sirolimus":
        product = "Rapamune"
    if product is None and drug_of(order) == "everolimus" and context.use == "transplant":
        product = "Zortress"
    return product


# Each drug's transplant product (regimens.json: Zortress for everolimus, Rapamune for oral sirolimus): its label governs
# the drug after a transplant, whatever product was ordered.
TRANSPLANT_PRODUCTS = {"everolimus": "Zortress", "sirolimus": "Rapamune"}


# Products whose own label's statements on a topic are not in the knowledge as verified: the drug-level
# statements (vaccines.json, ace_inhibitors.json, mtor_drugs.json pregnancy) are Afinitor's and Rapamune's words.
OWN_STATEMENT_UNVERIFIED = frozenset({"Zortress", "Fyarro"})


def own_label_instead(order: MedicationOrder, knowledge: Knowledge, snapshot: PatientSnapshot) -> Source | None:
    """For a Zortress or Fyarro order, that product's own label: its card states the class fact and cites it, never
    quoting Afinitor's or Rapamune's words; None when the drug-level statement is the governing label's own."""
    product = mtor_product(order, knowledge, snapshot)
    return product_label(knowledge, product) if product in OWN_STATEMENT_UNVERIFIED else None


def product_label(knowledge: Knowledge, product: str | None) -> Source | None:
    """The governing product's own label (regimens.json `label_source`), for the card's source."""
    uses = knowledge.files["regimens.json"]["uses"]
    return next((u["label_source"] for u in uses if u["product"] == product), None)
