"""Draft orders as EHRs send them: without an id (not stored yet), known by a urn:uuid fullUrl, selections that name no
draft. Two drafts must never be read as one, and every suggestion must name a draft the EHR can resolve."""

from __future__ import annotations

import pytest

from cds_assertions import assert_valid_cds_response
from snapshots import core_topics, everolimus, hook_request, make_app, med


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    return make_app(tmp_path_factory.mktemp("app"))


def clarithromycin(**kwargs):
    return med("clarithromycin 500 MG Oral Tablet", rxnorm="197517", **kwargs)


def without_id(resource):
    return {k: v for k, v in resource.items() if k != "id"}


def answer(call_hook, request):
    response = call_hook(request)
    assert response.status_code == 200, response.get_data(as_text=True)
    body = response.get_json()
    assert_valid_cds_response(body)
    return body


def resource_ids(body):
    return [a.get("resourceId") for c in body["cards"] for s in c.get("suggestions", ()) for a in s["actions"] if a["type"] == "delete"]


def test_two_draft_orders_without_ids_are_two_orders_on_order_sign(call_hook):
    """Both drafts were read as "MedicationRequest/None": the later replaced the earlier, and the critical
    interaction between them went unsaid (only the contraception card came)."""
    request = hook_request("order-sign", drafts=[without_id(everolimus(draft=True)), without_id(clarithromycin(draft=True))])
    body = answer(call_hook, request)
    assert "cyp3a4-interaction" in core_topics(body)
    assert resource_ids(body) == []  # no id: nothing the EHR could delete by resourceId


def test_draft_without_id_known_by_its_urn_fullurl_can_be_selected(call_hook):
    request = hook_request("order-select", medications=[everolimus()], drafts=[without_id(clarithromycin(draft=True))], selections=[])
    request["context"]["draftOrders"]["entry"][0]["fullUrl"] = "urn:uuid:0c7f5e3a-1d2b-4c8e-9f10-2a3b4c5d6e7f"
    request["context"]["selections"] = ["urn:uuid:0c7f5e3a-1d2b-4c8e-9f10-2a3b4c5d6e7f"]
    body = answer(call_hook, request)
    assert core_topics(body) == ["cyp3a4-interaction"]
    assert resource_ids(body) == []


@pytest.mark.parametrize("selection", ["MedicationRequest/None", "medicationrequest/clari-x", "MedicationRequest/CLARI-X",
                                       "MedicationRequest/not-in-draft-orders"])
def test_a_selection_naming_no_draft_order_keeps_the_unnamed_drafts_in_focus(call_hook, selection):
    """Found by the EHR-integration audit: a selection that names no draft (a draft sent without an id, a reference
    in another case) gave {"cards": []} for a selected clarithromycin with current everolimus."""
    request = hook_request("order-select", medications=[everolimus()], drafts=[clarithromycin(draft=True, id="clari-x")],
                           selections=[selection])
    body = answer(call_hook, request)
    assert core_topics(body) == ["cyp3a4-interaction"]
    assert resource_ids(body) == ["MedicationRequest/clari-x"]


def test_selections_that_name_drafts_keep_the_focus_on_them(call_hook):
    """The other draft (a live vaccine) stays out of an order-select answer whose selections all name drafts."""
    vaccine = med("MMR", cvx="03", draft=True, id="mmr-1")
    request = hook_request("order-select", medications=[everolimus()], drafts=[clarithromycin(draft=True, id="clari-x"), vaccine],
                           selections=["MedicationRequest/clari-x"])
    assert core_topics(answer(call_hook, request)) == ["cyp3a4-interaction"]


@pytest.mark.parametrize("draft_id", ["a.b-c", "x" * 64, "eOrd-1.2.840-99"])
def test_delete_names_the_draft_id_as_sent(call_hook, draft_id):
    request = hook_request("order-select", medications=[everolimus()], drafts=[clarithromycin(draft=True, id=draft_id)])
    assert resource_ids(answer(call_hook, request)) == [f"MedicationRequest/{draft_id}"]
