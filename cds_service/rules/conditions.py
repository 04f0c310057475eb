"""Conditions that change what the label advises: hepatic impairment, severe infection, non-infectious pneumonitis.

Each card quotes the governing product's own label: Rapamune's advice for oral sirolimus, Zortress's for Zortress,
Afinitor's table for Afinitor (and for everolimus of unknown brand); never another product's numbers.
"""

from __future__ import annotations

from cds_service.findings import HepaticFinding, InfectionFinding, Severity
from cds_service.knowledge import Knowledge
from cds_service.knowledge.records import ConditionAdvice
from cds_service.patient import ConditionRecord, PatientSnapshot
from cds_service.rules.common import drug_of, mtor_product, preferred_mtor, product_label
from cds_service.rules.indication import infer_indication

_AFINITOR_TABLE_PRODUCTS = (None, "Afinitor")  # dosing.json hepatic rows are the Afinitor label's


def check_hepatic_impairment(snapshot: PatientSnapshot, knowledge: Knowledge) -> list[HepaticFinding]:
    conditions = snapshot.active_conditions("hepatic-impairment")
    if not conditions or not snapshot.mtor_orders:
        return []
    mtor = preferred_mtor(snapshot, prefer_draft=True)
    drug, product = drug_of(mtor), mtor_product(mtor, knowledge, snapshot)
    classes = sorted({k[-1] for c in conditions for k in c.kinds if k.startswith("child-pugh-")})
    child_pugh = classes[-1] if classes else None  # the worst class on record
    indication = infer_indication(snapshot, knowledge, drug)
    doses = tuple(
        d for d in knowledge.hepatic_doses
        if d.drug == drug and product in _AFINITOR_TABLE_PRODUCTS
        and (indication.dosing is None or d.dosing in (None, indication.dosing))
        and (child_pugh is None or d.child_pugh == child_pugh)
    )
    advice = _advice(knowledge, "hepatic-impairment", drug, product)
    if doses:
        advice = None  # Afinitor's advice text repeats the dose table the card already reads from
    if not doses and advice is None:
        return []  # nothing sourced to say for this product: no card rather than another product's table
    source = doses[0].source if doses else advice.source if advice else knowledge.label_sources[drug]
    return [
        HepaticFinding(
            severity=Severity.WARNING,
            mtor=mtor,
            evidence=tuple(conditions),
            source=source,
            section=doses[0].section if doses else advice.section if advice else "",
            child_pugh=child_pugh,
            doses=doses,
            indication=indication,
            advice=advice,
            label=product_label(knowledge, product),
        )
    ]


def check_infection(snapshot: PatientSnapshot, knowledge: Knowledge) -> list[InfectionFinding]:
    """Active severe infection (value sets in clinical_conditions.json) or non-infectious pneumonitis.

    An infection Condition is current within the look-back window (lookback.json severe-infection-condition); an
    older or undated one still marked active (a problem list never closed) gives an info card asking to confirm.
    """
    if not snapshot.mtor_orders:
        return []
    findings = []
    mtor = preferred_mtor(snapshot, prefer_draft=False)
    drug, product = drug_of(mtor), mtor_product(mtor, knowledge, snapshot)
    oldest_current = knowledge.lookback_start("severe-infection-condition", snapshot.now)
    for kind in ("severe-infection", "pneumonitis"):
        conditions = snapshot.active_conditions(kind)
        advice = _advice(knowledge, "pneumonitis" if kind == "pneumonitis" else "infection", drug, product)
        if not conditions or advice is None:
            continue
        current = conditions if kind == "pneumonitis" else tuple(c for c in conditions if _since(c, oldest_current))
        findings.append(
            InfectionFinding(
                severity=Severity.WARNING if current else Severity.INFO,
                mtor=mtor,
                evidence=current or conditions,
                source=advice.source,
                section=advice.section,
                kind=kind,
                advice=advice,
                label=product_label(knowledge, product),
                stale_after_days=None if current else knowledge.lookback["severe-infection-condition"].max_age_days,
            )
        )
    return findings


def _since(condition: ConditionRecord, oldest) -> bool:
    return condition.asserted is not None and condition.asserted >= oldest


def _advice(knowledge: Knowledge, topic: str, drug: str, product: str | None) -> ConditionAdvice | None:
    """The advice of the governing product's own label (everolimus of unknown brand: Afinitor's), else none."""
    label_product = product or ("Afinitor" if drug == "everolimus" else None)
    return next((a for a in knowledge.condition_advice if a.topic == topic and a.drug == drug and a.product == label_product), None)
