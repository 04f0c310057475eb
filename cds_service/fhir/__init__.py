"""FHIR access: the HTTP client (deadline, allowlist, paging) and FHIR JSON -> patient snapshot."""
