"""DatabaseReplayCache on SQLite and, when CDS_TEST_POSTGRES_URL is set, on PostgreSQL.

For PostgreSQL run `eval "$(.ci/postgres.sh)"` first; without it those tests are skipped.
"""

from __future__ import annotations

import threading

import pytest
import sqlalchemy as sa

from cds_service.auth import JwtVerifier, TrustedIssuers
from cds_service.errors import Unauthorized
from cds_service.store import CardStore
from cds_service.store.models import jwt_replay
from cds_service.store.replay_cache import DatabaseReplayCache, token_key
from tests.jwt_helpers import cds_claims, jwk_from_key, jwks_of, make_ec_key, sign_jwt

ISS = "https://ehr.example.org"
T0 = 1_800_000_000.0


class Clock:
    def __init__(self, now: float = T0):
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def database_url(empty_database_url):
    """A migrated, empty database; the URL, so that tests can open several engines ("replicas") on it."""
    url = empty_database_url
    store = CardStore.from_url(url)
    store.migrate()
    store.close()
    return url


@pytest.fixture
def replica():
    """Make a store + replay cache on the database, as one replica would; all closed at the end."""
    stores = []

    def make(url: str, clock: Clock | None = None, **kwargs) -> DatabaseReplayCache:
        store = CardStore.from_url(url)
        stores.append(store)
        return DatabaseReplayCache(store.engine, now=clock or Clock(), **kwargs)

    yield make
    for store in stores:
        store.close()


def rows(cache: DatabaseReplayCache) -> int:
    with cache.engine.connect() as connection:
        return connection.scalar(sa.select(sa.func.count()).select_from(jwt_replay))


def test_a_new_jti_is_accepted_once_and_its_replay_refused(database_url, replica):
    cache = replica(database_url)
    assert cache.check_and_add(ISS, "jti-1", T0 + 300) is True
    assert cache.check_and_add(ISS, "jti-1", T0 + 300) is False
    assert cache.check_and_add(ISS, "jti-2", T0 + 300) is True
    assert cache.check_and_add("https://other-ehr.example.org", "jti-1", T0 + 300) is True  # per issuer


def test_two_replicas_on_one_database_refuse_a_replay(database_url, replica):
    first, second = replica(database_url), replica(database_url)
    assert first.engine is not second.engine
    assert first.check_and_add(ISS, "shared-jti", T0 + 300) is True
    assert second.check_and_add(ISS, "shared-jti", T0 + 300) is False
    assert second.check_and_add(ISS, "other-jti", T0 + 300) is True
    assert first.check_and_add(ISS, "other-jti", T0 + 300) is False


def test_replicas_racing_with_one_token_let_exactly_one_through(database_url, replica):
    caches = [replica(database_url) for _ in range(4)]
    start = threading.Barrier(len(caches) * 4)
    results: list[bool] = []
    lock = threading.Lock()

    def use_token(cache: DatabaseReplayCache) -> None:
        start.wait()
        outcome = cache.check_and_add(ISS, "raced-jti", T0 + 300)
        with lock:
            results.append(outcome)

    threads = [threading.Thread(target=use_token, args=(cache,)) for cache in caches for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(results) == [False] * 15 + [True]


def test_an_expired_entry_no_longer_blocks_its_jti(database_url, replica):
    clock = Clock()
    cache = replica(database_url, clock, purge_interval_s=3600)
    assert cache.check_and_add(ISS, "jti-1", T0 + 60) is True
    clock.now = T0 + 61  # the first token can no longer pass the exp check
    assert cache.check_and_add(ISS, "jti-1", T0 + 400) is True
    assert cache.check_and_add(ISS, "jti-1", T0 + 400) is False


def test_expired_rows_are_purged_now_and_then(database_url, replica):
    clock = Clock()
    cache = replica(database_url, clock, purge_interval_s=60)
    for n in range(5):
        assert cache.check_and_add(ISS, f"short-{n}", T0 + 10)
    assert cache.check_and_add(ISS, "long", T0 + 3600)
    assert rows(cache) == 6
    clock.now = T0 + 30  # expired, but the next purge is not due yet
    cache.check_and_add(ISS, "another", T0 + 3600)
    assert rows(cache) == 7
    clock.now = T0 + 61
    cache.check_and_add(ISS, "and-another", T0 + 3600)
    assert rows(cache) == 3
    assert cache.purge_expired(T0 + 10_000) == 3


def test_the_key_is_a_fixed_length_hash_holding_no_token_content(database_url, replica):
    cache = replica(database_url)
    long_jti = "x" * 5000
    assert cache.check_and_add(ISS, long_jti, T0 + 300) is True
    with cache.engine.connect() as connection:
        (key,) = connection.execute(sa.select(jwt_replay.c.token_key)).one()
    assert key == token_key(ISS, long_jti) and len(key) == 64 and "x" not in key
    assert token_key("a", "b\x00c") != token_key("a\x00b", "c")
    assert token_key("ab", "c") != token_key("a", "bc")


def test_an_unreachable_database_falls_back_to_this_process_only(tmp_path, caplog):
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'missing-dir' / 'nothing.sqlite3'}")  # cannot be opened
    cache = DatabaseReplayCache(engine, now=Clock())
    with caplog.at_level("ERROR"):
        assert cache.check_and_add(ISS, "jti-1", T0 + 300) is True
        assert cache.check_and_add(ISS, "jti-1", T0 + 300) is False  # still refused in this process
    assert "replay cache database unavailable" in caplog.text and "jti-1" not in caplog.text
    engine.dispose()


