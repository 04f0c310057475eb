"""CYP3A4/P-gp inhibitors and inducers (drugs, grapefruit, St John's wort), and cannabidiol, with an mTOR inhibitor.

The general table (interactions.json `perpetrators`, FDA examples) classifies the perpetrator; each mTOR product's
own label overrides it (`strength_by_drug`, verified `by_label` entries): Zortress is labelled WITH cyclosporine
(no card), Rapamune gives cyclosporine timing advice (info). The class advice quotes the Afinitor label (everolimus)
and the Rapamune label (sirolimus): another product (Zortress, Fyarro) gets the classification and a pointer to
its own label, never those numbers. Medications recorded only as MedicationStatement count like orders.
"""

from __future__ import annotations

from datetime import date, timedelta

from cds_service.findings import InteractionFinding, LevelRaiserFinding, Severity, TroughRecheck
from cds_service.knowledge import DrugRole, Knowledge
from cds_service.knowledge.records import InteractionAdvice, LabelInteraction, LabelOverride, TroughTiming
from cds_service.patient import MedicationOrder, PatientSnapshot
from cds_service.rules.common import drug_of, mtor_product, product_label, trough_target
from cds_service.rules.indication import infer_indication
from cds_service.rules.treatment_context import TSC_LAM_USES, treatment_context

_DEFAULT_SEVERITY = {"strong": Severity.WARNING, "moderate": Severity.WARNING}
_ADVICE_SCOPE = {"fixed": "fixed-dose", "tdm": "tdm"}
CLASS_ADVICE_PRODUCT = {"everolimus": "Afinitor", "sirolimus": "Rapamune"}  # whose label interactions.json `advice` quotes
_NO_TDM_PRODUCTS = ("Fyarro",)  # IV sirolimus for PEComa: no trough monitoring in its label


def check_cyp3a4_interactions(snapshot: PatientSnapshot, knowledge: Knowledge) -> list[InteractionFinding | LevelRaiserFinding]:
    findings: list[InteractionFinding | LevelRaiserFinding] = []
    seen = set()
    for mtor in snapshot.mtor_orders:
        drug = drug_of(mtor)
        product = mtor_product(mtor, knowledge, snapshot)
        indication = infer_indication(snapshot, knowledge, drug)
        for other in snapshot.medications:
            if other.ref == mtor.ref or other.mtor_drug:
                continue
            for raiser in other.concepts_with(DrugRole.LABEL_INTERACTION):
                interaction = knowledge.label_interactions.get((raiser.key, drug))
                if interaction is not None and (mtor.ref, other.ref, raiser.key) not in seen:
                    seen.add((mtor.ref, other.ref, raiser.key))
                    findings.append(_level_raiser(snapshot, knowledge, mtor, other, product, interaction))
            for perpetrator in other.concepts_with(DrugRole.CYP3A_PERPETRATOR):
                if (mtor.ref, other.ref, perpetrator.key) in seen:
                    continue
                seen.add((mtor.ref, other.ref, perpetrator.key))
                override = knowledge.label_overrides.get((perpetrator.key, (product or "").lower()))
                if override is not None and override.treatment == "intended-combination":
                    continue  # the product is labelled for use with this drug (Zortress with reduced-dose cyclosporine)
                entry = knowledge.perpetrators[perpetrator.key]
                strength = entry.strength_for(drug)
                advice = _advice(knowledge, drug, product, entry.effect, strength, perpetrator.key, override,
                                 _advice_scope(snapshot, knowledge, mtor, indication.dosing))
                severity = max((Severity[a.indicator.upper()] for a in advice), default=_DEFAULT_SEVERITY[strength])
                findings.append(
                    InteractionFinding(
                        severity=severity,
                        mtor=mtor,
                        evidence=(other,),
                        source=knowledge.label_sources[drug],
                        section="Drug interactions",
                        perpetrator=perpetrator.display,
                        effect=entry.effect,
                        strength=strength,
                        kind=entry.kind,
                        advice=advice,
                        classification_source=entry.source,
                        indication=indication,
                        trough_recheck=None if override and override.treatment == "timing"
                        else _trough_recheck(snapshot, knowledge, drug, product, indication.key, severity, other),
                        level_test=knowledge.level_tests[drug],
                        product=product,
                        label=product_label(knowledge, product),
                        trough_monitored=product not in _NO_TDM_PRODUCTS,
                    )
                )
    return findings


