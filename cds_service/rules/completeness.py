"""Data the checks needed but could not have: said as a finding, so that a missing card is not read as an all-clear."""

from __future__ import annotations

from cds_service.findings import ChecksIncomplete, Severity
from cds_service.knowledge import Source
from cds_service.patient import PatientSnapshot

DATA_ACCESS = Source(
    key="CDS-HOOKS-DATA",
    label="mtor-cds data access (CDS Hooks 2.0: providing FHIR resources to a CDS service)",
    url="https://cds-hooks.hl7.org/2.0/#providing-fhir-resources-to-a-cds-service",
)


def check_data_completeness(snapshot: PatientSnapshot, fhir_server_refused: bool) -> list[ChecksIncomplete]:
    """One finding naming what could not be obtained or read; none when every check ran on complete data."""
    if not snapshot.unavailable and not snapshot.skipped_resources:
        return []
    return [
        ChecksIncomplete(
            severity=Severity.INFO,
            mtor=None,
            source=DATA_ACCESS,
            unavailable=tuple(snapshot.unavailable),
            skipped_resources=snapshot.skipped_resources,
            fhir_server_refused=fhir_server_refused,
        )
    ]
