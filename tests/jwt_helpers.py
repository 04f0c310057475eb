"""Make keys, JWKS documents and CDS Client JWTs, as an EHR would, for tests and local trials.

Keys are generated fresh each time; nothing here should sign a token for a real deployment.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Callable
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

# alg -> EC curve, so an ES token is signed with the key size the alg names.
EC_CURVES = {"ES256": ec.SECP256R1, "ES384": ec.SECP384R1, "ES512": ec.SECP521R1}


def make_rsa_key(bits: int = 2048) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def make_ec_key(alg: str = "ES384") -> ec.EllipticCurvePrivateKey:
    """An EC key on the curve `alg` requires (ES384, which CDS Hooks recommends, by default)."""
    return ec.generate_private_key(EC_CURVES[alg]())


def jwk_from_key(key: Any, kid: str, alg: str | None = None) -> dict:
    """The public JWK of a private (or public) key, marked for signatures."""
    public_key = key.public_key() if hasattr(key, "public_key") else key
    if isinstance(public_key, rsa.RSAPublicKey):
        jwk = jwt.algorithms.RSAAlgorithm.to_jwk(public_key, as_dict=True)
    else:
        jwk = jwt.algorithms.ECAlgorithm.to_jwk(public_key, as_dict=True)
    jwk.update({"kid": kid, "use": "sig"})
    if alg:
        jwk["alg"] = alg
    return jwk


def jwks_of(*jwks: dict) -> dict:
    """A JWKS document holding the given JWKs."""
    return {"keys": list(jwks)}


def private_key_pem(key: Any) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def public_key_pem(key: Any) -> bytes:
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    return key.public_key().public_bytes(serialization.Encoding.PEM, spki)


def cds_claims(iss: str, aud: str | list[str], **overrides: Any) -> dict:
    """The claims CDS Hooks requires, valid for 5 minutes from now. An override of None drops the claim."""
    now = int(time.time())
    claims = {"iss": iss, "aud": aud, "iat": now, "exp": now + 300, "jti": str(uuid.uuid4())}
    claims.update(overrides)
    return {name: value for name, value in claims.items() if value is not None}


def sign_jwt(key: Any, kid: str | None, alg: str, claims: dict, headers: dict | None = None) -> str:
    """Sign like a CDS Client: header alg, typ JWT and kid (omitted when kid is None), plus `headers`."""
    header = {"typ": "JWT", **({"kid": kid} if kid is not None else {}), **(headers or {})}
    return jwt.encode(claims, key, algorithm=alg, headers=header)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def hand_made_jwt(header: dict, claims: dict, sign: Callable[[bytes], bytes] | None = None) -> str:
    """Assemble a JWT by hand, for tokens no honest library would produce (alg none, forged HMAC)."""
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
    signature = sign(signing_input.encode("ascii")) if sign else b""
    return f"{signing_input}.{b64url(signature)}"


def bearer(token: str) -> str:
    return f"Bearer {token}"
