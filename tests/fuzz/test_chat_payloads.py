"""Malformed chat payloads: Slack interactions (signed as Slack signs, and not) and Teams
activities (with a valid Bot Framework token, and without). The approval service answers each
one with a client error (never a 5xx), records every refusal as a dead letter, and keeps working.

Slack and Teams are the local fakes of their APIs (tests/fakes/slack.py, tests/fakes/teams.py),
both wired into one stack, so the fuzzing reaches the parsing behind the authentication.
"""

from __future__ import annotations

import json
import time
from urllib.parse import urlencode

import httpx
import hypothesis
import pytest
from hypothesis import strategies as st

from keyturn.approval.slack_interactions import UNSIGNED
from keyturn.bus.topics import Topics
from keyturn.core.events import DeadLetter
from tests.fakes.slack import FakeSlack
from tests.integration.approval_stack import chat_stack, unattributed_refusals
from tests.integration.conftest import eventually, read_topic

pytestmark = pytest.mark.integration

SOURCE = "slack:interactions"
TEAMS_SOURCE = "teams:messages"
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner, max_size=3),
    max_leaves=8,
)


def anything_or(*usual):
    """The usual values Slack sends for a field, or any JSON at all, or the field left out."""
    return st.one_of(*(st.just(u) for u in usual), JSON)


PAYLOADS = st.fixed_dictionaries(
    {"user": st.one_of(st.fixed_dictionaries({"id": anything_or("U0CAROL", "U0NOBODY")}), JSON)},
    optional={
        "type": anything_or("block_actions", "view_submission", "message_action"),
        "team": anything_or({"id": "T0KEYTURN"}),
        "trigger_id": anything_or("13345224609.738474920.8088930838d88f008e0"),
        "actions": st.one_of(
            st.lists(
                st.fixed_dictionaries(
                    {},
                    optional={
                        "action_id": anything_or("keyturn_approve", "keyturn_deny"),
                        "value": anything_or('{"action_id": "nope", "payload_digest": "sha256:00"}', "{", "[]"),
                        "action_ts": anything_or("1700000000.000001"),
                    },
                ),
                max_size=2,
            ),
            JSON,
        ),
        "view": anything_or({"callback_id": "keyturn_deny_reason", "private_metadata": "{"}),
        "channel": anything_or({"id": "C0SECURITY"}),
        "container": JSON,
    },
)


@pytest.fixture(scope="module")
def chat_desk(settings):
    """One stack whose approval service talks to both fakes."""
    with chat_stack(settings) as stack:
        yield stack


@pytest.fixture(scope="module")
def slack_desk(chat_desk):
    chat, slack, _, procs = chat_desk
    return chat, slack, procs


def dead_letters_from(chat, source: str) -> int:
    return sum(
        1
        for e, _ in read_topic(chat, Topics(chat.namespace, chat.partitions).dlq)
        if isinstance(e, DeadLetter) and e.source_topic == source
    )


ACTIVITIES = st.fixed_dictionaries(
    {},
    optional={
        "type": anything_or("invoke", "message", "conversationUpdate"),
        "name": anything_or("adaptiveCard/action"),
        "id": anything_or("f:1"),
        "channelId": anything_or("msteams"),
        "serviceUrl": JSON,
        "from": anything_or({"id": "29:carol", "aadObjectId": "aad-carol"}, {"id": "29:nobody"}),
        "recipient": JSON,
        "conversation": anything_or({"id": "19:security@thread.tacv2", "conversationType": "channel"}),
        "replyToId": JSON,
        "value": anything_or(
            {"action": {"type": "Action.Execute", "verb": "approve", "data": {"action_id": "nope"}}}, {"action": "x"}
        ),
        "text": JSON,
    },
)


