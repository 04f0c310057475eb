"""HTTP to the EHR's FHIR server: allowlist, one deadline, parallel queries, paging, size caps.

Every `requests` or JSON failure is translated here into FhirUnavailable / FhirNotAllowed; nothing
above this module sees a `requests` exception. Log lines carry resource types and timings only:
never the URL's query (it holds the patient id) and never the token.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import enum
import functools
import http.client
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from functools import partial
from typing import Any, TypeVar
from urllib.parse import SplitResult, unquote, urljoin, urlsplit

import orjson
import requests
import urllib3.exceptions

from cds_service.errors import FhirNotAllowed, FhirUnavailable
from cds_service.limits import MAX_FHIR_BYTES_PER_CALL
from cds_service.settings import Settings, is_secure_url

_T = TypeVar("_T")
_LOG = logging.getLogger(__name__)
_LOCAL = threading.local()
_POOL_LOCK = threading.Lock()
_pool: tuple[int, concurrent.futures.ThreadPoolExecutor] | None = None  # (pid, pool): one per worker process


@dataclasses.dataclass(frozen=True)
class ServerCapabilities:
    """What a FHIR server's CapabilityStatement says the fallback can use: the `batch` interaction, and the
    `_include` values it lists per resource type (searchInclude, e.g. "MedicationRequest:medication")."""

    batch: bool = False
    includes: frozenset[str] = frozenset()


# What each FHIR server said in its CapabilityStatement, per worker process: base URL -> (capabilities, until).
_capabilities: dict[str, tuple[ServerCapabilities, float]] = {}
CAPABILITY_TTL_S = 3600.0  # a server that answered is asked again after this long
CAPABILITY_RETRY_S = 300.0  # one that did not answer (or not readably): GETs until then
CAPABILITY_TIMEOUT_S = 1.0  # at most this much of a call's deadline goes to asking
_RESOURCE_TYPE = re.compile(r"[A-Z][A-Za-z]{1,63}")
CALL_BYTES_EXCEEDED = "more FHIR data than the per-call limit"
_VISIBLE_ASCII = re.compile(r"[!-~]+")
_DEFAULT_PORTS = {"http": 80, "https": 443}


def _version() -> str:
    """cds_service.__version__ if the package defines it, else the installed metadata, else the source tree's pyproject."""
    import cds_service

    declared = getattr(cds_service, "__version__", None)
    if isinstance(declared, str):
        return declared
    try:
        from importlib.metadata import version

        return version("mtor-cds")
    except Exception:  # noqa: BLE001, S110 -- running from a source tree that was never installed
        pass
    try:
        import tomllib
        from pathlib import Path

        with open(Path(__file__).resolve().parents[2] / "pyproject.toml", "rb") as handle:
            return str(tomllib.load(handle)["project"]["version"])
    except (OSError, KeyError, ValueError):
        return "unknown"


def _user_agent() -> str:
    return f"mtor-cds/{_version()}"


USER_AGENT = _user_agent()


class QueryOutcome(enum.StrEnum):
    """How one FHIR request ended: the fixed set the request log and the metrics share."""

    OK = "ok"
    TIMEOUT = "timeout"
    DEADLINE_PASSED = "deadline passed"
    CONNECTION_FAILED = "connection failed"
    RESPONSE_TOO_LARGE = "response too large"
    INVALID_JSON = "invalid JSON"
    NOT_A_RESOURCE = "not a FHIR resource"
    WRONG_RESOURCE_TYPE = "wrong resource type"
    LEAVES_SERVER = "next link leaves the FHIR server"
    PAGE_LIMIT = "page limit reached"
    NEXT_LINK_LOOP = "next link loop"  # a `next` link back to a page already read
    INTERNAL_ERROR = "internal error"
    NOT_ALLOWED = "not-allowed"  # no request sent: the server is not on CDS_ALLOWED_FHIR_SERVERS
    UNRESOLVED = "unresolved"  # no request sent or none answered: a Medication reference stays unresolved
    HTTP_401 = "http-401"
    HTTP_403 = "http-403"
    HTTP_404 = "http-404"
    HTTP_410 = "http-410"
    HTTP_429 = "http-429"
    HTTP_4XX = "http-4xx"
    HTTP_500 = "http-500"
    HTTP_502 = "http-502"
    HTTP_503 = "http-503"
    HTTP_504 = "http-504"
    HTTP_5XX = "http-5xx"
    HTTP_OTHER = "http-other"

    @classmethod
    def of_status(cls, status: int) -> QueryOutcome:
        try:
            return cls(f"http-{status}")
        except ValueError:
            return cls.HTTP_4XX if 400 <= status < 500 else cls.HTTP_5XX if 500 <= status < 600 else cls.HTTP_OTHER


