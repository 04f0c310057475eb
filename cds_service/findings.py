"""What rules return: findings are data (topic, severity, evidence, numbers, source), not cards.

Each topic has its own small frozen finding type, filled by its rule and read by its renderer in cards.py. The
common part (the mTOR order concerned, the evidence, the source) is `Finding`; a topic's numbers and the knowledge
records its card quotes are the subclass's fields, so the card never re-types a number the knowledge holds.
"""

from __future__ import annotations

import dataclasses
import enum
from datetime import date, timedelta
from typing import TYPE_CHECKING, Any, ClassVar

from cds_service.knowledge import Source
from cds_service.knowledge.records import (
    ConditionAdvice,
    EarliestStart,
    HepaticDose,
    InteractionAdvice,
    LabelInteraction,
    LabelRestriction,
    LabelStatement,
    LevelTest,
    LipidAction,
    PediatricNote,
    StartingDose,
    SurgeryWindow,
    TroughLimit,
    TroughTarget,
    TroughTiming,
    WoundHealingCaution,
)
from cds_service.patient import ConditionRecord, LabResult, MedicationOrder, ProcedureEvent

if TYPE_CHECKING:  # rules import findings; the context type is only an annotation here
    from cds_service.rules.treatment_context import TreatmentContext

TOPIC_SYSTEM = "https://mtor-cds.org/fhir/CodeSystem/card-topic"


class Topic(str, enum.Enum):
    """The card topics: the contract with EHRs, feedback analytics, logs and metrics."""

    CYP3A4_INTERACTION = "cyp3a4-interaction"
    LIVE_VACCINE = "live-vaccine"
    PREGNANCY = "pregnancy"
    SURGERY_TIMING = "surgery-timing"
    TROUGH_HIGH = "trough-high"
    TROUGH_LOW = "trough-low"
    TROUGH_MONITORING = "trough-monitoring"
    LIPIDS = "lipids"
    HEPATIC_IMPAIRMENT = "hepatic-impairment"
    INFECTION = "infection"
    ANGIOEDEMA = "angioedema"
    CONTRACEPTION = "contraception"
    DOSE_CHECK = "dose-check"
    CHECKS_INCOMPLETE = "checks-incomplete"
    LABEL_RESTRICTION = "label-restriction"


class Severity(enum.IntEnum):
    INFO = 1
    WARNING = 2
    CRITICAL = 3

    @property
    def indicator(self) -> str:
        return self.name.lower()


@dataclasses.dataclass(frozen=True)
class Indication:
    """Which indication an mTOR inhibitor is for, as read from the patient's Conditions."""

    key: str | None  # "tsc-aml", "tsc-sega", "tsc-seizures", "lam"; None when unknown or ambiguous
    dosing: str | None  # "fixed" | "tdm"; None when it cannot be told
    evidence: tuple[ConditionRecord, ...] = ()

    @property
    def known(self) -> bool:
        return self.key is not None


@dataclasses.dataclass(frozen=True, kw_only=True)
class Finding:
    """The part every finding shares. Subclasses set `topic` and add the topic's own fields."""

    topic: ClassVar[Topic]
    severity: Severity
    mtor: MedicationOrder | None  # the mTOR inhibitor order concerned
    evidence: tuple[Any, ...] = ()  # MedicationOrder / LabResult / ConditionRecord / ProcedureEvent
    source: Source
    section: str = ""
    label: Source | None = None  # the drug's prescribing information: what the card's source names

    @property
    def refs(self) -> frozenset[str]:
        """Every resource this finding rests on, the mTOR order included."""
        refs = {e.ref for e in self.evidence if getattr(e, "ref", None)}
        if self.mtor is not None:
            refs.add(self.mtor.ref)
        return frozenset(refs)

    @property
    def trigger_key(self) -> str:
        return "|".join(sorted(self.refs))

    @property
    def drug(self) -> str:
        return (self.mtor.mtor_drug or "") if self.mtor else ""


@dataclasses.dataclass(frozen=True)
class TroughRecheck:
    """When to recheck a trough after an event, and the label's rule that says so."""

    due: date
    timing: TroughTiming


