"""Fixture patients as FHIR transaction bundles, and loading them into a FHIR server.

A hook-request fixture (fhir_fixtures/*.json) becomes one transaction of PUTs with ids (the Patient and
every resource of its prefetch, Medication resources included), so loading twice leaves the server as
loading once. Synthea bundles (fhir_fixtures/synthea/) are transactions with urn:uuid references
already and are POSTed as they are.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import requests

_TIMEOUT_S = 60.0


class FixtureLoadError(RuntimeError):
    """A FHIR server refused a fixture bundle (or could not be reached)."""


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


def fixture_bundles(directory: str | Path) -> Iterator[FixtureBundle]:
    """The transaction bundles for every hook-request fixture, then every Synthea bundle, in name order."""
    directory = Path(directory)
    for path in sorted(directory.glob("*.json")):
        document = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(document, dict) and is_hook_request(document):
            resources = prefetch_resources(document)
            if resources:
                yield FixtureBundle(path.name, put_transaction(resources))
    for path in sorted((directory / "synthea").glob("*.json")):
        document = json.loads(path.read_text(encoding="utf-8"))
        if document.get("resourceType") == "Bundle" and document.get("type") in ("transaction", "batch"):
            yield FixtureBundle(f"synthea/{path.name}", document)


def post_bundle(fhir_base_url: str, bundle: Mapping[str, Any], session: requests.Session | None = None) -> dict:
    """POST a transaction to the server's base; raises FixtureLoadError unless it and every entry succeeded."""
    http = session or requests.Session()
    try:
        response = http.post(
            fhir_base_url.rstrip("/"),
            data=json.dumps(bundle),
            headers={"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"},
            timeout=_TIMEOUT_S,
        )
    except requests.RequestException as exc:
        raise FixtureLoadError(f"cannot reach {fhir_base_url}: {type(exc).__name__}") from exc
    if response.status_code not in (200, 201):
        raise FixtureLoadError(f"HTTP {response.status_code}: {_diagnostics(response)}")
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
        raise FixtureLoadError(f"{len(failed)} entries failed: {', '.join(failed[:5])}")
    return answer


def load_fixtures(fhir_base_url: str, directory: str | Path, session: requests.Session | None = None) -> list[str]:
    """Load every fixture patient and Synthea bundle into the server; the names loaded, in order."""
    http = session or requests.Session()
    loaded = []
    for fixture in fixture_bundles(directory):
        try:
            post_bundle(fhir_base_url, fixture.bundle, http)
        except FixtureLoadError as exc:
            raise FixtureLoadError(f"{fixture.name}: {exc}") from exc
        loaded.append(fixture.name)
    return loaded


def _diagnostics(response: requests.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:300]
    if isinstance(body, dict) and body.get("resourceType") == "OperationOutcome":
        return "; ".join(str(i.get("diagnostics") or i.get("code")) for i in body.get("issue") or ())[:500]
    return json.dumps(body)[:300]
