"""HTTP to the EHR's FHIR server: allowlist, one deadline, parallel queries, paging, size caps.

Every `requests` or JSON failure is translated here into FhirUnavailable / FhirNotAllowed; nothing
above this module sees a `requests` exception. Log lines carry resource types and timings only:
never the URL's query (it holds the patient id) and never the token.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import re
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import SplitResult, unquote, urljoin, urlsplit

import orjson
import requests

from cds_service.errors import FhirNotAllowed, FhirUnavailable
from cds_service.settings import Settings, is_loopback_host

_LOG = logging.getLogger(__name__)
_EXECUTOR = concurrent.futures.ThreadPoolExecutor(max_workers=32, thread_name_prefix="fhir")
_LOCAL = threading.local()
_RESOURCE_TYPE = re.compile(r"[A-Z][A-Za-z]{1,63}")
_VISIBLE_ASCII = re.compile(r"[!-~]+")
_DEFAULT_PORTS = {"http": 80, "https": 443}


def _session() -> requests.Session:
    """One pooled session per thread: connections are reused across hook calls."""
    session = getattr(_LOCAL, "session", None)
    if session is None:
        session = requests.Session()
        session.trust_env = False  # never route patient data through a proxy from the environment
        _LOCAL.session = session
    return session


@dataclasses.dataclass
class Deadline:
    at: float  # time.monotonic() value

    @classmethod
    def after(cls, seconds: float) -> Deadline:
        return cls(time.monotonic() + seconds)

    def remaining(self) -> float:
        return self.at - time.monotonic()


@dataclasses.dataclass(frozen=True)
class QueryTiming:
    """One FHIR request, as it may be logged: no URL query, no token."""

    resource_type: str
    outcome: str  # "ok", "http-503", "timeout", ...
    ms: float


def check_allowed(base_url: str, settings: Settings) -> None:
    """Raise FhirNotAllowed unless base_url is a plain https (or loopback) base URL on the allowlist."""
    parts = _safe_parts(base_url)
    if parts is None or parts.query or parts.fragment or base_url.endswith(("?", "#")):
        raise FhirNotAllowed("fhirServer is not a plain http(s) base URL")
    if parts.scheme != "https" and not is_loopback_host(parts.hostname):
        raise FhirNotAllowed("fhirServer must use https")
    allowed = settings.allowed_fhir_servers
    if allowed and not any(is_within(base_url, prefix) for prefix in allowed):
        raise FhirNotAllowed("fhirServer is not on CDS_ALLOWED_FHIR_SERVERS")


def is_within(url: str, base: str) -> bool:
    """Whether url lies under base: same scheme, host and port, and base's path on a segment boundary.

    Compared on parsed parts, not as strings, so https://ehr.example.org.evil.com,
    https://ehr.example.org@evil.com and https://ehr.example.org/fhir/../admin never match.
    """
    parts, base_parts = _safe_parts(url), _safe_parts(base)
    if parts is None or base_parts is None:
        return False
    path, base_path = parts.path.rstrip("/").lower() + "/", base_parts.path.rstrip("/").lower() + "/"
    return (
        parts.scheme == base_parts.scheme
        and parts.hostname == base_parts.hostname
        and _port(parts) == _port(base_parts)
        and path.startswith(base_path)
    )


def _safe_parts(url: str) -> SplitResult | None:
    """The parts of an http(s) URL with a host, no userinfo and no dot segments; None for anything else."""
    if not _VISIBLE_ASCII.fullmatch(url) or "\\" in url:
        return None
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 -- raises ValueError on a port out of range
    except ValueError:
        return None
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname or "@" in parts.netloc:
        return None
    # Servers decode %2e and %2f before resolving "..": check the decoded path.
    if any(segment in (".", "..") for segment in unquote(parts.path).replace("\\", "/").split("/")):
        return None
    return parts


def _port(parts: SplitResult) -> int:
    return parts.port or _DEFAULT_PORTS[parts.scheme]


class FhirClient:
    """Reads from one FHIR server on behalf of one hook call."""

    def __init__(self, base_url: str, access_token: str | None, settings: Settings, deadline: Deadline):
        check_allowed(base_url, settings)
        self.base_url = base_url.rstrip("/") + "/"
        self._headers = {"Accept": "application/fhir+json, application/json"}
        if access_token:
            self._headers["Authorization"] = f"Bearer {access_token}"
        self._settings = settings
        self.deadline = deadline
        self.timings: list[QueryTiming] = []
        self._lock = threading.Lock()

    def read(self, relative_url: str) -> dict[str, Any]:
        """Read `Type/id`; anything but a `Type` (an OperationOutcome, a Bundle) is a failure, not data."""
        resource = self._get(self._join(relative_url))
        expected = relative_url.split("/", 1)[0]
        if resource.get("resourceType") != expected:
            raise FhirUnavailable(f"expected a {expected[:40]}, got {str(resource.get('resourceType'))[:40]}")
        return resource

    def search(self, relative_url: str) -> list[dict[str, Any]]:
        """All resources of a search, following `next` links; more pages than the limit is a failure."""
        return self.continue_search(self._get(self._join(relative_url)))

    def continue_search(self, bundle: Mapping[str, Any]) -> list[dict[str, Any]]:
        """The resources of a (possibly prefetched) Bundle plus those of its following pages."""
        resources: list[dict[str, Any]] = []
        pages = 0
        while True:
            if bundle.get("resourceType") != "Bundle":
                raise FhirUnavailable(f"expected a Bundle, got {str(bundle.get('resourceType'))[:40]}")
            if not isinstance(bundle.get("entry", []), list):
                raise FhirUnavailable("Bundle.entry is not an array")  # unreadable is not "no data"
            resources += entry_resources(bundle)
            next_url = next_link(bundle)
            pages += 1
            if not next_url:
                return resources
            if pages >= self._settings.fhir_max_pages:
                raise FhirUnavailable("more pages than CDS_FHIR_MAX_PAGES")  # cut short is not complete
            bundle = self._get(self._join(next_url))

    def _join(self, url: str) -> str:
        """The absolute URL, which must stay under base_url: the token is never sent anywhere else."""
        try:
            absolute = urljoin(self.base_url, url)
        except ValueError:
            absolute = ""
        if not is_within(absolute, self.base_url):
            raise FhirUnavailable("URL leaves the FHIR server")
        return absolute

    def _resource_type(self, url: str) -> str:
        """The type a URL queries, for the log; never its id (a Patient read's id is the patient id)."""
        relative = urlsplit(url).path[len(urlsplit(self.base_url).path):]
        first = relative.split("/", 1)[0]
        return first if _RESOURCE_TYPE.fullmatch(first) else "?"

    def _get(self, url: str) -> dict[str, Any]:
        resource_type = self._resource_type(url)
        started = time.monotonic()
        outcome = "ok"
        try:
            return self._get_json(url)
        except FhirUnavailable as exc:
            outcome = str(exc)[:40]
            raise
        finally:
            timing = QueryTiming(resource_type, outcome, round((time.monotonic() - started) * 1000, 1))
            with self._lock:
                self.timings.append(timing)

    def _get_json(self, url: str) -> dict[str, Any]:
        remaining = self.deadline.remaining()
        if remaining <= 0.005:
            raise FhirUnavailable("deadline passed")
        limit = self._settings.fhir_max_response_bytes
        try:
            # A GET needs only method, URL and headers prepared; sent through the pooled adapter directly
            # (no body, auth, cookies, environment proxies, hooks or redirects to resolve), each query costs
            # about half the CPU of Session.get.
            request = requests.PreparedRequest()
            request.prepare_method("GET")
            request.prepare_url(url, None)
            request.prepare_headers(self._headers)
            with _session().get_adapter(url).send(request, stream=True, timeout=remaining) as response:
                if response.status_code != 200:
                    raise FhirUnavailable(f"http-{response.status_code}")
                body = bytearray()
                for chunk in response.iter_content(chunk_size=65536):
                    body += chunk
                    if len(body) > limit:
                        raise FhirUnavailable("response too large")
                    if self.deadline.remaining() <= 0:
                        raise FhirUnavailable("deadline passed")
        except requests.Timeout as exc:
            raise FhirUnavailable("timeout") from exc
        except requests.RequestException as exc:
            raise FhirUnavailable("connection failed") from exc
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise FhirUnavailable("invalid JSON") from exc
        if not isinstance(parsed, dict):
            raise FhirUnavailable("not a FHIR resource")
        return parsed


def entry_resources(bundle: Mapping[str, Any]) -> list[dict[str, Any]]:
    entries = bundle.get("entry")
    if not isinstance(entries, list):
        return []
    return [e["resource"] for e in entries if isinstance(e, dict) and isinstance(e.get("resource"), dict)]


def next_link(bundle: Mapping[str, Any]) -> str | None:
    links = bundle.get("link")
    if not isinstance(links, list):
        return None
    for link in links:
        if isinstance(link, dict) and link.get("relation") == "next" and isinstance(link.get("url"), str):
            return link["url"]
    return None


def run_parallel(jobs: Mapping[str, Callable[[], Any]], deadline: Deadline) -> dict[str, Any]:
    """Run the jobs at once; each result is its value or the FhirUnavailable it raised (or timed out with)."""
    futures = {key: _EXECUTOR.submit(job) for key, job in jobs.items()}
    results: dict[str, Any] = {}
    for key, future in futures.items():
        try:
            results[key] = future.result(timeout=max(deadline.remaining(), 0) + 0.05)
        except concurrent.futures.TimeoutError:
            future.cancel()
            results[key] = FhirUnavailable("deadline passed")
        except FhirUnavailable as exc:
            results[key] = exc
        except Exception as exc:  # a bug in one query must not fail the whole hook call
            _LOG.error("FHIR job failed: %s", type(exc).__name__)
            results[key] = FhirUnavailable("internal error")
    return results
