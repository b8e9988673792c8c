"""Turning a Bearer JWT into a verified Principal, or refusing it with a reason."""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.exceptions import InvalidJTIError, InvalidSubjectError

from keyturn.core.principal import Principal
from keyturn.identity.claims import ACT_CLAIM, KIND_CLAIM, delegation_chain, principal_kind
from keyturn.identity.errors import InvalidToken
from keyturn.identity.jwks import JwksFile, JwksSource, JwksUrl, StaticJwks
from keyturn.identity.keys import load_or_create_signing_key
from keyturn.masking.protect import hidden_in, masked_within

# Only public-key algorithms: with a shared secret, anyone holding the JWKS could mint tokens.
ASYMMETRIC_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"} | {"ES256", "ES384", "ES512", "ES256K", "EdDSA"}
)
REQUIRED_CLAIMS = ("exp", "iat", "sub", "iss", "aud")
MAX_TOKEN_CHARS = 16_384

_log = logging.getLogger(__name__)
_RSA_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
_PRIVATE_KEY_TYPES = (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey, ed25519.Ed25519PrivateKey)
_EC_ALGORITHMS = {
    "secp256r1": "ES256",
    "secp384r1": "ES384",
    "secp521r1": "ES512",
    "secp256k1": "ES256K",
}


@dataclass(frozen=True)
class _VerificationKey:
    kid: str | None
    public_key: Any
    algorithms: frozenset[str]


@dataclass(frozen=True)
class _Verified:
    """A token verified earlier: whom it proves, until when, and with which key."""

    principal: Principal
    expires_at: float
    key: _VerificationKey


