"""Parsing of the CDS Hooks 2.0 feedback body (§Feedback) into FeedbackEntry values.

Every rule broken is reported as errors.BadRequest naming the entry and field, so that an EHR
integrator can fix the call from the 400 answer alone; a batch over MAX_FEEDBACK_ITEMS entries is
PayloadTooLarge (413). A value quoted in an error is cut to a few dozen characters. The spec defines no
per-entry answer, so a batch is taken or refused whole.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from cds_service.errors import BadRequest, PayloadTooLarge

OUTCOMES = ("accepted", "overridden")
MAX_FEEDBACK_ITEMS = 100  # entries per POST; an EHR reports one clinician's actions on one call's cards
MAX_CARD_UUID_CHARS = 100  # the card store's uuid column
MAX_COMMENT_CHARS = 1000  # userComment and reason display are kept cut to this length
FUTURE_SKEW = timedelta(minutes=5)  # an outcomeTimestamp later than now + this is refused
_SHOWN_CHARS = 60  # longest value quoted back in an error


def clip(text: str, limit: int = _SHOWN_CHARS) -> str:
    """Text cut to ``limit`` characters, for error messages: never echo a large body back."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def shorten(value: object) -> str:
    """repr() of any value, clipped."""
    return clip(repr(value))

_UUID = re.compile(r"[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}")


def _as_issued(identifier: str) -> str:
    """A card or suggestion id as this service issued it: UUIDs are issued in lower case, and RFC 9562 §4 has them
    compared case-insensitively (an EHR that keeps them in a SQL Server uniqueidentifier column returns them in upper
    case). Any other id is compared as sent."""
    identifier = identifier.strip()
    return identifier.lower() if _UUID.fullmatch(identifier) else identifier


# RFC 3339 §5.6 date-time: a timezone (Z or ±hh:mm) is required, unlike in ISO 8601.
_RFC3339 = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})\Z"
)


@dataclass(frozen=True)
class FeedbackEntry:
    """One clinician action on one card, as the EHR reported it."""

    card_uuid: str
    outcome: str  # "accepted" or "overridden"
    outcome_timestamp: datetime  # aware, UTC
    accepted_suggestions: tuple[str, ...] = ()
    reason_code: str | None = None
    reason_system: str | None = None
    reason_display: str | None = None
    user_comment: str | None = None

    @property
    def has_reason(self) -> bool:
        """True when the clinician picked one of the card's overrideReasons."""
        return self.reason_code is not None


def parse_feedback(body: object, now: datetime | None = None) -> list[FeedbackEntry]:
    """Validate a feedback request body ``{"feedback": [...]}`` received at ``now`` and return its entries."""
    if not isinstance(body, dict):
        raise BadRequest("feedback body must be a JSON object")
    items = body.get("feedback")
    if not isinstance(items, list) or not items:
        raise BadRequest('feedback body must have a non-empty "feedback" list')
    if len(items) > MAX_FEEDBACK_ITEMS:
        raise PayloadTooLarge(f"feedback has {len(items)} entries; at most {MAX_FEEDBACK_ITEMS} per request")
    latest = (now or datetime.now(timezone.utc)) + FUTURE_SKEW
    return [_parse_entry(item, f"feedback[{index}]", latest) for index, item in enumerate(items)]


def _parse_entry(item: object, where: str, latest: datetime) -> FeedbackEntry:
    if not isinstance(item, dict):
        raise BadRequest(f"{where} must be an object")
    card = item.get("card")
    if not isinstance(card, str) or not card.strip():
        raise BadRequest(f"{where}.card is required: the uuid of the card")
    if len(card.strip()) > MAX_CARD_UUID_CHARS:
        raise BadRequest(f"{where}.card is longer than any card uuid this service issues: {shorten(card)}")
    outcome = item.get("outcome")
    if outcome not in OUTCOMES:
        raise BadRequest(f'{where}.outcome must be "accepted" or "overridden", got {shorten(outcome)}')
    suggestions = _parse_accepted_suggestions(item.get("acceptedSuggestions"), outcome, where)
    reason = _parse_override_reason(item.get("overrideReason"), outcome, where)
    return FeedbackEntry(
        card_uuid=_as_issued(card),
        outcome=outcome,
        outcome_timestamp=_parse_timestamp(item.get("outcomeTimestamp"), where, latest),
        accepted_suggestions=suggestions,
        **reason,
    )


