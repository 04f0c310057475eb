"""The JWT check of cds_service.auth: what a trusted EHR's token passes, and every way a token fails.

Keys are generated per test session; JWKS URLs are served by the `responses` mock, so no test
touches the network. Each negative test also checks the reason, so it cannot pass by failing
for some other cause.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from pathlib import Path

import jwt
import pytest
import requests
import responses

from cds_service import auth
from cds_service.auth import (
    JWKS_FAILURE_RETRY_S,
    AuthFailure,
    InMemoryReplayCache,
    JwtVerifier,
    TokenRefused,
    TrustedIssuers,
)
from cds_service.errors import Unauthorized
from tests.jwt_helpers import (
    bearer,
    cds_claims,
    hand_made_jwt,
    jwk_from_key,
    jwks_of,
    make_ec_key,
    make_rsa_key,
    public_key_pem,
    sign_jwt,
)

REPO = Path(__file__).resolve().parent.parent
ISS = "https://ehr.example.org"
JWKS_URL = "https://ehr.example.org/.well-known/jwks.json"
JKU = "https://ehr.example.org/jku/jwks.json"
INLINE_ISS = "https://other-ehr.example.com"
AUD = "https://cds.example.org/cds-services/mtor-monitoring"
NOW = 1_750_000_000.0


class Clock:
    """A settable time.time() stand-in, shared by the verifier and its caches."""

    def __init__(self, t: float = NOW):
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture(scope="module")
def rsa_key():
    return make_rsa_key()


@pytest.fixture(scope="module")
def ec_key():
    return make_ec_key("ES384")


@pytest.fixture(scope="module")
def other_ec_key():
    return make_ec_key("ES384")


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def issuers(ec_key):
    return TrustedIssuers.from_dict(
        {
            "issuers": {
                ISS: {"jwks_url": JWKS_URL, "allowed_jku": [JKU]},
                INLINE_ISS: {"jwks": jwks_of(jwk_from_key(ec_key, "inline-ec", "ES384"))},
            }
        }
    )


@pytest.fixture
def verifier(issuers, clock):
    return JwtVerifier(issuers, clock_skew_s=60, now=clock)


@pytest.fixture
def jwks_server(rsa_key, ec_key):
    """JWKS_URL serves an RSA and an EC key; JKU serves the EC key under another kid."""
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        mock.get(JWKS_URL, json=jwks_of(jwk_from_key(rsa_key, "rsa-1"), jwk_from_key(ec_key, "ec-1")))
        mock.get(JKU, json=jwks_of(jwk_from_key(ec_key, "jku-ec")))
        yield mock


def claims(**overrides):
    """Valid claims for ISS calling AUD at NOW; an override of None drops that claim."""
    return cds_claims(**{"iss": ISS, "aud": AUD, "iat": int(NOW), "exp": int(NOW) + 300, **overrides})


def rejects(verifier, token_or_header, reason, *, audience=AUD, as_header=False):
    """Assert the token is refused with a reason containing `reason`, and that it never leaks."""
    header = token_or_header if as_header else bearer(token_or_header)
    with pytest.raises(Unauthorized) as caught:
        verifier.verify(header, audience)
    message = caught.value.message
    assert reason in message
    if header:
        for part in header.split():
            assert len(part) < 12 or part not in message, "the reason must not quote the token"
    return message


# --- accepted tokens -------------------------------------------------------------------------


@pytest.mark.parametrize("aud", [AUD, ["https://other.example.org/x", AUD]], ids=["aud-string", "aud-array"])
@pytest.mark.parametrize("alg, kid", [("RS384", "rsa-1"), ("ES384", "ec-1")])
def test_valid_token_is_accepted(verifier, jwks_server, rsa_key, ec_key, alg, kid, aud):
    key = rsa_key if alg == "RS384" else ec_key
    sent = claims(aud=aud, tenant="t-1")

    got = verifier.verify(bearer(sign_jwt(key, kid, alg, sent)), AUD)

    assert got == sent


def test_inline_jwks_needs_no_fetch(verifier, ec_key):
    with responses.RequestsMock() as mock:  # any HTTP call would fail the test
        got = verifier.verify(bearer(sign_jwt(ec_key, "inline-ec", "ES384", claims(iss=INLINE_ISS))), AUD)
        assert not mock.calls
    assert got["iss"] == INLINE_ISS


def test_jku_on_allowlist_is_fetched_and_used(verifier, jwks_server, ec_key):
    token = sign_jwt(ec_key, "jku-ec", "ES384", claims(), headers={"jku": JKU})

    assert verifier.verify(bearer(token), AUD)["iss"] == ISS
    assert [call.request.url for call in jwks_server.calls] == [JKU]


def test_bearer_scheme_is_case_insensitive(verifier, jwks_server, ec_key):
    token = sign_jwt(ec_key, "ec-1", "ES384", claims())
    assert verifier.verify(f"bearer  {token} ", AUD)["iss"] == ISS


# --- malformed Authorization headers and tokens ----------------------------------------------


@pytest.mark.parametrize(
    "header, reason",
    [
        (None, "no Authorization header"),
        ("", "no Authorization header"),
        ("Basic dXNlcjpwYXNzd29yZA==", "not 'Bearer <token>'"),
        ("Bearer", "not 'Bearer <token>'"),
        ("Bearer   ", "not 'Bearer <token>'"),
        ("garbage", "not 'Bearer <token>'"),
        ("Bearer abc.def", "not a JWT"),
        ("Bearer a.b.c.d.e", "not a JWT"),
        ("Bearer !!!.???.***", "header is malformed"),
        ("Bearer eyJhbGciOiJFUzM4NCIsImtpZCI6ImsifQ.not-json.sig", "payload is malformed"),
    ],
)
def test_malformed_authorization_is_refused(verifier, header, reason):
    rejects(verifier, header, reason, as_header=True)


def test_typ_other_than_jwt_is_refused(verifier, jwks_server, ec_key):
    token = sign_jwt(ec_key, "ec-1", "ES384", claims(), headers={"typ": "at+jwt"})
    rejects(verifier, token, "is not JWT")


# --- algorithm attacks -----------------------------------------------------------------------


def test_alg_none_is_refused(verifier, jwks_server):
    token = hand_made_jwt({"alg": "none", "typ": "JWT", "kid": "ec-1"}, claims())
    rejects(verifier, token, "alg 'none' not allowed")
    assert not jwks_server.calls


def test_hs256_signed_with_the_public_key_pem_is_refused(verifier, jwks_server, rsa_key):
    """The classic confusion: an HMAC keyed with the issuer's published RSA key."""
    secret = public_key_pem(rsa_key)
    token = hand_made_jwt(
        {"alg": "HS256", "typ": "JWT", "kid": "rsa-1"},
        claims(),
        lambda signing_input: hmac.new(secret, signing_input, hashlib.sha256).digest(),
    )
    rejects(verifier, token, "alg 'HS256' not allowed")