def _advice_scope(snapshot: PatientSnapshot, knowledge: Knowledge, mtor: MedicationOrder, dosing: str | None) -> str | None:
    """Whose advice the card lists: the dosing of the TSC use on record; with none, the fixed-dose advice when no TSC
    or LAM use is plausible (a cancer or a transplant on record: Afinitor §2.11/§2.12 give its cancer uses the
    fixed-dose advice, and the TSC trough-guided advice never applies); else every use's advice."""
    if dosing in _ADVICE_SCOPE:
        return _ADVICE_SCOPE[dosing]
    context = treatment_context(snapshot, knowledge, mtor)
    if context.is_transplant_or_oncology and not context.kinds & TSC_LAM_USES:
        return _ADVICE_SCOPE["fixed"]
    return None


def _advice(
    knowledge: Knowledge, drug: str, product: str | None, effect: str, strength: str, perpetrator: str,
    override: LabelOverride | None, scope: str | None,
) -> tuple[InteractionAdvice, ...]:
    """The product label's own advice for this perpetrator (verified `by_label`), else the class advice when it is
    this product's label that gives it, else none (the card then points to the product's own label)."""
    if override is not None and override.action:
        indicator = "info" if override.treatment == "timing" else "critical" if override.treatment.startswith("avoid") else "warning"
        return (InteractionAdvice(source=override.source, section=override.section, drug=drug, effect=effect, strength=strength,
                                  indicator=indicator, action=override.action, perpetrator=perpetrator),)
    if (product or CLASS_ADVICE_PRODUCT[drug]) != CLASS_ADVICE_PRODUCT[drug]:
        return ()
    return tuple(knowledge.advice_for(drug, effect, strength, perpetrator, scope))


def _trough_recheck(
    snapshot: PatientSnapshot, knowledge: Knowledge, drug: str, product: str | None, indication_key: str | None,
    severity: Severity, perpetrator: MedicationOrder,
) -> TroughRecheck | None:
    """When the label manages the combination by trough (not 'avoid'), the date the trough should be rechecked:
    the label's interval after the interacting drug was started (today when its start is not on record)."""
    if severity is Severity.CRITICAL or product in _NO_TDM_PRODUCTS or trough_target(knowledge, drug, indication_key) is None:
        return None
    timing = next((t for t in knowledge.trough_timing if t.drug == drug and t.event == "interacting-drug-change"), None)
    if timing is None:
        return None
    due = _due(snapshot, perpetrator, timing.days_after)
    return None if _trough_drawn_since(snapshot, drug, due) else TroughRecheck(due, timing)


def _level_raiser(
    snapshot: PatientSnapshot, knowledge: Knowledge, mtor: MedicationOrder, other: MedicationOrder, product: str | None,
    interaction: LabelInteraction,
) -> LevelRaiserFinding:
    """Cannabidiol: cite the mTOR product's own label where it states the interaction, else the literature."""
    drug = interaction.drug
    cites_label = interaction.label_product is not None and interaction.label_product == product
    recheck = None
    if product not in _NO_TDM_PRODUCTS:
        timing = TroughTiming(source=interaction.recheck_source, drug=drug, event="interacting-drug-change",
                              days_after=interaction.recheck_days, days_after_latest=interaction.recheck_days_latest)
        due = _due(snapshot, other, interaction.recheck_days)
        if not _trough_drawn_since(snapshot, drug, due):
            recheck = TroughRecheck(due, timing)
    return LevelRaiserFinding(
        severity=Severity[interaction.indicator.upper()],
        mtor=mtor,
        evidence=(other,),
        source=interaction.label_source if cites_label and interaction.label_source else interaction.source,
        section=interaction.label_section if cites_label else "",
        interaction=interaction,
        product=product,
        cites_label=cites_label,
        trough_recheck=recheck,
        level_test=knowledge.level_tests[drug],
        label=product_label(knowledge, product),
    )


def _due(snapshot: PatientSnapshot, started: MedicationOrder, days: int) -> date:
    """`days` after the interacting drug was started (or recorded); from today when no date is on record."""
    start = started.authored_on.date() if started.authored_on and not started.is_draft else snapshot.today
    return min(start, snapshot.today) + timedelta(days=days)


def _trough_drawn_since(snapshot: PatientSnapshot, drug: str, due: date) -> bool:
    """A trough on or after the due date already answers the recheck."""
    latest = snapshot.latest_lab("drug-level", drug)
    return latest is not None and latest.effective is not None and latest.effective.date() >= due
