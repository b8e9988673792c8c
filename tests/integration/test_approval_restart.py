"""Pending approvals survive a restart of the approval service, with no lost and no duplicated notifications."""

from __future__ import annotations

import json
from collections.abc import Iterator

import psycopg
import pytest

from keyturn.db import schema_name
from tests.fakes.slack import FakeSlack, running_slack
from tests.integration.approval_stack import running_stack, stack_settings
from tests.integration.conftest import Agent, eventually

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def slack() -> Iterator[FakeSlack]:
    with running_slack(
        channels=("C0SECURITY",), users={"U0CAROL": "carol@example.com", "U0DAVE": "dave@example.com"}
    ) as fake:
        yield fake


@pytest.fixture(scope="module")
def stack(settings, slack):
    chat = stack_settings(
        settings,
        slack_api_url=slack.api_url,
        slack_bot_token=slack.bot_token,
        slack_signing_secret=slack.signing_secret,
        slack_channels=json.dumps({"*": ["C0SECURITY"]}),
        slack_email_domains="example.com",
    )
    with running_stack(chat) as procs:
        yield procs


@pytest.fixture(scope="module")
def agent(stack) -> Agent:
    return Agent(stack.settings, "agent:reporter", ("human:alice",))


def pending(agent: Agent, role: str) -> str:
    # a role the session's SQL target has, so the approved grant really runs; the reason tells the actions apart
    parameters = {"principal": "bob", "role": "analyst"}
    action_id = agent.submit_ok("iam.role.grant", "iam://staging/roles/analyst", parameters, reason=f"restart {role}")
    assert agent.wait_for_state(action_id, "needs_approval")["state"] == "needs_approval"
    return action_id


def one_message(slack: FakeSlack, action_id: str):
    assert eventually(lambda: slack.top_level(action_id), timeout=40), f"no message for {action_id}"
    messages = slack.top_level(action_id)
    assert len(messages) == 1, f"{len(messages)} messages for {action_id}: a notification was duplicated"
    return messages[0]


def click(stack, slack: FakeSlack, message, user: str) -> None:
    import httpx

    body, headers = slack.signed(slack.click(message, "keyturn_approve", user))
    answer = httpx.post(f"{stack.settings.approval_url}/slack/interactions", content=body, headers=headers, timeout=30)
    assert answer.status_code == 200, answer.text


def adopted(stack, action_id: str) -> bool:
    with psycopg.connect(
        stack.settings.database_url, autocommit=True, options=f"-c search_path={schema_name(stack.settings.namespace)}"
    ) as conn:
        row = conn.execute(
            "SELECT remote_ref FROM approval_notifications WHERE action_id = %s AND kind = 'opened'", (action_id,)
        ).fetchone()
    return bool(row and row[0])


def sql(stack, statement: str, *args) -> None:
    with psycopg.connect(
        stack.settings.database_url, autocommit=True, options=f"-c search_path={schema_name(stack.settings.namespace)}"
    ) as conn:
        conn.execute(statement, args)


@pytest.mark.parametrize("kill", [False, True], ids=["stopped", "killed"])
def test_pending_approvals_survive_a_restart_without_lost_or_duplicated_messages(stack, slack, agent, kill) -> None:
    before = [pending(agent, f"before-{kill}-{n}") for n in range(2)]
    messages = {action_id: one_message(slack, action_id) for action_id in before}

    stack.stop("approval", kill=kill)
    during = [pending(agent, f"during-{kill}-{n}") for n in range(2)]  # decided while the approval service is down
    stack.start("approval")
    stack.wait_http(f"{stack.settings.approval_url}/healthz")

    for action_id in during:
        one_message(slack, action_id)  # nothing lost
    for action_id in before:
        assert one_message(slack, action_id) is messages[action_id]  # nothing posted twice
        assert agent.status(action_id)["state"] == "needs_approval"

    click(stack, slack, messages[before[0]], "U0CAROL")
    assert agent.wait(before[0])["state"] == "succeeded"
    assert eventually(
        lambda: "Approved by human:carol" in messages[before[0]].all_text() and not messages[before[0]].buttons()
    )
    assert one_message(slack, before[0]) is messages[before[0]], "the outcome edits the message people already have"


def test_a_message_sent_just_before_a_crash_is_adopted_not_sent_again(stack, slack, agent) -> None:
    action_id = pending(agent, "crash-after-send")
    message = one_message(slack, action_id)
    stack.stop("approval")  # the database is left as a crash would leave it (a clean stop keeps the test quick)
    # what a crash between Slack's answer and the commit leaves: a claimed row without the message id
    sql(
        stack,
        """UPDATE approval_notifications SET state = 'sending', remote_ref = NULL, claimed_at = now() -
        interval '1 hour'
                  WHERE action_id = %s AND kind = 'opened'""",
        action_id,
    )
    posts = slack.count("chat.postMessage")
    start_again(stack)

    # a click counts only on a message Keyturn knows it sent for the action, so the approver's
    # click is taken once the message has been adopted (found in the channel, its id recorded)
    assert eventually(lambda: adopted(stack, action_id), timeout=30), "the message was never adopted"
    click(stack, slack, message, "U0DAVE")
    assert agent.wait(action_id)["state"] == "succeeded"
    assert eventually(lambda: "Approved by human:dave" in message.all_text()), message.all_text()
    assert one_message(slack, action_id) is message
    assert not [
        m
        for m in slack.messages[posts:]
        if m.thread_ts is None and m.metadata and m.metadata["event_payload"]["action_id"] == action_id
    ]


def test_a_message_claimed_but_never_sent_before_a_crash_is_sent_once(stack, slack, agent) -> None:
    action_id = pending(agent, "crash-before-send")
    message = one_message(slack, action_id)
    stack.stop("approval")
    # a crash right after the claim: Slack never got the message
    slack.messages.remove(message)
    sql(
        stack,
        """UPDATE approval_notifications SET state = 'sending', remote_ref = NULL, claimed_at = now() -
        interval '1 hour'
                  WHERE action_id = %s AND kind = 'opened'""",
        action_id,
    )
    start_again(stack)
    resent = one_message(slack, action_id)
    assert resent is not message and resent.buttons()


def start_again(stack) -> None:
    stack.start("approval")
    stack.wait_http(f"{stack.settings.approval_url}/healthz")
