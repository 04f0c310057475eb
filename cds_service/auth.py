"""Verifying the JWT a CDS Client (the EHR) sends on every call (CDS Hooks 2.0, "Trusting CDS Clients").

The service trusts only issuers listed in a JSON file (see docs/trusting-ehrs.md). Each issuer's
public keys come from an inline JWKS, a configured JWKS URL, or a `jku` URL that the file allowlists.
Every failure raises TokenRefused (an errors.Unauthorized) with one of the fixed AuthFailure reasons,
which the 401's WWW-Authenticate header and the request's log line carry, and a short detail for the
log; neither ever contains the token.
"""

from __future__ import annotations

import enum
import heapq
import json
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import jwt
import requests
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

from cds_service.errors import Unauthorized
from cds_service.settings import is_secure_url

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
JWKS_FAILURE_RETRY_S = 10.0  # after a failed JWKS fetch, calls naming that URL are refused without fetching
MAX_NUMERIC_DATE = 253_402_300_799  # 9999-12-31T23:59:59Z: beyond it a "time" is junk, not a date
DEFAULT_MAX_LIFETIME_S = 300  # EHRs mint 5-minute tokens (CDS_JWT_MAX_LIFETIME_S)

# Headers a proxy sets that change the URL a request appears to have been sent to.
FORWARDING_HEADERS = (
    "Forwarded", "X-Forwarded-Host", "X-Forwarded-Proto", "X-Forwarded-Protocol", "X-Forwarded-Ssl",
    "X-Forwarded-Port", "X-Forwarded-Prefix", "X-Forwarded-Scheme",
)


class AuthFailure(enum.Enum):
    """Why a call's JWT was refused: the fixed set logged and sent as the 401's error_description."""

    NO_TOKEN = "no bearer token"
    MALFORMED = "malformed token"
    ALG_NOT_ALLOWED = "alg not allowed"
    UNKNOWN_ISSUER = "unknown issuer"
    JKU_NOT_ALLOWED = "jku not allowed"
    JWKS_UNREACHABLE = "JWKS unreachable"
    UNKNOWN_KID = "unknown kid"
    KEY_UNUSABLE = "key unusable"
    BAD_SIGNATURE = "bad signature"
    AUD_MISMATCH = "aud mismatch"
    PROXY_WITHOUT_PUBLIC_BASE_URL = "forwarded headers without CDS_PUBLIC_BASE_URL"
    MISSING_CLAIM = "missing claim"
    BAD_TIME_CLAIM = "exp, iat or nbf out of range"
    EXPIRED = "expired"
    NOT_YET_VALID = "not yet valid"
    LIFETIME_TOO_LONG = "lifetime too long"
    REPLAYED_JTI = "replayed jti"


class TokenRefused(Unauthorized):
    """A refused JWT: `reason` is one of the fixed AuthFailure values, the message a detail for the log."""

    def __init__(self, reason: AuthFailure, detail: str = ""):
        super().__init__(detail or reason.value)
        self.reason = reason


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
    ignore_jku: bool = False  # use the inline JWKS even for tokens naming a jku (offline sandbox trust)


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


