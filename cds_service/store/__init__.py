"""Card and feedback store (CDS Hooks 2.0 §Feedback) and its analytics queries."""

from cds_service.store.card_store import (
    DEFAULT_DATABASE_URL,
    CardRecord,
    CardStore,
    OverrideReasonCount,
    TopicReport,
    WeeklyOutcomes,
)
from cds_service.store.feedback import FeedbackEntry, parse_feedback

__all__ = [
    "DEFAULT_DATABASE_URL",
    "CardRecord",
    "CardStore",
    "FeedbackEntry",
    "OverrideReasonCount",
    "TopicReport",
    "WeeklyOutcomes",
    "parse_feedback",
]
