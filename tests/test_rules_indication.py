"""Which indication an mTOR inhibitor is for, read from the Conditions on record (fixed vs trough-guided dosing)."""

from __future__ import annotations

from cds_service.rules.indication import infer_indication
from snapshots import (
    AML_RECORD,
    SEGA_RECORD,
    TSC_RECORD,
    knowledge,
    record_snapshot,
)

K = knowledge()


def test_indication_is_tsc_sega_from_a_text_only_condition_with_tsc_on_record():
    found = infer_indication(record_snapshot(conditions=[TSC_RECORD, SEGA_RECORD]), K, "everolimus")
    assert (found.key, found.dosing) == ("tsc-sega", "tdm")


def test_angiomyolipoma_without_tsc_on_record_is_not_the_tsc_indication():
    assert infer_indication(record_snapshot(conditions=[AML_RECORD]), K, "everolimus").key is None


def test_two_indications_with_different_dosing_leave_the_indication_unknown():
    found = infer_indication(record_snapshot(conditions=[TSC_RECORD, SEGA_RECORD, AML_RECORD]), K, "everolimus")
    assert found.key is None and found.dosing is None and len(found.evidence) == 2