def failure(outcome: QueryOutcome, detail: str = "") -> FhirUnavailable:
    """A FhirUnavailable that carries its outcome (the message stays the short detail callers read)."""
    error = FhirUnavailable(detail or outcome.value)
    error.outcome = outcome  # type: ignore[attr-defined]
    return error


def outcome_of(error: FhirUnavailable) -> QueryOutcome:
    return getattr(error, "outcome", QueryOutcome.INTERNAL_ERROR)


def _executor() -> concurrent.futures.ThreadPoolExecutor:
    """The worker process's pool for parallel FHIR queries, made on first use (after gunicorn's fork: threads do
    not survive a fork) and kept: no pool, no thread start per call."""
    global _pool
    pid = os.getpid()
    if _pool is None or _pool[0] != pid:
        with _POOL_LOCK:
            if _pool is None or _pool[0] != pid:
                _pool = (pid, concurrent.futures.ThreadPoolExecutor(max_workers=32, thread_name_prefix="fhir"))
    return _pool[1]


def _session() -> requests.Session:
    """One pooled session per thread: connections are reused across hook calls."""
    session = getattr(_LOCAL, "session", None)
    if session is None:
        session = requests.Session()
        session.trust_env = False  # never route patient data through a proxy from the environment
        _LOCAL.session = session
    return session


def _send(request: requests.PreparedRequest, until: Deadline) -> requests.Response:
    """Send through the thread's pooled adapter. A GET whose pooled keep-alive connection the server had closed as it
    was reused (HTTP/1.1 lets a server close an idle connection at any time; the request never reached it) is sent
    once more, on a fresh connection, within the deadline: never a POST, never after an answer has begun."""
    adapter = _session().get_adapter(request.url or "")
    try:
        response = adapter.send(request, stream=True, timeout=until.remaining())
    except requests.ConnectionError as exc:
        if request.method != "GET" or not _closed_before_answering(exc) or until.remaining() <= 0.005:
            raise
        return adapter.send(request, stream=True, timeout=until.remaining())
    # 429 Too Many Requests / 503 with a Retry-After the deadline can wait out (RFC 9110 §10.2.3): asked once more
    wait = _retry_after_s(response) if response.status_code in (429, 503) and request.method == "GET" else None
    if wait is None or wait > until.remaining() - RETRY_AFTER_MARGIN_S:
        return response
    response.close()
    time.sleep(wait)
    return adapter.send(request, stream=True, timeout=until.remaining())


RETRY_AFTER_MARGIN_S = 0.5  # what must be left of the deadline after waiting out a Retry-After, for the answer itself


def _retry_after_s(response: requests.Response) -> float | None:
    """Retry-After in seconds (its delay-seconds form; an HTTP-date is not waited for), or None."""
    value = response.headers.get("Retry-After", "").strip()
    return float(value) if value.isdigit() and len(value) < 6 else None


def _closed_before_answering(exc: BaseException) -> bool:
    """The connection ended before any byte of an answer (http.client's RemoteDisconnected, a reset or broken pipe on
    a reused socket), as opposed to a server refusing the connection or a name that does not resolve."""
    found: list[BaseException] = [exc]
    for seen in found:  # requests and urllib3 wrap it: in the exception's cause, its context or its arguments
        if isinstance(seen, (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)):
            return True
        if len(found) < 12:
            found += [e for e in (seen.__cause__, seen.__context__, *seen.args) if isinstance(e, BaseException) and e not in found]
    return False


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
    outcome: QueryOutcome  # a str: "ok", "http-503", "timeout", ...
    ms: float


