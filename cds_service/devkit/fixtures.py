"""Fixture patients as FHIR transaction bundles, and loading them into a FHIR server.

A hook-request fixture (fhir_fixtures/*.json) becomes one transaction of PUTs with ids (the Patient and
every resource of its prefetch, Medication resources included), so loading twice leaves the server as
loading once. A server that assigns its own ids (and refuses a PUT that names one) gets, instead, conditional
updates on an identifier naming the fixture resource, with urn:uuid references between them: the server
chooses the ids, resolves the references, and loading twice still updates in place. Synthea bundles
(fhir_fixtures/synthea/) are transactions with urn:uuid references already and are POSTed as they are.
Every date moves by the same number of days on the way (see dates.py), so the fixtures speak as of today.
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

import requests

from cds_service.devkit.dates import shift_dates

_TIMEOUT_S = 60.0
# The identifier that names a fixture resource ("Patient/pt-cyp-1") on a server that chose its own id for it.
FIXTURE_ID_SYSTEM = "https://mtor-cds.org/fhir/fixture-id"


class FixtureLoadError(RuntimeError):
    """A FHIR server refused a fixture bundle (or could not be reached)."""


class FixtureRefused(FixtureLoadError):
    """The server read the bundle and refused it or some of its entries (not a question of access)."""


@dataclasses.dataclass(frozen=True)
class FixtureBundle:
    name: str  # the fixture file, relative to the fixture directory
    bundle: dict[str, Any]


def is_hook_request(document: Mapping[str, Any]) -> bool:
    return isinstance(document.get("hook"), str) and isinstance(document.get("context"), dict)


def prefetch_resources(hook_request: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every resource in a hook request's prefetch (single resources and bundle entries), each (type, id) once."""
    resources: dict[tuple[str, str], dict[str, Any]] = {}
    for value in (hook_request.get("prefetch") or {}).values():
        if not isinstance(value, dict):
            continue
        if value.get("resourceType") == "Bundle":
            found = [e.get("resource") for e in value.get("entry") or () if isinstance(e, dict)]
        elif value.get("resourceType") != "OperationOutcome":
            found = [value]
        else:
            found = []
        for resource in found:
            if isinstance(resource, dict) and resource.get("resourceType") and resource.get("id"):
                resources.setdefault((resource["resourceType"], resource["id"]), resource)
    return list(resources.values())


def put_transaction(resources: list[dict[str, Any]]) -> dict[str, Any]:
    """A transaction that PUTs each resource at its id (idempotent: re-running it updates in place)."""
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "resource": resource,
                "request": {"method": "PUT", "url": f"{resource['resourceType']}/{resource['id']}"},
            }
            for resource in resources
        ],
    }


