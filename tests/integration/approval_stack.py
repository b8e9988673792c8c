"""A stack of its own for approval tests that need chat fakes wired into the services' settings.

The session stack (tests/conftest.py) has no Slack or Teams configured; these tests start the
five services again in a fresh namespace whose settings point at the local fakes.
"""

from __future__ import annotations

import json
import secrets
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC
from typing import Any

from keyturn.config import Settings
from tests.conftest import ServiceProcesses, free_port

SERVICES = ("intake", "policy", "approval", "executor", "audit")


def stack_settings(settings: Settings, **overrides: Any) -> Settings:
    """``settings`` in a fresh namespace on fresh ports, with ``overrides`` (e.g. the fakes' URLs)."""
    intake_port, approval_port = free_port(), free_port()
    return replace(
        settings,
        namespace=f"kt{secrets.token_hex(4)}",
        intake_port=intake_port,
        approval_port=approval_port,
        intake_url=f"http://127.0.0.1:{intake_port}",
        approval_url=f"http://127.0.0.1:{approval_port}",
        **overrides,
    )


@contextmanager
def running_stack(settings: Settings) -> Iterator[ServiceProcesses]:
    """The five services on ``settings``, stopped on exit."""
    procs = ServiceProcesses(settings)
    try:
        for name in SERVICES:
            procs.start(name)
        procs.wait_http(f"{settings.intake_url}/healthz")
        procs.wait_http(f"{settings.approval_url}/healthz")
        yield procs
    finally:
        procs.stop_all()


def restart(procs: ServiceProcesses, name: str, *, kill: bool = False) -> None:
    """Stop one service (SIGTERM, or SIGKILL with ``kill``) and start it again."""
    procs.stop(name, kill=kill)
    procs.start(name)
    if name == "approval":
        procs.wait_http(f"{procs.settings.approval_url}/healthz")
    if name == "intake":
        procs.wait_http(f"{procs.settings.intake_url}/healthz")


@contextmanager
def chat_stack(settings: Settings) -> Iterator[tuple[Settings, Any, Any, ServiceProcesses]]:
    """(settings, fake Slack, fake Teams, processes): a stack whose approval service talks to both
    fakes, with carol known to each."""
    from tests.fakes.slack import FakeSlack
    from tests.fakes.teams import TENANT, FakeTeams

    slack, teams = FakeSlack().start(), FakeTeams().start()
    slack.add_channel("C0SECURITY")
    slack.add_user("U0CAROL", "carol@example.com")
    teams.add_member("29:carol", "aad-carol", "carol@example.com")
    chat = stack_settings(
        settings,
        slack_api_url=slack.api_url,
        slack_bot_token=slack.bot_token,
        slack_signing_secret=slack.signing_secret,
        slack_channels=json.dumps({"*": ["C0SECURITY"]}),
        slack_email_domains="example.com",
        teams_tenant_id=TENANT,
        teams_email_domains="example.com",
        teams_app_id=teams.app_id,
        teams_app_password=teams.app_password,
        teams_service_url=teams.service_url,
        teams_token_url=teams.token_url,
        teams_openid_url=teams.openid_url,
        teams_token_issuer=teams.issuer,
        teams_conversations=json.dumps({"*": ["19:security@thread.tacv2"]}),
    )
    try:
        with running_stack(chat) as procs:
            yield chat, slack, teams, procs
    finally:
        slack.stop()
        teams.stop()


def unattributed_refusals(settings: Settings, channel: str, reason: str) -> float:
    """The approval service's count of refusals nobody could be held to (not recorded, counted)."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{settings.approval_url}/metrics", timeout=10).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "keyturn_approval_unattributed_refusals_total"
        and sample.labels == {"channel": channel, "reason": reason}
    )


def dead_letters_now(settings: Settings, error_type: str) -> list:
    """Dead letters of ``error_type`` on the DLQ topic at this moment."""
    from keyturn.bus.topics import Topics
    from keyturn.core.events import DeadLetter
    from tests.integration.conftest import read_topic

    return [
        e
        for e, _ in read_topic(settings, Topics(settings.namespace, settings.partitions).dlq)
        if isinstance(e, DeadLetter) and e.error_type == error_type
    ]


def publish_decision(
    chat,
    *,
    ttl_s: int,
    groups: tuple[tuple[str, int], ...],
    reminders: tuple[float, ...] = (),
    escalation_group: str | None = None,
) -> str:
    """Publish a needs-approval decision with short clocks on the decided topic; returns its action id."""
    from datetime import datetime

    from keyturn.bus.codec import registry
    from keyturn.bus.topics import Topics
    from keyturn.core.canonical import canonical_json
    from keyturn.core.events import (
        ActionDecided,
        ActionRequested,
        ApprovalRequirement,
        DecisionOutcome,
        Digest,
        GroupRequirement,
        Provenance,
    )
    from keyturn.core.principal import Principal, PrincipalKind
    from tests.integration.conftest import produce, warrant

    action_id = str(uuid.uuid4())
    now = datetime.now(UTC)
    parameters = {"principal": "bob", "role": "analyst"}
    request = ActionRequested(
        event_id=f"requested:{action_id}",
        action_id=action_id,
        action="iam.role.grant",
        resource="iam://staging/roles/analyst",
        parameters_json=canonical_json(parameters),
        reason="short clocks",
        requester=Principal("agent:reporter", PrincipalKind.AGENT, ("human:alice",)),
        payload_digest=Digest.of_json(
            {"action": "iam.role.grant", "resource": "iam://staging/roles/analyst", "parameters": parameters}
        ),
        requested_at=now,
    )
    decided = ActionDecided(
        event_id=f"decided:{action_id}",
        action_id=action_id,
        outcome=DecisionOutcome.NEEDS_APPROVAL,
        provenance=Provenance("test", f"test-{action_id}", Digest.of_json({}), now),
        decided_at=now,
        request=request,
        reasons=("granting a role needs security",),
        approvals=ApprovalRequirement(
            groups=tuple(GroupRequirement(g, n) for g, n in groups),
            pending_ttl_s=ttl_s,
            execution_window_s=600,
            require_all=True,
            escalation_group=escalation_group,
            reminder_fractions=reminders,
        ),
    )
    # as the policy sends it: with its warrant (bus.warrants)
    topic, value = Topics(chat.namespace, chat.partitions).decided, registry().encode_event(decided)
    produce(chat, topic, value, key=action_id.encode(), headers=warrant(chat, topic, action_id.encode(), value))
    return action_id


def assert_not_on_approval_topics(settings: Settings, secrets_seeded: list[str]) -> None:
    """None of ``secrets_seeded`` in clear on the votes, audit or dead-letter topic."""
    from keyturn.bus.topics import Topics
    from tests.integration.conftest import read_topic

    topics = Topics(settings.namespace, settings.partitions)
    for topic in (topics.votes, topics.audit, topics.dlq):
        written = " ".join(repr(event) for event, _ in read_topic(settings, topic))
        for seeded in secrets_seeded:
            assert seeded not in written, f"{seeded[:6]}… in clear on {topic}"