def check_allowed(base_url: str, settings: Settings) -> None:
    """Raise FhirNotAllowed unless base_url is a plain https (or loopback) base URL on the allowlist."""
    parts = _safe_parts(base_url)
    if parts is None or parts.query or parts.fragment or base_url.endswith(("?", "#")):
        raise FhirNotAllowed("fhirServer is not a plain http(s) base URL")
    if not is_secure_url(base_url):
        raise FhirNotAllowed("fhirServer must use https")
    allowed = settings.allowed_fhir_servers
    if allowed and not any(is_within(base_url, prefix) for prefix in allowed):
        raise FhirNotAllowed("fhirServer is not on CDS_ALLOWED_FHIR_SERVERS")


def is_within(url: str, base: str) -> bool:
    """Whether url lies under base: same scheme, host and port, and base's path on a segment boundary.

    Compared on parsed parts, not as strings, so https://ehr.example.org.evil.com,
    https://ehr.example.org@evil.com and https://ehr.example.org/fhir/../admin never match. Paths
    compare case-sensitively: /FHIR is not /fhir to a server that routes /FHIR elsewhere.
    """
    parts, base_parts = _safe_parts(url), _base_parts(base)
    if parts is None or base_parts is None:
        return False
    path, base_path = parts.path.rstrip("/") + "/", base_parts.path.rstrip("/") + "/"
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
    # Servers such as HAPI on Jetty strip ;path-parameters and decode %2e, %2f and double encodings
    # (%252e) before routing, which can resolve outside the allowlisted base: a FHIR REST path needs
    # neither, so any ";" or "%" in it is refused outright.
    if ";" in parts.path or "%" in parts.path:
        return None
    if any(segment in (".", "..") for segment in unquote(parts.path).replace("\\", "/").split("/")):
        return None
    return parts


@functools.lru_cache(maxsize=64)
def _base_parts(base: str) -> SplitResult | None:
    """_safe_parts of a FHIR base URL (or an allowlist prefix), kept: every query of every call checks against it."""
    return _safe_parts(base)


def _port(parts: SplitResult) -> int:
    return parts.port or _DEFAULT_PORTS[parts.scheme]


