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


def test_sirolimus_with_ace_inhibitor_warns_with_rapamune_wording_and_the_published_incidence():
    # Rapamune W&P 5.5 Angioedema (DailyMed); incidence with ACE inhibitors: PubMed 20093343
    lisinopril = mtor_order("MedicationRequest/lis", "Lisinopril 10 MG Oral Tablet", "314076", dose=10)
    sirolimus = mtor_order("MedicationRequest/rapa", "Sirolimus 2 MG Oral Tablet", "360110", dose=2)
    [finding] = check_angioedema(record_snapshot([sirolimus, lisinopril]), K)
    assert finding.severity is Severity.WARNING
    assert finding.source.key == "MTORI-ACEI-2010" and "Rapamune" in finding.statement.text
    assert "everolimus" not in finding.statement.text.lower() and "afinitor" not in finding.statement.text.lower()