_KEY_SOURCES = {"jwks_url", "jwks", "allowed_jku"}
_ISSUER_KEYS = _KEY_SOURCES | {"ignore_jku"}


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
    if not _KEY_SOURCES & entry.keys():
        problems.append(f"{where}: needs jwks_url, jwks or allowed_jku")
    ignore_jku = entry.get("ignore_jku", False)
    if not isinstance(ignore_jku, bool):
        problems.append(f"{where}: ignore_jku must be true or false")
    elif ignore_jku and "jwks" not in entry:
        problems.append(f"{where}: ignore_jku needs an inline jwks (the keys used instead of the jku)")
    if "jwks_url" in entry and "jwks" in entry:
        problems.append(f"{where}: give jwks_url or jwks, not both")

    jwks_url = entry.get("jwks_url")
    if "jwks_url" in entry and not is_secure_url(jwks_url):
        problems.append(f"{where}: jwks_url must be an https URL (http only for loopback)")

    allowed_jku = entry.get("allowed_jku", [])
    if "allowed_jku" in entry and (not isinstance(allowed_jku, list) or not allowed_jku):
        problems.append(f"{where}: allowed_jku must be a non-empty list of URLs")
        allowed_jku = []
    problems += [
        f"{where}: allowed_jku entry {url!r} must be an https URL (http only for loopback)"
        for url in allowed_jku
        if not is_secure_url(url)
    ]

    if "jwks" in entry:
        problems += [f"{where}: jwks: {problem}" for problem in _inline_jwks_problems(entry["jwks"])]

    if len(problems) > before:
        return None
    jwks_keys = _keys_by_kid(entry["jwks"]) if "jwks" in entry else None
    return TrustedIssuer(iss, jwks_url, jwks_keys, tuple(allowed_jku), ignore_jku)


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
    if not is_secure_url(url):
        raise Unauthorized("JWKS URL must be https")
    deadline = time.monotonic() + timeout_s
    try:
        with requests.get(
            url, timeout=timeout_s, allow_redirects=False, stream=True, headers={"Accept": "application/json"}
        ) as response:
            if response.status_code != 200:
                raise Unauthorized(f"JWKS fetch answered HTTP {response.status_code}")
            body = bytearray()
            # read1: what one read of the socket gave, so the deadline is checked however slowly the server sends
            # (iter_content waits for a whole chunk; the timeout above bounds each read only, and a server dripping
            # a byte at a time never trips it: it held a worker for as long as it dripped)
            while chunk := response.raw.read1(65536, decode_content=True):
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
        max_lifetime_s: int = DEFAULT_MAX_LIFETIME_S,
        replay_cache: ReplayCache | None = None,
        http_get: Callable[[str, float], dict] | None = None,
        jwks_ttl_s: float = 3600,
        now: Callable[[], float] = time.time,
    ):
        self._issuers = issuers
        self._skew = clock_skew_s
        self._max_lifetime_s = max_lifetime_s
        self._replay_cache = replay_cache if replay_cache is not None else InMemoryReplayCache(now=now)
        self._http_get = http_get or fetch_json
        self._jwks_ttl_s = jwks_ttl_s
        self._now = now
        self._jwks_by_url: dict[str, _FetchedJwks] = {}
        self._failed_fetch_at: dict[str, float] = {}  # url -> when its last fetch failed
        self._jwks_lock = threading.Lock()

    def verify(self, authorization_header: str | None, audience: str) -> dict:
        """Return the token's claims, or raise TokenRefused. `audience` is the exact URL called."""
        token = _bearer_token(authorization_header)
        header = _unverified_header(token)
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in KEY_TYPE_FOR_ALG:
            raise TokenRefused(AuthFailure.ALG_NOT_ALLOWED, f"alg {_short(alg)} not allowed")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise TokenRefused(AuthFailure.MALFORMED, "kid missing")
        if "typ" in header and str(header["typ"]).upper() != "JWT":
            raise TokenRefused(AuthFailure.MALFORMED, f"typ {_short(header['typ'])} is not JWT")

        iss = _unverified_issuer(token)
        issuer = self._issuers.get(iss) if isinstance(iss, str) else None
        if issuer is None:
            raise TokenRefused(AuthFailure.UNKNOWN_ISSUER, f"iss {_short(iss)} is not trusted")
        jwk = self._signing_jwk(issuer, header.get("jku"), kid)
        claims = _decode(token, _public_key(jwk, alg, kid), alg, audience)

        now = self._now()
        exp, iat = _numeric_date(claims, "exp"), _numeric_date(claims, "iat")
        if exp + self._skew <= now:
            raise TokenRefused(AuthFailure.EXPIRED, "token expired")
        if iat - self._skew > now:
            raise TokenRefused(AuthFailure.NOT_YET_VALID, "iat is in the future")
        if "nbf" in claims and _numeric_date(claims, "nbf", AuthFailure.NOT_YET_VALID) - self._skew > now:
            raise TokenRefused(AuthFailure.NOT_YET_VALID, "token not yet valid (nbf)")
        # A token that lives longer than an EHR mints them is a stolen or hand-made credential's best friend;
        # exp - now catches an iat set in the past to hide it.
        if exp - iat > self._max_lifetime_s or exp - now > self._max_lifetime_s + self._skew:
            raise TokenRefused(AuthFailure.LIFETIME_TOO_LONG, f"lifetime over {self._max_lifetime_s} s")
        jti = claims["jti"]
        if not isinstance(jti, str) or not jti:
            raise TokenRefused(AuthFailure.MALFORMED, "jti must be a non-empty string")
        # Last, so that tokens failing another check cannot fill the cache.
        if not self._replay_cache.check_and_add(iss, jti, exp + self._skew):
            raise TokenRefused(AuthFailure.REPLAYED_JTI, "jti replayed")
        return claims

    def _signing_jwk(self, issuer: TrustedIssuer, jku: Any, kid: str) -> dict:
        """Pick the key by kid from the jku (if allowlisted), the inline JWKS or the jwks_url."""
        if jku is not None and not issuer.ignore_jku:
            if jku not in issuer.allowed_jku:
                raise TokenRefused(AuthFailure.JKU_NOT_ALLOWED, f"jku {_short(jku)} is not allowed for this issuer")
            url = jku
        elif issuer.jwks_keys is not None:
            if kid not in issuer.jwks_keys:
                raise TokenRefused(AuthFailure.UNKNOWN_KID, f"kid {_short(kid)} not in the issuer's JWKS")
            return issuer.jwks_keys[kid]
        elif issuer.jwks_url:
            url = issuer.jwks_url
        else:
            raise TokenRefused(AuthFailure.JKU_NOT_ALLOWED, "token has no jku and the issuer has no jwks or jwks_url")

        fetched = self._cached_jwks(url)
        if fetched is None:
            fetched = self._fetch_jwks(url)
        elif kid not in fetched.keys and self._now() - fetched.fetched_at >= UNKNOWN_KID_REFETCH_INTERVAL_S:
            fetched = self._fetch_jwks(url)  # the EHR may have rotated its keys
        if kid not in fetched.keys:
            raise TokenRefused(AuthFailure.UNKNOWN_KID, f"kid {_short(kid)} not in the issuer's JWKS")
        return fetched.keys[kid]

    def _cached_jwks(self, url: str) -> _FetchedJwks | None:
        with self._jwks_lock:
            fetched = self._jwks_by_url.get(url)
        if fetched is None or self._now() - fetched.fetched_at >= self._jwks_ttl_s:
            return None
        return fetched

    def _fetch_jwks(self, url: str) -> _FetchedJwks:
        # A failure is remembered briefly: junk tokens naming this URL must not make the worker fetch each time.
        with self._jwks_lock:
            failed_at = self._failed_fetch_at.get(url)
        if failed_at is not None and self._now() - failed_at < JWKS_FAILURE_RETRY_S:
            raise TokenRefused(AuthFailure.JWKS_UNREACHABLE, f"JWKS fetch failed less than {JWKS_FAILURE_RETRY_S:g} s ago")
        try:
            keys = _keys_by_kid(self._http_get(url, JWKS_FETCH_TIMEOUT_S))
        except Exception as exc:  # noqa: BLE001 -- an injected http_get may raise anything; never let it escape
            with self._jwks_lock:
                self._failed_fetch_at[url] = self._now()
            if isinstance(exc, Unauthorized):
                detail = exc.message
            elif isinstance(exc, ValueError):
                detail = "JWKS document is malformed"
            else:
                detail = f"JWKS fetch failed ({type(exc).__name__})"
            raise TokenRefused(AuthFailure.JWKS_UNREACHABLE, detail) from None
        fetched = _FetchedJwks(keys, self._now())
        with self._jwks_lock:
            self._jwks_by_url[url] = fetched
            self._failed_fetch_at.pop(url, None)
        return fetched