def _parse_accepted_suggestions(value: object, outcome: str, where: str) -> tuple[str, ...]:
    field = f"{where}.acceptedSuggestions"
    if value is None:
        if outcome == "accepted":
            raise BadRequest(f"{field} is required when the outcome is accepted")
        return ()
    if not isinstance(value, list):
        raise BadRequest(f'{field} must be a list of {{"id": <suggestion uuid>}} objects')
    if outcome == "accepted" and not value:
        raise BadRequest(f"{field} must name at least one suggestion when the outcome is accepted")
    if outcome == "overridden" and value:
        raise BadRequest(f"{field} must be absent or empty when the outcome is overridden")
    ids = []
    for index, suggestion in enumerate(value):
        if not isinstance(suggestion, dict):
            raise BadRequest(f'{field}[{index}] must be an object {{"id": <suggestion uuid>}}')
        suggestion_id = suggestion.get("id")
        if not isinstance(suggestion_id, str) or not suggestion_id.strip():
            raise BadRequest(f'{field}[{index}].id is required: the uuid of the suggestion')
        ids.append(_as_issued(suggestion_id))
    return tuple(ids)


def _parse_override_reason(value: object, outcome: str, where: str) -> dict[str, str | None]:
    field = f"{where}.overrideReason"
    none: dict[str, str | None] = {"reason_code": None, "reason_system": None, "reason_display": None, "user_comment": None}
    if value is None:
        return none
    if outcome != "overridden":
        raise BadRequest(f"{field} is only allowed when the outcome is overridden")
    if not isinstance(value, dict):
        raise BadRequest(f"{field} must be an object with reason and/or userComment")
    reason, comment = value.get("reason"), value.get("userComment")
    if reason is None and comment is None:
        raise BadRequest(f"{field} must have a reason, a userComment or both")
    if comment is not None and not isinstance(comment, str):
        raise BadRequest(f"{field}.userComment must be a string")
    parsed = dict(none, user_comment=_cut(comment))
    if reason is not None:
        if not isinstance(reason, dict):
            raise BadRequest(f"{field}.reason must be a Coding object")
        for key in ("code", "system"):
            if not isinstance(reason.get(key), str) or not reason[key].strip():
                raise BadRequest(f"{field}.reason.{key} is required (a Coding needs code and system)")
        display = reason.get("display")
        if display is not None and not isinstance(display, str):
            raise BadRequest(f"{field}.reason.display must be a string")
        parsed.update(reason_code=reason["code"], reason_system=reason["system"], reason_display=_cut(display))
    return parsed


def _cut(text: str | None) -> str | None:
    """Free text kept to MAX_COMMENT_CHARS, marked when cut: storage per entry stays bounded."""
    if text is None or len(text) <= MAX_COMMENT_CHARS:
        return text
    return text[: MAX_COMMENT_CHARS - 1] + "…"


def _parse_timestamp(value: object, where: str, latest: datetime) -> datetime:
    field = f"{where}.outcomeTimestamp"
    if value is None:
        raise BadRequest(f"{field} is required")
    if not isinstance(value, str) or not _RFC3339.match(value):
        raise BadRequest(
            f"{field} must be an RFC 3339 date-time with a timezone, e.g. 2021-12-11T10:05:31Z; got {shorten(value)}"
        )
    try:
        parsed = datetime.fromisoformat(value.upper().replace("Z", "+00:00")).astimezone(timezone.utc)
    except (ValueError, OverflowError):
        raise BadRequest(f"{field} is not a valid date-time: {shorten(value)}") from None
    if parsed > latest:
        # Feedback from the future would suppress its card for as long as the clock takes to catch up.
        raise BadRequest(f"{field} is more than {FUTURE_SKEW.seconds // 60} minutes in the future: {shorten(value)}")
    return parsed
