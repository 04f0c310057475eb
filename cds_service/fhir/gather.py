"""Patient data for one hook call, the I/O half: prefetch first, fetch what is missing.

Prefetch values are told apart as the spec asks: an absent key (fetch it), `null` (no data), a Bundle
(its entries, plus its `next` pages when a server can be reached) and an OperationOutcome or anything
else (the EHR's prefetch failed: fetch it). What could not be had is kept with the reason, for the
checks-incomplete card, the 412 and the log line.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Mapping
from functools import partial
from typing import Any
from urllib.parse import quote

from cds_service.errors import DataUnavailable, FhirError, FhirNotAllowed
from cds_service.fhir.client import CALL_BYTES_EXCEEDED, Deadline, FhirClient, QueryOutcome, QueryTiming, entry_resources, is_match, next_link, run_parallel
from cds_service.limits import MAX_FHIR_BYTES_PER_CALL, MAX_RESOURCES_PER_CALL
from cds_service.services import HookCall, ServiceDefinition
from cds_service.settings import Settings

_LOG = logging.getLogger(__name__)
_TOKEN = re.compile(r"\{\{\s*context\.(\w+)\s*\}\}")
MEDICATION_KEYS = ("medications", "medicationStatements")  # keys whose resources may reference a Medication


@dataclasses.dataclass
class GatheredData:
    """Raw resources per prefetch key, and what could not be had."""

    by_key: dict[str, list[dict[str, Any]]]
    unchecked: list[str]  # keys with no data or only part of it
    medications: dict[str, dict[str, Any]]  # "Medication/id" -> Medication, for references
    timings: list[QueryTiming]
    fhir_server_refused: bool = False
    malformed_entries: int = 0  # prefetched Bundle entries with no resource object
    reasons: dict[str, str] = dataclasses.field(default_factory=dict)  # unchecked key -> why, for the 412 and logs
    unresolved_drafts: frozenset[str] = frozenset()  # draft orders ("MedicationRequest/1") whose Medication could not be had
    drafts: list[tuple[str, dict[str, Any]]] = dataclasses.field(default_factory=list)  # (reference, resource): draft_orders
    selected: frozenset[str] = frozenset()  # order-select: the references in focus (see selected_drafts)
    unmatched_selections: int = 0  # order-select: selections that name no draft order


def gather(call: HookCall, service: ServiceDefinition, settings: Settings) -> GatheredData:
    """Prefetch first; fetch missing keys (and further pages) in parallel under one deadline.

    Raises DataUnavailable (412, naming each missing key and why) when required data can be had neither way.
    Resources beyond MAX_RESOURCES_PER_CALL (prefetched or fetched) are cut, and their key reported unchecked.
    """
    deadline = Deadline.after(settings.fhir_deadline_s)
    client, refusal = _client_for(call, settings, deadline)
    no_server = refusal or "the request names no fhirServer"
    by_key: dict[str, list[dict[str, Any]]] = {}
    reasons: dict[str, str] = {}
    malformed = 0
    jobs = {}
    queries = {}  # key -> relative query, for the keys not prefetched
    for key, template in service.prefetch.items():
        present, value = key in call.prefetch, call.prefetch.get(key)
        if present and value is None:
            by_key[key] = []  # the EHR says: no data
        elif (present and isinstance(value, dict) and value.get("resourceType") == "Bundle" and isinstance(value.get("entry", []), list)
              and not _holds_bundles(value, template)):
            by_key[key] = entry_resources(value)
            malformed += len(value.get("entry") or ()) - len(by_key[key])
            if next_link(value):
                if client:
                    jobs[key] = partial(client.continue_search, value)
                else:
                    reasons[key] = f"its prefetch has more pages; {no_server}"
            elif (short := _short_of_total(value)) is not None:
                reasons[key] = short
        elif present and isinstance(value, dict) and (expected := _read_type(template)) and value.get("resourceType") == expected:
            by_key[key] = [value]  # the one resource a read template asks for, e.g. Patient
        elif client:
            queries[key] = _query(template, call.context)
        else:
            failed_prefetch = _outcome_text(value, template) if present else ""
            reasons[key] = f"{failed_prefetch or 'not prefetched'}; {no_server}"
    drafts = draft_orders(call)
    # Several queries to send: the server's CapabilityStatement is worth asking (once per worker process) for batch
    # and for _include of referenced Medications (saves the round trip that would read them after the search).
    capabilities = client.capabilities() if client and len(queries) > 1 else None
    template_queries = dict(queries)
    if capabilities is not None:
        queries = {key: _with_medication_include(key, query, capabilities.includes) for key, query in queries.items()}
    if client and capabilities is not None and capabilities.batch:
        results = client.batch(queries)  # one round trip; further pages and prefetch continuations in parallel
        results.update(run_parallel(jobs, deadline) if jobs else {})
    else:
        results = run_parallel({**jobs, **{key: partial(client.fetch, q) for key, q in queries.items()}}, deadline) if client else {}
    # A server that lists an _include and then answers its search with 400 (the include not supported after all): the
    # template's own query is asked again at once, and the server gets no _include for a while. The include only saves
    # a round trip; it must not cost the medications.
    refused_include = {key: template_queries[key] for key, query in queries.items()
                       if query != template_queries[key] and isinstance(results.get(key), FhirError) and str(results[key]) == "http-400"}
    if client and refused_include:
        client.forget_includes()
        results.update(run_parallel({key: partial(client.fetch, q) for key, q in refused_include.items()}, deadline))
    for key, result in sorted(results.items(), key=lambda item: list(service.prefetch).index(item[0])):
        if isinstance(result, FhirError):
            reasons[key] = _reason(result)
        else:
            by_key[key] = result
    by_key = {key: _one_copy_each(resources) for key, resources in by_key.items()}
    _cap_resources(by_key, reasons, len(drafts))
    for key, resources in by_key.items():
        if key not in reasons and _says_incomplete(resources):
            reasons[key] = "the FHIR server said its results are incomplete"
    timings = client.timings if client else []
    if refusal:
        timings = [QueryTiming("-", QueryOutcome.NOT_ALLOWED, 0.0)]
    missing_required = sorted(k for k in service.required_prefetch if k not in by_key)
    if missing_required:
        raise DataUnavailable(
            "required data could not be prefetched or fetched: "
            + "; ".join(f"{k} ({reasons.get(k, 'not available')})" for k in missing_required),
            fhir_timings=timings,
        )
    _read_ended_prior_prescriptions(by_key, drafts, client)
    medications, unresolved, unresolved_drafts = _resolve_medication_references(by_key, drafts, client)
    if unresolved:
        timings = [*timings, *(QueryTiming("Medication", QueryOutcome.UNRESOLVED, 0.0) for _ in range(unresolved))]
        # An order we cannot identify must not read as "nothing interacting".
        reasons.setdefault("medications", f"{unresolved} Medication reference(s) could not be resolved")
    missing_orders = _read_booked_surgery_orders(by_key, call, client)
    if missing_orders:
        timings = [*timings, *(QueryTiming("ServiceRequest", QueryOutcome.UNRESOLVED, 0.0) for _ in range(missing_orders))]
        # Whether the appointment being booked is surgery may rest on the order it is based on.
        reasons.setdefault("serviceRequests", f"{missing_orders} ServiceRequest(s) an appointment is based on could not be read")
    unchecked = [key for key in (*service.prefetch, *reasons) if key in reasons]
    selected, unmatched = selected_drafts(call, drafts)
    return GatheredData(by_key, list(dict.fromkeys(unchecked)), medications, timings, bool(refusal), malformed, reasons,
                        unresolved_drafts, drafts, selected, unmatched)


def _short_of_total(bundle: Mapping[str, Any]) -> str | None:
    """A searchset whose `total` (the number of matches) exceeds the matches it carries, with no next page to read the
    rest from: what came is not all there is (an EHR that cut its prefetch, or sent only a count). Included resources
    (search.mode "include") and OperationOutcomes ("outcome") are not matches."""
    total = bundle.get("total")
    if not isinstance(total, int) or isinstance(total, bool) or bundle.get("type") not in (None, "searchset"):
        return None
    entries = bundle.get("entry")
    matches = sum(1 for e in entries if isinstance(e, dict) and is_match(e)) if isinstance(entries, list) else 0
    if total <= matches:
        return None
    return f"its prefetch Bundle says {total} matches but carries {matches}, with no next page"


def _one_copy_each(resources: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One copy of a resource that comes twice (updated between two page reads, or repeated in a prefetch): the later
    copy, unless the earlier has the higher meta.versionId, in the place of the first. A superseded trough must not
    speak for its correction."""
    kept: list[dict[str, Any]] = []
    place: dict[tuple[str, str], int] = {}
    for resource in resources:
        rtype, rid = resource.get("resourceType"), resource.get("id")
        if not (isinstance(rtype, str) and isinstance(rid, str)):
            kept.append(resource)
        elif (rtype, rid) not in place:
            place[rtype, rid] = len(kept)
            kept.append(resource)
        elif _version(kept[place[rtype, rid]]) <= _version(resource):
            kept[place[rtype, rid]] = resource
    return kept


