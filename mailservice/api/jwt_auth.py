"""HS256 JWTs as Bearer credentials: the older FastAPI services' clients (API.md section 2).

Those clients sign a JWT themselves with a secret they share with the service, and send it as
`Authorization: Bearer <JWT>`. Such a JWT authenticates as the sender under whose secret its
signature verifies: the sender's `jwt_secret` column, else its API key. The rules:

- Only HS256. The header must say `"alg": "HS256"`; `none`, HS384/HS512 and every asymmetric
  algorithm are refused before any secret is tried, so no algorithm confusion is possible.
- The signature must verify (PyJWT's HMAC-SHA256, compared in constant time).
- `exp` and `nbf` are honoured when present, with no leeway: a JWT whose `exp` has passed is
  refused at once. `iat` is not checked: a client whose clock runs a second ahead would
  otherwise be refused a fresh JWT, and the older services did not check it either. An `aud`
  claim is refused (the service is no audience it could name). No claim is required: the
  second service's clients sign `{"test": "data"}`.
- A JWT names no key, so each sender's secret is tried in turn: O(senders) HMACs. That is done
  only for a credential shaped like one (three base64url segments, at most MAX_LENGTH
  characters, a header naming HS256) that is neither a known API key nor a `/token` token;
  `request_path.authenticate` asks in that order, and a JWT that fails is a 401 counted by
  `auth_guard` like any other.

This module knows nothing of Flask; the secrets come from `SenderDirectory.jwt_secrets()` and
never leave it.
"""

from __future__ import annotations

import binascii
import re
from collections.abc import Iterable
from typing import Any

import jwt
from jwt.algorithms import HMACAlgorithm
from jwt.utils import base64url_decode

ALGORITHM = "HS256"
MAX_LENGTH = 8192
LEEWAY_SECONDS = 0
_SHAPE = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
_HS256 = HMACAlgorithm(HMACAlgorithm.SHA256)
# The claims are checked by PyJWT once the signature has verified under one sender's secret
# (below): decoding again with each secret would parse the JWT once per sender, and PyJWT warns
# on every HMAC secret shorter than 32 bytes, which API keys often are (API.md section 2).
_CLAIMS = jwt.PyJWT()
_CLAIM_OPTIONS: Any = {
    "verify_signature": False,  # verified just before, with the library's HS256
    "verify_exp": True,
    "verify_nbf": True,
    "verify_iat": False,
    "verify_aud": True,
    "verify_iss": True,
    "verify_sub": True,
    "verify_jti": True,
}


def looks_like_jwt(credential: str) -> bool:
    """True for three base64url segments whose header names HS256 (nothing is verified)."""
    if len(credential) > MAX_LENGTH or not _SHAPE.fullmatch(credential):
        return False
    try:
        header = jwt.get_unverified_header(credential)
    except jwt.InvalidTokenError:
        return False
    return header.get("alg") == ALGORITHM


def key_digest_of(credential: str, secrets: Iterable[tuple[bytes, bytes]]) -> bytes | None:
    """The key digest of the sender whose secret this HS256 JWT verifies under, its claims
    valid; None for anything else. `secrets` are (secret, key digest) pairs."""
    if not looks_like_jwt(credential):
        return None
    signing_input, _, encoded_signature = credential.rpartition(".")
    try:
        signature = base64url_decode(encoded_signature)
    except (binascii.Error, ValueError):
        return None
    message = signing_input.encode("ascii")
    matched = next(
        (digest for secret, digest in secrets if _HS256.verify(message, secret, signature)), None
    )
    if matched is None:
        return None
    try:
        _CLAIMS.decode(credential, options=_CLAIM_OPTIONS, leeway=LEEWAY_SECONDS)
    except jwt.InvalidTokenError:  # expired, not yet valid, an audience, a payload not JSON
        return None
    return matched
