"""parse_feedback: the spec's examples are accepted, and each malformed body gets a 400 saying why."""

from __future__ import annotations

import json
import pathlib
import re
from datetime import datetime, timezone

import pytest
import yaml

from cds_service.errors import BadRequest, PayloadTooLarge
from cds_service.store.feedback import MAX_COMMENT_CHARS, MAX_FEEDBACK_ITEMS, FeedbackEntry, parse_feedback

EXAMPLES = pathlib.Path(__file__).resolve().parents[2] / "shared" / "cds-hooks" / "examples"
if not EXAMPLES.is_dir():  # CI clones main with shared/ beside it; a developer's tree may differ
    EXAMPLES = pathlib.Path("/work/shared/cds-hooks/examples")


def example(name: str) -> object:
    return json.loads((EXAMPLES / name).read_text())


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=timezone.utc)


def test_spec_example_accepted():
    assert parse_feedback(example("feedback-accepted.json")) == [
        FeedbackEntry(
            card_uuid="4e0a3a1e-3283-4575-ab82-028d55fe2719",
            outcome="accepted",
            outcome_timestamp=utc(2021, 12, 11, 10, 5, 31),
            accepted_suggestions=("e56e1945-20b3-4393-8503-a1a20fd73152",),
        )
    ]


def test_spec_example_overridden_without_reason():
    [entry] = parse_feedback(example("feedback-overridden.json"))
    assert entry == FeedbackEntry(
        card_uuid="f6b95768-b1c8-40dc-8385-bf3504b82ffb",
        outcome="overridden",
        outcome_timestamp=utc(2020, 12, 11),
    )
    assert not entry.has_reason


def test_spec_example_overridden_with_reason():
    [entry] = parse_feedback(example("feedback-overridden-with-reason.json"))
    assert entry.card_uuid == "9368d37b-283f-44a0-93ea-547cebab93ed"
    assert entry.outcome == "overridden"
    assert (entry.reason_code, entry.reason_system, entry.reason_display) == (
        "d7ecf885",
        "https://example.com/cds-hooks/override-reason-system",
        None,
    )
    assert entry.user_comment == "A comment entered by the clinician."
    assert entry.has_reason


def test_batch_keeps_order_and_reads_display():
    body = {
        "feedback": [
            {"card": "a", "outcome": "overridden", "outcomeTimestamp": "2024-01-01T00:00:00Z",
             "overrideReason": {"reason": {"code": "c", "system": "s", "display": "Patient aware"}}},
            {"card": "b", "outcome": "overridden", "outcomeTimestamp": "2024-01-02T00:00:00Z",
             "overrideReason": {"userComment": "only a comment"}},
        ]
    }
    first, second = parse_feedback(body)
    assert (first.card_uuid, first.reason_display) == ("a", "Patient aware")
    assert (second.card_uuid, second.reason_code, second.user_comment) == ("b", None, "only a comment")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2021-12-11T10:05:31Z", utc(2021, 12, 11, 10, 5, 31)),
        ("2021-12-11t10:05:31z", utc(2021, 12, 11, 10, 5, 31)),
        ("2021-12-11T12:05:31+02:00", utc(2021, 12, 11, 10, 5, 31)),
        ("2021-12-11T10:05:31.52Z", utc(2021, 12, 11, 10, 5, 31, 520000)),
    ],
)
def test_timestamps_are_converted_to_utc(text, expected):
    body = {"feedback": [{"card": "a", "outcome": "overridden", "outcomeTimestamp": text}]}
    [entry] = parse_feedback(body)
    assert entry.outcome_timestamp == expected
    assert entry.outcome_timestamp.utcoffset().total_seconds() == 0


def entry(**changes):
    """A valid accepted entry with some fields changed (None removes the field)."""
    item = {
        "card": "4e0a3a1e-3283-4575-ab82-028d55fe2719",
        "outcome": "accepted",
        "acceptedSuggestions": [{"id": "e56e1945-20b3-4393-8503-a1a20fd73152"}],
        "outcomeTimestamp": "2021-12-11T10:05:31Z",
    }
    item.update(changes)
    return {"feedback": [{k: v for k, v in item.items() if v is not None}]}