def _version(resource: Mapping[str, Any]) -> int:
    """meta.versionId when it is a number (most servers count versions), else 0: then the later copy wins."""
    meta = resource.get("meta")
    version = meta.get("versionId") if isinstance(meta, dict) else None
    return int(version) if isinstance(version, str) and version.isdigit() and len(version) < 19 else 0


_INCOMPLETE_ISSUES = frozenset({"incomplete", "too-costly", "throttled", "timeout"})  # FHIR R4 issue-type codes


def _says_incomplete(resources: list[dict[str, Any]]) -> bool:
    """A searchset may carry an OperationOutcome entry (search.mode "outcome"): an error, or an issue saying the results
    were cut short, means what came is not all there is. Information and warnings (an ignored parameter) do not."""
    for resource in resources:
        if resource.get("resourceType") != "OperationOutcome":
            continue
        issues = resource.get("issue")
        for issue in issues if isinstance(issues, list) else ():
            if not isinstance(issue, dict):
                continue
            severity, code = issue.get("severity"), issue.get("code")  # any JSON at all: compared as strings only
            if (isinstance(severity, str) and severity in ("error", "fatal")) or (isinstance(code, str) and code in _INCOMPLETE_ISSUES):
                return True
    return False


def _client_for(call: HookCall, settings: Settings, deadline: Deadline) -> tuple[FhirClient | None, str]:
    """The client for the call's fhirServer, or None and why it may not be contacted ("" when none was given)."""
    if not call.fhir_server:
        return None, ""
    if not call.access_token and not settings.fhir_without_token:
        # CDS Hooks 2.0 (FHIR Resource Access): the FHIR server may be used only when the client gives both fhirServer
        # and fhirAuthorization, and each query carries that token; a client that sends none withholds access.
        return None, "the request gives no fhirAuthorization, so the fhirServer may not be queried"
    try:
        return FhirClient(call.fhir_server, call.access_token, settings, deadline), ""
    except FhirError as exc:
        _LOG.warning("fhirServer not contacted: %s", exc)
        return None, f"the fhirServer may not be contacted: {exc}"


