"""Typed records for the knowledge entries that reach cards, built (and checked) when the knowledge is loaded.

Rules and cards read these attributes instead of raw JSON by string keys, so a missing or misspelt field fails
at load, not in a card. Field names are the JSON keys; extra JSON keys (notes, secondary sources) are ignored.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, TypeVar

R = TypeVar("R")


@dataclasses.dataclass(frozen=True)
class Source:
    key: str
    label: str
    url: str | None = None  # the official document (e.g. the DailyMed label)
    read_at: str | None = None  # where the text was actually read, when that was a mirror


def build(cls: type[R], entry: Mapping[str, Any], **extra: Any) -> R:
    """A record from a JSON entry: its fields by name (lists become tuples); a missing required field raises."""
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in entry.items() if k in names}
    return cls(**(values | extra))


@dataclasses.dataclass(frozen=True)
class Cited:
    """Every record names the document it comes from and where in it."""

    source: Source
    section: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.source, Source):
            raise ValueError(f"{type(self).__name__}: source {self.source!r} is not a known source")


@dataclasses.dataclass(frozen=True, kw_only=True)
class LabelStatement(Cited):
    """A sentence of a label a card quotes (live vaccines, ACE inhibitors)."""

    drug: str
    text: str
    quoted: bool = True  # False: a class fact in this service's words, citing the product's own label (no quote)


@dataclasses.dataclass(frozen=True, kw_only=True)
class InteractionAdvice(Cited):
    drug: str
    effect: str  # "inhibitor" | "inducer"
    strength: str  # "strong" | "moderate"
    indicator: str  # "critical" | "warning" | "info"
    action: str
    indication: str | None = None  # "all", "fixed-dose", "tdm"; None: any
    perpetrator: str | None = None  # a product-specific entry (grapefruit, St John's wort)


@dataclasses.dataclass(frozen=True, kw_only=True)
class SurgeryWindow(Cited):
    withhold_before_days: int
    avoid_after_major_days: int


@dataclasses.dataclass(frozen=True, kw_only=True)
class WoundHealingCaution(Cited):
    """A label's wound-healing warning that sets no interval to withhold the drug around surgery (Zortress, Rapamune)."""

    product: str
    drug: str
    heading: str  # the label's W&P heading, as the card names it


@dataclasses.dataclass(frozen=True, kw_only=True)
class TroughLimit(Cited):
    upper_ng_per_ml: float


@dataclasses.dataclass(frozen=True, kw_only=True)
class PregnancyAdvice(Cited):
    contraception_weeks_after_last_dose: int | None = None


@dataclasses.dataclass(frozen=True, kw_only=True)
class TroughTarget(Cited):
    drug: str
    indication: str
    low_ng_per_ml: float
    high_ng_per_ml: float
    product: str | None = None  # the label product whose target this is (regimens.json), when a use's label gives it

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.low_ng_per_ml < self.high_ng_per_ml:
            raise ValueError(f"trough target {self.drug}/{self.indication}: low must be below high")


@dataclasses.dataclass(frozen=True, kw_only=True)
class TroughTiming(Cited):
    """When the label asks for a trough after an event: `days_after` (to `days_after_latest` when it gives a range)."""

    drug: str
    event: str  # "start", "dose-change", "hepatic-change", "interacting-drug-change", "routine"
    days_after: int = 0
    days_after_latest: int | None = None
    interval_days: int | None = None  # "routine": at least this often once stable

    @property
    def days_text(self) -> str:
        """The label's own interval in words: "14 days", "10 to 20 days"."""
        if self.days_after_latest and self.days_after_latest != self.days_after:
            return f"{self.days_after} to {self.days_after_latest} days"
        return f"{self.days_after} days"


@dataclasses.dataclass(frozen=True, kw_only=True)
class Titration(Cited):
    """The label's titration rule for one drug: proportional formula, with a per-step cap where the label sets one."""

    drug: str
    max_increment_mg: float | None = None


@dataclasses.dataclass(frozen=True, kw_only=True)
class ProductStrengths(Cited):
    product: str
    drug: str
    form: str = ""
    strengths_mg: tuple[float, ...] = ()
    names: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True, kw_only=True)
class LipidAction(Cited):
    grade: int
    indicator: str
    action: str


@dataclasses.dataclass(frozen=True, kw_only=True)
class HepaticDose(Cited):
    drug: str
    child_pugh: str
    dosing: str | None = None  # "fixed" | "tdm"; None: any use
    dose_mg: float | None = None
    dose_mg_per_m2: float | None = None
    action: str | None = None
    note: str | None = None