@dataclasses.dataclass(frozen=True, kw_only=True)
class InteractionFinding(Finding):
    topic: ClassVar[Topic] = Topic.CYP3A4_INTERACTION
    perpetrator: str  # display name of the interacting product
    effect: str  # "inhibitor" | "inducer"
    strength: str  # "strong" | "moderate"
    kind: str  # "drug" | "food" | "herbal"
    advice: tuple[InteractionAdvice, ...]
    classification_source: Source
    indication: Indication
    trough_recheck: TroughRecheck | None
    level_test: LevelTest
    product: str | None = None  # the mTOR product whose label governs ("Zortress", "Rapamune", ...), when known
    trough_monitored: bool = True  # False for a product whose label sets no trough monitoring (Fyarro)


@dataclasses.dataclass(frozen=True, kw_only=True)
class LevelRaiserFinding(Finding):
    """A product that raises mTOR levels outside the CYP3A classes (cannabidiol): same topic as CYP3A interactions."""

    topic: ClassVar[Topic] = Topic.CYP3A4_INTERACTION
    interaction: LabelInteraction
    product: str | None
    cites_label: bool  # the product's own label states it (Zortress, Rapamune); else the literature is cited
    trough_recheck: TroughRecheck | None
    level_test: LevelTest


@dataclasses.dataclass(frozen=True, kw_only=True)
class LiveVaccineFinding(Finding):
    topic: ClassVar[Topic] = Topic.LIVE_VACCINE
    vaccine: str
    ambiguous: bool  # the name may be a live or a non-live product
    statement: LabelStatement


@dataclasses.dataclass(frozen=True, kw_only=True)
class PregnancyFinding(Finding):
    topic: ClassVar[Topic] = Topic.PREGNANCY
    contraception_weeks: int | None
    stale_after_days: int | None = None  # set when the evidence is older than its look-back window: ask to recheck
    hcg_cutoff_iu_per_l: float | None = None  # set when the evidence is a quantitative hCG at or above it, uninterpreted
    unconfirmed: bool = False  # that hCG, or a pregnancy Condition recorded as unconfirmed: ask to confirm, never remove
    outside_ages_years: float | None = None  # a test result for a patient outside the reproductive-potential ages: confirm
    recorded_male: bool = False  # a positive hCG for a patient whose administrative gender is male: confirm


@dataclasses.dataclass(frozen=True, kw_only=True)
class SurgeryTiming(Finding):
    """Surgery near an mTOR inhibitor, judged by the label of the patient's use: a hold interval (Afinitor §5),
    or a wound-healing warning with no interval (Zortress, Rapamune), then no dates are computed."""

    topic: ClassVar[Topic] = Topic.SURGERY_TIMING
    kind: str  # "planned" (ahead) | "recent" (done)
    days: int  # days until (planned) or since (recent) the surgery
    surgery_date: date  # on the hospital's calendar (the record's own offset)
    today: date
    window: SurgeryWindow | None = None  # the governing label's hold interval
    caution: WoundHealingCaution | None = None  # the governing label's warning, when it sets no interval
    use: str = "unknown"  # treatment context: "transplant", "lam", "tsc-aml", "oncology", ...
    plausible_uses: frozenset[str] = frozenset()  # every use the record leaves plausible (TreatmentContext.kinds)
    assumption: str | None = None  # what was assumed about the use, when the record does not settle it
    implied_only: bool = False  # no use on record: the plausible uses are only the product's labelled ones

    @property
    def hold_from(self) -> date | None:
        """First day without the drug (the label: withhold at least N days before elective surgery)."""
        return self.surgery_date - timedelta(days=self.window.withhold_before_days) if self.window else None

    @property
    def last_dose(self) -> date | None:
        return self.hold_from - timedelta(days=1) if self.hold_from else None

    @property
    def earliest_restart(self) -> date | None:
        """No earlier than N days after major surgery, and only once the wound has healed."""
        return self.surgery_date + timedelta(days=self.window.avoid_after_major_days) if self.window else None

    @property
    def hold_is_due(self) -> bool:
        return self.hold_from is not None and self.hold_from <= self.today


