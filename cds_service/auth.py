"""Verifying the JWT a CDS Client (the EHR) sends on every call (CDS Hooks 2.0, "Trusting CDS Clients").

The service trusts only issuers listed in a JSON file (see docs/trusting-ehrs.md). Each issuer's
public keys come from an inline JWKS, a configured JWKS URL, or a `jku` URL that the file allowlists.
Every failure raises errors.Unauthorized with a short reason; the reason may be logged, so it never
contains the token.
"""

from __future__ import annotations

import heapq
import json
import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

import jwt
import requests
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

from cds_service.errors import Unauthorized
from cds_service.settings import is_loopback_host

# alg -> the JWK key type it needs. HMAC and "none" are absent on purpose: the spec forbids them,
# and naming the key type stops an RSA public key being used as an HMAC secret.
KEY_TYPE_FOR_ALG = {
    **dict.fromkeys(["RS256", "RS384", "RS512", "PS256", "PS384", "PS512"], "RSA"),
    **dict.fromkeys(["ES256", "ES384", "ES512"], "EC"),
    "EdDSA": "OKP",
}
REQUIRED_CLAIMS = ("iss", "aud", "exp", "iat", "jti")
MIN_RSA_BITS = 2048  # RFC 7518 §3.3
JWKS_FETCH_TIMEOUT_S = 2.0
MAX_JWKS_BYTES = 1_000_000
UNKNOWN_KID_REFETCH_INTERVAL_S = 30.0  # an unknown kid may force a JWKS refetch this often per URL


def _is_allowed_url(url: Any) -> bool:
    """https anywhere, http only to this machine (local EHR sandboxes)."""
    if not isinstance(url, str):
        return False
    parts = urlsplit(url)
    if not parts.hostname:
        return False
    return parts.scheme == "https" or (parts.scheme == "http" and is_loopback_host(parts.hostname))


def _short(value: Any) -> str:
    """Quote an attacker-chosen value for a reason message without letting it grow the log."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# --- trusted issuers -------------------------------------------------------------------------


@dataclass(frozen=True)
class TrustedIssuer:
    """Where one EHR's signing keys come from."""

    iss: str
    jwks_url: str | None
    jwks_keys: Mapping[str, dict] | None  # inline JWKS, by kid
    allowed_jku: tuple[str, ...]


class TrustedIssuers:
    """The parsed, validated trusted-issuers file: the allowlist of `iss` and `jku` values."""

    def __init__(self, issuers: Mapping[str, TrustedIssuer]):
        self._issuers = dict(issuers)

    def get(self, iss: str) -> TrustedIssuer | None:
        return self._issuers.get(iss)

    def __len__(self) -> int:
        return len(self._issuers)

    @classmethod
    def from_file(cls, path: str) -> TrustedIssuers:
        try:
            with open(path, encoding="utf-8") as handle:
                data = json.load(handle)
        except (OSError, ValueError) as exc:
            raise ValueError(f"trusted issuers file {path!r}: cannot read JSON: {exc}") from None
        try:
            return cls.from_dict(data)
        except ValueError as exc:
            raise ValueError(f"trusted issuers file {path!r}: {exc}") from None

    @classmethod
    def from_dict(cls, data: dict) -> TrustedIssuers:
        """Validate the whole document and raise one ValueError naming every problem."""
        problems: list[str] = []
        issuers: dict[str, TrustedIssuer] = {}
        if not isinstance(data, dict) or not isinstance(data.get("issuers"), dict):
            raise ValueError('expected {"issuers": {"<iss>": {...}}}')
        problems += [f"unknown top-level key {key!r}" for key in data if key != "issuers"]
        if not data["issuers"]:
            problems.append("no issuers: every call would be refused")
        for iss, entry in data["issuers"].items():
            issuer = _parse_issuer(iss, entry, problems)
            if issuer:
                issuers[iss] = issuer
        if problems:
            raise ValueError("; ".join(problems))
        return cls(issuers)


_ISSUER_KEYS = {"jwks_url", "jwks", "allowed_jku"}