class FhirClient:
    """Reads from one FHIR server on behalf of one hook call."""

    def __init__(self, base_url: str, access_token: str | None, settings: Settings, deadline: Deadline):
        check_allowed(base_url, settings)
        self.base_url = base_url.rstrip("/") + "/"
        self._headers = {"Accept": "application/fhir+json, application/json", "User-Agent": USER_AGENT}
        if access_token:
            self._headers["Authorization"] = f"Bearer {access_token}"
        self._settings = settings
        self.deadline = deadline
        self.timings: list[QueryTiming] = []
        self._lock = threading.Lock()
        self._bytes_read = 0  # by every query of this call, against MAX_FHIR_BYTES_PER_CALL

    def read(self, relative_url: str) -> dict[str, Any]:
        """Read `Type/id`; anything but a `Type` (an OperationOutcome, a Bundle) is a failure, not data."""
        resource = self._get(self._join(relative_url))
        _check_type(resource, relative_url.split("/", 1)[0])
        return resource

    def search(self, relative_url: str) -> list[dict[str, Any]]:
        """All resources of a search, following `next` links; more pages than the limit is a failure."""
        absolute = self._join(relative_url)
        searched = self._resource_type(absolute)
        return self.continue_search(self._get(absolute), searched if searched != "?" else None, absolute)

    def continue_search(self, bundle: Mapping[str, Any], searched: str | None = None, url: str | None = None) -> list[dict[str, Any]]:
        """The resources of a (possibly prefetched) Bundle plus those of its following pages.

        `searched`: the type the search asked for; a page carrying another (not marked as an include or an outcome) is
        the answer to another query, not this one's data. `url`: where the Bundle came from, against which a relative
        `next` link resolves (a prefetched one: the base URL). A `next` link back to a page already read is a loop."""
        resources: list[dict[str, Any]] = []
        pages = 0
        seen = {url} if url else set()
        while True:
            if bundle.get("resourceType") != "Bundle":
                raise failure(QueryOutcome.WRONG_RESOURCE_TYPE, f"expected a Bundle, got {str(bundle.get('resourceType'))[:40]}")
            if not isinstance(bundle.get("entry", []), list):
                raise failure(QueryOutcome.NOT_A_RESOURCE, "Bundle.entry is not an array")  # unreadable is not "no data"
            if searched and (stray := stray_type(bundle, searched)):
                raise failure(QueryOutcome.WRONG_RESOURCE_TYPE, f"{searched[:40]} search answered with {stray} resources")
            resources += entry_resources(bundle)
            next_url = next_link(bundle)
            pages += 1
            if not next_url:
                return resources
            resource_type = searched or _type_of_search(resources)
            if pages >= self._settings.fhir_max_pages:  # cut short is not complete
                self._record(resource_type, QueryOutcome.PAGE_LIMIT, 0.0)
                raise failure(QueryOutcome.PAGE_LIMIT, "more pages than CDS_FHIR_MAX_PAGES")
            try:
                absolute = self._join(next_url, url)
            except FhirUnavailable:  # e.g. another host name for the same server: logged, never sent
                self._record(resource_type, QueryOutcome.LEAVES_SERVER, 0.0)
                raise
            if absolute in seen:  # the same pages again and again until the page limit: never complete
                self._record(resource_type, QueryOutcome.NEXT_LINK_LOOP, 0.0)
                raise failure(QueryOutcome.NEXT_LINK_LOOP, "next links that lead back to a page already read")
            seen.add(absolute)
            url = absolute
            bundle = self._get(absolute)

    # --- batch: every query of a call in one POST, where the server says it can ---------------------

    def supports_batch(self) -> bool:
        """Whether the server's CapabilityStatement lists the `batch` interaction (see capabilities())."""
        return self.capabilities().batch

    def capabilities(self) -> ServerCapabilities:
        """What the server's CapabilityStatement says; asked once per worker process per server
        (CAPABILITY_TTL_S), never for longer than CAPABILITY_TIMEOUT_S of the call's deadline. Unreadable: nothing."""
        now = time.monotonic()
        cached = _capabilities.get(self.base_url)
        if cached is not None and cached[1] > now:
            return cached[0]
        found, ttl = ServerCapabilities(), CAPABILITY_RETRY_S
        asking = Deadline(min(self.deadline.at, now + CAPABILITY_TIMEOUT_S))
        try:
            statement = run_bounded(partial(self._get_json, self.base_url + "metadata", until=asking), asking)
            if statement.get("resourceType") == "CapabilityStatement":
                found, ttl = ServerCapabilities(_lists_batch(statement), _listed_includes(statement)), CAPABILITY_TTL_S
        except FhirUnavailable as exc:
            _LOG.info("FHIR CapabilityStatement not read (%s): parallel GETs", outcome_of(exc).value)
        _capabilities[self.base_url] = (found, now + ttl)
        return found

    def forget_includes(self) -> None:
        """The server refused an `_include` its CapabilityStatement lists (400): none is sent to it for
        CAPABILITY_RETRY_S."""
        known = _capabilities.get(self.base_url, (ServerCapabilities(), 0.0))[0]
        _capabilities[self.base_url] = (dataclasses.replace(known, includes=frozenset()), time.monotonic() + CAPABILITY_RETRY_S)

    def batch(self, queries: Mapping[str, str]) -> dict[str, Any]:
        """Run the queries (`Type?search` or `Type/id`, relative) as one FHIR batch; per key, the resources (a list,
        `next` pages followed) or the FhirUnavailable it failed with, as run_parallel gives them.

        Every URL is checked against the server's base as a GET's would be. Each entry is logged as a query of its
        type with the batch's time. A server that refuses the batch itself (400, 404, 405, 501 ...) is not asked
        again for CAPABILITY_RETRY_S and the queries are sent as parallel GETs (as they are when the batch's answer is
        larger than CDS_FHIR_MAX_RESPONSE_BYTES).
        """
        results: dict[str, Any] = {}
        sent: dict[str, str] = {}
        for key, query in queries.items():
            try:
                absolute = self._join(query)
            except FhirUnavailable as exc:
                results[key] = exc
                continue
            sent[key] = absolute[len(self.base_url):]
        if not sent:
            return results
        body = orjson.dumps({
            "resourceType": "Bundle", "type": "batch",
            "entry": [{"request": {"method": "GET", "url": url}} for url in sent.values()],
        })
        started = time.monotonic()
        try:
            answer = run_bounded(partial(self._get_json, self.base_url.rstrip("/"), payload=body), self.deadline)  # POST [base]
            entries = answer.get("entry") if answer.get("resourceType") == "Bundle" else None
            if answer.get("type") != "batch-response" or not isinstance(entries, list) or len(entries) != len(sent):
                raise failure(QueryOutcome.NOT_A_RESOURCE, "not a batch-response Bundle with one entry per query")
            if any(_answers_another_query(entry, url) for url, entry in zip(sent.values(), entries, strict=True)):
                # Entries are matched to queries by their place: one in another's place (a server that reorders them)
                # would put one search's data under another's key. None is trusted; the GETs say what each is.
                raise failure(QueryOutcome.NOT_A_RESOURCE, "batch-response entries out of order")
        except FhirUnavailable as exc:
            outcome = outcome_of(exc)
            if outcome in _BATCH_REFUSED or outcome is QueryOutcome.RESPONSE_TOO_LARGE:
                if outcome in _BATCH_REFUSED:  # a record too large for one answer says nothing about the server
                    known = _capabilities.get(self.base_url, (ServerCapabilities(), 0.0))[0]
                    _capabilities[self.base_url] = (dataclasses.replace(known, batch=False), time.monotonic() + CAPABILITY_RETRY_S)
                return {**results, **run_parallel({k: partial(self.fetch, q) for k, q in sent.items()}, self.deadline)}
            ms = round((time.monotonic() - started) * 1000, 1)
            for key, url in sent.items():
                self._record(self._resource_type(self.base_url + url), outcome, ms)
                results[key] = failure(outcome, str(exc))
            return results
        ms = round((time.monotonic() - started) * 1000, 1)
        more_pages = {}
        for (key, url), entry in zip(sent.items(), entries, strict=True):
            resource_type = self._resource_type(self.base_url + url)
            try:
                resource = _entry_answer(entry)
                if "?" not in url:
                    _check_type(resource, url.split("/", 1)[0])
            except FhirUnavailable as exc:
                self._record(resource_type, outcome_of(exc), ms)
                results[key] = exc
                continue
            self._record(resource_type, QueryOutcome.OK, ms)
            searched = resource_type if resource_type != "?" else None
            if "?" not in url:
                results[key] = [resource]
            elif next_link(resource):
                more_pages[key] = partial(self.continue_search, resource, searched, self.base_url + url)
            else:
                try:
                    results[key] = self.continue_search(resource, searched)  # checks it is a Bundle; no request
                except FhirUnavailable as exc:
                    results[key] = exc
        results.update(run_parallel(more_pages, self.deadline) if more_pages else {})
        return results

    def fetch(self, query: str) -> list[dict[str, Any]]:
        """One query as a GET: a search's resources (all pages) or the one resource read."""
        return self.search(query) if "?" in query else [self.read(query)]

    def _join(self, url: str, relative_to: str | None = None) -> str:
        """The absolute URL (a relative one resolved against relative_to, else base_url), which must stay under
        base_url: the token is never sent anywhere else."""
        try:
            absolute = urljoin(relative_to or self.base_url, url)
        except ValueError:
            absolute = ""
        if not is_within(absolute, self.base_url):
            raise failure(QueryOutcome.LEAVES_SERVER, "URL leaves the FHIR server")
        return absolute

    def _resource_type(self, url: str) -> str:
        """The type a URL queries, for the log; never its id (a Patient read's id is the patient id)."""
        base_parts = _base_parts(self.base_url)
        relative = urlsplit(url).path[len(base_parts.path if base_parts else urlsplit(self.base_url).path):]
        first = relative.split("/", 1)[0]
        return first if _RESOURCE_TYPE.fullmatch(first) else "?"

    def _record(self, resource_type: str, outcome: QueryOutcome, ms: float) -> None:
        with self._lock:
            self.timings.append(QueryTiming(resource_type, outcome, ms))

    def _get(self, url: str) -> dict[str, Any]:
        resource_type = self._resource_type(url)
        started = time.monotonic()
        outcome = QueryOutcome.OK
        try:
            return self._get_json(url)
        except FhirUnavailable as exc:
            outcome = outcome_of(exc)
            raise
        finally:
            self._record(resource_type, outcome, round((time.monotonic() - started) * 1000, 1))

    def _get_json(self, url: str, payload: bytes | None = None, until: Deadline | None = None) -> dict[str, Any]:
        """GET url (or POST body to it: a batch) and parse the JSON answer, within the deadline (or `until`, when
        sooner) and size cap."""
        until = until or self.deadline
        remaining = until.remaining()
        if remaining <= 0.005:
            raise failure(QueryOutcome.DEADLINE_PASSED)
        limit = self._settings.fhir_max_response_bytes
        try:
            # Only method, URL, headers (and a batch's body) are prepared; sent through the pooled adapter
            # directly (no auth, cookies, environment proxies, hooks or redirects to resolve), each query costs
            # about half the CPU of Session.get.
            request = requests.PreparedRequest()
            request.prepare_method("GET" if payload is None else "POST")
            request.prepare_url(url, None)
            request.prepare_headers(self._headers if payload is None else {**self._headers, "Content-Type": "application/fhir+json"})
            if payload is not None:
                request.prepare_body(payload, None)
            with _send(request, until) as response:
                if response.status_code != 200:
                    raise failure(QueryOutcome.of_status(response.status_code), f"http-{response.status_code}")
                body = bytearray()
                # read1: what one read of the socket gave, so the deadline is checked however slowly a server sends
                # (the timeout above bounds each read only; a server dripping a byte at a time never trips it)
                while chunk := response.raw.read1(65536, decode_content=True):
                    body += chunk
                    if len(body) > limit:
                        raise failure(QueryOutcome.RESPONSE_TOO_LARGE)
                    with self._lock:
                        self._bytes_read += len(chunk)
                        if self._bytes_read > MAX_FHIR_BYTES_PER_CALL:
                            raise failure(QueryOutcome.RESPONSE_TOO_LARGE, CALL_BYTES_EXCEEDED)
                    if until.remaining() <= 0:
                        raise failure(QueryOutcome.DEADLINE_PASSED)
        except (requests.Timeout, urllib3.exceptions.TimeoutError) as exc:  # urllib3's: a stall while reading the body
            raise failure(QueryOutcome.TIMEOUT) from exc
        except urllib3.exceptions.DecodeError as exc:  # a Content-Encoding (gzip, deflate) its body does not have
            raise failure(QueryOutcome.INVALID_JSON, "a body its Content-Encoding does not decode") from exc
        except requests.RequestException as exc:  # before OSError: requests' exceptions are OSErrors
            raise failure(QueryOutcome.CONNECTION_FAILED) from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            # Reading the body goes to urllib3 directly (requests does not wrap it there): a body shorter than its
            # Content-Length, a broken chunk, a connection reset mid-answer.
            raise failure(QueryOutcome.CONNECTION_FAILED, "the answer was cut short") from exc
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise failure(QueryOutcome.INVALID_JSON) from exc
        if not isinstance(parsed, dict):
            raise failure(QueryOutcome.NOT_A_RESOURCE)
        return parsed


