"""Who asks and who answers: a principal and the chain of principals it acts for."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from enum import Enum


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

    def owns_one_of(self, owners: Collection[str]) -> bool:
        """Whether this caller is one of ``owners`` (an action's requester and everyone it acts
        for), in its own name and for no one outside them: the same agent acting for someone else
        owns nothing of the action, nor does a token that acts for one of them. The one rule for
        who may read an action as its own, at the intake and the approval service alike."""
        return self.id in owners and all(delegator in owners for delegator in self.chain)

    @staticmethod
    def kind_of(principal_id: str) -> PrincipalKind:
        """The kind implied by a ``kind:name`` identifier (``human`` when no prefix)."""
        prefix, _, _ = principal_id.partition(":")
        try:
            return PrincipalKind(prefix)
        except ValueError:
            return PrincipalKind.HUMAN