@dataclasses.dataclass(frozen=True)
class DoseProposal:
    """The label's proportional formula applied to a trough, rounded to doses the product's strengths make."""

    current_dose_mg: float
    aim_ng_per_ml: float
    raw_dose_mg: float
    formula_source: Source  # the drug's own label section on titration
    max_increment_mg: float | None = None  # the label's per-step cap, where it sets one (applied to increases)
    proposed_dose_mg: float | None = None  # None: the strengths cannot do better than the current dose
    product: str = ""
    formula_dose_mg: float | None = None  # the formula's result before the cap (shown, then the cap)
    unit_strength_mg: float | None = None  # the strength of the unit the order codes (a 5 mg tablet), when known

    @property
    def fits_the_ordered_unit(self) -> bool:
        """The proposed dose is whole units of what the order codes (never a fraction of a swallow-whole tablet:
        products.json dispensing_rules), or the order codes no strength."""
        if self.proposed_dose_mg is None or not self.unit_strength_mg:
            return True
        units = self.proposed_dose_mg / self.unit_strength_mg
        return abs(units - round(units)) < 1e-9


@dataclasses.dataclass(frozen=True, kw_only=True)
class TroughHighFinding(Finding):
    topic: ClassVar[Topic] = Topic.TROUGH_HIGH
    limit: TroughLimit
    indication: Indication
    target: TroughTarget | None = None  # the target range of the (assumed) trough-guided indication
    proposal: DoseProposal | None = None
    assumed_indication: str | None = None  # display name, when the dose assumes trough-guided use
    recheck: TroughTiming | None = None  # the label's timing of a trough after a dose change
    context: TreatmentContext | None = None  # set when a transplant or oncology use is plausible (no TSC wording)
    target_unverified: bool = False  # the governing label's target was not read in a primary source: no number shown
    not_steady_until: date | None = None  # the level was drawn before steady state: no new dose; recheck from then
    not_steady_after: MedicationOrder | None = None  # what sets that date: the mTOR order's change, or an interacting drug
    stale: bool = False  # older than the trough look-back window: no new dose, recheck


@dataclasses.dataclass(frozen=True, kw_only=True)
class TroughLowFinding(Finding):
    topic: ClassVar[Topic] = Topic.TROUGH_LOW
    target: TroughTarget
    indication: Indication
    proposal: DoseProposal | None = None
    recheck: TroughTiming | None = None
    context: TreatmentContext | None = None  # set for a transplant use (Zortress kidney target)
    not_steady_until: date | None = None  # drawn before steady state: no new dose; recheck from then
    not_steady_after: MedicationOrder | None = None  # what sets that date: the mTOR order's change, or an interacting drug


@dataclasses.dataclass(frozen=True, kw_only=True)
class TroughMonitoringFinding(Finding):
    topic: ClassVar[Topic] = Topic.TROUGH_MONITORING
    event: str  # "start", "start or dose change", "<drug> started", "hepatic impairment recorded", "routine"
    event_date: date
    due_date: date
    timing: TroughTiming
    latest: LabResult | None
    indication: Indication
    level_test: LevelTest
    # "start or dose change" (the record does not tell which): the start's own timing, when it differs from the dose
    # change's (`timing`, the sooner); the card then gives both
    start_timing: TroughTiming | None = None


@dataclasses.dataclass(frozen=True, kw_only=True)
class LipidGradeFinding(Finding):
    topic: ClassVar[Topic] = Topic.LIPIDS
    analyte: str  # "triglycerides" | "cholesterol"
    grade: int  # CTCAE v5
    action: LipidAction
    grade_source: Source
    stale_after_days: int | None = None  # set when the value is older than the look-back window: recheck, no action
    label_action: bool = True  # False: the grade actions are another product's label (Afinitor's): grade only


@dataclasses.dataclass(frozen=True, kw_only=True)
class LipidPanelMissing(Finding):
    topic: ClassVar[Topic] = Topic.LIPIDS
    missing_panel_days: int
    last: LabResult | None