def _parse_issuer(iss: str, entry: Any, problems: list[str]) -> TrustedIssuer | None:
    where = f"issuer {iss!r}"
    before = len(problems)
    if not iss:
        problems.append("an issuer name is empty")
    if not isinstance(entry, dict):
        problems.append(f"{where}: must be an object")
        return None
    # Catches typos such as the OpenID name "jwks_uri", which would otherwise be silently ignored.
    problems += [f"{where}: unknown key {key!r}" for key in entry if key not in _ISSUER_KEYS]
    if not _ISSUER_KEYS & entry.keys():
        problems.append(f"{where}: needs jwks_url, jwks or allowed_jku")
    if "jwks_url" in entry and "jwks" in entry:
        problems.append(f"{where}: give jwks_url or jwks, not both")

    jwks_url = entry.get("jwks_url")
    if "jwks_url" in entry and not _is_allowed_url(jwks_url):
        problems.append(f"{where}: jwks_url must be an https URL (http only for loopback)")

    allowed_jku = entry.get("allowed_jku", [])
    if "allowed_jku" in entry and (not isinstance(allowed_jku, list) or not allowed_jku):
        problems.append(f"{where}: allowed_jku must be a non-empty list of URLs")
        allowed_jku = []
    problems += [
        f"{where}: allowed_jku entry {url!r} must be an https URL (http only for loopback)"
        for url in allowed_jku
        if not _is_allowed_url(url)
    ]

    if "jwks" in entry:
        problems += [f"{where}: jwks: {problem}" for problem in _inline_jwks_problems(entry["jwks"])]

    if len(problems) > before:
        return None
    jwks_keys = _keys_by_kid(entry["jwks"]) if "jwks" in entry else None
    return TrustedIssuer(iss, jwks_url, jwks_keys, tuple(allowed_jku))


def _inline_jwks_problems(jwks: Any) -> list[str]:
    """An inline JWKS is typed by hand, so check each key now rather than at the first call."""
    if not isinstance(jwks, dict) or not isinstance(jwks.get("keys"), list) or not jwks["keys"]:
        return ['expected {"keys": [...]} with at least one key']
    problems = []
    for number, jwk in enumerate(jwks["keys"], start=1):
        if not isinstance(jwk, dict) or not isinstance(jwk.get("kid"), str) or not jwk["kid"]:
            problems.append(f"key #{number} has no kid")
        elif "d" in jwk:
            problems.append(f"key {jwk['kid']!r} holds private key material; publish only the public key")
        elif jwk.get("kty") not in set(KEY_TYPE_FOR_ALG.values()):
            problems.append(f"key {jwk['kid']!r} has kty {jwk.get('kty')!r}; expected RSA, EC or OKP")
        else:
            try:
                jwt.PyJWK(jwk)
            except jwt.PyJWTError as exc:
                problems.append(f"key {jwk['kid']!r} is not a usable public key ({type(exc).__name__})")
    return problems


def _keys_by_kid(jwks: Any) -> dict[str, dict]:
    """Index a JWKS document's signing keys by kid; keys without kid or marked for encryption are skipped."""
    if not isinstance(jwks, dict) or not isinstance(jwks.get("keys"), list):
        raise ValueError('expected {"keys": [...]}')
    keys: dict[str, dict] = {}
    for jwk in jwks["keys"]:
        if isinstance(jwk, dict) and isinstance(jwk.get("kid"), str) and jwk.get("use", "sig") == "sig":
            keys.setdefault(jwk["kid"], jwk)
    return keys


# --- replay cache ----------------------------------------------------------------------------


class ReplayCache(Protocol):
    def check_and_add(self, issuer: str, jti: str, expires_at: float) -> bool:
        """Record (issuer, jti) until expires_at. True if it was new, False if it is a replay."""


class InMemoryReplayCache:
    """Remembers each (iss, jti) until the token could no longer pass the exp check.

    Per process: with several workers, a replay sent to another worker is not caught; a shared
    store (e.g. the database) can implement ReplayCache instead. When full of unexpired entries,
    the one closest to expiry is dropped, so availability wins over a replay within seconds of exp.
    """

    def __init__(self, max_entries: int = 100_000, now: Callable[[], float] = time.time):
        self._max_entries = max_entries
        self._now = now
        self._expiry: dict[tuple[str, str], float] = {}
        self._by_expiry: list[tuple[float, tuple[str, str]]] = []  # heap of the same entries
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._expiry)

    def check_and_add(self, issuer: str, jti: str, expires_at: float) -> bool:
        key = (issuer, jti)
        with self._lock:
            now = self._now()
            self._evict(lambda expiry: expiry <= now)
            if key in self._expiry:
                return False
            self._evict(lambda _: len(self._expiry) >= self._max_entries)
            self._expiry[key] = expires_at
            heapq.heappush(self._by_expiry, (expires_at, key))
            return True

    def _evict(self, should_evict: Callable[[float], bool]) -> None:
        while self._by_expiry and should_evict(self._by_expiry[0][0]):
            _, key = heapq.heappop(self._by_expiry)
            del self._expiry[key]


