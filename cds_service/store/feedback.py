"""Parsing of the CDS Hooks 2.0 feedback body (§Feedback) into FeedbackEntry values.

Every rule broken is reported as errors.BadRequest naming the entry and field, so that an EHR
integrator can fix the call from the 400 answer alone.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timezone

from cds_service.errors import BadRequest

OUTCOMES = ("accepted", "overridden")

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


def parse_feedback(body: object) -> list[FeedbackEntry]:
    """Validate a feedback request body ``{"feedback": [...]}`` and return its entries."""
    if not isinstance(body, dict):
        raise BadRequest("feedback body must be a JSON object")
    items = body.get("feedback")
    if not isinstance(items, list) or not items:
        raise BadRequest('feedback body must have a non-empty "feedback" list')
    return [_parse_entry(item, f"feedback[{index}]") for index, item in enumerate(items)]


def _parse_entry(item: object, where: str) -> FeedbackEntry:
    if not isinstance(item, dict):
        raise BadRequest(f"{where} must be an object")
    card = item.get("card")
    if not isinstance(card, str) or not card.strip():
        raise BadRequest(f"{where}.card is required: the uuid of the card")
    outcome = item.get("outcome")
    if outcome not in OUTCOMES:
        raise BadRequest(f'{where}.outcome must be "accepted" or "overridden", got {outcome!r}')
    suggestions = _parse_accepted_suggestions(item.get("acceptedSuggestions"), outcome, where)
    reason = _parse_override_reason(item.get("overrideReason"), outcome, where)
    return FeedbackEntry(
        card_uuid=card.strip(),
        outcome=outcome,
        outcome_timestamp=_parse_timestamp(item.get("outcomeTimestamp"), where),
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
        ids.append(suggestion_id.strip())
    return tuple(ids)


def _parse_override_reason(value: object, outcome: str, where: str) -> dict[str, str | None]:
    field = f"{where}.overrideReason"
    none = {"reason_code": None, "reason_system": None, "reason_display": None, "user_comment": None}
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
    parsed = dict(none, user_comment=comment)
    if reason is not None:
        if not isinstance(reason, dict):
            raise BadRequest(f"{field}.reason must be a Coding object")
        for key in ("code", "system"):
            if not isinstance(reason.get(key), str) or not reason[key].strip():
                raise BadRequest(f"{field}.reason.{key} is required (a Coding needs code and system)")
        display = reason.get("display")
        if display is not None and not isinstance(display, str):
            raise BadRequest(f"{field}.reason.display must be a string")
        parsed.update(reason_code=reason["code"], reason_system=reason["system"], reason_display=display)
    return parsed


def _parse_timestamp(value: object, where: str) -> datetime:
    field = f"{where}.outcomeTimestamp"
    if value is None:
        raise BadRequest(f"{field} is required")
    if not isinstance(value, str) or not _RFC3339.match(value):
        raise BadRequest(
            f"{field} must be an RFC 3339 date-time with a timezone, e.g. 2021-12-11T10:05:31Z; got {value!r}"
        )
    try:
        parsed = datetime.fromisoformat(value.upper().replace("Z", "+00:00"))
    except ValueError:
        raise BadRequest(f"{field} is not a valid date-time: {value!r}") from None
    return parsed.astimezone(timezone.utc)
