"""Card and feedback store (CDS Hooks 2.0 §Feedback): single records in and out; analytics are in cds_service.report."""

from cds_service.store.card_store import DEFAULT_DATABASE_URL, CardRecord, CardStore
from cds_service.store.feedback import MAX_FEEDBACK_ITEMS, FeedbackEntry, parse_feedback

__all__ = [
    "DEFAULT_DATABASE_URL",
    "MAX_FEEDBACK_ITEMS",
    "CardRecord",
    "CardStore",
    "FeedbackEntry",
    "parse_feedback",
]
