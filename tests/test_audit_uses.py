"""An audit of one realistic patient per labelled use through the hooks (2026-12, branch uses8): each test is a
defect it found, pinned on the response an EHR would get."""

from __future__ import annotations

from snapshots import ICD10CM, SNOMED, coding, condition, hook_request, level, med


def cards_of(client, request):
    response = client.post(f"/cds-services/mtor-safety-{request['hook']}", json=request)
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_json()["cards"]


def topics(cards):
    return [c["source"]["topic"]["code"] for c in cards]


def afinitor_10():
    return med("everolimus 10 MG Oral Tablet [Afinitor]", rxnorm="845512", dose_mg=10)


def test_pancreatic_net_coded_c25_4_is_oncology_so_a_trough_gives_no_tsc_card(client):
    # Afinitor for a pancreatic NET is a fixed 10 mg dose with no trough target; C25.4 was not read, so the
    # patient was taken for a use-unknown one and got "above the 15 ng/mL limit: review the dose".
    pnet = condition(ICD10CM, "C25.4", "Malignant neoplasm of endocrine pancreas")
    pnet["code"]["coding"].append(coding(SNOMED, "253027008", "Malignant neuroendocrine tumor of pancreas"))
    request = hook_request(medications=[afinitor_10()], observations=[level("everolimus", 18)], conditions=[pnet])
    assert "trough-high" not in topics(cards_of(client, request))
