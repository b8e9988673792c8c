"""Identity: verified requesters and approvers from Bearer JWTs, and a local dev signing key."""

from keyturn.identity.claims import KIND_CLAIM
from keyturn.identity.errors import TOKEN_ERROR_CODES, InvalidToken
from keyturn.identity.jwks import JwksFile, JwksSource, JwksUrl, StaticJwks
from keyturn.identity.keys import (
    SigningKey,
    SigningKeyError,
    jwk_thumbprint,
    load_or_create_signing_key,
)
from keyturn.identity.tokens import issue_token
from keyturn.identity.verifier import TokenVerifier, bearer_token, verifier_from_settings

__all__ = [
    "KIND_CLAIM",
    "TOKEN_ERROR_CODES",
    "InvalidToken",
    "JwksFile",
    "JwksSource",
    "JwksUrl",
    "SigningKey",
    "SigningKeyError",
    "StaticJwks",
    "TokenVerifier",
    "bearer_token",
    "issue_token",
    "jwk_thumbprint",
    "load_or_create_signing_key",
    "verifier_from_settings",
]
