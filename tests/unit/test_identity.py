"""Identity: who is asking and who is answering, proven by a Bearer JWT or refused with a reason."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import socket
import stat
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from keyturn.core.principal import Principal, PrincipalKind
from keyturn.identity import (
    InvalidToken,
    JwksUrl,
    SigningKey,
    SigningKeyError,
    TokenVerifier,
    bearer_token,
    issue_token,
    jwk_thumbprint,
    load_or_create_signing_key,
    verifier_from_settings,
)
from keyturn.identity.keys import PRIVATE_KEY_FILE
from tests.peers import JsonPeer

ISSUER = "keyturn-dev"
AUDIENCE = "keyturn"


@pytest.fixture(scope="module")
def key() -> SigningKey:
    return SigningKey.generate()


@pytest.fixture(scope="module")
def verifier(key: SigningKey) -> TokenVerifier:
    return TokenVerifier(key.jwks(), issuer=ISSUER, audience=AUDIENCE)


def refusal(verifier: TokenVerifier, token: str) -> InvalidToken:
    with pytest.raises(InvalidToken) as caught:
        verifier.verify(token)
    return caught.value


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def segment(obj: dict) -> str:
    return b64url(json.dumps(obj).encode())


def standard_claims(**overrides) -> dict:
    now = int(datetime.now(UTC).timestamp())
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "agent:reporter", "iat": now, "exp": now + 600}
    claims.update(overrides)
    return {name: value for name, value in claims.items() if value is not None}


def signed_by(key: SigningKey, claims: dict, **headers) -> str:
    headers = {"kid": key.kid, **headers}
    return jwt.encode(claims, key.private_key, algorithm="ES256", headers=headers)


# --- round trips -------------------------------------------------------------------------


def test_agent_acting_for_human_round_trips(key, verifier):
    token = issue_token(key, subject="agent:reporter", acts_for=["human:alice"])

    principal = verifier.verify(token)

    assert principal == Principal("agent:reporter", PrincipalKind.AGENT, ("human:alice",))
    assert principal.everyone == {"agent:reporter", "human:alice"}


def test_token_carries_act_claim_kind_and_standard_claims(key):
    token = issue_token(key, subject="agent:reporter", acts_for=["human:alice"])

    header = jwt.get_unverified_header(token)
    claims = jwt.decode(token, options={"verify_signature": False})

    assert header["kid"] == key.kid and header["alg"] == "ES256"
    assert claims["sub"] == "agent:reporter"
    assert claims["act"] == {"sub": "human:alice"}
    assert claims["keyturn_kind"] == "agent"
    assert {"iat", "nbf", "exp", "jti", "iss", "aud"} <= claims.keys()
    assert claims["exp"] - claims["iat"] == 3600


def test_nested_act_chain_is_flattened_outermost_first(key, verifier):
    token = issue_token(key, subject="agent:reporter", acts_for=["human:alice", "human:bob"])

    claims = jwt.decode(token, options={"verify_signature": False})
    principal = verifier.verify(token)

    assert claims["act"] == {"sub": "human:alice", "act": {"sub": "human:bob"}}
    assert principal.chain == ("human:alice", "human:bob")


@settings(max_examples=40, deadline=None)
@given(st.lists(st.from_regex(r"\A(human|agent|service):[a-z][a-z0-9._-]{0,12}\Z"), max_size=6))
def test_any_delegation_chain_survives_the_round_trip(key, verifier, acts_for):
    token = issue_token(key, subject="agent:reporter", acts_for=acts_for)

    assert verifier.verify(token).chain == tuple(acts_for)


def test_human_approver_without_delegation_has_empty_chain(key, verifier):
    principal = verifier.verify(issue_token(key, subject="human:carol"))

    assert principal == Principal("human:carol", PrincipalKind.HUMAN, ())


def test_declared_kind_applies_to_subject_without_prefix(key, verifier):
    token = issue_token(key, subject="billing-sync", kind="service")

    assert verifier.verify(token).kind is PrincipalKind.SERVICE


def test_kind_falls_back_to_subject_prefix_when_claim_absent(key, verifier):
    token = signed_by(key, standard_claims(sub="service:exporter"))

    assert verifier.verify(token).kind is PrincipalKind.SERVICE


def test_rsa_keys_from_an_identity_provider_are_accepted():
    private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(private_key.public_key()))
    jwk["kid"] = "idp-2024"
    token = jwt.encode(standard_claims(), private_key, algorithm="RS256", headers={"kid": "idp-2024"})

    verifier = TokenVerifier({"keys": [jwk]}, issuer=ISSUER, audience=AUDIENCE)

    assert verifier.verify(token).id == "agent:reporter"


# --- refusals ----------------------------------------------------------------------------


def test_alg_none_token_is_refused(key, verifier):
    header = segment({"alg": "none", "typ": "JWT", "kid": key.kid})
    token = f"{header}.{segment(standard_claims())}."

    assert refusal(verifier, token).code == "algorithm_not_allowed"


@pytest.mark.parametrize("secret_form", ["public_pem", "jwks_json"])
def test_hs256_signed_with_the_public_key_as_secret_is_refused(key, verifier, secret_form):
    if secret_form == "public_pem":
        secret = key.private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    else:
        secret = json.dumps(key.jwks()).encode()
    header = segment({"alg": "HS256", "typ": "JWT", "kid": key.kid})
    signing_input = f"{header}.{segment(standard_claims())}"
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()

    error = refusal(verifier, f"{signing_input}.{b64url(signature)}")

    assert error.code == "algorithm_not_allowed"


def test_symmetric_algorithms_cannot_be_configured(key):
    with pytest.raises(ValueError, match="HS256"):
        TokenVerifier(key.jwks(), issuer=ISSUER, audience=AUDIENCE, algorithms=("ES256", "HS256"))


def test_algorithm_that_does_not_match_the_key_type_is_refused(key, verifier):
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token = jwt.encode(standard_claims(), rsa_key, algorithm="RS256", headers={"kid": key.kid})

    error = refusal(verifier, token)

    assert error.code == "algorithm_not_allowed"
    assert "ES256" in error.message


def test_header_alg_of_the_wrong_type_is_refused(key, verifier):
    _, payload, signature = issue_token(key, subject="agent:reporter").split(".")
    header = segment({"alg": ["ES256"], "kid": key.kid})

    assert refusal(verifier, f"{header}.{payload}.{signature}").code == "algorithm_not_allowed"


def test_unknown_kid_is_refused(key, verifier):
    token = signed_by(key, standard_claims(), kid="not-published")

    assert refusal(verifier, token).code == "unknown_kid"


def test_token_without_kid_is_refused_when_the_jwks_has_several_keys(key):
    other = SigningKey.generate()
    verifier = TokenVerifier({"keys": [key.public_jwk(), other.public_jwk()]}, issuer=ISSUER, audience=AUDIENCE)
    token = jwt.encode(standard_claims(), key.private_key, algorithm="ES256")

    assert refusal(verifier, token).code == "missing_kid"


def test_token_without_kid_is_accepted_when_the_jwks_has_one_key(key, verifier):
    token = jwt.encode(standard_claims(), key.private_key, algorithm="ES256")

    assert verifier.verify(token).id == "agent:reporter"


def test_token_signed_by_another_key_under_the_published_kid_is_refused(key, verifier):
    impostor = SigningKey.generate()
    token = jwt.encode(standard_claims(), impostor.private_key, algorithm="ES256", headers={"kid": key.kid})

    assert refusal(verifier, token).code == "bad_signature"


def test_tampered_payload_is_refused(key, verifier):
    header, _, signature = issue_token(key, subject="agent:reporter").split(".")
    elevated = segment(standard_claims(sub="human:admin"))

    assert refusal(verifier, f"{header}.{elevated}.{signature}").code == "bad_signature"


def test_expired_token_is_refused(key, verifier):
    token = issue_token(key, subject="agent:reporter", now=datetime.now(UTC) - timedelta(hours=2))

    error = refusal(verifier, token)

    assert error.code == "expired"
    assert "fresh" in error.message


def test_token_expired_within_the_leeway_is_accepted(key, verifier):
    issued = datetime.now(UTC) - timedelta(minutes=10, seconds=10)
    token = issue_token(key, subject="agent:reporter", ttl=timedelta(minutes=10), now=issued)

    assert verifier.verify(token).id == "agent:reporter"


def test_not_yet_valid_token_is_refused(key, verifier):
    token = issue_token(key, subject="agent:reporter", now=datetime.now(UTC) + timedelta(minutes=5))

    assert refusal(verifier, token).code == "not_yet_valid"


def test_wrong_audience_is_refused(key, verifier):
    token = issue_token(key, subject="agent:reporter", audience="another-service")

    error = refusal(verifier, token)

    assert error.code == "wrong_audience"
    assert repr(AUDIENCE) in error.message


def test_wrong_issuer_is_refused(key, verifier):
    token = issue_token(key, subject="agent:reporter", issuer="someone-else")

    assert refusal(verifier, token).code == "wrong_issuer"


@pytest.mark.parametrize("claim", ["sub", "exp", "iat", "iss", "aud"])
def test_token_missing_a_required_claim_is_refused(key, verifier, claim):
    token = signed_by(key, standard_claims(**{claim: None}))

    error = refusal(verifier, token)

    assert error.code == "missing_claim"
    assert repr(claim) in error.message


@pytest.mark.parametrize(
    "garbage",
    ["not-a-token", "a.b.c", "eyJhbGciOiJFUzI1NiJ9", "x" * 20_000, "..", "\u00e9.\u00e9.\u00e9"],
)
def test_garbage_is_refused_as_malformed(verifier, garbage):
    assert refusal(verifier, garbage).code == "malformed"


def test_empty_token_is_refused_as_missing(verifier):
    assert refusal(verifier, "").code == "missing"


@pytest.mark.parametrize(
    "overrides",  # claims are made when the test runs: made at collection, they expire in a long suite
    [
        {"sub": "agent:reporter", "keyturn_kind": "human"},
        {"keyturn_kind": "robot"},
        {"act": "human:alice"},
        {"act": {"sub": "human:alice", "act": {"name": "bob"}}},
        {"sub": ""},
        {"sub": 42},
    ],
    ids=[
        "kind-contradicts-prefix",
        "unknown-kind",
        "act-not-object",
        "act-without-sub",
        "empty-sub",
        "sub-not-string",
    ],
)
def test_claims_of_the_wrong_shape_are_refused(key, verifier, overrides):
    assert refusal(verifier, signed_by(key, standard_claims(**overrides))).code == "invalid_claim"


@pytest.mark.parametrize(
    ("subject", "acts_for", "claim"),
    [
        ("agent:AKIAIOSFODNN7EXAMPLE", [], "'sub'"),
        ("agent:reporter", ["human:4111111111111111"], "'act' chain's"),
        ("agent:ghp_abcdefghijklmnopqrstuvwxyz0123456789", ["human:alice"], "'sub'"),
    ],
)
def test_a_principal_id_holding_a_secret_is_refused_without_repeating_it(key, verifier, subject, acts_for, claim):
    error = refusal(verifier, issue_token(key, subject=subject, acts_for=acts_for))

    assert error.code == "invalid_claim" and f"the {claim} claim holds what looks like" in str(error)
    for secret in ("AKIAIOSFODNN7EXAMPLE", "4111111111111111", "ghp_abcdefghij"):
        assert secret not in str(error)


@pytest.mark.parametrize(
    ("subject", "acts_for"),
    [("human:car\x00ol", []), ("agent:reporter\nhuman:carol", []), ("agent:reporter", ["human:\ud800"])],
)
def test_a_principal_id_that_is_not_printable_text_is_refused(key, verifier, subject, acts_for):
    error = refusal(verifier, signed_by(key, standard_claims(sub=subject, act=delegation(acts_for))))

    assert error.code == "invalid_claim" and "not printable text" in str(error)


def delegation(acts_for: list[str]) -> dict | None:
    chain = None
    for principal in reversed(acts_for):
        chain = {"sub": principal, **({"act": chain} if chain else {})}
    return chain


def test_a_principal_id_may_be_an_email_address(key, verifier):
    token = issue_token(key, subject="human:carol@example.com", acts_for=["human:3f2a8b1c-1d2e-4f50-9a6b-7c8d9e0f1a2b"])

    assert verifier.verify(token).id == "human:carol@example.com"


def test_refusal_messages_never_contain_the_token(key, verifier):
    token = issue_token(key, subject="agent:reporter", audience="another-service")

    error = refusal(verifier, token)

    assert token not in str(error)
    assert token.split(".")[2] not in str(error)


def test_unknown_error_codes_cannot_be_raised():
    with pytest.raises(ValueError):
        InvalidToken("nope")


# --- the Authorization header ------------------------------------------------------------


def test_bearer_token_is_taken_from_the_header():
    assert bearer_token("Bearer abc.def.ghi") == "abc.def.ghi"
    assert bearer_token("bearer   abc.def.ghi ") == "abc.def.ghi"


@pytest.mark.parametrize("header", [None, "", "   ", "Bearer", "Bearer a b", "Token abc.def.ghi"])
def test_missing_or_odd_authorization_header_is_refused(header):
    with pytest.raises(InvalidToken) as caught:
        bearer_token(header)

    assert caught.value.code == "missing"
    assert "Bearer" in caught.value.message


@pytest.mark.parametrize("header", ["Basic dXNlcjpwYXNz", "eyJhbGciOi.eyJzdWIi.c2lnbmF0dXJl"])
def test_refusing_a_non_bearer_header_does_not_echo_its_secret(header):
    with pytest.raises(InvalidToken) as caught:
        bearer_token(header)

    assert header.split()[-1] not in str(caught.value)


# --- keys on disk ------------------------------------------------------------------------


def test_private_key_file_is_created_with_mode_0600(tmp_path):
    load_or_create_signing_key(tmp_path / "keys")

    key_file = tmp_path / "keys" / PRIVATE_KEY_FILE
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "keys").stat().st_mode) == 0o700
    assert not [p for p in (tmp_path / "keys").iterdir() if p.name != PRIVATE_KEY_FILE]


def test_kid_is_stable_across_reloads(tmp_path):
    first = load_or_create_signing_key(tmp_path)
    second = load_or_create_signing_key(tmp_path)

    assert first.kid == second.kid == jwk_thumbprint(first.public_jwk())
    assert second.jwks() == first.jwks()


def test_token_from_a_reloaded_key_verifies_against_the_first_jwks(tmp_path):
    first = load_or_create_signing_key(tmp_path)
    verifier = TokenVerifier(first.jwks(), issuer=ISSUER, audience=AUDIENCE)

    token = issue_token(load_or_create_signing_key(tmp_path), subject="human:alice")

    assert verifier.verify(token).id == "human:alice"


def test_services_starting_together_share_one_key(tmp_path):
    kids: list[str] = []
    threads = [threading.Thread(target=lambda: kids.append(load_or_create_signing_key(tmp_path).kid)) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(kids) == 8 and len(set(kids)) == 1


def test_key_file_readable_by_others_is_refused(tmp_path):
    load_or_create_signing_key(tmp_path)
    (tmp_path / PRIVATE_KEY_FILE).chmod(0o644)

    with pytest.raises(SigningKeyError, match="chmod 600"):
        load_or_create_signing_key(tmp_path)


def test_jwks_publishes_only_the_public_key(key):
    (published,) = key.jwks()["keys"]

    assert "d" not in published
    assert set(published) == {"kty", "crv", "x", "y", "kid", "alg", "use"}
    assert (published["kid"], published["alg"], published["crv"]) == (key.kid, "ES256", "P-256")


def test_thumbprint_matches_the_rfc_7638_example():
    jwk = {
        "kty": "RSA",
        "e": "AQAB",
        "kid": "2011-04-29",
        "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxu"
        "hDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6C"
        "f0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n9"
        "1CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44"
        "-csFCur-kEgU8awapJzKnqDKgw",
    }

    assert jwk_thumbprint(jwk) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


def test_issuing_refuses_to_let_extra_claims_override_identity(key):
    with pytest.raises(ValueError, match="sub"):
        issue_token(key, subject="agent:reporter", extra_claims={"sub": "human:admin"})


def test_issuing_refuses_a_kind_that_contradicts_the_subject(key):
    with pytest.raises(ValueError, match="keyturn_kind"):
        issue_token(key, subject="agent:reporter", kind="human")
    with pytest.raises(ValueError, match="keyturn_kind"):
        issue_token(key, subject="AGENT:reporter", kind="human")


def test_a_kind_prefix_in_another_case_is_that_kind_and_an_unknown_one_never_a_person(key, verifier):
    """``AGENT:x`` is the principal ``agent:x`` for self-approval, so it is an agent here too; a
    subject whose prefix names no kind is refused unless its token declares one."""
    for subject in ("AGENT:probe", "Agent:probe"):
        assert verifier.verify(signed_by(key, standard_claims(sub=subject))).kind is PrincipalKind.AGENT
        assert verifier.verify(issue_token(key, subject=subject)).kind is PrincipalKind.AGENT
    with pytest.raises(InvalidToken):
        verifier.verify(signed_by(key, standard_claims(sub="bot:probe")))
    with pytest.raises(ValueError, match="names no kind"):
        issue_token(key, subject="bot:probe")
    assert verifier.verify(issue_token(key, subject="bot:probe", kind="service")).kind is PrincipalKind.SERVICE
    assert verifier.verify(signed_by(key, standard_claims(sub="alice@example.com"))).kind is PrincipalKind.HUMAN
    assert Principal.kind_of("bot:probe") is PrincipalKind.AGENT and Principal.kind_of("HUMAN:x") is PrincipalKind.HUMAN


def test_issuing_refuses_a_bare_string_as_the_delegation_chain(key):
    with pytest.raises(TypeError):
        issue_token(key, subject="agent:reporter", acts_for="human:alice")


# --- JWKS sources ------------------------------------------------------------------------


def test_jwks_from_file(tmp_path, key):
    jwks_file = tmp_path / "jwks.json"
    jwks_file.write_text(json.dumps(key.jwks()))
    verifier = TokenVerifier(jwks_file, issuer=ISSUER, audience=AUDIENCE)

    assert verifier.verify(issue_token(key, subject="human:alice")).id == "human:alice"


def test_jwks_file_given_as_string_path_picks_up_a_rotated_key(tmp_path, key):
    jwks_file = tmp_path / "jwks.json"
    jwks_file.write_text(json.dumps(key.jwks()))
    verifier = TokenVerifier(str(jwks_file), issuer=ISSUER, audience=AUDIENCE)
    rotated = SigningKey.generate()

    jwks_file.write_text(json.dumps({"keys": [key.public_jwk(), rotated.public_jwk()]}))

    assert verifier.verify(issue_token(rotated, subject="human:alice")).id == "human:alice"


def test_unreadable_jwks_file_stops_start_up(tmp_path):
    with pytest.raises(ValueError, match=r"jwks\.json"):
        TokenVerifier(tmp_path / "jwks.json", issuer=ISSUER, audience=AUDIENCE)


def test_jwks_entries_that_cannot_verify_signatures_are_ignored(key):
    unusable = [
        {"kty": "oct", "k": "c2VjcmV0", "kid": "shared"},
        {**key.public_jwk(), "kid": "for-encryption", "use": "enc"},
        {**key.public_jwk(), "kid": "odd-alg", "alg": ["ES256"]},
        {**key.public_jwk(), "kid": "hmac-alg", "alg": "HS256"},
        {"kty": "EC", "crv": "P-256", "kid": "broken"},
        "not-a-key",
    ]
    verifier = TokenVerifier({"keys": [*unusable, key.public_jwk()]}, issuer=ISSUER, audience=AUDIENCE)
    without_kid = jwt.encode(standard_claims(), key.private_key, algorithm="ES256")

    assert verifier.verify(without_kid).id == "agent:reporter"


def test_jwks_without_usable_keys_stops_start_up():
    with pytest.raises(ValueError, match="no usable"):
        TokenVerifier({"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}, issuer=ISSUER, audience=AUDIENCE)


class _JwksServer(JsonPeer):
    """Serves a JWKS document (which a test may swap) and counts the fetches."""

    def __init__(self, document: dict) -> None:
        self.document = document
        super().__init__(lambda method, path, body: (200, self.document))
        self.url = f"{self.url}/.well-known/jwks.json"


@pytest.fixture
def jwks_server(key):
    server = _JwksServer(key.jwks())
    yield server
    server.close()


def test_jwks_from_url_is_fetched_once_and_cached(key, jwks_server):
    verifier = TokenVerifier(jwks_server.url, issuer=ISSUER, audience=AUDIENCE)

    for _ in range(3):
        assert verifier.verify(issue_token(key, subject="human:alice")).id == "human:alice"

    assert jwks_server.calls == 1


def test_jwks_url_is_refetched_for_a_rotated_kid_after_the_cooldown(key, jwks_server):
    clock = [1000.0]
    source = JwksUrl(jwks_server.url, refresh_cooldown_s=30, clock=lambda: clock[0])
    verifier = TokenVerifier(source, issuer=ISSUER, audience=AUDIENCE)
    verifier.verify(issue_token(key, subject="human:alice"))
    rotated = SigningKey.generate()
    jwks_server.document = {"keys": [key.public_jwk(), rotated.public_jwk()]}
    token = issue_token(rotated, subject="human:alice")

    assert refusal(verifier, token).code == "unknown_kid"  # within the cooldown
    clock[0] += 31
    assert verifier.verify(token).id == "human:alice"
    assert jwks_server.calls == 2


def test_unreachable_jwks_url_refuses_every_token(key):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    verifier = TokenVerifier(f"http://127.0.0.1:{port}/jwks.json", issuer=ISSUER, audience=AUDIENCE)

    error = refusal(verifier, issue_token(key, subject="human:alice"))

    assert error.code == "jwks_unavailable"


def test_non_http_jwks_url_is_rejected():
    with pytest.raises(ValueError, match="http"):
        JwksUrl("file:///etc/passwd")


# --- wiring from settings ----------------------------------------------------------------


def test_settings_without_jwks_use_the_local_dev_key(tmp_path):
    verifier = verifier_from_settings(None, None, tmp_path / "dev", ISSUER, AUDIENCE)
    dev_key = load_or_create_signing_key(tmp_path / "dev")

    token = issue_token(dev_key, subject="agent:reporter", acts_for=["human:alice"])

    assert verifier.verify(token).chain == ("human:alice",)
    assert (tmp_path / "dev" / PRIVATE_KEY_FILE).exists()


def test_settings_with_a_jwks_file_ignore_the_dev_key(tmp_path, key):
    jwks_file = tmp_path / "jwks.json"
    jwks_file.write_text(json.dumps(key.jwks()))

    verifier = verifier_from_settings(None, str(jwks_file), tmp_path / "dev", ISSUER, AUDIENCE)

    assert verifier.verify(issue_token(key, subject="human:alice")).id == "human:alice"
    assert not (tmp_path / "dev").exists()


def test_settings_with_a_jwks_url_use_it(tmp_path, key, jwks_server):
    verifier = verifier_from_settings(jwks_server.url, None, tmp_path / "dev", ISSUER, AUDIENCE)

    assert verifier.verify(issue_token(key, subject="human:alice")).id == "human:alice"
    assert not (tmp_path / "dev").exists()


def test_settings_with_both_url_and_file_are_refused(tmp_path):
    with pytest.raises(ValueError, match="not both"):
        verifier_from_settings("https://idp.example/jwks", str(tmp_path / "j.json"), Path(tmp_path), ISSUER, AUDIENCE)


# --- the cache of verified tokens ---------------------------------------------------------


def counting(verifier: TokenVerifier) -> list[str]:
    """Record each full verification (signature, claims) the verifier performs."""
    calls: list[str] = []
    full = verifier._verify

    def spy(token: str):
        calls.append("full")
        return full(token)

    verifier._verify = spy  # type: ignore[method-assign]
    return calls


def test_a_verified_token_is_answered_from_the_cache_until_it_expires(key):
    now = [datetime.now(UTC).timestamp()]
    verifier = TokenVerifier(key.jwks(), issuer=ISSUER, audience=AUDIENCE, clock=lambda: now[0])
    token = issue_token(key, subject="agent:reporter", ttl=timedelta(minutes=10))
    full = counting(verifier)

    assert verifier.verify(token).id == verifier.verify(token).id == "agent:reporter"
    assert full == ["full"]
    now[0] += 601  # past its exp: verified in full again, never from the cache
    verifier.verify(token)
    assert full == ["full", "full"]


def test_an_expired_token_is_refused_even_after_it_was_cached(key):
    verifier = TokenVerifier(key.jwks(), issuer=ISSUER, audience=AUDIENCE, leeway_s=0)
    # exp is in whole seconds: a 1 s token issued late in a second lives a few milliseconds, which
    # a busy machine spends before the first check; 2 s leaves at least one
    token = issue_token(key, subject="agent:reporter", ttl=timedelta(seconds=2))
    assert verifier.verify(token).id == "agent:reporter"
    expires = jwt.decode(token, options={"verify_signature": False})["exp"]
    while datetime.now(UTC).timestamp() < expires:
        threading.Event().wait(0.05)
    assert refusal(verifier, token).code == "expired"


def test_a_key_rotated_out_of_the_jwks_file_ends_its_cached_tokens(tmp_path):
    old, new = SigningKey.generate(), SigningKey.generate()
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(old.jwks()))
    verifier = TokenVerifier(path, issuer=ISSUER, audience=AUDIENCE)
    token = issue_token(old, subject="agent:reporter")
    assert verifier.verify(token).id == "agent:reporter"

    path.write_text(json.dumps({"keys": new.jwks()["keys"] + [{"kty": "oct", "k": "padding-changes-size"}]}))

    assert refusal(verifier, token).code == "unknown_kid"
    assert verifier.verify(issue_token(new, subject="agent:reporter")).id == "agent:reporter"


def test_the_cache_is_bounded_and_never_holds_the_token(key):
    verifier = TokenVerifier(key.jwks(), issuer=ISSUER, audience=AUDIENCE, cache_size=2)
    tokens = [issue_token(key, subject=f"agent:reporter-{n}") for n in range(3)]
    for token in tokens:
        verifier.verify(token)

    cached = verifier._verified
    assert len(cached) == 2
    for token in tokens:
        assert all(token.encode() not in digest for digest in cached)
        assert all(token not in repr(entry) for entry in cached.values())
        for part in token.split("."):
            assert all(part not in repr(entry) for entry in cached.values())
    assert set(cached) == {hashlib.sha256(t.encode()).digest() for t in tokens[1:]}


@pytest.mark.parametrize(
    "sub, chain, owns",
    [
        ("agent:reporter", ("human:alice",), True),  # the requester, as it asked
        ("human:alice", (), True),  # the human it acted for, in her own name
        ("agent:reporter", (), True),
        ("agent:evil", ("human:alice",), False),  # another agent acting for alice
        ("human:mallory", ("human:alice",), False),
        ("agent:reporter", ("human:bob",), False),  # the same agent acting for someone else
        ("human:bob", ("agent:reporter",), False),  # acting for the agent
        ("human:Alice", (), False),  # ids are compared as written
    ],
)
def test_an_action_is_its_principals_own_each_in_their_own_name(sub: str, chain: tuple[str, ...], owns: bool) -> None:
    owners = frozenset({"agent:reporter", "human:alice"})
    assert Principal(sub, Principal.kind_of(sub), chain).owns_one_of(owners) is owns


@pytest.mark.parametrize(
    "claim, value",
    [
        ("exp", "4102444800"),  # a number as a string (the year 2100): PyJWT takes it
        ("exp", 10**12),  # past the year 9999: no date a signed-out session can be kept until
        ("nbf", "0"),
    ],
)
def test_a_time_claim_that_is_no_numeric_date_is_refused(key, verifier, claim: str, value) -> None:
    token = signed_by(key, standard_claims(**{claim: value}))
    error = refusal(verifier, token)
    assert error.code == "invalid_claim" and f"'{claim}' claim must be a NumericDate" in error.message, error