def test_malformed_teams_activities_are_refused_recorded_and_never_crash(chat_desk) -> None:
    chat, _, teams, procs = chat_desk
    answers: list[tuple[int, str, bool]] = []  # (status, body, refused before the SDK)
    token = teams.inbound_token()
    with httpx.Client(base_url=chat.approval_url, timeout=30) as client:

        @hypothesis.given(activity=ACTIVITIES, raw=st.one_of(st.none(), st.binary(max_size=200)), signed=st.booleans())
        @hypothesis.settings(
            max_examples=60,
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=list(hypothesis.HealthCheck),
        )
        def post(activity, raw, signed) -> None:
            body = json.dumps(activity).encode() if raw is None else raw
            headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if signed else {})}
            response = client.post("/api/messages", content=body, headers=headers)
            # a malformed activity with a valid token is recorded; one without is only counted
            refused_here = response.status_code == 400 and "error" in _json_or_empty(response)
            answers.append((response.status_code, response.text[:300], refused_here))
            assert response.status_code < 500, f"{response.status_code} for {body[:300]!r}: {response.text[:300]}"

        counted_before = unattributed_refusals(chat, "teams", "unauthenticated_bot_request")
        post()
    refused = sum(1 for _, _, here in answers if here)
    assert eventually(lambda: dead_letters_from(chat, TEAMS_SOURCE) >= refused, timeout=60), (
        f"{refused} refusals, {dead_letters_from(chat, TEAMS_SOURCE)} dead letters"
    )
    unsigned = sum(1 for status, _, _ in answers if status == 401)
    assert unsigned and unattributed_refusals(chat, "teams", "unauthenticated_bot_request") - counted_before == unsigned
    assert not procs.exited(), f"services died: {procs.exited()}"
    assert httpx.get(f"{chat.approval_url}/healthz", timeout=30).status_code == 200
    # a malformed activity is a client's mistake, answered and recorded: not a failure in the log
    logged = (procs.log_dir / "approval.log").read_text(errors="replace")
    assert "Traceback" not in logged, "a malformed activity was logged as a failure, with a traceback"


def _json_or_empty(response: httpx.Response) -> dict:
    return _json_or_empty_text(response.text)


def _json_or_empty_text(text: str) -> dict:
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def test_malformed_slack_interactions_are_refused_recorded_and_never_crash(slack_desk) -> None:
    chat, fake, procs = slack_desk
    answers: list[tuple[int, str]] = []
    with httpx.Client(base_url=chat.approval_url, timeout=30) as client:

        @hypothesis.given(payload=PAYLOADS, raw=st.one_of(st.none(), st.binary(max_size=300)))
        @hypothesis.settings(
            max_examples=60,
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=list(hypothesis.HealthCheck),
        )
        def post(payload, raw) -> None:
            body, headers = fake.signed(payload) if raw is None else _signed_raw(fake, raw)
            response = client.post("/slack/interactions", content=body, headers=headers)
            answers.append((response.status_code, response.text[:300]))
            assert response.status_code < 500, f"{response.status_code} for {body[:300]!r}: {response.text[:300]}"

        post()
        # unsigned, stale and forged requests too
        body, headers = fake.signed({"user": {"id": "U0CAROL"}, "type": "block_actions"})
        for broken in (
            {**headers, "X-Slack-Signature": "v0=00"},
            {k: v for k, v in headers.items() if k != "X-Slack-Request-Timestamp"},
            {**headers, "X-Slack-Request-Timestamp": str(int(time.time()) - 3600)},
        ):
            response = client.post("/slack/interactions", content=body, headers=broken)
            answers.append((response.status_code, response.text[:300]))
            assert 400 <= response.status_code < 500, response.text

    # refusals of requests Slack did not sign are counted, not recorded: anyone can send them
    unsigned = sum(
        1 for status, text in answers if status >= 400 and _json_or_empty_text(text).get("error") in UNSIGNED
    )
    refused = sum(1 for status, _ in answers if status >= 400) - unsigned
    assert unsigned >= 3

    def letters() -> int:
        return dead_letters_from(chat, SOURCE)

    assert eventually(lambda: letters() >= refused, timeout=60), f"{refused} refusals, {letters()} dead letters"
    assert letters() == refused, f"{refused} refusals but {letters()} dead letters"
    assert not procs.exited(), f"services died: {procs.exited()}"
    assert httpx.get(f"{chat.approval_url}/healthz", timeout=30).status_code == 200


def _signed_raw(fake: FakeSlack, raw: bytes) -> tuple[bytes, dict[str, str]]:
    """Arbitrary bytes (sometimes wrapped as a payload field) under a valid signature."""
    return fake.signed_body(raw if raw[:1] != b"p" else urlencode({"payload": raw.decode(errors="replace")}).encode())
