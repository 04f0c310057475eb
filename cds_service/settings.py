"""Every CDS_* setting, its default and its validation: the one place that reads configuration.

Settings are read from the environment when create_app() runs (not at import), so tests and
deployments can set them per app. A bad value stops the start with a message naming every problem.

Each setting is one row: `_setting(parser, default, help)` on its dataclass field. The README's
settings table is checked against these rows by tests/test_settings.py.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
from collections.abc import Callable, Mapping
from typing import Any
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


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError("must be 0 or more")
    return value


def _base_url(text: str) -> str:
    return text.strip().rstrip("/")


def is_loopback_host(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def is_secure_url(url: Any) -> bool:
    """The one rule for every URL the service calls or trusts: https, or plain http to this machine only."""
    if not isinstance(url, str):
        return False
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        return False
    if not host:
        return False
    return parts.scheme == "https" or (parts.scheme == "http" and is_loopback_host(host))


def _setting(parser: Callable[[str], Any], default: Any, help: str) -> Any:
    """One setting's row: how CDS_<NAME> is parsed, its default and its README help text."""
    return dataclasses.field(default=default, metadata={"parser": parser, "help": help})


@dataclasses.dataclass(frozen=True)
class Settings:
    require_jwt: bool = _setting(
        _bool, True, "Verify the EHR's JWT on every call. `false` only for local trials (logs a warning at start).")
    trusted_issuers: str = _setting(
        str.strip, "", "Path to a JSON file of trusted issuers: issuer -> JWKS URL or inline JWKS, allowed `jku` URLs.")
    public_base_url: str = _setting(
        _base_url, "", "Public base URL of the service; the JWT `aud` must equal it + the path called. "
        "Unset: the Host header's URL, and calls with `Forwarded`/`X-Forwarded-*` headers are refused (401).")
    allowed_fhir_servers: tuple[str, ...] = _setting(
        _csv, (), "Comma-separated base-URL prefixes the service may call. Required when JWT is verified and "
        "`CDS_TRUSTED_ISSUERS` is set (the service refuses to start without it); unset otherwise: any https server or "
        "loopback.")
    fhir_without_token: bool = _setting(
        _bool, False, "Query the `fhirServer` also when a call gives no `fhirAuthorization` (an open test server). CDS Hooks 2.0 "
        "allows FHIR access only with both, so off: such a call is answered from its prefetch (412 when medications are missing).")
    fhir_deadline_s: float = _setting(
        _positive_float, 3.0, "Overall deadline, in seconds, for all FHIR queries of one hook call.")
    fhir_max_pages: int = _setting(_positive_int, 60, "Most `next` pages followed for one search.")
    fhir_max_response_bytes: int = _setting(_positive_int, 20_000_000, "Largest FHIR response body read.")
    max_body_bytes: int = _setting(_positive_int, 5_000_000, "Largest hook request body accepted (413 beyond).")
    patient_hash_salt: str = _setting(
        str.strip, "", "Secret salt for the patient-id hashes in logs and the card store (unset: random per "
        "process, so hashes do not match across restarts or replicas).")
    cors_origins: tuple[str, ...] = _setting(_csv, ("*",), "Comma-separated origins allowed by CORS (`*` for any).")
    database_url: str = _setting(
        str.strip, "", "SQLAlchemy URL of the card and feedback store, also the JWT replay cache shared by "
        "workers (unset: a SQLite file in the working directory).")
    suppress_overridden_hours: float = _setting(
        float, 0.0, "Hours to suppress an identical card after a clinician overrode it with a reason (0: off).")
    card_retention_days: int = _setting(
        _non_negative_int, 365, "Days an issued card and its feedback are kept in the store, then deleted (0: kept for ever).")
    jwt_clock_skew_s: int = _setting(int, 60, "Clock skew, in seconds, allowed for the JWT `exp`, `iat` and `nbf`.")
    jwt_max_lifetime_s: int = _setting(
        _positive_int, 300, "Longest JWT lifetime accepted, in seconds (`exp` - `iat`; EHRs mint 5-minute tokens).")
    log_level: str = _setting(str.strip, "INFO", "DEBUG, INFO, WARNING or ERROR.")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides) -> Settings:
        """Build settings from CDS_* variables; keyword overrides (already typed) win."""
        environ = os.environ if environ is None else environ
        values: dict = {}
        problems: list[str] = []
        for field in dataclasses.fields(cls):
            env_name = env_name_of(field.name)
            if field.name in overrides or env_name not in environ:
                continue
            try:
                values[field.name] = field.metadata["parser"](environ[env_name])
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
            elif not is_secure_url(prefix):
                problems.append(f"CDS_ALLOWED_FHIR_SERVERS: {prefix!r} must be https (http only for loopback)")
            elif ";" in parts.path or "%" in parts.path or parts.query or parts.fragment:
                problems.append(f"CDS_ALLOWED_FHIR_SERVERS: {prefix!r} must be a plain base URL (no ;, %, ? or #)")
        if self.require_jwt and self.trusted_issuers and not self.allowed_fhir_servers:
            # A trusted caller's fhirServer and access token would otherwise go to any https host or loopback port.
            problems.append(
                "CDS_ALLOWED_FHIR_SERVERS: required when CDS_REQUIRE_JWT is true; list the EHR FHIR base URLs "
                "this service may call with the access tokens it is given"
            )
        if self.public_base_url and urlsplit(self.public_base_url).scheme not in {"http", "https"}:
            problems.append("CDS_PUBLIC_BASE_URL: must be an absolute http(s) URL")
        if self.require_jwt and self.trusted_issuers and not os.path.isfile(self.trusted_issuers):
            problems.append(f"CDS_TRUSTED_ISSUERS: no file at {self.trusted_issuers!r}")
        if self.card_retention_days and self.suppress_overridden_hours > self.card_retention_days * 24:
            problems.append("CDS_SUPPRESS_OVERRIDDEN_HOURS: longer than CDS_CARD_RETENTION_DAYS keeps the feedback it needs")
        if self.log_level.upper() not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            problems.append("CDS_LOG_LEVEL: one of DEBUG, INFO, WARNING, ERROR")
        if problems:
            raise SettingsError("; ".join(problems))


def env_name_of(field_name: str) -> str:
    return "CDS_" + field_name.upper()


SETTING_HELP = {field.name: field.metadata["help"] for field in dataclasses.fields(Settings)}


def documented_default(field_name: str) -> str:
    """The default as the README's settings table shows it."""
    default = next(f.default for f in dataclasses.fields(Settings) if f.name == field_name)
    if default in ("", ()):
        return "(unset)"
    if isinstance(default, bool):
        return str(default).lower()
    if isinstance(default, tuple):
        return ",".join(default)
    return str(default)
