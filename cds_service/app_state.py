"""What a running app holds: settings, knowledge, services and the per-process helpers, built once at start."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from datetime import datetime, timezone

from cds_service.auth import JwtVerifier, ReplayCache, TrustedIssuers
from cds_service.knowledge import Knowledge, load_knowledge
from cds_service.observability import PatientHasher
from cds_service.services import ServiceDefinition, build_services
from cds_service.settings import Settings, SettingsError
from cds_service.store import CardStore

_LOG = logging.getLogger("mtor_cds")


@dataclasses.dataclass
class AppState:
    settings: Settings
    knowledge: Knowledge
    services: dict[str, ServiceDefinition]
    hash_patient: PatientHasher
    store: CardStore
    verifier: JwtVerifier | None = None  # None only when CDS_REQUIRE_JWT=false
    clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc)  # tests pin it

    @classmethod
    def build(cls, settings: Settings) -> AppState:
        knowledge = load_knowledge()
        store = CardStore.from_url(settings.database_url, retention_days=settings.card_retention_days)
        try:
            store.migrate()
        except Exception as exc:  # a database outage must not stop hook answers; /readyz reports it
            _LOG.error("card store unavailable at start: %s", type(exc).__name__)
        return cls(
            settings=settings,
            knowledge=knowledge,
            services=build_services(knowledge),
            hash_patient=PatientHasher(settings.patient_hash_salt),
            store=store,
            verifier=_verifier(settings, store),
        )


def _verifier(settings: Settings, store: CardStore) -> JwtVerifier | None:
    if not settings.require_jwt:
        return None
    if settings.trusted_issuers:
        try:
            issuers = TrustedIssuers.from_file(settings.trusted_issuers)
        except ValueError as exc:
            raise SettingsError(f"CDS_TRUSTED_ISSUERS: {exc}") from None
    else:
        _LOG.warning("no CDS_TRUSTED_ISSUERS configured: every call will be answered 401")
        issuers = TrustedIssuers({})
    return JwtVerifier(
        issuers,
        clock_skew_s=settings.jwt_clock_skew_s,
        max_lifetime_s=settings.jwt_max_lifetime_s,
        replay_cache=_replay_cache(store),
    )


def _replay_cache(store: CardStore) -> ReplayCache:
    """Seen JWT ids in the card store's database: the default SQLite file is shared by every worker of the
    pod, CDS_DATABASE_URL (PostgreSQL) by every replica. A per-process cache would let a token replayed to
    another worker pass."""
    from cds_service.store.replay_cache import DatabaseReplayCache

    return DatabaseReplayCache(store.engine)
