"""check_angioedema: everolimus with an ACE inhibitor (the label warns of angioedema); not sirolimus."""

from __future__ import annotations

from cds_service.findings import Severity
from cds_service.rules.angioedema import check_angioedema
from snapshots import (
    knowledge,
    mtor_order,
    record_snapshot,
)

K = knowledge()


def test_everolimus_with_ace_inhibitor_warns_of_angioedema():
    lisinopril = mtor_order("MedicationRequest/lis", "Lisinopril 10 MG Oral Tablet", "314076", draft=True, dose=10)
    [finding] = check_angioedema(record_snapshot([mtor_order(), lisinopril]), K)
    assert finding.severity is Severity.WARNING and finding.evidence == (lisinopril,)


def test_sirolimus_with_ace_inhibitor_has_no_angioedema_card():
    lisinopril = mtor_order("MedicationRequest/lis", "Lisinopril 10 MG Oral Tablet", "314076", dose=10)
    sirolimus = mtor_order("MedicationRequest/rapa", "Sirolimus 2 MG Oral Tablet", "360110", dose=2)
    assert check_angioedema(record_snapshot([sirolimus, lisinopril]), K) == []