# --- fetching JWKS ---------------------------------------------------------------------------


def fetch_json(url: str, timeout_s: float) -> Any:
    """GET a JWKS: https only (http for loopback), no redirects, at most MAX_JWKS_BYTES, timeout_s overall."""
    if not _is_allowed_url(url):
        raise Unauthorized("JWKS URL must be https")
    deadline = time.monotonic() + timeout_s
    try:
        with requests.get(
            url, timeout=timeout_s, allow_redirects=False, stream=True, headers={"Accept": "application/json"}
        ) as response:
            if response.status_code != 200:
                raise Unauthorized(f"JWKS fetch answered HTTP {response.status_code}")
            body = bytearray()
            for chunk in response.iter_content(65536):
                body += chunk
                if len(body) > MAX_JWKS_BYTES:
                    raise Unauthorized("JWKS response too large")
                if time.monotonic() > deadline:
                    raise Unauthorized("JWKS fetch timed out")
        return json.loads(body)
    except requests.RequestException as exc:
        raise Unauthorized(f"JWKS fetch failed ({type(exc).__name__})") from None
    except ValueError:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise Unauthorized("JWKS response is not JSON") from None


@dataclass(frozen=True)
class _FetchedJwks:
    keys: Mapping[str, dict]
    fetched_at: float


# --- the verifier ----------------------------------------------------------------------------


class JwtVerifier:
    """Checks the `Authorization: Bearer <JWT>` of one call against the trusted issuers."""

    def __init__(
        self,
        issuers: TrustedIssuers,
        *,
        clock_skew_s: int = 60,
        replay_cache: ReplayCache | None = None,
        http_get: Callable[[str, float], dict] | None = None,
        jwks_ttl_s: float = 3600,
        now: Callable[[], float] = time.time,
    ):
        self._issuers = issuers
        self._skew = clock_skew_s
        self._replay_cache = replay_cache if replay_cache is not None else InMemoryReplayCache(now=now)
        self._http_get = http_get or fetch_json
        self._jwks_ttl_s = jwks_ttl_s
        self._now = now
        self._jwks_by_url: dict[str, _FetchedJwks] = {}
        self._jwks_lock = threading.Lock()

    def verify(self, authorization_header: str | None, audience: str) -> dict:
        """Return the token's claims, or raise Unauthorized. `audience` is the exact URL called."""
        token = _bearer_token(authorization_header)
        header = _unverified_header(token)
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in KEY_TYPE_FOR_ALG:
            raise Unauthorized(f"alg {_short(alg)} not allowed")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise Unauthorized("kid missing")
        if "typ" in header and str(header["typ"]).upper() != "JWT":
            raise Unauthorized(f"typ {_short(header['typ'])} is not JWT")

        iss = _unverified_issuer(token)
        issuer = self._issuers.get(iss) if isinstance(iss, str) else None
        if issuer is None:
            raise Unauthorized(f"iss {_short(iss)} is not trusted")
        jwk = self._signing_jwk(issuer, header.get("jku"), kid)
        claims = _decode(token, _public_key(jwk, alg, kid), alg, audience)

        now = self._now()
        exp, iat = claims["exp"], claims["iat"]
        if not _is_number(exp) or not _is_number(iat):
            raise Unauthorized("exp and iat must be numbers")
        if exp + self._skew <= now:
            raise Unauthorized("token expired")
        if iat - self._skew > now:
            raise Unauthorized("iat is in the future")
        if "nbf" in claims and not (_is_number(claims["nbf"]) and claims["nbf"] - self._skew <= now):
            raise Unauthorized("token not yet valid (nbf)")
        jti = claims["jti"]
        if not isinstance(jti, str) or not jti:
            raise Unauthorized("jti must be a non-empty string")
        # Last, so that tokens failing another check cannot fill the cache.
        if not self._replay_cache.check_and_add(iss, jti, exp + self._skew):
            raise Unauthorized("jti replayed")
        return claims

    def _signing_jwk(self, issuer: TrustedIssuer, jku: Any, kid: str) -> dict:
        """Pick the key by kid from the jku (if allowlisted), the inline JWKS or the jwks_url."""
        if jku is not None:
            if jku not in issuer.allowed_jku:
                raise Unauthorized(f"jku {_short(jku)} is not allowed for this issuer")
            url = jku
        elif issuer.jwks_keys is not None:
            if kid not in issuer.jwks_keys:
                raise Unauthorized(f"kid {_short(kid)} not in the issuer's JWKS")
            return issuer.jwks_keys[kid]
        elif issuer.jwks_url:
            url = issuer.jwks_url
        else:
            raise Unauthorized("token has no jku and the issuer has no jwks or jwks_url")

        fetched = self._cached_jwks(url)
        if fetched is None:
            fetched = self._fetch_jwks(url)
        elif kid not in fetched.keys and self._now() - fetched.fetched_at >= UNKNOWN_KID_REFETCH_INTERVAL_S:
            fetched = self._fetch_jwks(url)  # the EHR may have rotated its keys
        if kid not in fetched.keys:
            raise Unauthorized(f"kid {_short(kid)} not in the issuer's JWKS")
        return fetched.keys[kid]

    def _cached_jwks(self, url: str) -> _FetchedJwks | None:
        with self._jwks_lock:
            fetched = self._jwks_by_url.get(url)
        if fetched is None or self._now() - fetched.fetched_at >= self._jwks_ttl_s:
            return None
        return fetched

    def _fetch_jwks(self, url: str) -> _FetchedJwks:
        try:
            keys = _keys_by_kid(self._http_get(url, JWKS_FETCH_TIMEOUT_S))
        except Unauthorized:
            raise
        except ValueError:
            raise Unauthorized("JWKS document is malformed") from None
        except Exception as exc:  # an injected http_get may raise anything; never let it escape
            raise Unauthorized(f"JWKS fetch failed ({type(exc).__name__})") from None
        fetched = _FetchedJwks(keys, self._now())
        with self._jwks_lock:
            self._jwks_by_url[url] = fetched
        return fetched


