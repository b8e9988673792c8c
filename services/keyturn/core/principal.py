"""Who asks and who answers: a principal and the chain of principals it acts for."""

from __future__ import annotations

import unicodedata
from collections.abc import Collection
from dataclasses import dataclass, field
from enum import Enum


def principal_key(principal_id: str) -> str:
    """What two principal ids are compared by when one may not answer for the other: the id in
    NFKC, case-folded and trimmed. An identity provider (or the token of an agent acting for
    someone) can write the same person as ``human:Heidi`` or with a fullwidth ``ｈ``; each must
    still be that person for self-approval. Never a grant: membership and ownership compare ids
    exactly, so a look-alike id gains nothing, it is only refused more."""
    return unicodedata.normalize("NFKC", principal_id).casefold().strip()


class PrincipalKind(str, Enum):
    """Whether a principal is a piece of software or a person."""

    AGENT = "agent"
    HUMAN = "human"
    SERVICE = "service"


@dataclass(frozen=True)
class Principal:
    """An authenticated identity, e.g. ``agent:reporter`` acting for ``human:alice``.

    ``chain`` is the RFC 8693 ``act`` chain flattened outermost first: the principals on
    whose behalf ``id`` acts, and their delegators. None of them may approve the action.
    """

    id: str
    kind: PrincipalKind
    chain: tuple[str, ...] = field(default=())

    @property
    def everyone(self) -> frozenset[str]:
        """The principal and every principal in its delegation chain."""
        return frozenset((self.id, *self.chain))

    def shares_anyone_with(self, other: Principal) -> frozenset[str]:
        """The ids of this principal and its chain that name someone in ``other``'s (``principal_key``):
        the one test of self-approval, for every answer and review on every channel."""
        theirs = {principal_key(principal_id) for principal_id in other.everyone}
        return frozenset(principal_id for principal_id in self.everyone if principal_key(principal_id) in theirs)

    def owns_one_of(self, owners: Collection[str]) -> bool:
        """Whether this caller is one of ``owners`` (an action's requester and everyone it acts
        for), in its own name and for no one outside them: the same agent acting for someone else
        owns nothing of the action, nor does a token that acts for one of them. The one rule for
        who may read an action as its own, at the intake and the approval service alike."""
        return self.id in owners and all(delegator in owners for delegator in self.chain)

    @staticmethod
    def kind_of(principal_id: str) -> PrincipalKind:
        """The kind a ``kind:name`` identifier names, its prefix read in any case (``AGENT:x`` is
        an agent: ``principal_key`` makes it the same principal as ``agent:x``). Without a prefix,
        a person (an identity provider's subject such as ``alice@example.com``). A prefix that
        names no kind (``bot:x``) is an agent, never a person: the kind trusted most, and the
        only one that may approve, is never a fallback for a name Keyturn cannot read."""
        prefix, separator, _ = principal_id.partition(":")
        if not separator:
            return PrincipalKind.HUMAN
        try:
            return PrincipalKind(prefix.casefold())
        except ValueError:
            return PrincipalKind.AGENT

    @staticmethod
    def names_a_kind(principal_id: str) -> bool:
        """Whether ``principal_id`` has no ``kind:`` prefix or one naming a kind (in any case)."""
        prefix, separator, _ = principal_id.partition(":")
        return not separator or prefix.casefold() in {k.value for k in PrincipalKind}