def entry_resources(bundle: Mapping[str, Any]) -> list[dict[str, Any]]:
    entries = bundle.get("entry")
    if not isinstance(entries, list):
        return []
    return [e["resource"] for e in entries if isinstance(e, dict) and isinstance(e.get("resource"), dict)]


def is_match(entry: Any) -> bool:
    """A searchset entry that is one of the search's matches: not marked as an included resource or an OperationOutcome
    about the search (Bundle.entry.search.mode "include" / "outcome"; Bundle.total counts the matches only)."""
    search = entry.get("search") if isinstance(entry, dict) else None
    return not (isinstance(search, dict) and search.get("mode") in ("include", "outcome"))


# Besides the searched type, what a search's Bundle may carry without search.mode saying so: the OperationOutcome a
# server adds about the search, and the Medications an order search includes (a server may leave out the mode).
_ALSO_IN_A_SEARCH = {"MedicationRequest": ("Medication",), "MedicationStatement": ("Medication",)}


def stray_type(bundle: Mapping[str, Any], searched: str) -> str | None:
    """A resource type in a search's Bundle that the search did not ask for (an entry not marked as an include or an
    outcome), or None: such a Bundle answers another query."""
    allowed = {searched, "OperationOutcome", *_ALSO_IN_A_SEARCH.get(searched, ())}
    for entry in _list(bundle.get("entry")):
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(resource, dict) or not is_match(entry):
            continue
        rtype = resource.get("resourceType")
        if rtype not in allowed:
            return rtype if isinstance(rtype, str) and _RESOURCE_TYPE.fullmatch(rtype) else "resource of no known type"
    return None


