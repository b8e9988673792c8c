"""A seeded audit stream for the compliance report, with the plan it was built from.

Every action is written from a :class:`Planned` line (its kind, agent, day, approver, times);
tests compute the figures they expect from the plan, never from the report's code. Values a
report must never show (secrets and personal data) are seeded in clear where a careless report
could pick them up: parameters, request reasons, vote reasons, policy reasons, refusal messages,
the incident id of a break-glass request.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from keyturn.core.canonical import to_millis
from tests.unit.audit_history import T0, History

SINCE = datetime(2026, 3, 2, tzinfo=UTC)
UNTIL = datetime(2026, 3, 9, tzinfo=UTC)
REVISION_OLD = "sha256:rev-old"
REVISION_NEW = "sha256:rev-new"
REVISION_NEW_FROM = datetime(2026, 3, 5, 12, tzinfo=UTC)  # the first decision under it is the first after this
RUBBER_STAMP_S = 10.0
SECRETS = (
    "ghp_R7d2Kx9QmP4vT8wL1nB6cY3zA5sF0hJ2uE9i",
    "alice.kowalski@example.org",
    "4111 1111 1111 1111",
    "sk_live_51HxR8s2eZvKYlo2C0aBcDeFgH",
    "GB82 WEST 1234 5698 7654 32",
)
KINDS = (
    "allowed_ok",
    "allowed_failed",
    "allowed_unknown",
    "allowed_pending",
    "denied_policy",
    "approved_ok",
    "approved_failed",
    "denied_people",
    "expired",
    "approval_pending",
    "break_glass_reviewed",
    "break_glass_unreviewed",
    "external",
)
AGENTS = ("agent:reporter", "agent:builder", "agent:cleaner", "agent:sync")
APPROVERS = ("human:carol", "human:dave", "human:erin")
DENY_RULES = (("deny.production_delete",), ("deny.export_pii", "deny.off_hours"), ("deny.admin_role",))
REFUSALS = ("SelfApprovalRefused", "NotAuthorised", "AlreadyResolved")


@dataclass(frozen=True)
class Planned:
    """One seeded action."""

    action_id: str
    kind: str
    agent: str
    requested_at: datetime
    groups: tuple[str, ...] = ()
    approver: str | None = None
    vote_after_s: float = 0.0
    rules: tuple[str, ...] = ()
    revision: str = REVISION_OLD
    refused: str | None = None  # a refused vote before the answer: its refusal kind
    reviewer: str | None = None


def _plan(rng: random.Random) -> list[Planned]:
    planned: list[Planned] = []
    moments = (
        [SINCE - timedelta(hours=20 - n) for n in range(3)]  # before the period
        + [SINCE + timedelta(hours=3 * n + rng.random()) for n in range(56)]  # 7 days, every 3 h
        + [UNTIL + timedelta(hours=1 + n) for n in range(2)]  # after the period
    )
    for n, moment in enumerate(moments):
        kind = KINDS[n % len(KINDS)]
        needs_people = kind in ("approved_ok", "approved_failed", "denied_people", "expired", "approval_pending")
        groups = ("security", "platform") if needs_people and n % 4 == 0 else ("security",) if needs_people else ()
        planned.append(
            Planned(
                action_id=f"act-{n:03d}",
                kind=kind,
                agent=AGENTS[(n * 7) % len(AGENTS)],
                requested_at=moment,
                groups=groups,
                approver=APPROVERS[n % len(APPROVERS)]
                if kind in ("approved_ok", "approved_failed", "denied_people")
                else None,
                vote_after_s=rng.choice((3.0, 7.5, 45.0, 300.0, 1800.0)),
                rules=DENY_RULES[n % len(DENY_RULES)] if kind == "denied_policy" else (),
                revision=REVISION_NEW if moment >= REVISION_NEW_FROM else REVISION_OLD,
                refused=REFUSALS[n % len(REFUSALS)] if needs_people and n % 2 == 0 else None,
                reviewer="human:erin" if kind == "break_glass_reviewed" else None,
            )
        )
    return planned


def _seconds(moment: datetime) -> float:
    return (moment - T0).total_seconds()


def seeded(seed: int = 17) -> tuple[History, list[Planned]]:
    """The audit stream (a checkpoint every 50 records and at the end) and its plan."""
    history = History()
    plan = _plan(random.Random(seed))
    for number, item in enumerate(plan):
        _write(history, item, number)
        if number % 7 == 6:
            history.checkpoint(_seconds(item.requested_at) + 5000)
    history.dead_letter(_seconds(SINCE + timedelta(days=1)))
    history.checkpoint(_seconds(UNTIL + timedelta(days=1)))
    return history, plan


def _write(history: History, item: Planned, number: int) -> None:
    start = _seconds(item.requested_at)
    secret = SECRETS[number % len(SECRETS)]
    parameters = {"password": secret, "contact": SECRETS[1], "note": f"card {SECRETS[2]}"}
    if item.kind.startswith("break_glass"):
        parameters |= {"break_glass": True, "incident_id": f"INC-{number} {SECRETS[1]}"}
    request = history.request(
        item.action_id,
        "iam.role.grant" if item.groups else "sql.query",
        start,
        requester=item.agent,
        parameters=json.dumps(parameters),
        reason=f"asked by {SECRETS[1]} with {secret}",
    )
    decided_at = start + 0.5
    outcome = {"denied_policy": "denied"}.get(item.kind, "needs_approval" if item.groups else "allowed")
    decision = history.decide(
        request,
        outcome,
        decided_at,
        groups=tuple((group, 1) for group in item.groups),
        revision=item.revision,
        break_glass=item.kind.startswith("break_glass"),
        rules=item.rules,
        reasons=(f"denied: the parameters carry {secret}",) if item.rules else None,
    )
    if item.kind in ("allowed_ok", "break_glass_reviewed", "break_glass_unreviewed"):
        history.execute(request, "succeeded", decided_at + 1)
    elif item.kind == "allowed_failed":
        history.execute(request, "failed", decided_at + 1)
    elif item.kind == "allowed_unknown":
        history.execute(request, "outcome_unknown", decided_at + 1)
    elif item.kind == "external":
        _external(history, item.action_id, decided_at + 2)
    if item.reviewer:
        history.vote(decision, item.reviewer, "approve", decided_at + 7200, reason=f"reviewed {secret}")
    if not item.groups:
        return
    if item.refused:
        history.vote(
            decision,
            item.agent.replace("agent:", "human:"),
            "approve",
            decided_at + 1,
            accepted=False,
            refusal=item.refused,
            message=f"refused; the form quoted {secret}",
        )
    if item.kind == "approval_pending":
        return
    if item.kind == "expired":
        history.resolve(decision, "expired", decided_at + 3600)
        return
    assert item.approver is not None
    choice = "deny" if item.kind == "denied_people" else "approve"
    answered = decided_at + item.vote_after_s
    vote = history.vote(decision, item.approver, choice, answered, reason=f"ok {SECRETS[3]}")
    history.resolve(decision, "denied" if choice == "deny" else "approved", answered, (vote,))
    if item.kind == "approved_ok":
        history.execute(request, "succeeded", answered + 1)
    elif item.kind == "approved_failed":
        history.execute(request, "failed", answered + 1)


def _external(history: History, action_id: str, start: float) -> None:
    """A terminal state this version of Keyturn does not know: an action performed outside Keyturn."""
    moment = T0 + timedelta(seconds=start)
    record = history.chain.append(
        event_id=f"executed:{action_id}",
        event_type="ActionExecuted",
        source_topic="kt.actions.executed",
        occurred_at=moment,
        payload={"action_id": action_id, "outcome": "approved_external", "plugin": "external"},
        now=moment,
        action_id=action_id,
        actor="service:executor",
        flags=(),
    )
    assert record is not None
    history.records.append(record)


def period() -> tuple[int, int]:
    return to_millis(SINCE), to_millis(UNTIL)
