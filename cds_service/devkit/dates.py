"""Fixtures that never go stale: move every date in a fixture by whole days, so that it says on any day what
it said on the day it was written.

The fixture set's own "today" is `now` in fhir_fixtures/scenarios.json: "trough taken 5 days ago" is written
as a date 5 days before it. Moving every FHIR date, dateTime and instant in a fixture by (as-of day - that
day) keeps each interval exactly as written, so the fixture gives its documented cards on the as-of day.
The fixture files themselves are never rewritten.
"""

from __future__ import annotations

import json
import re
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

SCENARIOS_FILE = "scenarios.json"
# A FHIR date (full), dateTime or instant: YYYY-MM-DD, optionally followed by a time and zone. Partial dates
# (YYYY, YYYY-MM) are left as they are: they name a year or month, which a shift by days cannot keep.
_DATE_PREFIX = re.compile(r"^(\d{4}-\d{2}-\d{2})(T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:\d{2})?)?$")


def today() -> date:
    return datetime.now(timezone.utc).date()


def reference_day(path: str | Path) -> date | None:
    """The day a fixture was written for: `now` of the scenarios.json beside it (or one level up, for
    fhir_fixtures/synthea/); None for a file outside a fixture set."""
    path = Path(path).resolve()
    directory = path if path.is_dir() else path.parent
    for candidate in (directory / SCENARIOS_FILE, directory.parent / SCENARIOS_FILE):
        try:
            now = json.loads(candidate.read_text(encoding="utf-8"))["now"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        return datetime.fromisoformat(str(now).replace("Z", "+00:00")).astimezone(timezone.utc).date()
    return None


def shift_dates(document: Any, days: int) -> Any:
    """A copy of a JSON document with every full date, dateTime and instant moved by `days` (time and zone kept)."""
    if isinstance(document, dict):
        return {key: shift_dates(value, days) for key, value in document.items()}
    if isinstance(document, list):
        return [shift_dates(value, days) for value in document]
    if isinstance(document, str) and days:
        match = _DATE_PREFIX.match(document)
        if match:
            try:
                moved = date.fromisoformat(match.group(1)) + timedelta(days=days)
            except (ValueError, OverflowError):  # not a real day (2026-02-30): not a date, leave it
                return document
            return moved.isoformat() + document[10:]
    return document


def days_to(as_of: date, reference: date | None) -> int:
    """How many days a fixture written for `reference` moves to speak as of `as_of` (0 outside a fixture set)."""
    return (as_of - reference).days if reference else 0