@pytest.mark.parametrize("alg", ["HS384", "HS512", "ES256K", ["RS384"], None])
def test_other_non_allowed_algs_are_refused(verifier, alg):
    header = {"typ": "JWT", "kid": "ec-1", **({"alg": alg} if alg is not None else {})}
    rejects(verifier, hand_made_jwt(header, claims(), lambda _: b"x" * 64), "not allowed")


def test_alg_of_another_key_family_is_refused(verifier, jwks_server, ec_key):
    """An ES384 header naming the RSA key must not be checked with that key."""
    token = sign_jwt(ec_key, "ec-1", "ES384", claims())
    _, payload_b64, signature_b64 = token.split(".")
    forged_header = hand_made_jwt({"alg": "ES384", "typ": "JWT", "kid": "rsa-1"}, {}).split(".")[0]
    rejects(verifier, f"{forged_header}.{payload_b64}.{signature_b64}", "does not fit alg ES384")


def test_ec_key_on_the_wrong_curve_is_refused(verifier, jwks_server):
    """ES384 requires P-384; a P-256 key published under that kid is not accepted for it."""
    p256 = make_ec_key("ES256")
    jwks_server.replace(responses.GET, JWKS_URL, json=jwks_of(jwk_from_key(p256, "ec-1")))
    token = hand_made_jwt({"alg": "ES384", "typ": "JWT", "kid": "ec-1"}, claims(), lambda _: b"\0" * 96)
    rejects(verifier, token, "key does not fit alg ES384")


def test_jwk_alg_must_match_header_alg(verifier, jwks_server, rsa_key):
    jwks_server.replace(responses.GET, JWKS_URL, json=jwks_of(jwk_from_key(rsa_key, "rsa-1", "RS256")))
    rejects(verifier, sign_jwt(rsa_key, "rsa-1", "RS384", claims()), "does not fit alg RS384")


