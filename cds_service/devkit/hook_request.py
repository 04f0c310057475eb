"""Build a CDS Hooks 2.0 request: from a fixture file (a hook request, or a FHIR Bundle of one patient's
resources) or from a FHIR server, plus draft orders and selections.

A patient Bundle becomes prefetch by matching each resource to the service's prefetch templates: the
resource type, and the `status` and `code` (system|code) filters the template names, as a FHIR server
would answer the query.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urljoin, urlsplit

import requests

from cds_service.fhir.client import is_match, is_within

ORDER_HOOKS = ("order-select", "order-sign")
HOOKS = ("patient-view", *ORDER_HOOKS, "appointment-book")
DEFAULT_USER = "Practitioner/mtor-cds-dev"
_TIMEOUT_S = 10.0
_MAX_PAGES = 10


class RequestBuildError(ValueError):
    """The inputs cannot make a valid hook request (the message says which and why)."""


class FhirRefused(RequestBuildError):
    """The FHIR server answered an error (no such patient, no access) or a page the kit must not follow."""


def read_json(path: str | Path) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise RequestBuildError(f"cannot read {path}: {exc}") from None


# --- the patient's data --------------------------------------------------------------------------


def _template_filters(template: str) -> tuple[str, dict[str, set[str]]]:
    """'MedicationRequest?patient=x&status=active,on-hold' -> ('MedicationRequest', {'status': {...}})."""
    path, _, query = template.partition("?")
    filters = {
        name: set(value.split(","))
        for name, value in parse_qsl(query, keep_blank_values=True)
        if name in ("status", "code")
    }
    return path.split("/")[0], filters


def _matches(resource: Mapping[str, Any], filters: Mapping[str, set[str]]) -> bool:
    statuses = filters.get("status")
    if statuses and resource.get("status") not in statuses:
        return False
    codes = filters.get("code")
    if codes:
        codings = (resource.get("code") or {}).get("coding") or ()
        held = {f"{c.get('system')}|{c.get('code')}" for c in codings if isinstance(c, dict)}
        held |= {str(c.get("code")) for c in codings if isinstance(c, dict)}
        if not held & codes:
            return False
    return True


def prefetch_from_resources(
    resources: list[dict[str, Any]], patient_id: str, templates: Mapping[str, str]
) -> dict[str, Any]:
    """Prefetch as the EHR would send it: each template's matching resources, Medication resources
    beside the medications (as `_include` would add them)."""
    resources = [r for r in resources if isinstance(r, dict) and r.get("resourceType")]
    medications = [r for r in resources if r["resourceType"] == "Medication"]
    prefetch: dict[str, Any] = {}
    for key, template in templates.items():
        resource_type, filters = _template_filters(template)
        if "?" not in template:
            found = [r for r in resources if r["resourceType"] == resource_type and r.get("id") == patient_id]
            prefetch[key] = found[0] if found else None
            continue
        matched = [r for r in resources if r["resourceType"] == resource_type and _matches(r, filters)]
        entries = [{"resource": r, "search": {"mode": "match"}} for r in matched]
        if resource_type == "MedicationRequest":
            entries += [{"resource": m, "search": {"mode": "include"}} for m in medications]
        prefetch[key] = {"resourceType": "Bundle", "type": "searchset", "total": len(matched), "entry": entries}
    return prefetch


def patient_from_bundle(bundle: Mapping[str, Any], templates: Mapping[str, str]) -> tuple[str, dict[str, Any]]:
    """(patient id, prefetch) from a FHIR Bundle holding one patient's resources."""
    resources = [e["resource"] for e in bundle.get("entry") or () if isinstance(e, dict) and isinstance(e.get("resource"), dict)]
    patients = [r for r in resources if r.get("resourceType") == "Patient"]
    if len(patients) != 1 or not patients[0].get("id"):
        raise RequestBuildError(f"the Bundle must hold exactly one Patient with an id (it holds {len(patients)})")
    return patients[0]["id"], prefetch_from_resources(resources, patients[0]["id"], templates)


