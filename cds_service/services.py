"""The CDS services this app offers (one per hook) and the parsed form of a call to one of them."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from cds_service.knowledge import Knowledge
from cds_service.limits import SEARCH_PAGE_SIZE


@dataclasses.dataclass(frozen=True)
class ServiceDefinition:
    id: str
    hook: str
    title: str
    description: str
    prefetch: Mapping[str, str]
    required_prefetch: frozenset[str]  # keys without which no safe answer can be given (412)

    def discovery_entry(self) -> dict[str, Any]:
        return {
            "hook": self.hook,
            "id": self.id,
            "title": self.title,
            "description": self.description,
            "prefetch": dict(self.prefetch),
        }


@dataclasses.dataclass(frozen=True)
class HookCall:
    """A validated CDS Hooks request. The access token lives here only for the call's duration."""

    hook: str
    hook_instance: str
    context: Mapping[str, Any]
    fhir_server: str | None = None
    access_token: str | None = dataclasses.field(default=None, repr=False)
    prefetch: Mapping[str, Any] = dataclasses.field(default_factory=dict, repr=False)

    @property
    def patient_id(self) -> str:
        return self.context["patientId"]

    @property
    def selections(self) -> tuple[str, ...]:
        return tuple(self.context.get("selections") or ())


def prefetch_templates(knowledge: Knowledge) -> dict[str, str]:
    """Prefetch templates, 2.0-valid (only {{context.patientId}}); the Observation codes come from the knowledge."""
    loinc = sorted(
        {*knowledge.drug_level_loinc, *knowledge.pregnancy_status["loinc"], *knowledge.hcg_loinc,
         *knowledge.lipid_loinc, *knowledge.body_loinc}
    )
    # Bare codes (any system): LOINC codes are unique enough, the parser keeps only system http://loinc.org,
    # and the URL stays a third as long (every FHIR request pays for its length in URL encoding).
    codes = ",".join(loinc)
    patient = "{{context.patientId}}"
    count = f"_count={SEARCH_PAGE_SIZE}"  # every search: a server's default page (often 20) would page long records
    return {
        "patient": f"Patient/{patient}",
        "medications": f"MedicationRequest?patient={patient}&status=active,on-hold&{count}",
        # Taken, not ordered (St John's wort, CBD over the counter): FHIR R4 statuses of current use.
        "medicationStatements": f"MedicationStatement?patient={patient}&status=active,intended,on-hold&{count}",
        "observations": f"Observation?patient={patient}&code={codes}&_sort=-date&{count}",
        "conditions": f"Condition?patient={patient}&{count}",
        "procedures": f"Procedure?patient={patient}&_sort=-date&{count}",
        "serviceRequests": f"ServiceRequest?patient={patient}&status=draft,active,on-hold&{count}",
        "appointments": f"Appointment?patient={patient}&status=proposed,pending,booked,arrived,checked-in,waitlist&{count}",
    }


_DESCRIPTIONS = {
    "patient-view": (
        "mTOR inhibitor safety (chart open)",
        "For patients taking everolimus or sirolimus: flags CYP3A4/P-gp interactions, live vaccine orders, "
        "pregnancy, surgery within the withhold window, trough levels out of range or due, lipids, hepatic "
        "impairment, infection, angioedema risk and dosing, citing the FDA labels.",
    ),
    "order-select": (
        "mTOR inhibitor safety (order selected)",
        "When orders are selected for a patient taking or starting everolimus or sirolimus: runs every check of "
        "mtor-safety-patient-view and shows the findings that rest on a selected order (e.g. a CYP3A4/P-gp "
        "interaction, a live vaccine, an ACE inhibitor, or pregnancy with a selected mTOR order), "
        "citing the FDA labels.",
    ),
    "order-sign": (
        "mTOR inhibitor safety (orders signed)",
        "Before orders are signed for a patient taking or starting everolimus or sirolimus: every check of "
        "mtor-safety-patient-view, on the current record and all draft orders, citing the FDA labels.",
    ),
    "appointment-book": (
        "mTOR inhibitor safety (surgery being booked)",
        "When an appointment is booked for a patient taking or starting everolimus or sirolimus and it is surgery "
        "(a surgical service type or specialty, or based on a surgical ServiceRequest): when to stop the drug before "
        "it and restart after it, as the label of the patient's use says (wound healing), citing that label.",
    ),
}


def build_services(knowledge: Knowledge) -> dict[str, ServiceDefinition]:
    templates = prefetch_templates(knowledge)
    services = {}
    for hook, (title, description) in _DESCRIPTIONS.items():
        service = ServiceDefinition(
            id=f"mtor-safety-{hook}",
            hook=hook,
            title=title,
            description=description,
            prefetch=templates,
            required_prefetch=frozenset({"medications"}),
        )
        services[service.id] = service
    return services