def test_published_private_key_is_refused(verifier, jwks_server, ec_key):
    leaked = {**jwk_from_key(ec_key, "ec-1"), "d": jwt.algorithms.ECAlgorithm.to_jwk(ec_key, as_dict=True)["d"]}
    jwks_server.replace(responses.GET, JWKS_URL, json=jwks_of(leaked))
    rejects(verifier, sign_jwt(ec_key, "ec-1", "ES384", claims()), "holds private key material")


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")  # signing with it, on purpose
def test_short_rsa_key_is_refused(verifier, jwks_server):
    weak = make_rsa_key(1024)
    jwks_server.replace(responses.GET, JWKS_URL, json=jwks_of(jwk_from_key(weak, "rsa-1")))
    rejects(verifier, sign_jwt(weak, "rsa-1", "RS384", claims()), "shorter than 2048 bits")


# --- signature and keys ----------------------------------------------------------------------


def test_signature_by_another_key_is_refused(verifier, jwks_server, other_ec_key):
    rejects(verifier, sign_jwt(other_ec_key, "ec-1", "ES384", claims()), "signature does not verify")


def test_tampered_payload_is_refused(verifier, jwks_server, ec_key):
    header_b64, _, signature_b64 = sign_jwt(ec_key, "ec-1", "ES384", claims()).split(".")
    payload_b64 = hand_made_jwt({}, claims(aud=[AUD, "https://evil.example"])).split(".")[1]
    rejects(verifier, f"{header_b64}.{payload_b64}.{signature_b64}", "signature does not verify")


def test_missing_kid_is_refused(verifier, jwks_server, ec_key):
    rejects(verifier, sign_jwt(ec_key, None, "ES384", claims()), "kid missing")
    assert not jwks_server.calls


def test_unknown_kid_is_refused(verifier, jwks_server, ec_key):
    rejects(verifier, sign_jwt(ec_key, "no-such-kid", "ES384", claims()), "not in the issuer's JWKS")


def test_unknown_kid_in_inline_jwks_is_refused(verifier, ec_key):
    token = sign_jwt(ec_key, "no-such-kid", "ES384", claims(iss=INLINE_ISS))
    rejects(verifier, token, "not in the issuer's JWKS")


def test_rotated_key_is_found_by_one_refetch(verifier, jwks_server, clock, ec_key, other_ec_key):
    jwks_server.replace(responses.GET, JWKS_URL, json=jwks_of(jwk_from_key(ec_key, "key-1")))
    assert verifier.verify(bearer(sign_jwt(ec_key, "key-1", "ES384", claims())), AUD)

    # The EHR rotates to key-2; the cached JWKS (TTL 1 h) does not know it yet.
    jwks_server.replace(responses.GET, JWKS_URL, json=jwks_of(jwk_from_key(other_ec_key, "key-2")))
    clock.t += auth.UNKNOWN_KID_REFETCH_INTERVAL_S
    token = sign_jwt(other_ec_key, "key-2", "ES384", claims(iat=int(clock.t), exp=int(clock.t) + 300))

    assert verifier.verify(bearer(token), AUD)["iss"] == ISS
    assert len(jwks_server.calls) == 2


def test_unknown_kid_refetch_is_rate_limited(verifier, jwks_server, clock, ec_key):
    assert verifier.verify(bearer(sign_jwt(ec_key, "ec-1", "ES384", claims())), AUD)
    for number in range(5):
        clock.t += 1
        rejects(verifier, sign_jwt(ec_key, f"made-up-{number}", "ES384", claims()), "not in the issuer's JWKS")
    assert len(jwks_server.calls) == 1, "an unknown kid must not refetch within the interval"


def test_jwks_is_cached_until_its_ttl(issuers, clock, jwks_server, ec_key):
    verifier = JwtVerifier(issuers, jwks_ttl_s=600, now=clock)
    for _ in range(3):
        clock.t += 100
        verifier.verify(bearer(sign_jwt(ec_key, "ec-1", "ES384", claims(iat=int(clock.t)))), AUD)
    assert len(jwks_server.calls) == 1
    clock.t += 600
    verifier.verify(bearer(sign_jwt(ec_key, "ec-1", "ES384", claims(iat=int(clock.t), exp=int(clock.t) + 60))), AUD)
    assert len(jwks_server.calls) == 2


# --- issuer and jku --------------------------------------------------------------------------


def test_unknown_issuer_is_refused_without_fetching(verifier, jwks_server, ec_key):
    token = sign_jwt(ec_key, "ec-1", "ES384", claims(iss="https://evil.example"))
    rejects(verifier, token, "is not trusted")
    assert not jwks_server.calls


