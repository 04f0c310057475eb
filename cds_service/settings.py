"""Every CDS_* setting, its default and its validation: the one place that reads configuration.

Settings are read from the environment when create_app() runs (not at import), so tests and
deployments can set them per app. A bad value stops the start with a message naming every problem.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
from collections.abc import Mapping
from urllib.parse import urlsplit


class SettingsError(ValueError):
    """One or more CDS_* settings are invalid; the message lists all of them."""


def _bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ValueError(f"expected true or false, got {text!r}")


def _csv(text: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in text.split(",") if item.strip())


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise ValueError("must be greater than 0")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise ValueError("must be greater than 0")
    return value


def is_loopback_host(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclasses.dataclass(frozen=True)
class Settings:
    # name: (parser, default, help) -- the README's settings table is written from these.
    require_jwt: bool = True
    trusted_issuers: str = ""
    public_base_url: str = ""
    allowed_fhir_servers: tuple[str, ...] = ()
    fhir_deadline_s: float = 3.0
    fhir_max_pages: int = 60  # 1200 resources per search from a server that pages at 20 whatever _count asks
    fhir_max_response_bytes: int = 20_000_000
    max_body_bytes: int = 5_000_000
    patient_hash_salt: str = ""
    cors_origins: tuple[str, ...] = ("*",)
    database_url: str = ""
    suppress_overridden_hours: float = 0.0
    jwt_clock_skew_s: int = 60
    log_level: str = "INFO"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides) -> Settings:
        """Build settings from CDS_* variables; keyword overrides (already typed) win."""
        environ = os.environ if environ is None else environ
        values: dict = {}
        problems: list[str] = []
        for field in dataclasses.fields(cls):
            env_name = "CDS_" + field.name.upper()
            if field.name in overrides or env_name not in environ:
                continue
            parser = _PARSERS[field.name]
            try:
                values[field.name] = parser(environ[env_name])
            except ValueError as exc:
                problems.append(f"{env_name}: {exc}")
        values.update(overrides)
        unknown = set(overrides) - {f.name for f in dataclasses.fields(cls)}
        problems += [f"unknown setting {name!r}" for name in sorted(unknown)]
        if problems:
            raise SettingsError("; ".join(problems))
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        problems = []
        for prefix in self.allowed_fhir_servers:
            parts = urlsplit(prefix)
            if parts.scheme not in {"http", "https"} or not parts.hostname:
                problems.append(f"CDS_ALLOWED_FHIR_SERVERS: {prefix!r} is not an http(s) URL")
            elif parts.scheme == "http" and not is_loopback_host(parts.hostname):
                problems.append(f"CDS_ALLOWED_FHIR_SERVERS: {prefix!r} must be https (http only for loopback)")
        if self.public_base_url and urlsplit(self.public_base_url).scheme not in {"http", "https"}:
            problems.append("CDS_PUBLIC_BASE_URL: must be an absolute http(s) URL")
        if self.require_jwt and self.trusted_issuers and not os.path.isfile(self.trusted_issuers):
            problems.append(f"CDS_TRUSTED_ISSUERS: no file at {self.trusted_issuers!r}")
        if self.log_level.upper() not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            problems.append("CDS_LOG_LEVEL: one of DEBUG, INFO, WARNING, ERROR")
        if problems:
            raise SettingsError("; ".join(problems))


_PARSERS = {
    "require_jwt": _bool,
    "trusted_issuers": str.strip,
    "public_base_url": lambda text: text.strip().rstrip("/"),
    "allowed_fhir_servers": _csv,
    "fhir_deadline_s": _positive_float,
    "fhir_max_pages": _positive_int,
    "fhir_max_response_bytes": _positive_int,
    "max_body_bytes": _positive_int,
    "patient_hash_salt": str.strip,
    "cors_origins": _csv,
    "database_url": str.strip,
    "suppress_overridden_hours": float,
    "jwt_clock_skew_s": int,
    "log_level": str.strip,
}

SETTING_HELP = {
    "require_jwt": "Verify the EHR's JWT on every call. `false` only for local trials (logs a warning at start).",
    "trusted_issuers": "Path to a JSON file of trusted issuers: issuer -> JWKS URL or inline JWKS, allowed `jku` URLs.",
    "public_base_url": "Public base URL of the service (behind a proxy); the JWT `aud` must equal it + the path called.",
    "allowed_fhir_servers": "Comma-separated base-URL prefixes the service may call. Unset: any https server or loopback.",
    "fhir_deadline_s": "Overall deadline, in seconds, for all FHIR queries of one hook call.",
    "fhir_max_pages": "Most `next` pages followed for one search.",
    "fhir_max_response_bytes": "Largest FHIR response body read.",
    "max_body_bytes": "Largest hook request body accepted (413 beyond).",
    "patient_hash_salt": "Secret salt for the patient-id hashes in logs and the card store (unset: random per process, so hashes do not match across restarts or replicas).",
    "cors_origins": "Comma-separated origins allowed by CORS (`*` for any).",
    "database_url": "SQLAlchemy URL of the card and feedback store (unset: a SQLite file in the working directory).",
    "suppress_overridden_hours": "Hours to suppress an identical card after a clinician overrode it with a reason (0: off).",
    "jwt_clock_skew_s": "Clock skew, in seconds, allowed for the JWT `exp` and `iat`.",
    "log_level": "DEBUG, INFO, WARNING or ERROR.",
}
