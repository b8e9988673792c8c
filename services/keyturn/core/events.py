"""Domain events: facts in past tense, immutable. Each mirrors one Avro schema in ``schemas/``.

``tests/unit/test_schemas.py`` proves every dataclass here agrees field by field with its
schema, so the schema stays the single definition of an event.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import Any

from keyturn.core.canonical import canonical_json
from keyturn.core.principal import Principal


class DecisionOutcome(str, Enum):
    ALLOWED = "allowed"
    DENIED = "denied"
    NEEDS_APPROVAL = "needs_approval"


class ResolutionOutcome(str, Enum):
    APPROVED = "approved"
    DENIED = "denied"
    EXPIRED = "expired"


class ExecutionOutcome(str, Enum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    OUTCOME_UNKNOWN = "outcome_unknown"
    # cleared, and handed with a signed approval receipt to the system that performs it: Keyturn did not run it
    APPROVED_EXTERNAL = "approved_external"


class VoteChoice(str, Enum):
    APPROVE = "approve"
    DENY = "deny"


class SubmissionChannel(str, Enum):
    HTTP = "http"
    TOPIC = "topic"


@dataclass(frozen=True)
class Digest:
    """A content digest; ``str()`` gives ``sha256:<hex>``."""

    hex: str
    algorithm: str = "sha256"

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"

    @classmethod
    def parse(cls, text: str) -> Digest:
        """``sha256:<hex>`` (or bare hex, taken as SHA-256) as a Digest."""
        algorithm, sep, hex_digest = text.partition(":")
        return cls(hex_digest, algorithm) if sep else cls(text)

    @classmethod
    def of_json(cls, document: Any) -> Digest:
        """SHA-256 over the canonical JSON of ``document`` (sorted keys, no spaces, UTF-8)."""
        return cls.of_canonical_text(canonical_json(document))

    @classmethod
    def of_canonical_text(cls, text: str) -> Digest:
        """``of_json`` of the document whose canonical JSON ``text`` is (made already, for keeping too)."""
        return cls(hashlib.sha256(text.encode()).hexdigest())


def payload_digest(action: str, resource: str, parameters: Any) -> Digest:
    """What approvals bind to: the action, the resource and the clear parameters. The intake
    computes it on acceptance and the executor again on the parameters it is about to run."""
    return Digest.of_json({"action": action, "resource": resource, "parameters": parameters})


@dataclass(frozen=True)
class Provenance:
    policy_revision: str
    decision_id: str
    input_digest: Digest
    evaluated_at: datetime
    input_json: str = ""


@dataclass(frozen=True)
class SealedParameters:
    key_id: str
    nonce: bytes
    ciphertext: bytes


@dataclass(frozen=True)
class GroupRequirement:
    name: str
    min_approvals: int = 1


@dataclass(frozen=True)
class ApprovalRequirement:
    groups: tuple[GroupRequirement, ...]
    pending_ttl_s: int
    execution_window_s: int
    require_all: bool = True
    escalation_group: str | None = None
    reminder_fractions: tuple[float, ...] = ()


@dataclass(frozen=True)
class ActionSubmitted:
    """What an agent publishes on the submissions topic (its JWT rides in a header)."""

    action: str
    resource: str
    parameters_json: str
    reason: str
    idempotency_key: str | None = None


@dataclass(frozen=True)
class ActionRequested:
    event_id: str
    action_id: str
    action: str
    resource: str
    parameters_json: str
    reason: str
    requester: Principal
    payload_digest: Digest
    requested_at: datetime
    idempotency_key: str | None = None
    sealed_parameters: SealedParameters | None = None
    channel: SubmissionChannel = SubmissionChannel.HTTP
    callback_url: str | None = None

    @property
    def parameters(self) -> dict[str, Any]:
        """The masked parameters as a dict."""
        return json.loads(self.parameters_json)


@dataclass(frozen=True)
class ImpactPreview:
    """What a read-only dry run found before the policy was asked (``policy.impact``).

    Bound to the payload it was computed for; ``max_rows`` is the bound the executor enforces
    (``rows`` plus the policy's tolerance), ``None`` when nothing bounds the action.
    """

    payload_digest: Digest
    status: str  # computed | unavailable
    operation: str  # delete | update | insert | read | export
    computed_at: datetime
    rows: int | None = None
    method: str | None = None  # exact | estimate
    tables: tuple[str, ...] = ()
    detail: str | None = None
    max_rows: int | None = None
    duration_ms: int = 0

    @property
    def computed(self) -> bool:
        return self.status == "computed"

    def summary(self) -> str:
        """One line for people: ``would delete 1,204 rows (exact) in public.orders``."""
        if not self.computed:
            return f"impact unknown: the preview failed ({self.detail or 'no detail'}); approve only if you know it"
        verb = {"delete": "would delete", "update": "would update", "insert": "would insert"}.get(
            self.operation, "would export" if self.operation == "export" else "would return"
        )
        rows = "?" if self.rows is None else f"{self.rows:,}"
        how = "exact count" if self.method == "exact" else "EXPLAIN estimate"
        where = f" in {', '.join(self.tables)}" if self.tables else ""
        return f"{verb} {rows} rows ({how}){where}"


@dataclass(frozen=True)
class Denial:
    """A policy rule that denied an action, with the reason it gave: ``rules`` also names rules a
    denial overrode, and ``reasons`` is a set of its own, so only this links a denial to its rule."""

    rule: str
    reason: str


@dataclass(frozen=True)
class ActionDecided:
    event_id: str
    action_id: str
    outcome: DecisionOutcome
    provenance: Provenance
    decided_at: datetime
    request: ActionRequested
    reasons: tuple[str, ...] = ()
    rules: tuple[str, ...] = ()
    approvals: ApprovalRequirement | None = None
    credential_ttl_s: int = 60
    mask: tuple[str, ...] = ()
    break_glass: bool = False
    impact: ImpactPreview | None = None
    denials: tuple[Denial, ...] = ()


@dataclass(frozen=True)
class Vote:
    approver: Principal
    choice: VoteChoice
    payload_digest: Digest
    cast_at: datetime
    reason: str | None = None
    channel: str = "cli"
    counts_for: tuple[str, ...] = ()


@dataclass(frozen=True)
class VoteRecorded:
    event_id: str
    action_id: str
    vote: Vote
    accepted: bool
    recorded_at: datetime
    refusal: str | None = None
    message: str = ""


@dataclass(frozen=True)
class ApprovalResolved:
    event_id: str
    action_id: str
    outcome: ResolutionOutcome
    resolved_at: datetime
    decision: ActionDecided
    votes: tuple[Vote, ...] = ()
    summary: str = ""
    execute_before: datetime | None = None


@dataclass(frozen=True)
class ActionExecuted:
    event_id: str
    action_id: str
    outcome: ExecutionOutcome
    plugin: str
    payload_digest: Digest
    finished_at: datetime
    started_at: datetime | None = None
    result_json: str | None = None
    error: str | None = None
    executor: str = ""


@dataclass(frozen=True)
class DeadLetter:
    """Refused input: who sent it, why, and a digest — never the bytes (see ``bus.refusals``)."""

    event_id: str
    source_topic: str
    partition: int
    offset: int
    payload_digest: Digest
    error_type: str
    reason: str
    service: str
    failed_at: datetime
    key: bytes | None = None
    payload_length: int = 0
    problems: tuple[str, ...] = ()
    principal: str | None = None
    excerpt: str | None = None


EVENT_TYPES: dict[str, type] = {
    cls.__name__: cls
    for cls in (
        ActionSubmitted,
        ActionRequested,
        ActionDecided,
        VoteRecorded,
        ApprovalResolved,
        ActionExecuted,
        DeadLetter,
    )
}
"""Every event a topic may carry, by Avro record name (without the ``keyturn.`` namespace)."""
