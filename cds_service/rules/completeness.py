"""Data the checks needed but could not have: said as a finding, so that a missing card is not read as an all-clear."""

from __future__ import annotations

from collections.abc import Sequence

from cds_service.findings import ChecksIncomplete, NotListed, Severity
from cds_service.knowledge import Source
from cds_service.patient import PatientSnapshot

# A label and no url: the card rests on this service's own data access, not on a clinical publisher, and card
# links go only to primary clinical publishers (publishers.json; CDS Hooks makes source.url optional).
DATA_ACCESS = Source(key="CDS-HOOKS-DATA", label="mtor-cds data access (the data this service could read)")


def check_data_completeness(
    snapshot: PatientSnapshot, fhir_server_refused: bool, not_listed: Sequence[NotListed] = ()
) -> list[ChecksIncomplete]:
    """One finding naming what could not be obtained or read, and findings beyond a card's cap; none when every
    check ran on complete data and every finding is listed."""
    if not snapshot.unavailable and not snapshot.skipped_resources and not not_listed:
        return []
    return [
        ChecksIncomplete(
            severity=Severity.INFO,
            mtor=None,
            source=DATA_ACCESS,
            unavailable=tuple(snapshot.unavailable),
            skipped_resources=snapshot.skipped_resources,
            unreadable=snapshot.unreadable,
            not_listed=tuple(not_listed),
            fhir_server_refused=fhir_server_refused,
        )
    ]