def _answers_another_query(entry: Any, url: str) -> bool:
    """Whether a batch-response entry that answers 200 holds what another query of the batch asked for: a search's
    Bundle carrying another type, a read answered with another type of resource (an OperationOutcome is its own
    failure, not another's answer)."""
    resource = entry.get("resource") if isinstance(entry, dict) else None
    if not isinstance(resource, dict):
        return False
    asked, rtype = url.split("?", 1)[0].split("/", 1)[0], resource.get("resourceType")
    if "?" not in url:
        return rtype not in (asked, "OperationOutcome")
    return rtype != "OperationOutcome" and (rtype != "Bundle" or stray_type(resource, asked) is not None)


def _type_of_search(resources: list[dict[str, Any]]) -> str:
    """The type a search returned, for logging a page it will not fetch (the link's own path may be anything)."""
    for resource in resources:
        if isinstance(resource.get("resourceType"), str) and _RESOURCE_TYPE.fullmatch(resource["resourceType"]):
            return resource["resourceType"]
    return "?"


def next_link(bundle: Mapping[str, Any]) -> str | None:
    links = bundle.get("link")
    if not isinstance(links, list):
        return None
    for link in links:
        if isinstance(link, dict) and link.get("relation") == "next" and isinstance(link.get("url"), str):
            return link["url"]
    return None