class TokenVerifier:
    """Verifies Bearer JWTs against a JWKS and pins issuer, audience and algorithms.

    ``jwks_source`` is a JWKS document (dict), a path to a JWKS JSON file (re-read when it
    changes), an ``http(s)://`` URL (fetched with httpx and cached, see ``JwksUrl``), or any
    ``JwksSource``. Keys are matched by the token's ``kid``; a token without one is accepted
    only while the JWKS holds a single key. ``jku``, ``x5u`` and embedded keys in a token
    header are never followed.
    """

    def __init__(
        self,
        jwks_source: Mapping[str, Any] | str | os.PathLike[str] | JwksSource,
        *,
        issuer: str,
        audience: str,
        algorithms: Collection[str] = ("RS256", "ES256"),
        leeway_s: float = 30,
        cache_size: int = 10_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        refused = set(algorithms) - ASYMMETRIC_ALGORITHMS
        if refused or not algorithms:
            raise ValueError(
                f"algorithms {sorted(refused) or '(none)'} are not allowed; choose from {sorted(ASYMMETRIC_ALGORITHMS)}"
            )
        if not issuer or not audience:
            raise ValueError("issuer and audience are required: a verifier must pin both")
        self.issuer = issuer
        self.audience = audience
        self.algorithms = frozenset(algorithms)
        self.leeway_s = leeway_s
        # Verified tokens, keyed by the SHA-256 of the token (never the token itself), until their
        # ``exp``; least recently used first out. A hit is honoured only while the key that
        # verified it is still in the current key set, so a rotation or revocation the JWKS
        # source reports ends cached tokens as it ends fresh ones.
        self.cache_size = cache_size
        self._clock = clock
        self._verified: OrderedDict[bytes, _Verified] = OrderedDict()
        self._cache_lock = threading.Lock()
        self._source = _as_source(jwks_source)
        self._parsed: tuple[Mapping[str, Any] | None, tuple[_VerificationKey, ...]] = (None, ())
        if not isinstance(self._source, JwksUrl):
            try:  # a broken local key set should stop start-up, not the first request
                self._keys(refresh=False)
            except InvalidToken as exc:
                raise ValueError(exc.message) from exc

    def verify(self, token: str) -> Principal:
        """The principal the token proves, or ``InvalidToken`` saying why it was refused.

        A token verified before is answered from the cache until its ``exp``, while the key
        that verified it is still published; anything else is verified in full.
        """
        if not isinstance(token, str) or not token:
            raise InvalidToken("missing", "no bearer token was given")
        if len(token) > MAX_TOKEN_CHARS:
            raise InvalidToken("malformed", f"the token is longer than {MAX_TOKEN_CHARS} characters")
        digest = hashlib.sha256(token.encode()).digest()
        cached = self._cached(digest)
        if cached is not None:
            return cached
        principal, expires_at, key = self._verify(token)
        if self.cache_size > 0:
            with self._cache_lock:
                self._verified[digest] = _Verified(principal, expires_at, key)
                self._verified.move_to_end(digest)
                while len(self._verified) > self.cache_size:
                    self._verified.popitem(last=False)
        return principal

    def _cached(self, digest: bytes) -> Principal | None:
        with self._cache_lock:
            hit = self._verified.get(digest)
            if hit is None:
                return None
            if self._clock() >= hit.expires_at:
                del self._verified[digest]
                return None
            self._verified.move_to_end(digest)
        current = self._keys(refresh=False)  # the source's own schedule: a file's change, a URL's TTL
        if not any(key is hit.key for key in current):
            with self._cache_lock:
                self._verified.pop(digest, None)
            return None
        return hit.principal

    def _verify(self, token: str) -> tuple[Principal, float, _VerificationKey]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise InvalidToken("malformed", f"the token cannot be parsed as a JWT ({exc})") from exc
        algorithm = header.get("alg")
        if not isinstance(algorithm, str) or algorithm not in self.algorithms:
            raise InvalidToken(
                "algorithm_not_allowed",
                f"the token is signed with {_told(algorithm, 32)}; this gateway accepts only {sorted(self.algorithms)}",
            )
        key = self._key_for(header.get("kid"))
        if algorithm not in key.algorithms:
            raise InvalidToken(
                "algorithm_not_allowed",
                f"the key {key.kid!r} verifies only {sorted(key.algorithms)}, but the token claims {algorithm!r}",
            )
        claims = self._decode(token, key, algorithm)
        for claim in ("exp", "nbf", "iat"):
            if claim in claims and not _numeric_date(claims[claim]):
                raise InvalidToken(
                    "invalid_claim",
                    f"the '{claim}' claim must be a NumericDate (a JSON number of seconds since 1970, before "
                    "the year 10000); fix the issuer's token template",
                )
        try:
            subject = claims["sub"]
            if not subject.strip():
                raise ValueError("'sub' must be a non-empty principal id")
            kind = principal_kind(subject, claims.get(KIND_CLAIM))
            chain = delegation_chain(claims.get(ACT_CLAIM))
        except ValueError as exc:
            raise InvalidToken("invalid_claim", f"{exc}; fix the issuer's token template") from exc
        if (why := unfit_principal_ids(subject, chain)) is not None:
            raise InvalidToken("invalid_claim", f"{why}; fix the issuer's token template")
        return Principal(id=subject, kind=kind, chain=chain), float(claims["exp"]), key

    def _decode(self, token: str, key: _VerificationKey, algorithm: str) -> dict[str, Any]:
        try:
            return jwt.decode(
                token,
                key.public_key,
                algorithms=[algorithm],
                issuer=self.issuer,
                audience=self.audience,
                leeway=self.leeway_s,
                options={
                    "require": list(REQUIRED_CLAIMS),
                    "verify_signature": True,
                    "enforce_minimum_key_length": True,
                },
            )
        except jwt.ExpiredSignatureError as exc:
            raise InvalidToken("expired", "the token has expired; obtain a fresh one") from exc
        except jwt.ImmatureSignatureError as exc:
            raise InvalidToken(
                "not_yet_valid",
                "the token's nbf or iat is in the future; check the issuer's clock",
            ) from exc
        except jwt.InvalidAudienceError as exc:
            raise InvalidToken(
                "wrong_audience",
                f"the token is not meant for this gateway; request one with aud={self.audience!r}",
            ) from exc
        except jwt.InvalidIssuerError as exc:
            raise InvalidToken(
                "wrong_issuer",
                f"the token was not issued by {self.issuer!r}, the only issuer this gateway trusts",
            ) from exc
        except jwt.MissingRequiredClaimError as exc:
            raise InvalidToken(
                "missing_claim",
                f"the token has no {exc.claim!r} claim; the issuer must include {', '.join(REQUIRED_CLAIMS)}",
            ) from exc
        except jwt.InvalidSignatureError as exc:
            raise InvalidToken(
                "bad_signature",
                f"the signature does not match key {key.kid!r}: the token was altered or signed "
                "by another key; obtain a fresh token from the issuer",
            ) from exc
        except (InvalidSubjectError, InvalidJTIError, jwt.InvalidIssuedAtError) as exc:
            raise InvalidToken("invalid_claim", f"{exc}; fix the issuer's token template") from exc
        except jwt.InvalidTokenError as exc:
            raise InvalidToken("malformed", f"the token is not a valid JWT ({exc})") from exc
        except jwt.PyJWTError as exc:
            raise InvalidToken("bad_signature", f"the token cannot be verified with key {key.kid!r} ({exc})") from exc

    def _key_for(self, kid: Any) -> _VerificationKey:
        if kid is not None and not isinstance(kid, str):
            raise InvalidToken("malformed", "the token header's 'kid' must be a string")
        key = _select(self._keys(refresh=False), kid)
        if key is None and kid is not None:
            key = _select(self._keys(refresh=True), kid)  # the issuer may have rotated keys
        if key is not None:
            return key
        if kid is None:
            raise InvalidToken(
                "missing_kid",
                "the token header has no 'kid' and the JWKS holds several keys; the issuer must name its signing key",
            )
        raise InvalidToken(
            "unknown_kid",
            f"no key with kid {_told(kid, 64)} in the configured JWKS; sign with a published key, or "
            "publish the new key before using it",
        )

    def _keys(self, *, refresh: bool) -> tuple[_VerificationKey, ...]:
        document = self._source.jwks(refresh=refresh)
        parsed_from, keys = self._parsed
        if document is not parsed_from:
            keys = _parse_jwks(document)
            self._parsed = (document, keys)
        return keys


#: 9999-12-31T23:59:59Z: a time after it is no date a session can be kept until, nor a real expiry.
LAST_NUMERIC_DATE = 253402300799


def _numeric_date(value: Any) -> bool:
    """A JWT time claim as RFC 7519 has it: a number (PyJWT also takes the string "9999999999",
    which a reader of the claim then cannot), within the dates a record can hold."""
    return isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value <= LAST_NUMERIC_DATE


def _told(value: Any, chars: int) -> str:
    """A header field the sender chose, as a refusal repeats it: masked whole, then cut."""
    return repr(masked_within(str(value), chars))


# Principal ids are written in clear on every record (who asked, for whom, who approved). An
# email address may name a person there: that is what an audit is for. Anything else masking
# recognises (a key, a card or phone number, an address) is no one's name, so a token carrying
# one is refused before it can be written down.
PRINCIPAL_IDS_MAY_HOLD = frozenset({"EMAIL_ADDRESS"})


def unfit_principal_ids(subject: str, chain: tuple[str, ...]) -> str | None:
    """Why the token's principal ids cannot be written down, naming the claim, never its value."""
    for claim, ids in (("'sub' claim", (subject,)), ("'act' chain", chain)):
        if not all(principal_id.isprintable() for principal_id in ids):  # a NUL, a line break, a lone surrogate
            return f"the {claim} holds a character that is not printable text, and principal ids are written down"
    findings = hidden_in({"sub": subject, "act": list(chain)})
    kinds: dict[str, set[str]] = {}
    for path, kind in findings:
        if kind not in PRINCIPAL_IDS_MAY_HOLD:
            kinds.setdefault("'sub'" if path.startswith("$.sub") else "'act' chain's", set()).add(kind)
    if not kinds:
        return None
    where = "; the ".join(f"{claim} claim holds what looks like {', '.join(sorted(k))}" for claim, k in kinds.items())
    return f"the {where}, and principal ids are written in clear on every record"


def bearer_token(authorization_header: str | None) -> str:
    """The token in an ``Authorization: Bearer <token>`` header, or ``InvalidToken("missing")``."""
    if authorization_header is None or not authorization_header.strip():
        raise InvalidToken("missing", "no Authorization header; send 'Authorization: Bearer <token>'")
    parts = authorization_header.split()
    # The header's content is never echoed: a misformatted header may still carry a secret.
    if parts[0].lower() != "bearer":
        raise InvalidToken(
            "missing",
            "the Authorization header is not a Bearer credential; send 'Authorization: Bearer <token>'",
        )
    if len(parts) != 2:
        raise InvalidToken(
            "missing",
            "the Authorization header must be 'Bearer' followed by exactly one token",
        )
    return parts[1]


def verifier_from_settings(
    jwks_url: str | None,
    jwks_path: str | None,
    dev_key_dir: Path,
    issuer: str,
    audience: str,
) -> TokenVerifier:
    """The verifier for the configured JWKS URL or file, else for the local dev key.

    Without a URL or file, the dev key in ``dev_key_dir`` is created on first run and its
    public JWKS is trusted: right for a laptop, never for production.
    """
    if jwks_url and jwks_path:
        raise ValueError("configure either a JWKS URL or a JWKS file, not both")
    if jwks_url:
        return TokenVerifier(JwksUrl(jwks_url), issuer=issuer, audience=audience)
    if jwks_path:
        return TokenVerifier(Path(jwks_path), issuer=issuer, audience=audience)
    dev_key = load_or_create_signing_key(dev_key_dir)
    _log.warning(
        "no JWKS URL or file configured: trusting the local dev key %s in %s; "
        "configure the identity provider's JWKS for any shared deployment",
        dev_key.kid,
        dev_key_dir,
    )
    return TokenVerifier(dev_key.jwks(), issuer=issuer, audience=audience)


def _as_source(jwks_source: Any) -> JwksSource:
    if isinstance(jwks_source, Mapping):
        return StaticJwks(jwks_source)
    if isinstance(jwks_source, str) and jwks_source.startswith(("https://", "http://")):
        return JwksUrl(jwks_source)
    if isinstance(jwks_source, (str, os.PathLike)):
        return JwksFile(Path(jwks_source))
    if callable(getattr(jwks_source, "jwks", None)):
        return jwks_source
    raise TypeError("jwks_source must be a JWKS dict, a file path, an http(s) URL or a JwksSource")


def _select(keys: tuple[_VerificationKey, ...], kid: str | None) -> _VerificationKey | None:
    if kid is None:
        return keys[0] if len(keys) == 1 else None
    return next((key for key in keys if key.kid == kid), None)


def _parse_jwks(document: Any) -> tuple[_VerificationKey, ...]:
    """The usable public signing keys of a JWKS; symmetric and encryption keys are ignored."""
    entries = document.get("keys") if isinstance(document, Mapping) else None
    if not isinstance(entries, list):
        raise InvalidToken("jwks_unavailable", "the JWKS is not an object with a 'keys' list")
    keys = []
    for jwk_data in entries:
        if not isinstance(jwk_data, Mapping) or jwk_data.get("kty") == "oct":
            continue
        if jwk_data.get("use", "sig") != "sig":
            continue
        declared = jwk_data.get("alg")
        if declared is not None and (not isinstance(declared, str) or declared not in ASYMMETRIC_ALGORITHMS):
            continue
        try:
            public_key = jwt.PyJWK(dict(jwk_data)).key
        except (jwt.PyJWTError, TypeError, ValueError, KeyError):
            continue
        if isinstance(public_key, _PRIVATE_KEY_TYPES):  # a JWKS that leaks "d": use the public half
            public_key = public_key.public_key()
        algorithms = _algorithms_for(public_key) & ASYMMETRIC_ALGORITHMS
        if declared is not None:
            algorithms &= {declared}
        if algorithms:
            kid = jwk_data.get("kid")
            kid = kid if isinstance(kid, str) else None
            keys.append(_VerificationKey(kid, public_key, algorithms))
    if not keys:
        raise InvalidToken("jwks_unavailable", "the JWKS holds no usable public signing key")
    return tuple(keys)


def _algorithms_for(public_key: Any) -> frozenset[str]:
    """The algorithms a key's type can verify, so a token cannot pick a mismatched one."""
    if isinstance(public_key, rsa.RSAPublicKey):
        return _RSA_ALGORITHMS
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        algorithm = _EC_ALGORITHMS.get(public_key.curve.name)
        return frozenset({algorithm}) if algorithm else frozenset()
    if isinstance(public_key, ed25519.Ed25519PublicKey):
        return frozenset({"EdDSA"})
    return frozenset()
