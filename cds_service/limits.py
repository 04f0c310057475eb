"""Bounds on the work one hook call may cause, whatever the request or the FHIR server holds (README "Limits").

A call over a request-side bound is refused (413); a fetched one is cut short and said in the checks-incomplete card.
"""

from __future__ import annotations

SEARCH_PAGE_SIZE = 200  # `_count` on every search template: years of history in a few pages
MAX_RESOURCES_PER_CALL = 10_000  # prefetched + draft + fetched resources read for one call
MAX_MEDICATIONS_PER_CALL = 200  # medication orders, statements and drafts weighed against each other
MAX_MTOR_ORDERS_PER_CALL = 10  # of which mTOR inhibitor orders (a patient has one or two)
MAX_FINDINGS_PER_TOPIC = 20  # findings one card lists; the rest are counted ("and N more")
MAX_FHIR_BYTES_PER_CALL = 50_000_000  # FHIR response bytes read for one call, all queries and pages together
