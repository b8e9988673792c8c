"""Why a bearer token was refused, as a machine-readable code plus advice for a person."""

from __future__ import annotations

# Every code a caller may see; intake maps all of them to 401 except ``jwks_unavailable``,
# which is the gateway's own fault (503) and still refuses the request.
TOKEN_ERROR_CODES: dict[str, str] = {
    "missing": "send the request with an 'Authorization: Bearer <token>' header",
    "malformed": "send a compact JWT (three base64url parts joined by dots) as issued by the identity provider",
    "algorithm_not_allowed": "sign tokens with an asymmetric algorithm this gateway accepts, "
    "using a key published in its JWKS",
    "missing_kid": "put the signing key's 'kid' in the token header; the JWKS holds several keys",
    "unknown_kid": "sign with a key published in the configured JWKS, or publish a new key "
    "there before issuing tokens with it",
    "bad_signature": "the token was altered or signed by another key; obtain a fresh token from the issuer",
    "expired": "the token has expired; obtain a fresh one",
    "not_yet_valid": "the token is not valid yet; check the issuer's clock",
    "wrong_issuer": "obtain the token from the issuer this gateway trusts",
    "wrong_audience": "request a token whose audience is this gateway",
    "missing_claim": "the issuer must include the claims exp, iat, sub, iss and aud",
    "invalid_claim": "a claim has the wrong shape; fix the issuer's token template",
    "jwks_unavailable": "the gateway cannot load its verification keys; check the configured JWKS URL or file",
}


class InvalidToken(Exception):
    """A bearer token was refused. ``code`` is stable for machines, ``message`` is for people.

    Messages never contain the token itself, so the exception is safe to log.
    """

    def __init__(self, code: str, message: str | None = None) -> None:
        if code not in TOKEN_ERROR_CODES:
            raise ValueError(f"unknown token error code {code!r}")
        self.code = code
        self.message = message or TOKEN_ERROR_CODES[code]
        super().__init__(f"{code}: {self.message}")
