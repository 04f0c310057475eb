"""Every exception the service raises on purpose, and the one HTTP answer each maps to.

    CdsError                      base; never reaches the caller untranslated
    ├── BadRequest          400   the request is not a valid CDS Hooks call
    ├── Unauthorized        401   the caller's JWT is missing or not trusted (answered bare)
    ├── UnknownService      404   no service with that id
    ├── UnsupportedMediaType 415  the body is not JSON
    ├── PayloadTooLarge     413   the body is over the configured limit
    └── DataUnavailable     412   data the answer needs can be neither prefetched nor fetched

    FhirError                     raised by the FHIR client only; the data layer turns it into
    ├── FhirUnavailable           "could not check" (or DataUnavailable when the data is required)
    └── FhirNotAllowed            the fhirServer is not on the allowlist or not https
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class CdsError(Exception):
    """Base of the errors that map to an HTTP status."""

    status = 500
    code = "exception"  # OperationOutcome.issue.code

    def __init__(self, message: str = ""):
        super().__init__(message)
        self.message = message


class BadRequest(CdsError):
    """The body or its fields do not form a valid call."""

    status = 400
    code = "invalid"


class Unauthorized(CdsError):
    """The JWT is missing, malformed, untrusted, expired or replayed. Answered with a bare 401."""

    status = 401
    code = "security"


class UnknownService(CdsError):
    """No CDS service has the requested id."""

    status = 404
    code = "not-found"


class PayloadTooLarge(CdsError):
    """The request body exceeds CDS_MAX_BODY_BYTES."""

    status = 413
    code = "too-costly"


class UnsupportedMediaType(CdsError):
    """The request body is not declared as JSON."""

    status = 415
    code = "not-supported"


class DataUnavailable(CdsError):
    """Required data was neither prefetched nor fetchable (CDS Hooks: 412 Precondition Failed).

    The message names each missing key and why; fhir_timings are the queries tried, for the request's log line.
    """

    status = 412
    code = "incomplete"

    def __init__(self, message: str = "", fhir_timings: Sequence[Any] = ()):
        super().__init__(message)
        self.fhir_timings = tuple(fhir_timings)


class FhirError(Exception):
    """A FHIR server could not give what was asked. Never leaves the data layer."""


class FhirUnavailable(FhirError):
    """The server failed: timeout, refused connection, HTTP error, invalid JSON, oversized answer."""


class FhirNotAllowed(FhirError):
    """The fhirServer is not on CDS_ALLOWED_FHIR_SERVERS or is not https (loopback excepted)."""


def operation_outcome_body(status: int, code: str, message: str) -> dict[str, Any]:
    """The FHIR OperationOutcome every non-2xx answer carries (the app's own, and gunicorn's refusals)."""
    severity = "error" if status < 500 else "fatal"
    return {"resourceType": "OperationOutcome", "issue": [{"severity": severity, "code": code, "diagnostics": message}]}