@pytest.mark.parametrize("iss", [None, ["https://ehr.example.org"], ""])
def test_missing_or_odd_iss_is_refused(verifier, iss):
    token = hand_made_jwt({"alg": "ES384", "typ": "JWT", "kid": "ec-1"}, claims(iss=iss), lambda _: b"\0" * 96)
    rejects(verifier, token, "is not trusted")


@pytest.mark.parametrize(
    "jku",
    [
        "https://evil.example/jwks.json",
        JKU + "?x=1",  # exact match only: no prefixes, no query strings
        "https://ehr.example.org/jku/",
        JWKS_URL,  # the configured jwks_url is not an allowed jku unless listed
    ],
)
def test_jku_not_on_allowlist_is_refused_without_fetching(verifier, jwks_server, ec_key, jku):
    token = sign_jwt(ec_key, "ec-1", "ES384", claims(), headers={"jku": jku})
    rejects(verifier, token, "is not allowed for this issuer")
    assert not jwks_server.calls


def test_jku_for_an_issuer_without_allowlist_is_refused(verifier, ec_key):
    token = sign_jwt(ec_key, "inline-ec", "ES384", claims(iss=INLINE_ISS), headers={"jku": JKU})
    rejects(verifier, token, "is not allowed for this issuer")


def test_token_without_jku_for_a_jku_only_issuer_is_refused(clock, ec_key):
    issuers = TrustedIssuers.from_dict({"issuers": {ISS: {"allowed_jku": [JKU]}}})
    verifier = JwtVerifier(issuers, now=clock)
    rejects(verifier, sign_jwt(ec_key, "ec-1", "ES384", claims()), "token has no jku")


# --- audience --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "aud",
    [
        "https://cds.example.org/cds-services/other-service",
        "https://cds.example.org/cds-services",  # the base URL is not the endpoint called
        AUD + "/",
        ["https://other.example.org/x"],
        [],
    ],
)
def test_wrong_audience_is_refused(verifier, jwks_server, ec_key, aud):
    rejects(verifier, sign_jwt(ec_key, "ec-1", "ES384", claims(aud=aud)), "aud")


def test_audience_is_the_url_called(verifier, jwks_server, ec_key):
    token = sign_jwt(ec_key, "ec-1", "ES384", claims())
    rejects(verifier, token, "aud is not the URL called", audience=AUD + "/feedback")


# --- time ------------------------------------------------------------------------------------


def test_expired_token_is_refused(verifier, jwks_server, ec_key):
    token = sign_jwt(ec_key, "ec-1", "ES384", claims(iat=int(NOW) - 600, exp=int(NOW) - 61))
    rejects(verifier, token, "token expired")


def test_token_issued_in_the_future_is_refused(verifier, jwks_server, ec_key):
    token = sign_jwt(ec_key, "ec-1", "ES384", claims(iat=int(NOW) + 61, exp=int(NOW) + 400))
    rejects(verifier, token, "iat is in the future")


def test_clock_skew_is_tolerated(verifier, jwks_server, ec_key):
    late = claims(iat=int(NOW) - 300, exp=int(NOW) - 59)
    early = claims(iat=int(NOW) + 59, exp=int(NOW) + 300)
    assert verifier.verify(bearer(sign_jwt(ec_key, "ec-1", "ES384", late)), AUD)["exp"] == late["exp"]
    assert verifier.verify(bearer(sign_jwt(ec_key, "ec-1", "ES384", early)), AUD)["iat"] == early["iat"]


def test_nbf_in_the_future_is_refused(verifier, jwks_server, ec_key):
    token = sign_jwt(ec_key, "ec-1", "ES384", claims(nbf=int(NOW) + 120))
    rejects(verifier, token, "not yet valid")


@pytest.mark.parametrize("claim", ["exp", "iat", "jti", "aud"])
def test_missing_required_claim_is_refused(verifier, jwks_server, ec_key, claim):
    rejects(verifier, sign_jwt(ec_key, "ec-1", "ES384", claims(**{claim: None})), f"claim {claim} missing")


@pytest.mark.parametrize(
    "claim, value, reason",
    [
        ("exp", "tomorrow", "must be numbers"),
        ("exp", float("nan"), "must be numbers"),
        ("exp", float("inf"), "must be numbers"),
        ("iat", True, "must be numbers"),
        ("nbf", float("nan"), "not yet valid"),
        ("jti", 42, "jti must be a non-empty string"),
        ("jti", "", "jti must be a non-empty string"),
    ],
)
def test_claims_of_the_wrong_type_are_refused(verifier, jwks_server, ec_key, claim, value, reason):
    rejects(verifier, sign_jwt(ec_key, "ec-1", "ES384", {**claims(), claim: value}), reason)


