"""One JSON log line per request, with no token and no patient data (patient ids are salted hashes)."""

from __future__ import annotations

import hashlib
import logging
import secrets
import sys
import time

import orjson

REQUEST_LOGGER = "mtor_cds.request"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": round(record.created, 3), "level": record.levelname.lower(), "logger": record.name}
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        else:
            entry["message"] = record.getMessage()
        # orjson: the same compact line as json.dumps for less CPU (one line per request); UTF-8, not \\u escapes
        return orjson.dumps(entry, default=str, option=orjson.OPT_NON_STR_KEYS).decode()


def configure_logging(level: str) -> None:
    """JSON lines on stderr for the service's loggers (idempotent: tests create many apps)."""
    for name in ("mtor_cds", "cds_service"):
        target = logging.getLogger(name)
        target.setLevel(level.upper())
        if not any(getattr(h, "_mtor_cds", False) for h in target.handlers):
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(JsonFormatter())
            handler._mtor_cds = True  # type: ignore[attr-defined]
            target.addHandler(handler)


class PatientHasher:
    """Salted SHA-256 of patient ids: correlatable within a deployment, not reversible from a log."""

    def __init__(self, salt: str):
        self._salt = (salt or secrets.token_hex(16)).encode()

    def __call__(self, patient_id: str) -> str:
        return hashlib.sha256(self._salt + patient_id.encode()).hexdigest()[:32]


def log_request(fields: dict) -> None:
    logging.getLogger(REQUEST_LOGGER).info("request", extra={"fields": fields})


class Stopwatch:
    def __init__(self) -> None:
        self.started = time.perf_counter()

    def ms(self) -> float:
        return round((time.perf_counter() - self.started) * 1000, 2)