@dataclasses.dataclass(frozen=True, kw_only=True)
class HepaticFinding(Finding):
    topic: ClassVar[Topic] = Topic.HEPATIC_IMPAIRMENT
    child_pugh: str | None  # the worst class on record
    doses: tuple[HepaticDose, ...]
    indication: Indication
    advice: ConditionAdvice | None


@dataclasses.dataclass(frozen=True, kw_only=True)
class InfectionFinding(Finding):
    topic: ClassVar[Topic] = Topic.INFECTION
    kind: str  # "severe-infection" | "pneumonitis"
    advice: ConditionAdvice
    stale_after_days: int | None = None  # set when every such Condition is older than its look-back window


@dataclasses.dataclass(frozen=True, kw_only=True)
class AngioedemaFinding(Finding):
    topic: ClassVar[Topic] = Topic.ANGIOEDEMA
    ace_inhibitor: str
    statement: LabelStatement


@dataclasses.dataclass(frozen=True, kw_only=True)
class ContraceptionFinding(Finding):
    topic: ClassVar[Topic] = Topic.CONTRACEPTION
    weeks: int
    sex: str
    age: float


@dataclasses.dataclass(frozen=True)
class BodySurface:
    bsa_m2: float
    height: LabResult
    weight: LabResult
    source: Source


@dataclasses.dataclass(frozen=True, kw_only=True)
class DoseCheckFinding(Finding):
    topic: ClassVar[Topic] = Topic.DOSE_CHECK
    indication: Indication
    start: StartingDose
    ordered_mg: float
    pediatric: PediatricNote | None
    expected_mg: float | None = None  # None when height and weight are missing for a per-m² dose, or below the label's age
    fits: bool = False
    bsa: BodySurface | None = None
    below_label_age_years: float | None = None  # the patient's age, when younger than the label's indication allows

    @property
    def below_label_age(self) -> bool:
        return self.below_label_age_years is not None

    @property
    def missing_measurements(self) -> bool:
        return self.expected_mg is None and not self.below_label_age


@dataclasses.dataclass(frozen=True, kw_only=True)
class ChecksIncomplete(Finding):
    """Some data could not be had or read: the checks that need it did not run, and the card says which."""

    topic: ClassVar[Topic] = Topic.CHECKS_INCOMPLETE
    unavailable: tuple[str, ...]  # snapshot keys: "medications", "observations", ..., or a check that failed
    skipped_resources: int = 0  # every resource not read: unreadable, or another patient's
    unreadable: tuple[tuple[str, int], ...] = ()  # (resource type, count) that could not be read
    not_listed: tuple[NotListed, ...] = ()  # findings beyond a card's cap
    fhir_server_refused: bool = False


@dataclasses.dataclass(frozen=True)
class NotListed:
    """Findings of one topic beyond the MAX_FINDINGS_PER_TOPIC its card lists: counted in checks-incomplete."""

    topic: Topic
    count: int


@dataclasses.dataclass(frozen=True, kw_only=True)
class LabelRestrictionFinding(Finding):
    """A transplant use the governing label advises against (Zortress in heart transplant; Rapamune in liver or lung
    transplant), or a start earlier than the label allows after transplant (Zortress: not before day 30 after a
    liver transplant). `evidence` holds the Conditions or Procedures that show the transplant."""

    topic: ClassVar[Topic] = Topic.LABEL_RESTRICTION
    context: str  # treatment_contexts.json key of the transplant concerned: "transplant-heart", "transplant-liver", ...
    organ: str  # "heart", "liver", "lung"
    today: date
    restriction: LabelRestriction | None = None  # use not recommended
    earliest: EarliestStart | None = None  # too early after transplant
    transplant: ProcedureEvent | None = None  # the transplant whose date counts (earliest start)
    start: date | None = None  # the order's start: authoredOn, or today for a draft without one

    @property
    def transplant_date(self) -> date | None:
        return self.transplant.when.date() if self.transplant and self.transplant.when else None

    @property
    def earliest_start(self) -> date | None:
        day = self.transplant_date
        return day + timedelta(days=self.earliest.days) if day and self.earliest else None

    @property
    def days_after(self) -> int | None:
        day = self.transplant_date
        return (self.start - day).days if day and self.start else None
