"""A development signing key and the JWT an EHR sends with each call (CDS Hooks 2.0, "Trusting CDS Clients").

ES384 on P-384, as CDS Hooks recommends. The `kid` is the key's RFC 7638 thumbprint, so a PEM file alone
is enough to sign and the trusted-issuers entry printed for it names the same kid. For local trials only.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
import uuid
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

ALGORITHM = "ES384"
TOKEN_LIFETIME_S = 300


class SigningKeyError(ValueError):
    """The PEM file does not hold a P-384 EC private key."""


def generate_private_key_pem() -> bytes:
    key = ec.generate_private_key(ec.SECP384R1())
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def load_private_key(pem: bytes) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise SigningKeyError(f"not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP384R1):
        raise SigningKeyError("the signing key must be an EC P-384 key (ES384)")
    return key


def public_jwk(key: ec.EllipticCurvePrivateKey) -> dict[str, str]:
    """The public JWK, with kid = its RFC 7638 thumbprint, use sig and alg ES384."""
    jwk = jwt.algorithms.ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
    required = {name: jwk[name] for name in ("crv", "kty", "x", "y")}
    digest = hashlib.sha256(json.dumps(required, separators=(",", ":"), sort_keys=True).encode()).digest()
    kid = base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")
    return {**required, "kid": kid, "use": "sig", "alg": ALGORITHM}


def trusted_issuers_document(issuer: str, key: ec.EllipticCurvePrivateKey) -> dict[str, Any]:
    """A CDS_TRUSTED_ISSUERS file that trusts `issuer` with this key (inline JWKS, public part only)."""
    return {"issuers": {issuer: {"jwks": {"keys": [public_jwk(key)]}}}}


def sign_request_jwt(key: ec.EllipticCurvePrivateKey, issuer: str, audience: str, now: float | None = None) -> str:
    """The bearer JWT for one call: iss, aud (the exact URL called), iat, exp (+5 min), a fresh jti."""
    issued = int(time.time() if now is None else now)
    claims = {"iss": issuer, "aud": audience, "iat": issued, "exp": issued + TOKEN_LIFETIME_S, "jti": str(uuid.uuid4())}
    headers = {"typ": "JWT", "kid": public_jwk(key)["kid"]}
    return jwt.encode(claims, key, algorithm=ALGORITHM, headers=headers)