def _query(template: str, context: Mapping[str, Any]) -> str:
    """A prefetch template with its {{context.x}} tokens filled in (URL-encoded)."""
    return _TOKEN.sub(lambda m: quote(str(context.get(m.group(1), "")), safe=""), template)


def _with_medication_include(key: str, query: str, includes: frozenset[str]) -> str:
    """MedicationRequest / MedicationStatement searches bring the Medications they reference (`_include`), where
    the server lists that include (or "*": any include); the reader takes Medication resources from any
    Bundle."""
    resource_type = query.split("?", 1)[0]
    include = f"{resource_type}:medication"
    if key in MEDICATION_KEYS and "?" in query and (include in includes or "*" in includes):
        return f"{query}&_include={include}"
    return query


def _cap_resources(by_key: dict[str, list[dict[str, Any]]], reasons: dict[str, str], drafts: int) -> None:
    """Data beyond MAX_RESOURCES_PER_CALL is cut and said, never read as complete (draft orders always count)."""
    total = drafts
    for key in list(by_key):
        room = max(MAX_RESOURCES_PER_CALL - total, 0)
        if len(by_key[key]) > room:
            by_key[key] = by_key[key][:room]
            reasons[key] = f"more than {MAX_RESOURCES_PER_CALL} resources in one call"
        total += len(by_key[key])