@dataclasses.dataclass(frozen=True, kw_only=True)
class ConditionAdvice(Cited):
    topic: str  # "hepatic-impairment", "infection", "pneumonitis"
    drug: str
    text: str
    product: str  # the product whose own label gives the advice: "Afinitor", "Zortress", "Rapamune", "Fyarro"
    action: str | None = None  # the card's next step when it is not "review holding the drug" (Zortress: transplant team)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ContraceptionAdvice(Cited):
    drug: str
    sex: str
    weeks_after_last_dose: int


@dataclasses.dataclass(frozen=True, kw_only=True)
class StartingDose(Cited):
    drug: str
    indication: str
    dose_mg: float | None = None
    dose_mg_per_m2: float | None = None
    min_age_years: float | None = None  # the label's indication starts at this age (TSC-AML: adults)
    age_source: Source | None = None
    age_section: str = ""

    def __post_init__(self) -> None:
        super().__post_init__()
        if (self.dose_mg is None) == (self.dose_mg_per_m2 is None):
            raise ValueError(f"starting dose {self.drug}/{self.indication}: give exactly one of dose_mg, dose_mg_per_m2")


@dataclasses.dataclass(frozen=True, kw_only=True)
class PediatricNote(Cited):
    drug: str
    below_age_years: float
    note_text: str


@dataclasses.dataclass(frozen=True)
class LevelTest:
    """The LOINC test a trough order asks for."""

    drug: str
    loinc: str
    display: str


@dataclasses.dataclass(frozen=True, kw_only=True)
class LabelInteraction(Cited):
    """A product that raises an mTOR inhibitor's level outside the CYP3A strength classes (cannabidiol).

    `source` is the literature; `label_*` the mTOR product label that states it (cited instead for that product).
    `recheck_*` says when to draw the trough after starting or changing the product.
    """

    perpetrator: str  # the key, e.g. "cannabidiol"
    display: str
    drug: str
    indicator: str
    action: str
    recheck_days: int
    recheck_days_latest: int | None
    recheck_source: Source
    label_product: str | None = None  # the mTOR product whose own label states it ("Zortress", "Rapamune")
    label_source: Source | None = None
    label_section: str = ""
    label_text: str | None = None


@dataclasses.dataclass(frozen=True, kw_only=True)
class LabelOverride(Cited):
    """How one mTOR product's own label treats a CYP3A perpetrator (interactions.json `by_label`, verified only)."""

    perpetrator: str
    product: str  # "zortress" | "rapamune" | "afinitor" | "fyarro"
    treatment: str  # "intended-combination" | "timing" | "caution ..." | "avoid (strong)" | ...
    action: str | None = None


@dataclasses.dataclass(frozen=True, kw_only=True)
class LookbackWindow(Cited):
    """How old a kind of evidence may be and still drive advice (lookback.json; POLICY where it is our choice)."""

    evidence: str
    max_age_days: int | None = None
    ahead_days: int | None = None


@dataclasses.dataclass(frozen=True, kw_only=True)
class QuantitativeHcg(Cited):
    """How a quantitative hCG is read: interpretation codes, then the referenceRange, then the sourced cut-off."""

    loinc: frozenset[str]
    threshold_loinc: frozenset[str]  # IU-based serum codes the fallback cut-off applies to
    negative_below_iu_per_l: float
    iu_per_l_factor: Mapping[str, float]  # unit (lowercase) -> factor to IU/L
    positive_interpretations: frozenset[tuple[str, str]]
    negative_interpretations: frozenset[tuple[str, str]]


@dataclasses.dataclass(frozen=True, kw_only=True)
class ProductAdvice(Cited):
    """A product label's own statement a card quotes (regimens.json, `verified: true` facts only)."""

    product: str  # "Rapamune"
    topic: str  # "vaccination", "hepatic", "ace_inhibitor_angioedema"
    text: str


@dataclasses.dataclass(frozen=True, kw_only=True)
class ContextEntry(Cited):
    """One treatment context of treatment_contexts.json: the codes and names that show a patient has this use."""

    key: str  # "transplant-kidney", "lam", "oncology-pecoma", ...
    kind: str  # "transplant" | "tsc" | "tsc-aml" | "tsc-sega" | "tsc-seizures" | "lam" | "oncology"
    display: str
    organ: str | None = None
    codes: frozenset[tuple[str, str]] = frozenset()
    prefixes: tuple[tuple[str, str], ...] = ()
    exclude_codes: frozenset[tuple[str, str]] = frozenset()
    names: tuple[str, ...] = ()

    def matches_codes(self, codes: frozenset[tuple[str, str]]) -> bool:
        if codes & self.exclude_codes:
            return False
        return bool(codes & self.codes) or any(
            system == p_system and code.startswith(prefix) for system, code in codes for p_system, prefix in self.prefixes
        )