def overridden(**changes):
    return entry(**{"outcome": "overridden", "acceptedSuggestions": None, **changes})


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ([], "must be a JSON object"),
        ("feedback", "must be a JSON object"),
        ({}, 'non-empty "feedback" list'),
        ({"feedback": []}, 'non-empty "feedback" list'),
        ({"feedback": {"card": "a"}}, 'non-empty "feedback" list'),
        ({"feedback": ["a"]}, "feedback[0] must be an object"),
        (entry(card=None), "feedback[0].card is required"),
        (entry(card=""), "feedback[0].card is required"),
        (entry(card=42), "feedback[0].card is required"),
        (entry(outcome=None), "outcome must be"),
        (entry(outcome="ignored"), "outcome must be \"accepted\" or \"overridden\", got 'ignored'"),
        (entry(acceptedSuggestions=None), "acceptedSuggestions is required when the outcome is accepted"),
        (entry(acceptedSuggestions=[]), "must name at least one suggestion"),
        (entry(acceptedSuggestions={"id": "x"}), "acceptedSuggestions must be a list"),
        (entry(acceptedSuggestions=["x"]), "acceptedSuggestions[0] must be an object"),
        (entry(acceptedSuggestions=[{"uuid": "x"}]), "acceptedSuggestions[0].id is required"),
        (entry(acceptedSuggestions=[{"id": "x"}, {"id": 3}]), "acceptedSuggestions[1].id is required"),
        (overridden(acceptedSuggestions=[{"id": "x"}]), "must be absent or empty when the outcome is overridden"),
        (entry(outcomeTimestamp=None), "outcomeTimestamp is required"),
        (entry(outcomeTimestamp="2021-12-11T10:05:31"), "RFC 3339 date-time with a timezone"),
        (entry(outcomeTimestamp="2021-12-11"), "RFC 3339 date-time with a timezone"),
        (entry(outcomeTimestamp="11/12/2021 10:05"), "RFC 3339 date-time with a timezone"),
        (entry(outcomeTimestamp=1639217131), "RFC 3339 date-time with a timezone"),
        (entry(outcomeTimestamp="2021-13-11T10:05:31Z"), "not a valid date-time"),
        (entry(overrideReason={"userComment": "x"}), "overrideReason is only allowed when the outcome is overridden"),
        (overridden(overrideReason="too noisy"), "overrideReason must be an object"),
        (overridden(overrideReason={}), "must have a reason, a userComment or both"),
        (overridden(overrideReason={"userComment": 5}), "userComment must be a string"),
        (overridden(overrideReason={"reason": "d7ecf885"}), "reason must be a Coding object"),
        (overridden(overrideReason={"reason": {"system": "s"}}), "reason.code is required"),
        (overridden(overrideReason={"reason": {"code": "c"}}), "reason.system is required"),
        (overridden(overrideReason={"reason": {"code": "c", "system": "s", "display": 1}}), "reason.display must be a string"),
    ],
)
def test_invalid_bodies_are_bad_requests(body, message):
    with pytest.raises(BadRequest) as raised:
        parse_feedback(body)
    assert message in raised.value.message
    assert raised.value.status == 400


def test_error_names_the_failing_entry():
    body = {"feedback": [overridden()["feedback"][0], {"card": "b", "outcome": "overridden"}]}
    with pytest.raises(BadRequest, match=r"feedback\[1\]\.outcomeTimestamp is required"):
        parse_feedback(body)


# --- bounds: how many entries, how far in the future, how much text is kept or echoed ---------------

NOW = utc(2026, 11, 23, 12, 0, 0)


def overridden_entry(n: int = 0, **fields) -> dict:
    return {"card": f"card-{n}", "outcome": "overridden", "outcomeTimestamp": "2026-11-23T11:00:00Z", **fields}


def test_at_most_max_feedback_items_entries_per_post():
    assert MAX_FEEDBACK_ITEMS == 100  # documented in docs/feedback.md and the OpenAPI document
    openapi = yaml.safe_load((pathlib.Path(__file__).parents[1] / "cds_service" / "openapi.yaml").read_text())
    assert openapi["components"]["schemas"]["FeedbackRequest"]["properties"]["feedback"]["maxItems"] == 100
    assert len(parse_feedback({"feedback": [overridden_entry(n) for n in range(100)]}, NOW)) == 100
    with pytest.raises(PayloadTooLarge, match="101 entries; at most 100 per request"):
        parse_feedback({"feedback": [overridden_entry(n) for n in range(101)]}, NOW)


@pytest.mark.parametrize(("timestamp", "taken"), [
    ("2026-11-23T12:04:59Z", True),  # within 5 minutes of clock skew
    ("2026-11-23T12:05:01Z", False),
    ("2036-11-23T12:00:00Z", False),
    ("9999-12-31T23:59:59-14:00", False),  # beyond what a datetime can hold in UTC
    ("0001-01-01T00:00:00+14:00", False),
])
def test_outcome_timestamps_in_the_future_are_refused(timestamp, taken):
    body = {"feedback": [overridden_entry(outcomeTimestamp=timestamp)]}
    if taken:
        assert parse_feedback(body, NOW)[0].outcome_timestamp == utc(2026, 11, 23, 12, 4, 59)
    else:
        with pytest.raises(BadRequest, match=r"feedback\[0\]\.outcomeTimestamp"):
            parse_feedback(body, NOW)


def test_free_text_is_kept_bounded():
    comment = "x" * 5000
    [entry] = parse_feedback({"feedback": [overridden_entry(overrideReason={
        "reason": {"system": "s", "code": "c", "display": "d" * 5000}, "userComment": comment})]}, NOW)
    assert MAX_COMMENT_CHARS == 1000  # documented in docs/feedback.md
    assert len(entry.user_comment) == MAX_COMMENT_CHARS and entry.user_comment.endswith("…")
    assert len(entry.reason_display) == MAX_COMMENT_CHARS


@pytest.mark.parametrize("entry", [
    overridden_entry(card="u" * 1_000_000),
    overridden_entry(outcome="o" * 1_000_000),
    overridden_entry(outcomeTimestamp="2" * 1_000_000),
])
def test_errors_never_echo_megabytes_of_input(entry):
    with pytest.raises(BadRequest) as raised:
        parse_feedback({"feedback": [entry]}, NOW)
    assert len(raised.value.message) < 200
    assert re.search(r"'(u{56}|o{56}|2{56})\.\.\.$", raised.value.message)  # 60 characters quoted (docs/feedback.md)