def _reason(error: FhirError) -> str:
    """Why a query failed, in words an integrator can act on (never the URL or token)."""
    if isinstance(error, FhirNotAllowed):
        return f"the fhirServer may not be contacted: {error}"
    if _caused_by(error, ConnectionRefusedError):
        return "the FHIR server refused the connection"
    text = str(error)
    if text == "http-401":
        return "the FHIR server answered HTTP 401: the access token was not accepted"
    if text == "http-403":  # SMART: a valid token whose scopes do not cover this resource type
        return "the FHIR server answered HTTP 403: the access token does not allow this query (its scopes may not include it)"
    if text.startswith("http-"):
        return f"the FHIR server answered HTTP {text[5:]}"
    if text in ("timeout", "deadline passed"):
        return "the FHIR server did not answer in time"
    if text == "connection failed":
        return "the FHIR server could not be reached"
    if text.startswith("more pages than"):
        return f"the search has {text}"
    if text == CALL_BYTES_EXCEEDED:
        return f"the FHIR server sent {text} ({MAX_FHIR_BYTES_PER_CALL} bytes)"
    return f"invalid response from the FHIR server: {text}"


def _caused_by(error: BaseException, kind: type[BaseException]) -> bool:
    """Whether `kind` is anywhere in the chain (causes, wrapped args, urllib3's `reason`) behind error."""
    seen: set[int] = set()
    pending: list[object] = [error]
    while pending:
        current = pending.pop()
        if not isinstance(current, BaseException) or id(current) in seen:
            continue
        if isinstance(current, kind):
            return True
        seen.add(id(current))
        pending += [current.__cause__, current.__context__, getattr(current, "reason", None), *current.args]
    return False


def _read_type(template: str) -> str | None:
    """The resource type a read template returns ("Patient/{{context.patientId}}" -> "Patient"); None for a search,
    whose prefetch must be a Bundle: another resource in its place (a Patient for the medications) is not its data."""
    path = template.split("?", 1)
    return None if len(path) > 1 else path[0].split("/", 1)[0]


def _holds_bundles(bundle: Mapping[str, Any], template: str) -> bool:
    """Whether a prefetched search Bundle's entries are Bundles (a batch-response passed on whole, its entry the search's
    own Bundle): such a Bundle is not that key's data, and read as it is it would say "none of these" (no medications: no
    interaction card). A stray resource of another type among the matches is skipped by the reader, as it always was."""
    entries = bundle.get("entry")
    if "?" not in template or not isinstance(entries, list):
        return False
    return any(isinstance(entry, dict) and isinstance(resource := entry.get("resource"), dict) and resource.get("resourceType") == "Bundle"
               for entry in entries)


def _outcome_text(value: Any, template: str) -> str:
    """A failed prefetch, said with the EHR's own OperationOutcome diagnostics (short, for the 412 and card)."""
    if isinstance(value, dict) and value.get("resourceType") == "Bundle" and _holds_bundles(value, template):
        return f"its prefetch Bundle holds Bundles, not the {template.split('?', 1)[0]} resources its template searches for"
    if not isinstance(value, dict) or value.get("resourceType") != "OperationOutcome":
        return "its prefetch is not the FHIR Bundle or resource its template asks for"
    issue = value.get("issue")
    issues = issue if isinstance(issue, list) else []
    words = [str(i.get("diagnostics") or i.get("code") or "") for i in issues if isinstance(i, dict)]
    said = "; ".join(w for w in words if w)[:200]
    return f"its prefetch failed (OperationOutcome: {said})" if said else "its prefetch failed (OperationOutcome)"