def run_bounded(job: Callable[[], _T], deadline: Deadline) -> _T:
    """job() on the FHIR thread pool, given up at the deadline: the request thread never waits on a server past it
    (a server can send its status line and headers slower than any read timeout). Raises what the job failed with."""
    result = run_parallel({"job": job}, deadline)["job"]
    if isinstance(result, FhirUnavailable):
        raise result
    return result


def run_parallel(jobs: Mapping[str, Callable[[], Any]], deadline: Deadline) -> dict[str, Any]:
    """Run the jobs at once; each result is its value or the FhirUnavailable it raised (or timed out with)."""
    futures = {key: _executor().submit(job) for key, job in jobs.items()}
    results: dict[str, Any] = {}
    for key, future in futures.items():
        try:
            results[key] = future.result(timeout=max(deadline.remaining(), 0) + 0.05)
        except concurrent.futures.TimeoutError:
            future.cancel()
            results[key] = failure(QueryOutcome.DEADLINE_PASSED)
        except FhirUnavailable as exc:
            results[key] = exc
        except Exception as exc:  # a bug in one query must not fail the whole hook call
            _LOG.error("FHIR job failed: %s", type(exc).__name__)
            results[key] = failure(QueryOutcome.INTERNAL_ERROR)
    return results



# The batch itself refused or not understood (405, 501, a proxy's page ...): GETs will do. Timeouts, 401/403/429 and
# 500/502/503/504 would fail the GETs as well: those fail each query of the batch.
_BATCH_REFUSED = frozenset({
    QueryOutcome.HTTP_4XX, QueryOutcome.HTTP_404, QueryOutcome.HTTP_410, QueryOutcome.HTTP_5XX, QueryOutcome.HTTP_OTHER,
    QueryOutcome.NOT_A_RESOURCE, QueryOutcome.WRONG_RESOURCE_TYPE, QueryOutcome.INVALID_JSON,
})
# A batch answer over CDS_FHIR_MAX_RESPONSE_BYTES holds every answer: each alone may fit, so GETs are sent (then only
# the one that does not fit fails), but the server keeps its batch.