def fetch_prefetch(
    fhir_base_url: str,
    patient_id: str,
    templates: Mapping[str, str],
    access_token: str | None = None,
    max_pages: int = _MAX_PAGES,
) -> dict[str, Any]:
    """Run each prefetch query against the FHIR server, following `next` pages, as an EHR prefetches.

    As the service does: a `next` link must stay on the same server (scheme, host, port and base path),
    so the access token never leaves it, and more than `max_pages` pages is an error, not a cut-short list."""
    base = fhir_base_url.rstrip("/") + "/"
    headers = _headers(access_token)
    http = requests.Session()
    prefetch: dict[str, Any] = {}
    for key, template in templates.items():
        url = urljoin(base, template.replace("{{context.patientId}}", quote(patient_id, safe="")))
        body = _get(http, url, headers)
        if body is None or body.get("resourceType") != "Bundle":
            prefetch[key] = body  # a resource, or None: not found means no data
            continue
        entries, pages = list(body.get("entry") or ()), 1
        next_url = _next(body)
        while next_url:
            if pages >= max_pages:
                raise FhirRefused(f"the {key} search has more than {max_pages} pages (the service stops there too)")
            page_url = urljoin(base, next_url)
            if not is_within(page_url, base):
                raise FhirRefused(f"the {key} search's next link leaves the FHIR server ({_origin(page_url)}): not followed")
            page = _get(http, page_url, headers) or {}
            entries += page.get("entry") or ()
            next_url, pages = _next(page), pages + 1
        # Bundle.total counts the matches: never included Medications or OperationOutcomes (the service checks it)
        matches = sum(1 for e in entries if is_match(e))
        if template.startswith("MedicationRequest?"):
            entries += _referenced_medications(http, base, headers, entries)
        prefetch[key] = {"resourceType": "Bundle", "type": "searchset", "total": matches, "entry": entries}
    return prefetch


def check_patient(fhir_base_url: str, patient_id: str, access_token: str | None = None) -> None:
    """Raise RequestBuildError when the FHIR server has no such patient (404) or refuses to say (401/403).
    An unreachable server is left for the service to report (it answers 412)."""
    url = urljoin(fhir_base_url.rstrip("/") + "/", f"Patient/{quote(patient_id, safe='')}")
    try:
        response = requests.get(url, headers=_headers(access_token), timeout=_TIMEOUT_S)
    except requests.RequestException:
        return
    if response.status_code == 404:
        raise FhirRefused(f"the FHIR server has no Patient/{patient_id} (HTTP 404 from {fhir_base_url})")
    if response.status_code in (401, 403):
        raise FhirRefused(
            f"the FHIR server answered {response.status_code} to Patient/{patient_id}: "
            "give an access token with --fhir-token or MTOR_CDS_FHIR_TOKEN"
        )


def _headers(access_token: str | None) -> dict[str, str]:
    headers = {"Accept": "application/fhir+json"}
    if access_token:
        headers["Authorization"] = f"Bearer {access_token}"
    return headers


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _referenced_medications(http: requests.Session, base: str, headers: dict[str, str], entries: list) -> list[dict]:
    """The Medication resources the orders reference, as `_include` entries: an EHR's prefetch carries them."""
    present = {f"Medication/{e['resource'].get('id')}" for e in entries if e.get("resource", {}).get("resourceType") == "Medication"}
    wanted = sorted(
        {ref for e in entries if isinstance(ref := e.get("resource", {}).get("medicationReference", {}).get("reference"), str)
         and ref.startswith("Medication/")} - present
    )
    found = [(ref, _get(http, urljoin(base, ref), headers)) for ref in wanted]
    return [{"fullUrl": urljoin(base, ref), "resource": med, "search": {"mode": "include"}} for ref, med in found if med]