def _resolve_medication_references(
    by_key: dict[str, list[dict[str, Any]]], drafts: list[tuple[str, dict[str, Any]]], client: FhirClient | None
) -> tuple[dict[str, dict[str, Any]], int, frozenset[str]]:
    """Medication resources by reference (from any bundle, e.g. _include, else read), how many stayed unresolved, and
    the draft orders among them."""
    known = {
        f"Medication/{r.get('id')}": r
        for resources in by_key.values()
        for r in resources
        if r.get("resourceType") == "Medication" and isinstance(r.get("id"), str)
    }
    wanted = set()
    unreadable = 0  # references no one can follow: never a silent "unnamed medication"
    drafts_waiting: dict[str, str | None] = {}  # draft order -> the Medication it waits for (None: no one can follow it)
    current = [r for key in MEDICATION_KEYS for r in by_key.get(key, ())]
    for (ref, resource), is_draft in [*((("", r), False) for r in current), *((d, True) for d in drafts)]:
        reference = medication_reference(resource)
        if reference and reference not in known:
            wanted.add(reference)
        elif reference is None and _unfollowable_medication_reference(resource):
            unreadable += 1
        else:
            continue
        if is_draft:
            drafts_waiting[ref] = reference
    if wanted and client:
        refs = sorted(wanted)
        if len(refs) > 1 and client.supports_batch():
            results = {ref: r[0] if isinstance(r, list) else r for ref, r in client.batch({ref: ref for ref in refs}).items()}
        else:
            results = run_parallel({ref: partial(client.read, ref) for ref in refs}, client.deadline)
        known.update({ref: r for ref, r in results.items() if isinstance(r, dict)})
    unresolved_drafts = frozenset(draft for draft, reference in drafts_waiting.items() if reference not in known)
    return known, len(wanted - known.keys()) + unreadable, unresolved_drafts


def _read_booked_surgery_orders(by_key: dict[str, list[dict[str, Any]]], call: HookCall, client: FhirClient | None) -> int:
    """appointment-book: read the ServiceRequests the booked appointments are based on when the prefetch lacks
    them (a revoked or completed one is then seen as such); returns how many could not be had."""
    have = {f"ServiceRequest/{r.get('id')}" for r in by_key.get("serviceRequests", ())}
    wanted = set()
    for appointment in proposed_appointments(call):
        for reference in appointment.get("basedOn") or ():
            if (order := reference_to(reference, "ServiceRequest")) and order not in have:
                wanted.add(order)
    if wanted and client:
        found = _read_each(client, sorted(wanted), "ServiceRequest")
        by_key.setdefault("serviceRequests", []).extend(found)
        wanted -= {f"ServiceRequest/{r.get('id')}" for r in found}
    return len(wanted)


def _read_each(client: FhirClient, refs: list[str], resource_type: str) -> list[dict[str, Any]]:
    """Read each "Type/id" at once, within the call's deadline: those that came back as that type (a failed read, or
    another type, is left out)."""
    results = run_parallel({ref: partial(client.read, ref) for ref in refs}, client.deadline)
    return [r for r in results.values() if isinstance(r, dict) and r.get("resourceType") == resource_type]


MAX_PRIOR_READS = 4  # priorPrescription reads per call: the orders being renewed, drafts first


def _read_ended_prior_prescriptions(by_key: dict[str, list[dict[str, Any]]], drafts: list[tuple[str, dict[str, Any]]],
                                    client: FhirClient | None) -> None:
    """Read the orders that drafts and current orders renew (priorPrescription) when the data lacks them: the medications
    search returns active orders only, and a renewal whose prior order has ended would read as a new start (a trough
    drawn days after a routine renewal taken for one drawn before steady state). Only an ended prior is kept (an active
    one would be in the search); one that cannot be read leaves the renewal as it was."""
    if client is None:
        return
    have = {f"MedicationRequest/{r.get('id')}" for r in by_key.get("medications", ())} | {ref for ref, _ in drafts}
    renewing = [r for _, r in drafts if r.get("resourceType") == "MedicationRequest"] + list(by_key.get("medications", ()))
    wanted = [ref for r in renewing if (ref := reference_to(r.get("priorPrescription"), "MedicationRequest")) and ref not in have]
    wanted = list(dict.fromkeys(wanted))[:MAX_PRIOR_READS]
    if not wanted:
        return
    ended = [r for r in _read_each(client, wanted, "MedicationRequest") if r.get("status") not in ("active", "on-hold", "draft")]
    if ended:
        by_key.setdefault("medications", []).extend(ended)


