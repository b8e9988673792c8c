"""How a principal and its delegation chain are written into, and read out of, JWT claims.

Delegation uses the nested ``act`` claim shape of RFC 8693, read as "acts for": the token of
``agent:reporter`` acting for ``human:alice`` has ``sub=agent:reporter`` and
``act={"sub": "human:alice"}``. Outermost first: the top-level ``act`` is the principal that
``sub`` acts for directly, its own ``act`` is whom that one acts for, and so on. The
flattened chain is ``Principal.chain`` in the same order.

Note that RFC 8693 itself reads ``act`` the other way round (``act`` names the actor and
``sub`` the party acted for). Tokens minted by an external token-exchange service therefore
need ``sub`` and ``act`` arranged as above; the no-self-approval check is unaffected because
it excludes every principal in the token either way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jwt

from keyturn.core.principal import Principal, PrincipalKind

KIND_CLAIM = "keyturn_kind"
ACT_CLAIM = "act"
MAX_DELEGATION_DEPTH = 16


def delegation_claim(acts_for: Sequence[str]) -> dict[str, Any] | None:
    """The nested ``act`` claim for a chain given outermost first, or None for no chain."""
    if isinstance(acts_for, str):
        raise TypeError("acts_for is a sequence of principal ids, e.g. ['human:alice']")
    chain = list(acts_for)
    if len(chain) > MAX_DELEGATION_DEPTH:
        raise ValueError(f"a delegation chain holds at most {MAX_DELEGATION_DEPTH} principals")
    act: dict[str, Any] | None = None
    for principal_id in reversed(chain):
        _require_principal_id(principal_id, "acts_for entry")
        act = {"sub": principal_id} if act is None else {"sub": principal_id, ACT_CLAIM: act}
    return act


def delegation_chain(act: Any) -> tuple[str, ...]:
    """The ``act`` claim flattened outermost first; raises ValueError if it is malformed."""
    chain: list[str] = []
    node = act
    while node is not None:
        if not isinstance(node, Mapping):
            raise ValueError("the 'act' claim must be an object with a 'sub' member")
        if len(chain) == MAX_DELEGATION_DEPTH:
            raise ValueError(f"the 'act' chain is deeper than {MAX_DELEGATION_DEPTH} principals")
        chain.append(_require_principal_id(node.get("sub"), "'act' claim 'sub'"))
        node = node.get(ACT_CLAIM)
    return tuple(chain)


def principal_kind(subject: str, declared: Any = None) -> PrincipalKind:
    """The kind of ``subject``: the declared ``keyturn_kind`` or else its ``kind:`` prefix.

    A declared kind that contradicts a recognised prefix (``agent:x`` declared ``human``) is
    refused, so no token can dress an agent up as a person who may approve.
    """
    allowed = ", ".join(k.value for k in PrincipalKind)
    if declared is None:
        if not Principal.names_a_kind(subject):
            raise ValueError(
                f"the subject {subject!r} has a prefix that names no kind ({allowed}): declare it in '{KIND_CLAIM}'"
            )
        return Principal.kind_of(subject)
    try:
        kind = PrincipalKind(declared)
    except ValueError:
        raise ValueError(f"'{KIND_CLAIM}' must be one of {allowed}, not {declared!r}") from None
    prefix, separator, _ = subject.partition(":")
    if separator and Principal.names_a_kind(subject) and prefix.casefold() != kind.value:
        raise ValueError(f"'{KIND_CLAIM}' says {kind.value!r} but the subject {subject!r} is a {prefix!r}")
    return kind


def _require_principal_id(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{what} must be a non-empty principal id such as 'human:alice'")
    return value


def unverified_expiry(token: str) -> float | None:
    """A token's ``exp`` read without checking its signature, or None when it has none (or is no
    JWT). Only ever to refuse more: the expiry of a token already verified (a console session kept
    as signed out until then), or a token whose verifier would take it without one (Teams)."""
    try:
        expiry = jwt.decode(token, options={"verify_signature": False}).get("exp")
    except jwt.PyJWTError:
        return None
    if not isinstance(expiry, int | float) or isinstance(expiry, bool):
        return None
    return float(expiry)


def unverified_subject(token: str) -> str | None:
    """A token's ``sub`` read without checking its signature, or None when it has none (or is no
    JWT). Only ever to name what the intake will make of the token (the id of the action it
    submits, ``intake.submissions.action_id_for``): the intake verifies the token itself."""
    try:
        subject = jwt.decode(token, options={"verify_signature": False}).get("sub")
    except jwt.PyJWTError:
        return None
    return subject if isinstance(subject, str) and subject.strip() else None