def expected_audience(public_base_url: str, path: str, host_url: str, headers: Any) -> str:
    """The `aud` a call's token must carry: CDS_PUBLIC_BASE_URL + path.

    Without that setting, the URL the request arrived at (Host header, connection scheme). Forwarding
    headers are never believed for it: a caller could use them to make a token minted for another
    deployment match, so a request carrying one is refused until CDS_PUBLIC_BASE_URL says who we are.
    """
    if public_base_url:
        return public_base_url + path
    forwarded = [name for name in FORWARDING_HEADERS if name in headers]
    if forwarded:
        raise TokenRefused(
            AuthFailure.PROXY_WITHOUT_PUBLIC_BASE_URL, f"{forwarded[0]} present; set CDS_PUBLIC_BASE_URL behind a proxy"
        )
    return host_url.rstrip("/") + path


def www_authenticate(error: Exception) -> str:
    """The 401's WWW-Authenticate (RFC 6750 §3): the fixed reason only, never a value from the token."""
    reason = getattr(error, "reason", None)
    if reason is AuthFailure.NO_TOKEN:
        return "Bearer"  # no credentials: no error code (RFC 6750 §3.1)
    description = reason.value if isinstance(reason, AuthFailure) else "token refused"
    return f'Bearer error="invalid_token", error_description="{description}"'