def test_the_verifier_refuses_a_token_replayed_to_another_replica(database_url, replica):
    """End to end through JwtVerifier: two verifiers ("replicas") share one database."""
    key = make_ec_key("ES384")
    issuers = TrustedIssuers.from_dict({"issuers": {ISS: {"jwks": jwks_of(jwk_from_key(key, "k1"))}}})
    verifiers = [JwtVerifier(issuers, replay_cache=replica(database_url, Clock(T0)), now=Clock(T0)) for _ in range(2)]
    audience = "https://cds.example.org/cds-services/mtor-safety-patient-view"
    token = sign_jwt(key, "k1", "ES384", cds_claims(ISS, audience, iat=int(T0), exp=int(T0) + 300, jti="once"))
    assert verifiers[0].verify(f"Bearer {token}", audience)["jti"] == "once"
    with pytest.raises(Unauthorized, match="replayed"):
        verifiers[1].verify(f"Bearer {token}", audience)


# --- the default: one cache for every worker of a pod, under the real production server --------------


def test_by_default_a_token_replayed_to_other_gunicorn_workers_is_accepted_once(tmp_path):
    """3 sync workers, no CDS_DATABASE_URL (the default SQLite file in the working directory): 40 concurrent
    uses of one token, spread over the workers, let exactly one through."""
    import concurrent.futures
    import json
    import urllib.error
    import urllib.request

    from tests.jwt_helpers import bearer
    from tests.production_process import free_port, production_server

    key = make_ec_key("ES384")
    issuers = tmp_path / "trusted-issuers.json"
    issuers.write_text(json.dumps({"issuers": {ISS: {"jwks": jwks_of(jwk_from_key(key, "k1", "ES384"))}}}))
    port = free_port()
    settings = {"CDS_TRUSTED_ISSUERS": str(issuers), "CDS_ALLOWED_FHIR_SERVERS": "https://ehr.example.org/fhir", "WEB_CONCURRENCY": "3"}
    base = f"http://127.0.0.1:{port}"

    def get(headers: dict | None = None) -> int:
        request = urllib.request.Request(f"{base}/cds-services", headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=20) as response:
                return response.status
        except urllib.error.HTTPError as error:
            return error.code

    with production_server(tmp_path, settings, lambda _: get() == 401, port=port):
        token = bearer(sign_jwt(key, "k1", "ES384", cds_claims(ISS, f"{base}/cds-services")))
        with concurrent.futures.ThreadPoolExecutor(max_workers=12) as pool:
            statuses = list(pool.map(lambda _: get({"Authorization": token}), range(40)))
        assert sorted(statuses) == [200] + [401] * 39, statuses
        assert (tmp_path / "mtor-cds.sqlite3").exists()  # the shared default store holds the seen jti