# --- replay ----------------------------------------------------------------------------------


def test_replayed_jti_is_refused(verifier, jwks_server, ec_key):
    token = sign_jwt(ec_key, "ec-1", "ES384", claims())
    assert verifier.verify(bearer(token), AUD)
    rejects(verifier, token, "jti replayed")


def test_replay_with_a_fresh_signature_is_refused(verifier, jwks_server, ec_key):
    """A new token reusing a jti is a replay even though its bytes differ."""
    first = claims()
    assert verifier.verify(bearer(sign_jwt(ec_key, "ec-1", "ES384", first)), AUD)
    again = claims(jti=first["jti"], iat=first["iat"] + 1, exp=first["exp"] + 1)
    rejects(verifier, sign_jwt(ec_key, "ec-1", "ES384", again), "jti replayed")


def test_same_jti_from_two_issuers_is_not_a_replay(verifier, jwks_server, ec_key):
    jti = "shared-jti"
    assert verifier.verify(bearer(sign_jwt(ec_key, "ec-1", "ES384", claims(jti=jti))), AUD)
    assert verifier.verify(bearer(sign_jwt(ec_key, "inline-ec", "ES384", claims(iss=INLINE_ISS, jti=jti))), AUD)


def test_refused_token_does_not_use_up_its_jti(verifier, jwks_server, ec_key):
    jti = "fresh-jti"
    rejects(verifier, sign_jwt(ec_key, "ec-1", "ES384", claims(jti=jti, aud="https://wrong.example")), "aud")
    assert verifier.verify(bearer(sign_jwt(ec_key, "ec-1", "ES384", claims(jti=jti))), AUD)


def test_replay_cache_forgets_after_exp_plus_skew():
    clock = Clock()
    cache = InMemoryReplayCache(now=clock)
    assert cache.check_and_add(ISS, "j", NOW + 10)
    assert not cache.check_and_add(ISS, "j", NOW + 10)
    clock.t = NOW + 10
    assert cache.check_and_add(ISS, "other", NOW + 20)
    assert len(cache) == 1, "the expired entry is evicted"


def test_replay_cache_is_bounded():
    clock = Clock()
    cache = InMemoryReplayCache(max_entries=3, now=clock)
    for number in range(10):
        assert cache.check_and_add(ISS, f"j{number}", NOW + 100 + number)
    assert len(cache) == 3
    assert not cache.check_and_add(ISS, "j9", NOW + 109), "the newest entries are kept"