def conditional_transaction(resources: list[dict[str, Any]]) -> dict[str, Any]:
    """A transaction for a server that assigns ids: each resource without its id, tagged with an identifier
    naming it, PUT conditionally on that identifier (created the first time, updated after); references
    between them through urn:uuid fullUrls, which the server replaces with the ids it chose."""
    full_urls = {f"{r['resourceType']}/{r['id']}": f"urn:uuid:{uuid.uuid4()}" for r in resources}
    entries = []
    for resource in resources:
        name = f"{resource['resourceType']}/{resource['id']}"
        tagged = {key: value for key, value in _with_references(resource, full_urls).items() if key != "id"}
        tagged["identifier"] = [
            *(i for i in resource.get("identifier") or () if not (isinstance(i, dict) and i.get("system") == FIXTURE_ID_SYSTEM)),
            {"system": FIXTURE_ID_SYSTEM, "value": name},
        ]
        search = f"identifier={quote(FIXTURE_ID_SYSTEM, safe='')}|{quote(name, safe='')}"
        entries.append({
            "fullUrl": full_urls[name],
            "resource": tagged,
            "request": {"method": "PUT", "url": f"{resource['resourceType']}?{search}"},
        })
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def _with_references(value: Any, full_urls: Mapping[str, str]) -> Any:
    """A copy with every reference to one of the bundle's resources replaced by its urn:uuid fullUrl."""
    if isinstance(value, dict):
        return {
            key: full_urls.get(item, item) if key == "reference" and isinstance(item, str) else _with_references(item, full_urls)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [_with_references(item, full_urls) for item in value]
    return value


def fixture_bundles(directory: str | Path, shift_days: int = 0, server_ids: bool = False) -> Iterator[FixtureBundle]:
    """The transaction bundles for every hook-request fixture, then every Synthea bundle, in name order,
    every date moved by shift_days."""
    directory = Path(directory)
    for path in sorted(directory.glob("*.json")):
        document = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(document, dict) and is_hook_request(document):
            resources = shift_dates(prefetch_resources(document), shift_days)
            if resources:
                yield FixtureBundle(path.name, conditional_transaction(resources) if server_ids else put_transaction(resources))
    for path in sorted((directory / "synthea").glob("*.json")):
        document = json.loads(path.read_text(encoding="utf-8"))
        if document.get("resourceType") == "Bundle" and document.get("type") in ("transaction", "batch"):
            yield FixtureBundle(f"synthea/{path.name}", shift_dates(document, shift_days))


def post_bundle(
    fhir_base_url: str, bundle: Mapping[str, Any], session: requests.Session | None = None, access_token: str | None = None
) -> dict:
    """POST a transaction to the server's base; raises FixtureLoadError unless it and every entry succeeded."""
    http = session or requests.Session()
    headers = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"}
    if access_token:
        headers["Authorization"] = f"Bearer {access_token}"
    try:
        response = http.post(fhir_base_url.rstrip("/"), data=json.dumps(bundle), headers=headers, timeout=_TIMEOUT_S)
    except requests.RequestException as exc:
        raise FixtureLoadError(f"cannot reach {fhir_base_url}: {type(exc).__name__}") from exc
    if response.status_code in (401, 403):
        raise FixtureLoadError(f"HTTP {response.status_code}: give an access token with --fhir-token or MTOR_CDS_FHIR_TOKEN")
    if response.status_code not in (200, 201):
        raise FixtureRefused(f"HTTP {response.status_code}: {_diagnostics(response)}")
    try:
        answer = response.json()
    except ValueError as exc:
        raise FixtureLoadError("the answer is not JSON") from exc
    failed = [
        entry.get("response", {}).get("status", "?")
        for entry in answer.get("entry") or ()
        if not str(entry.get("response", {}).get("status", "")).startswith("2")
    ]
    if failed:
        raise FixtureRefused(f"{len(failed)} entries failed: {', '.join(failed[:5])}")
    return answer


@dataclasses.dataclass(frozen=True)
class LoadedFixture:
    name: str
    patient_ids: tuple[str, ...]  # the ids the server holds the fixture's patients under


def load_fixtures(
    fhir_base_url: str,
    directory: str | Path,
    session: requests.Session | None = None,
    *,
    shift_days: int = 0,
    server_ids: bool = False,
    access_token: str | None = None,
    progress: Callable[[LoadedFixture], None] | None = None,
) -> list[LoadedFixture]:
    """Load every fixture patient and Synthea bundle into the server, one transaction each, in order;
    progress(loaded) is called after each."""
    http = session or requests.Session()
    loaded = []
    for fixture in fixture_bundles(directory, shift_days, server_ids):
        try:
            answer = post_bundle(fhir_base_url, fixture.bundle, http, access_token)
        except FixtureLoadError as exc:
            refused_ids = isinstance(exc, FixtureRefused) and not server_ids
            hint = " (if the server assigns its own ids, add --server-ids)" if refused_ids else ""
            raise FixtureLoadError(f"{fixture.name}: {exc}{hint}") from exc
        loaded.append(LoadedFixture(fixture.name, patient_ids(fixture.bundle, answer)))
        if progress:
            progress(loaded[-1])
    return loaded


def patient_ids(bundle: Mapping[str, Any], answer: Mapping[str, Any]) -> tuple[str, ...]:
    """The ids of the Patients a transaction stored: from the response's location (the server's choice),
    else the id the bundle gave."""
    found = []
    answers = answer.get("entry") or ()
    for index, entry in enumerate(bundle.get("entry") or ()):
        if entry.get("resource", {}).get("resourceType") != "Patient":
            continue
        location = str(((answers[index] if index < len(answers) else {}).get("response") or {}).get("location") or "")
        parts = location.split("/_history/")[0].rstrip("/").split("/")
        if len(parts) >= 2 and parts[-2] == "Patient" and parts[-1]:
            found.append(parts[-1])
        elif entry["resource"].get("id") and entry.get("request", {}).get("method") == "PUT":
            found.append(entry["resource"]["id"])
    return tuple(found)


def _diagnostics(response: requests.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:300]
    if isinstance(body, dict) and body.get("resourceType") == "OperationOutcome":
        return "; ".join(str(i.get("diagnostics") or i.get("code")) for i in body.get("issue") or ())[:500]
    return json.dumps(body)[:300]