def medication_reference(resource: Mapping[str, Any]) -> str | None:
    """"Medication/id" for a medicationReference to another resource (not a contained one), else None."""
    return reference_to(resource.get("medicationReference"), "Medication")


def reference_to(reference: Any, resource_type: str) -> str | None:
    """"Type/id" for a Reference to a resource of that type, relative or absolute, and version-specific too
    (".../ServiceRequest/1/_history/2", FHIR R4 references: that resource); None for a contained one ("#x") or any
    other form."""
    text = reference.get("reference") if isinstance(reference, dict) else None
    if not isinstance(text, str) or text.startswith("#"):
        return None
    parts = text.rstrip("/").split("/")
    if len(parts) >= 4 and parts[-2] == "_history":
        parts = parts[:-2]
    if len(parts) >= 2 and parts[-2] == resource_type and parts[-1]:
        return f"{resource_type}/{parts[-1]}"
    return None


def _unfollowable_medication_reference(resource: Mapping[str, Any]) -> bool:
    """A medicationReference that names no Medication this service can read: a contained one that is not there, or a
    reference in another form (urn:uuid, conditional, identifier only). The drug then rests on its display alone."""
    reference = resource.get("medicationReference")
    if not isinstance(reference, dict):
        return False
    target = reference.get("reference")
    if isinstance(target, str) and target.startswith("#"):
        contained = resource.get("contained")
        return not any(isinstance(c, dict) and c.get("id") == target[1:] for c in (contained if isinstance(contained, list) else ()))
    return True  # medication_reference() could not read it


def draft_orders(call: HookCall) -> list[tuple[str, dict[str, Any]]]:
    """(reference, resource) for each draft order in context.draftOrders. A draft is known as "Type/id"; an EHR may
    send one that is not stored yet without an id: it is then known by its entry's fullUrl (urn:uuid:...) or, with
    none, by its place ("MedicationRequest#2"). Never "Type/None": two drafts without ids are two orders, not one."""
    bundle = call.context.get("draftOrders")
    entries = bundle.get("entry") if isinstance(bundle, dict) else None
    orders = []
    for index, entry in enumerate(entries if isinstance(entries, list) else ()):
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(resource, dict):
            continue
        rtype, rid, full_url = resource.get("resourceType"), resource.get("id"), entry.get("fullUrl")
        if isinstance(rid, str) and rid:
            ref = f"{rtype}/{rid}"
        elif isinstance(full_url, str) and full_url.startswith("urn:") and "/" not in full_url:
            ref = full_url
        else:
            ref = f"{rtype}#{index}"
        orders.append((ref, resource))
    return orders


def selected_drafts(call: HookCall, drafts: list[tuple[str, dict[str, Any]]]) -> tuple[frozenset[str], int]:
    """order-select: what is in focus (the selections, and every draft when one of them names no draft order), and how
    many selections name no draft order. The spec has every
    selection name an order of draftOrders; one that does not (a draft sent without an id, a reference spelled in
    another case) is one of the drafts no selection names, so those are all in focus: a selected interacting order
    must never go unchecked for its name."""
    if call.hook != "order-select":
        return frozenset(), 0
    refs = frozenset(ref for ref, _ in drafts)
    selections = frozenset(call.selections)
    unmatched = len(selections - refs)
    return (selections | refs if unmatched else selections), unmatched


def proposed_appointments(call: HookCall) -> list[dict[str, Any]]:
    """appointment-book: the Appointments being booked (context.appointments, a Bundle)."""
    appointments = call.context.get("appointments") if call.hook == "appointment-book" else None
    if isinstance(appointments, list):  # the form of the CDS Hooks library's examples
        return [a for a in appointments if isinstance(a, dict)]
    return entry_resources(appointments) if isinstance(appointments, dict) else []