def test_replay_cache_admits_a_jti_once_across_threads():
    """Threads racing with the same jti: exactly one may win.

    Eviction is slowed down (white-box) so that, without the lock, every thread would pass the
    "already seen?" check before any of them records the jti.
    """
    cache = InMemoryReplayCache()
    evict = cache._evict
    cache._evict = lambda should_evict: (time.sleep(0.005), evict(should_evict))
    barrier = threading.Barrier(6)
    results: list[bool] = []

    def attempt():
        barrier.wait()
        results.append(cache.check_and_add(ISS, "same", 2**40))

    threads = [threading.Thread(target=attempt) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [False] * 5 + [True]


# --- JWKS endpoint failures (the default fetcher, through `responses`) ------------------------


@pytest.mark.parametrize(
    "answer, reason",
    [
        ({"body": requests.ConnectionError("refused")}, "JWKS fetch failed (ConnectionError)"),
        ({"body": requests.Timeout("slow")}, "JWKS fetch failed (Timeout)"),
        ({"status": 500, "json": {}}, "HTTP 500"),
        ({"status": 302, "headers": {"Location": "https://evil.example/jwks.json"}}, "HTTP 302"),
        ({"body": "<html>down for maintenance</html>"}, "not JSON"),
        ({"body": b"\xff\xfe"}, "not JSON"),
        ({"json": {"keys": "none"}}, "malformed"),
        ({"json": ["not", "a", "jwks"]}, "malformed"),
        ({"body": b" " * (auth.MAX_JWKS_BYTES + 1)}, "too large"),
    ],
    ids=["refused", "timeout", "http-500", "redirect", "html", "binary", "keys-not-list", "list", "too-large"],
)
def test_jwks_endpoint_failure_is_a_401(verifier, ec_key, answer, reason):
    with responses.RequestsMock() as mock:
        mock.get(JWKS_URL, **answer)
        rejects(verifier, sign_jwt(ec_key, "ec-1", "ES384", claims()), reason)
        assert [call.request.url for call in mock.calls] == [JWKS_URL], "redirects are not followed"


def test_jwks_endpoint_recovers(verifier, ec_key, clock):
    with responses.RequestsMock() as mock:
        mock.get(JWKS_URL, status=503)
        rejects(verifier, sign_jwt(ec_key, "ec-1", "ES384", claims()), "HTTP 503")
        mock.replace(responses.GET, JWKS_URL, json=jwks_of(jwk_from_key(ec_key, "ec-1")))
        clock.t += JWKS_FAILURE_RETRY_S  # a failure is remembered that long
        assert verifier.verify(bearer(sign_jwt(ec_key, "ec-1", "ES384", claims())), AUD)


def test_injected_http_get_errors_become_401(issuers, clock, ec_key):
    def broken_get(url, timeout_s):
        raise RuntimeError(f"boom fetching {url}")

    verifier = JwtVerifier(issuers, http_get=broken_get, now=clock)
    rejects(verifier, sign_jwt(ec_key, "ec-1", "ES384", claims()), "JWKS fetch failed (RuntimeError)")


def test_injected_http_get_gets_url_and_short_timeout(issuers, clock, ec_key):
    seen = []

    def recording_get(url, timeout_s):
        seen.append((url, timeout_s))
        return jwks_of(jwk_from_key(ec_key, "ec-1"))

    JwtVerifier(issuers, http_get=recording_get, now=clock).verify(
        bearer(sign_jwt(ec_key, "ec-1", "ES384", claims())), AUD
    )
    assert seen == [(JWKS_URL, auth.JWKS_FETCH_TIMEOUT_S)]


@pytest.mark.parametrize("url", ["http://ehr.example.org/jwks.json", "file:///etc/passwd", "ftp://x/y"])
def test_fetch_json_refuses_non_https_urls(url):
    with responses.RequestsMock() as mock, pytest.raises(Unauthorized, match="must be https"):
        auth.fetch_json(url, 2.0)
    assert not mock.calls


def test_fetch_json_allows_http_to_loopback():
    with responses.RequestsMock() as mock:
        mock.get("http://127.0.0.1:8081/jwks.json", json={"keys": []})
        assert auth.fetch_json("http://127.0.0.1:8081/jwks.json", 2.0) == {"keys": []}
        assert mock.calls[0].request.headers["Accept"] == "application/json"


# --- the trusted-issuers file ----------------------------------------------------------------


def test_example_file_loads():
    issuers = TrustedIssuers.from_file(str(REPO / "deploy" / "trusted-issuers.example.json"))
    assert len(issuers) >= 2


def test_from_file_builds_a_working_verifier(tmp_path, clock, ec_key):
    path = tmp_path / "issuers.json"
    path.write_text(json.dumps({"issuers": {ISS: {"jwks": jwks_of(jwk_from_key(ec_key, "k"))}}}))
    verifier = JwtVerifier(TrustedIssuers.from_file(str(path)), now=clock)
    assert verifier.verify(bearer(sign_jwt(ec_key, "k", "ES384", claims())), AUD)["iss"] == ISS


def test_every_problem_in_the_file_is_reported(ec_key):
    private_jwk = {**jwk_from_key(ec_key, "leaked"), "d": "c2VjcmV0"}
    with pytest.raises(ValueError) as caught:
        TrustedIssuers.from_dict(
            {
                "issuer": {},
                "issuers": {
                    "https://a.example": {"jwks_uri": "https://a.example/jwks"},
                    "https://b.example": {"jwks_url": "http://b.example/jwks"},
                    "https://c.example": {"allowed_jku": "https://c.example/jwks"},
                    "https://d.example": {"jwks": {"keys": [private_jwk, {"kty": "RSA"}]}},
                    "https://e.example": {"jwks_url": "https://e.example/j", "jwks": {"keys": []}},
                    "https://f.example": {"jwks": {"keys": [{"kid": "x", "kty": "oct", "k": "c2VjcmV0"}]}},
                },
            }
        )
    message = str(caught.value)
    for expected in [
        "unknown top-level key 'issuer'",
        "'https://a.example': unknown key 'jwks_uri'",
        "'https://a.example': needs jwks_url, jwks or allowed_jku",
        "'https://b.example': jwks_url must be an https URL",
        "'https://c.example': allowed_jku must be a non-empty list",
        "'leaked' holds private key material",
        "key #2 has no kid",
        "'https://e.example': give jwks_url or jwks, not both",
        "'https://e.example': jwks: expected",
        "'x' has kty 'oct'",
    ]:
        assert expected in message


@pytest.mark.parametrize("data", [{}, {"issuers": []}, {"issuers": {}}, []])
def test_empty_or_misshapen_file_is_refused(data):
    with pytest.raises(ValueError):
        TrustedIssuers.from_dict(data)


def test_unreadable_file_is_a_value_error(tmp_path):
    with pytest.raises(ValueError, match="cannot read JSON"):
        TrustedIssuers.from_file(str(tmp_path / "missing.json"))
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(ValueError, match="cannot read JSON"):
        TrustedIssuers.from_file(str(broken))


def test_loopback_http_jwks_url_is_allowed_for_local_ehrs():
    issuers = TrustedIssuers.from_dict({"issuers": {"local": {"jwks_url": "http://localhost:9000/jwks"}}})
    assert issuers.get("local").jwks_url == "http://localhost:9000/jwks"


# --- time claims out of range, lifetime, JWKS failures, offline issuers (issue 11/12) --------------


@pytest.mark.parametrize("claim", ["exp", "iat", "nbf"])
@pytest.mark.parametrize("value", [10**400, 2**64, 1e300, -1, -(10**30), "1700000000", [1], {"t": 1}, None])
def test_time_claims_out_of_range_are_refused_never_an_error(verifier, jwks_server, ec_key, claim, value):
    token = sign_jwt(ec_key, "ec-1", "ES384", {**claims(), claim: value})
    with pytest.raises(TokenRefused) as caught:
        verifier.verify(bearer(token), AUD)
    expected = AuthFailure.NOT_YET_VALID if claim == "nbf" else AuthFailure.BAD_TIME_CLAIM
    assert caught.value.reason is (AuthFailure.MISSING_CLAIM if value is None and claim != "nbf" else expected)


def test_a_huge_integer_exp_reaches_no_replay_cache_arithmetic(issuers, clock, jwks_server, ec_key):
    seen = []

    class RecordingCache:
        def check_and_add(self, issuer, jti, expires_at):
            seen.append(expires_at)
            return True

    verifier = JwtVerifier(issuers, replay_cache=RecordingCache(), now=clock)
    rejects(verifier, sign_jwt(ec_key, "ec-1", "ES384", claims(exp=10**400)), "must be numbers")
    assert seen == []


@pytest.mark.parametrize(
    "iat, exp, accepted",
    [
        (0, 300, True),  # exactly 5 minutes, as EHRs mint them
        (0, 301, False),
        (-3000, 300, False),  # an old iat does not hide a long lifetime
        (None, None, None),
    ],
)
def test_tokens_living_longer_than_the_maximum_are_refused(verifier, jwks_server, ec_key, iat, exp, accepted):
    if accepted is None:  # a day-long token minted a second ago
        iat, exp, accepted = -1, 86_400, False
    token = sign_jwt(ec_key, "ec-1", "ES384", claims(iat=int(NOW) + iat, exp=int(NOW) + exp))
    if accepted:
        assert verifier.verify(bearer(token), AUD)
    else:
        with pytest.raises(TokenRefused) as caught:
            verifier.verify(bearer(token), AUD)
        assert caught.value.reason is AuthFailure.LIFETIME_TOO_LONG


def test_the_maximum_lifetime_is_configurable(issuers, clock, jwks_server, ec_key):
    verifier = JwtVerifier(issuers, max_lifetime_s=3600, now=clock)
    assert verifier.verify(bearer(sign_jwt(ec_key, "ec-1", "ES384", claims(exp=int(NOW) + 3600))), AUD)
    rejects(verifier, sign_jwt(ec_key, "ec-1", "ES384", claims(exp=int(NOW) + 3601)), "lifetime over 3600 s")


def test_jwks_failures_are_cached_so_junk_tokens_cannot_make_the_worker_fetch(verifier, ec_key, clock):
    with responses.RequestsMock() as mock:
        endpoint = mock.get(JWKS_URL, body=requests.ConnectionError("refused"))
        for _ in range(20):
            with pytest.raises(TokenRefused) as caught:
                verifier.verify(bearer(sign_jwt(ec_key, "ec-1", "ES384", claims())), AUD)
            assert caught.value.reason is AuthFailure.JWKS_UNREACHABLE
        assert endpoint.call_count == 1
        clock.t += JWKS_FAILURE_RETRY_S - 0.5
        rejects(verifier, sign_jwt(ec_key, "ec-1", "ES384", claims()), "JWKS fetch failed less than")
        assert endpoint.call_count == 1
        clock.t += 0.5  # the brief wait is over: one more try
        rejects(verifier, sign_jwt(ec_key, "ec-1", "ES384", claims()), "ConnectionError")
        assert endpoint.call_count == 2


def test_each_refusal_names_its_fixed_reason(verifier, jwks_server, ec_key, other_ec_key):
    cases = {
        AuthFailure.NO_TOKEN: None,
        AuthFailure.UNKNOWN_ISSUER: sign_jwt(ec_key, "ec-1", "ES384", claims(iss="https://evil.example")),
        AuthFailure.UNKNOWN_KID: sign_jwt(ec_key, "nope", "ES384", claims()),
        AuthFailure.JKU_NOT_ALLOWED: sign_jwt(ec_key, "ec-1", "ES384", claims(), headers={"jku": "https://evil.example/j"}),
        AuthFailure.BAD_SIGNATURE: sign_jwt(other_ec_key, "ec-1", "ES384", claims()),
        AuthFailure.AUD_MISMATCH: sign_jwt(ec_key, "ec-1", "ES384", claims(aud="https://other.example/x")),
        AuthFailure.EXPIRED: sign_jwt(ec_key, "ec-1", "ES384", claims(iat=int(NOW) - 400, exp=int(NOW) - 200)),
        AuthFailure.NOT_YET_VALID: sign_jwt(ec_key, "ec-1", "ES384", claims(nbf=int(NOW) + 120)),
    }
    for reason, token in cases.items():
        with pytest.raises(TokenRefused) as caught:
            verifier.verify(bearer(token) if token else None, AUD)
        assert caught.value.reason is reason, reason
    once = sign_jwt(ec_key, "ec-1", "ES384", claims())
    verifier.verify(bearer(once), AUD)
    with pytest.raises(TokenRefused) as caught:
        verifier.verify(bearer(once), AUD)
    assert caught.value.reason is AuthFailure.REPLAYED_JTI


def test_an_offline_issuer_uses_its_inline_jwks_even_when_the_token_names_a_jku(ec_key, clock):
    sandbox_jku = "https://sandbox.cds-hooks.org/.well-known/jwks.json"
    entry = {"jwks": jwks_of(jwk_from_key(ec_key, "sandbox-kid", "ES384")), "ignore_jku": True}
    verifier = JwtVerifier(TrustedIssuers.from_dict({"issuers": {ISS: entry}}), now=clock)
    token = sign_jwt(ec_key, "sandbox-kid", "ES384", claims(), headers={"jku": sandbox_jku})
    with responses.RequestsMock() as mock:  # any fetch would fail the test: nothing is registered
        assert verifier.verify(bearer(token), AUD)
        assert len(mock.calls) == 0
    without_flag = JwtVerifier(TrustedIssuers.from_dict({"issuers": {ISS: {"jwks": entry["jwks"]}}}), now=clock)
    rejects(without_flag, sign_jwt(ec_key, "sandbox-kid", "ES384", claims(), headers={"jku": sandbox_jku}), "jku")


@pytest.mark.parametrize(
    "entry, problem",
    [({"ignore_jku": True, "allowed_jku": [JKU]}, "ignore_jku needs an inline jwks"), ({"ignore_jku": "yes", "jwks_url": JWKS_URL}, "true or false")],
)
def test_ignore_jku_is_validated(entry, problem):
    with pytest.raises(ValueError, match=problem):
        TrustedIssuers.from_dict({"issuers": {ISS: entry}})


def test_fetch_json_gives_up_at_its_deadline_on_a_jwks_server_that_drips():
    """iter_content waited for a whole 64 KB chunk, so a JWKS endpoint sending a byte every 0.2 s (each read well
    within the timeout) held the worker for as long as it kept dripping; the deadline must hold overall."""
    import socket

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    stop = threading.Event()

    def drip() -> None:
        connection, _ = listener.accept()
        with connection:
            connection.recv(65536)
            connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n")
            for _ in range(20):  # 4 s of dripping, then the connection closes (a bounded failure without the fix)
                if stop.is_set():
                    return
                try:
                    connection.sendall(b" ")
                except OSError:
                    return
                time.sleep(0.2)

    thread = threading.Thread(target=drip, daemon=True)
    thread.start()
    started = time.monotonic()
    try:
        with pytest.raises(Unauthorized, match="timed out"):
            auth.fetch_json(f"http://127.0.0.1:{port}/jwks.json", 1.0)
        assert time.monotonic() - started < 2.0
    finally:
        stop.set()
        listener.close()
        thread.join(5)
