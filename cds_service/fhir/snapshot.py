"""Patient data for one hook call: `gather` (I/O, fhir/gather.py) then `build_snapshot` (FHIR JSON -> records,
fhir/read.py). Kept as the one import for callers that need both."""

from __future__ import annotations

from cds_service.fhir.gather import GatheredData, gather
from cds_service.fhir.read import build_snapshot

__all__ = ["GatheredData", "build_snapshot", "gather"]