def _bearer_token(authorization_header: str | None) -> str:
    if not authorization_header:
        raise TokenRefused(AuthFailure.NO_TOKEN, "no Authorization header")
    scheme, _, token = authorization_header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise TokenRefused(AuthFailure.NO_TOKEN, "Authorization is not 'Bearer <token>'")
    if token.count(".") != 2:
        raise TokenRefused(AuthFailure.MALFORMED, "bearer token is not a JWT")
    return token


def _unverified_header(token: str) -> dict:
    try:
        return jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise TokenRefused(AuthFailure.MALFORMED, "JWT header is malformed") from None


def _unverified_issuer(token: str) -> Any:
    """Read iss before the signature is checked: it only chooses which keys to check against."""
    try:
        payload = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        raise TokenRefused(AuthFailure.MALFORMED, "JWT payload is malformed") from None
    return payload.get("iss") if isinstance(payload, dict) else None


def _public_key(jwk: dict, alg: str, kid: str) -> Any:
    """Load the JWK for exactly this alg, so its kty (and EC curve) must fit the alg's family."""
    if jwk.get("kty") != KEY_TYPE_FOR_ALG[alg] or jwk.get("alg", alg) != alg:
        raise TokenRefused(AuthFailure.KEY_UNUSABLE, f"key {_short(kid)} does not fit alg {alg}")
    if "d" in jwk:  # a JWKS that leaks its private key can no longer prove anything
        raise TokenRefused(AuthFailure.KEY_UNUSABLE, f"key {_short(kid)} holds private key material")
    try:
        key = jwt.PyJWK(jwk, algorithm=alg).key
    except jwt.PyJWTError:
        raise TokenRefused(AuthFailure.KEY_UNUSABLE, f"key {_short(kid)} is not a usable public key") from None
    if isinstance(key, RSAPublicKey) and key.key_size < MIN_RSA_BITS:
        raise TokenRefused(AuthFailure.KEY_UNUSABLE, f"key {_short(kid)} is shorter than {MIN_RSA_BITS} bits")
    return key


def _decode(token: str, key: Any, alg: str, audience: str) -> dict:
    """Check the signature and aud with PyJWT; verify() then checks times (with its clock) and jti."""
    options: Any = {  # PyJWT's Options TypedDict (jwt.types) is not in every version we accept
        "require": list(REQUIRED_CLAIMS),
        "verify_exp": False,
        "verify_iat": False,
        "verify_nbf": False,
        "verify_jti": False,
    }
    try:
        return jwt.decode(token, key, algorithms=[alg], audience=audience, options=options)
    except jwt.MissingRequiredClaimError as exc:
        raise TokenRefused(AuthFailure.MISSING_CLAIM, f"claim {exc.claim} missing") from None
    except jwt.InvalidSignatureError:
        raise TokenRefused(AuthFailure.BAD_SIGNATURE, "signature does not verify") from None
    except jwt.InvalidAudienceError:
        raise TokenRefused(AuthFailure.AUD_MISMATCH, "aud is not the URL called") from None
    except jwt.InvalidKeyError:  # e.g. an EC key on another curve than the alg names
        raise TokenRefused(AuthFailure.KEY_UNUSABLE, f"key does not fit alg {alg}") from None
    except jwt.PyJWTError as exc:
        # PyJWT's messages do not quote the token, but use only the class name to be sure.
        raise TokenRefused(AuthFailure.MALFORMED, f"token rejected ({type(exc).__name__})") from None


def _numeric_date(claims: Mapping[str, Any], name: str, failure: AuthFailure = AuthFailure.BAD_TIME_CLAIM) -> float:
    """A JSON NumericDate between 1970 and 9999; anything else (string, bool, NaN, 1e400, 10**400, -1) is refused.

    Range-checked before any arithmetic, so a huge integer can never overflow a float later (a 500).
    """
    value = claims[name]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= MAX_NUMERIC_DATE:
        detail = "token not yet valid (nbf)" if failure is AuthFailure.NOT_YET_VALID else "token times"
        raise TokenRefused(failure, f"{detail}: {name} must be numbers (NumericDate, 1970 to 9999)")
    return float(value)