def _get(http: requests.Session, url: str, headers: dict[str, str]) -> dict[str, Any] | None:
    try:
        response = http.get(url, headers=headers, timeout=_TIMEOUT_S)
    except requests.RequestException as exc:
        raise FhirRefused(f"cannot reach the FHIR server ({type(exc).__name__})") from exc
    if response.status_code == 404:
        return None
    if response.status_code in (401, 403):
        raise FhirRefused(
            f"the FHIR server answered {response.status_code} to {urlsplit(url).path}: "
            "give an access token with --fhir-token or MTOR_CDS_FHIR_TOKEN"
        )
    if response.status_code != 200:
        raise FhirRefused(f"the FHIR server answered {response.status_code} to {urlsplit(url).path}")
    return response.json()


def _next(bundle: Mapping[str, Any]) -> str | None:
    return next((link.get("url") for link in bundle.get("link") or () if link.get("relation") == "next"), None)


# --- draft orders and the request ---------------------------------------------------------------


def draft_orders_bundle(document: Mapping[str, Any]) -> dict[str, Any]:
    """A draftOrders Bundle from a --draft file: a single order resource or a Bundle of them."""
    if document.get("resourceType") == "Bundle":
        resources = [e["resource"] for e in document.get("entry") or () if isinstance(e, dict) and "resource" in e]
    elif document.get("resourceType"):
        resources = [document]
    else:
        raise RequestBuildError("--draft must be a FHIR resource (e.g. a MedicationRequest) or a Bundle")
    for resource in resources:
        if not resource.get("id"):
            raise RequestBuildError(f"every draft order needs an id (a {resource.get('resourceType')} has none)")
    return {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": r} for r in resources]}


def appointments_bundle(document: Mapping[str, Any]) -> dict[str, Any]:
    """context.appointments from an --appointment file: one Appointment or a Bundle of them."""
    if document.get("resourceType") == "Bundle":
        resources = [e["resource"] for e in document.get("entry") or () if isinstance(e, dict) and "resource" in e]
    elif document.get("resourceType") == "Appointment":
        resources = [document]
    else:
        raise RequestBuildError("--appointment must be an Appointment or a Bundle of Appointments")
    for resource in resources:
        if resource.get("resourceType") != "Appointment":
            raise RequestBuildError(f"--appointment holds a {resource.get('resourceType')}, not an Appointment")
    return {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": r} for r in resources]}


def _draft_refs(draft_orders: Mapping[str, Any] | None) -> list[str]:
    return [
        f"{e['resource']['resourceType']}/{e['resource']['id']}"
        for e in (draft_orders or {}).get("entry") or ()
        if isinstance(e, dict) and isinstance(e.get("resource"), dict)
    ]


def _check_drafts_are_for(patient_id: str, draft_orders: Mapping[str, Any] | None) -> None:
    """A draft order for another patient would be ignored by the service (and the answer look like an all-clear)."""
    for entry in (draft_orders or {}).get("entry") or ():
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(resource, dict):
            continue
        subject = (resource.get("subject") or resource.get("patient") or {}).get("reference")
        if isinstance(subject, str) and subject.rstrip("/").split("/")[-2:] != ["Patient", patient_id]:
            raise RequestBuildError(
                f"draft order {resource.get('resourceType')}/{resource.get('id')} is for {subject}, not Patient/{patient_id}"
            )


def _check_appointments_are_for(patient_id: str, appointments: Mapping[str, Any]) -> None:
    """An appointment whose patient participant is someone else would be ignored by the service."""
    for entry in appointments.get("entry") or ():
        resource = entry.get("resource") if isinstance(entry, dict) else None
        actors = [(p.get("actor") or {}).get("reference") for p in (resource or {}).get("participant") or () if isinstance(p, dict)]
        patients = [a for a in actors if isinstance(a, str) and "Patient/" in a]
        if patients and not any(a.rstrip("/").split("/")[-2:] == ["Patient", patient_id] for a in patients):
            raise RequestBuildError(f"appointment Appointment/{(resource or {}).get('id')} is for {patients[0]}, not Patient/{patient_id}")


def build_hook_request(
    hook: str,
    patient_id: str,
    *,
    user_id: str = DEFAULT_USER,
    prefetch: Mapping[str, Any] | None = None,
    draft_orders: Mapping[str, Any] | None = None,
    selections: list[str] | None = None,
    fhir_server: str | None = None,
    access_token: str | None = None,
    encounter_id: str | None = None,
    appointments: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A CDS Hooks 2.0 request body. order-select selects every draft order unless told which; appointment-book
    needs the appointments being booked."""
    if hook not in HOOKS:
        raise RequestBuildError(f"unknown hook {hook!r} (one of {', '.join(HOOKS)})")
    context: dict[str, Any] = {"userId": user_id, "patientId": patient_id}
    if encounter_id:
        context["encounterId"] = encounter_id
    if hook in ORDER_HOOKS:
        _check_drafts_are_for(patient_id, draft_orders)
        context["draftOrders"] = dict(draft_orders or {"resourceType": "Bundle", "type": "collection", "entry": []})
    if hook == "order-select":
        refs = _draft_refs(draft_orders)
        chosen = list(selections) if selections else refs
        if not chosen:
            raise RequestBuildError("order-select needs draft orders to select (--draft FILE)")
        unknown = [s for s in chosen if s not in refs]
        if unknown:
            raise RequestBuildError(f"--select names no draft order: {', '.join(unknown)} (drafts: {', '.join(refs) or 'none'})")
        context["selections"] = chosen
    if hook == "appointment-book":
        if not appointments or not appointments.get("entry"):
            raise RequestBuildError("appointment-book needs the appointments being booked (--appointment FILE)")
        _check_appointments_are_for(patient_id, appointments)
        context["appointments"] = dict(appointments)
    body: dict[str, Any] = {"hook": hook, "hookInstance": str(uuid.uuid4()), "context": context}
    if fhir_server:
        body["fhirServer"] = fhir_server
        if access_token:
            body["fhirAuthorization"] = {
                "access_token": access_token, "token_type": "Bearer", "expires_in": 300,
                "scope": "patient/*.read", "subject": "mtor-cds",
            }
    if prefetch:
        body["prefetch"] = dict(prefetch)
    return body


def request_from_fixture(
    hook: str,
    document: Mapping[str, Any],
    templates: Mapping[str, str],
    *,
    draft_orders: Mapping[str, Any] | None = None,
    selections: list[str] | None = None,
    fhir_server: str | None = None,
    access_token: str | None = None,
    appointments: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A fresh request for `hook` from a fixture: a hook request (its patient, prefetch and, unless
    replaced, its draft orders, selections and appointments) or a Bundle of the patient's resources."""
    if isinstance(document.get("hook"), str) and isinstance(document.get("context"), dict):
        context = document["context"]
        if appointments is None and hook == "appointment-book" and isinstance(context.get("appointments"), dict):
            appointments = context["appointments"]
        if draft_orders is None and hook in ORDER_HOOKS:
            draft_orders = context.get("draftOrders")
            if selections is None and hook == "order-select" and document["hook"] == "order-select":
                selections = context.get("selections")
        return build_hook_request(
            hook, context["patientId"], user_id=context.get("userId") or DEFAULT_USER,
            prefetch=document.get("prefetch"), draft_orders=draft_orders, selections=selections,
            fhir_server=fhir_server or document.get("fhirServer"), encounter_id=context.get("encounterId"),
            access_token=access_token, appointments=appointments,
        )
    if document.get("resourceType") == "Bundle":
        patient_id, prefetch = patient_from_bundle(document, templates)
        return build_hook_request(
            hook, patient_id, prefetch=prefetch, draft_orders=draft_orders, selections=selections, fhir_server=fhir_server,
            access_token=access_token, appointments=appointments,
        )
    raise RequestBuildError("the patient file must be a hook request or a FHIR Bundle of the patient's resources")
