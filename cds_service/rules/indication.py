"""Which indication an mTOR inhibitor is for, from the patient's Conditions (it decides fixed vs trough-guided dosing)."""

from __future__ import annotations

from cds_service.findings import Indication
from cds_service.knowledge import Knowledge
from cds_service.patient import PatientSnapshot

__all__ = ["Indication", "infer_indication"]


def infer_indication(snapshot: PatientSnapshot, knowledge: Knowledge, drug: str) -> Indication:
    """One indication on record for this drug -> that one; several with the same dosing -> that dosing only.

    Pure (reads only the snapshot and the knowledge) and asked by several rules: kept with the snapshot, per drug."""
    cache = snapshot.__dict__.setdefault("_indications", {})  # not a field: equality and replace() ignore it
    key = (id(knowledge), drug)
    if key not in cache:
        cache[key] = _infer_indication(snapshot, knowledge, drug)
    return cache[key]


def _infer_indication(snapshot: PatientSnapshot, knowledge: Knowledge, drug: str) -> Indication:
    has_tsc = bool(snapshot.active_conditions("tsc"))
    found = []
    for entry in knowledge.indications.values():
        if drug not in entry.drugs or (entry.requires_tsc and not has_tsc):
            continue
        conditions = snapshot.active_conditions(entry.key)
        if conditions:
            found.append((entry, conditions))
    if len(found) == 1:
        entry, conditions = found[0]
        return Indication(entry.key, entry.dosing, conditions)
    dosings = {entry.dosing for entry, _ in found}
    evidence = tuple(c for _, conditions in found for c in conditions)
    return Indication(None, dosings.pop() if len(dosings) == 1 else None, evidence)