def _bearer_token(authorization_header: str | None) -> str:
    if not authorization_header:
        raise Unauthorized("no Authorization header")
    scheme, _, token = authorization_header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("Authorization is not 'Bearer <token>'")
    if token.count(".") != 2:
        raise Unauthorized("bearer token is not a JWT")
    return token


def _unverified_header(token: str) -> dict:
    try:
        return jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise Unauthorized("JWT header is malformed") from None


def _unverified_issuer(token: str) -> Any:
    """Read iss before the signature is checked: it only chooses which keys to check against."""
    try:
        payload = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        raise Unauthorized("JWT payload is malformed") from None
    return payload.get("iss")


def _public_key(jwk: dict, alg: str, kid: str) -> Any:
    """Load the JWK for exactly this alg, so its kty (and EC curve) must fit the alg's family."""
    if jwk.get("kty") != KEY_TYPE_FOR_ALG[alg] or jwk.get("alg", alg) != alg:
        raise Unauthorized(f"key {_short(kid)} does not fit alg {alg}")
    if "d" in jwk:  # a JWKS that leaks its private key can no longer prove anything
        raise Unauthorized(f"key {_short(kid)} holds private key material")
    try:
        key = jwt.PyJWK(jwk, algorithm=alg).key
    except jwt.PyJWTError:
        raise Unauthorized(f"key {_short(kid)} is not a usable public key") from None
    if isinstance(key, RSAPublicKey) and key.key_size < MIN_RSA_BITS:
        raise Unauthorized(f"key {_short(kid)} is shorter than {MIN_RSA_BITS} bits")
    return key


def _decode(token: str, key: Any, alg: str, audience: str) -> dict:
    """Check the signature and aud with PyJWT; verify() then checks times (with its clock) and jti."""
    options = {
        "require": list(REQUIRED_CLAIMS),
        "verify_exp": False,
        "verify_iat": False,
        "verify_nbf": False,
        "verify_jti": False,
    }
    try:
        return jwt.decode(token, key, algorithms=[alg], audience=audience, options=options)
    except jwt.MissingRequiredClaimError as exc:
        raise Unauthorized(f"claim {exc.claim} missing") from None
    except jwt.InvalidSignatureError:
        raise Unauthorized("signature does not verify") from None
    except jwt.InvalidAudienceError:
        raise Unauthorized("aud is not the URL called") from None
    except jwt.InvalidKeyError:  # e.g. an EC key on another curve than the alg names
        raise Unauthorized(f"key does not fit alg {alg}") from None
    except jwt.PyJWTError as exc:
        # PyJWT's messages do not quote the token, but use only the class name to be sure.
        raise Unauthorized(f"token rejected ({type(exc).__name__})") from None


def _is_number(value: Any) -> bool:
    """A finite JSON number: Python's json accepts NaN and Infinity, which would defeat every comparison."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