def remember_capability(base_url: str, batch: bool, ttl_s: float = CAPABILITY_TTL_S, includes: Iterable[str] = ()) -> None:
    """Record what a server supports without asking it (tests; a deployment could pin it the same way)."""
    _capabilities[base_url.rstrip("/") + "/"] = (ServerCapabilities(batch, frozenset(includes)), time.monotonic() + ttl_s)


def _lists_batch(statement: Mapping[str, Any]) -> bool:
    """Whether a CapabilityStatement's server `rest` lists the system interaction `batch`."""
    return any(isinstance(i, dict) and i.get("code") == "batch" for rest in _server_rests(statement) for i in _list(rest.get("interaction")))


def _listed_includes(statement: Mapping[str, Any]) -> frozenset[str]:
    """The searchInclude values ("MedicationRequest:medication") of a CapabilityStatement's server `rest`."""
    resources = [r for rest in _server_rests(statement) for r in _list(rest.get("resource")) if isinstance(r, dict)]
    return frozenset(i for r in resources for i in _list(r.get("searchInclude")) if isinstance(i, str))


def _server_rests(statement: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The `rest` entries of a CapabilityStatement that describe the server (mode "server")."""
    return [rest for rest in _list(statement.get("rest")) if isinstance(rest, dict) and rest.get("mode") == "server"]


def _list(value: Any) -> list[Any]:
    """A JSON array as a list; anything else (a server's malformed CapabilityStatement) as none."""
    return value if isinstance(value, list) else []


def _entry_answer(entry: Any) -> dict[str, Any]:
    """The resource a batch-response entry answers with, or the failure its `response.status` says ("200 OK")."""
    response = entry.get("response") if isinstance(entry, dict) else None
    status_text = response.get("status") if isinstance(response, dict) else None
    match = re.match(r"\s*(\d{3})", status_text) if isinstance(status_text, str) else None
    if match is None:
        raise failure(QueryOutcome.NOT_A_RESOURCE, "batch entry without a response status")
    status = int(match.group(1))
    if status != 200:
        raise failure(QueryOutcome.of_status(status), f"http-{status}")
    resource = entry.get("resource")
    if not isinstance(resource, dict):
        raise failure(QueryOutcome.NOT_A_RESOURCE)
    return resource


def _check_type(resource: Mapping[str, Any], expected: str) -> None:
    """A read answers its own type; anything else (an OperationOutcome, a Bundle) is a failure, not data."""
    if resource.get("resourceType") != expected:
        raise failure(
            QueryOutcome.WRONG_RESOURCE_TYPE, f"expected a {expected[:40]}, got {str(resource.get('resourceType'))[:40]}"
        )