@dataclasses.dataclass(frozen=True, kw_only=True)
class ProductUse(Cited):
    """Which uses a product implies (Zortress => transplant; Fyarro => PEComa); `exclusive`: only those uses."""

    product: str
    drug: str
    implies: tuple[str, ...]
    exclusive: bool
    rxnorm: tuple[str, ...] = ()
    names: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True, kw_only=True)
class SupportingDrug(Cited):
    """A drug whose presence supports a context (a systemic calcineurin inhibitor supports transplant)."""

    key: str
    display: str
    implies: str
    names: tuple[str, ...] = ()
    exclude_if_text_contains: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True, kw_only=True)
class LabelRestriction(Cited):
    """A label's "use is not recommended" for some transplant contexts (regimens.json label_restrictions, verified)."""

    key: str
    product: str  # whose label says it: "Zortress", "Rapamune"
    drug: str
    contexts: tuple[str, ...]  # treatment_contexts.json keys: "transplant-heart", "transplant-liver", ...
    statement: str
    reasons: tuple[tuple[str, str], ...]  # (context key, the label's reason in its words)

    def reason_for(self, context: str) -> str:
        return dict(self.reasons)[context]


@dataclasses.dataclass(frozen=True, kw_only=True)
class EarliestStart(Cited):
    """A label's earliest start after transplant (Zortress: no earlier than 30 days after liver transplant)."""

    product: str
    drug: str
    context: str  # treatment_contexts.json key
    days: int
    reason: str


PERPETRATOR_EFFECTS = ("inhibitor", "inducer")
PERPETRATOR_STRENGTHS = ("strong", "moderate")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Perpetrator(Cited):
    """A CYP3A4/P-gp inhibitor or inducer (interactions.json `perpetrators`): how the FDA table classifies it, and how
    an mTOR drug's own label does where that differs (`strength_by_drug`)."""

    key: str
    display: str
    effect: str  # PERPETRATOR_EFFECTS
    strength: str  # PERPETRATOR_STRENGTHS
    kind: str = "drug"  # "drug" | "food" | "supplement"
    strength_by_drug: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__post_init__()
        strengths = (self.strength, *self.strength_by_drug.values())
        if self.effect not in PERPETRATOR_EFFECTS or any(s not in PERPETRATOR_STRENGTHS for s in strengths):
            raise ValueError(f"perpetrator {self.key}: effect {self.effect!r} or strength {strengths!r} is not known")

    def strength_for(self, drug: str) -> str:
        """The strength as the mTOR drug's own label classifies it, else the FDA table's."""
        return self.strength_by_drug.get(drug, self.strength)


@dataclasses.dataclass(frozen=True, kw_only=True)
class LipidGrade(Cited):
    grade: int
    above_mg_dl: float
    above_mmol_l: float | None = None  # CTCAE gives both scales; its mmol/L limits are rounded, not exact conversions


@dataclasses.dataclass(frozen=True, kw_only=True)
class LipidAnalyte(Cited):
    """monitoring.json `lipids.<analyte>`: its LOINC codes, the mmol/L conversion and the CTCAE grades."""

    analyte: str
    loinc: tuple[str, ...]
    mg_dl_per_mmol_l: float
    grades: tuple[LipidGrade, ...]

    def grade_of(self, mg_dl: float, mmol_l: float | None = None) -> int | None:
        """The CTCAE grade of a value (above a grade's threshold), None below grade 2's. A value the lab reported in
        mmol/L is graded on CTCAE's mmol/L scale: 11.4 mmol/L triglycerides is grade 3 there, though it converts to
        just over 1000 mg/dL (grade 4)."""
        if mmol_l is not None and all(g.above_mmol_l is not None for g in self.grades):
            return max((g.grade for g in self.grades if g.above_mmol_l is not None and mmol_l > g.above_mmol_l), default=None)
        return max((g.grade for g in self.grades if mg_dl > g.above_mg_dl), default=None)


INDICATION_DOSINGS = ("fixed", "tdm")


@dataclasses.dataclass(frozen=True, kw_only=True)
class IndicationEntry(Cited):
    """A labelled use of indications.json (TSC-AML, SEGA, TSC seizures, LAM): how its dose is set (a fixed dose, or
    trough-guided), which drugs it is a labelled use of, and whether it counts only with tuberous sclerosis."""

    key: str
    display: str
    dosing: str  # INDICATION_DOSINGS
    drugs: tuple[str, ...]
    requires_tsc: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.dosing not in INDICATION_DOSINGS or not self.drugs:
            raise ValueError(f"indication {self.key}: dosing {self.dosing!r} is not known, or it names no drug")
