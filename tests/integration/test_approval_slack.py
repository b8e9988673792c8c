"""Approvers answer in Slack: the message, the buttons, the modal, the updates, and every bad input.

The five services run over the real Kafka, OPA and PostgreSQL; Slack is a local fake of its
Web API (tests/fakes/slack.py) and interaction payloads are signed exactly as Slack signs them.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
import uuid

import httpx
import psycopg
import pytest

from keyturn.approval.callbacks import signature_valid
from keyturn.audit.stream import read_audit_log
from keyturn.bus.topics import Topics
from tests.fakes.slack import FakeSlack
from tests.fakes.webhook import WebhookReceiver
from tests.integration.approval_stack import (
    assert_not_on_approval_topics,
    dead_letters_now,
    publish_decision,
    running_stack,
    stack_settings,
    unattributed_refusals,
)
from tests.integration.conftest import Agent, eventually, keyturn_cli, mint

pytestmark = pytest.mark.integration

CALLBACK_SECRET = "callback-secret-for-tests"
CHANNELS = {
    "security": ["C0SECURITY"],
    "security-oncall": ["C0ONCALL"],
    "db-owners": ["C0GONE"],
    "*": ["C0APPROVALS"],
}  # C0GONE: the bot is not in it


@pytest.fixture(scope="module")
def slack() -> FakeSlack:
    fake = FakeSlack().start()
    for channel in ("C0SECURITY", "C0ONCALL", "C0APPROVALS"):
        fake.add_channel(channel)
    fake.add_user("U0CAROL", "carol@example.com")
    fake.add_user("U0DAVE", None)  # no email visible: known through the configured map
    fake.add_user("U0ALICE", "alice@example.com")
    fake.add_user("U0FRANK", "frank@example.com")
    fake.add_user("U0MALLORY", None)
    fake.add_user("U0BOT", "bot@example.com", is_bot=True)
    # accounts that are not carol although their email says carol (carol is in security)
    fake.add_user("U0GUEST", "carol@example.com", is_restricted=True)  # a guest with an approver's email
    fake.add_user("U0ONECHANNEL", "carol@example.com", is_restricted=True, is_ultra_restricted=True)
    fake.add_user("U0MAPPEDGUEST", "dave@example.com", is_restricted=True)  # in the user map, still a guest
    fake.add_user("U0GONE", "carol@example.com", deleted=True)
    fake.add_user("W0CONNECT", "carol@example.com", team_id="T0PARTNER", is_stranger=True)  # Slack Connect
    fake.add_user("W0OTHERTEAM", "carol@example.com", team_id="T0PARTNER")  # another workspace, not flagged a stranger
    fake.add_user("U0PARTNER", "carol@partner.example")  # a full member from a listed partner domain
    fake.add_user("U0ELSEWHERE", "carol@elsewhere.example")  # a full member from a domain not in the list
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def webhook() -> WebhookReceiver:
    receiver = WebhookReceiver().start()
    yield receiver
    receiver.stop()


@pytest.fixture(scope="module")
def chat(settings, slack, webhook):
    chat_settings = stack_settings(
        settings,
        slack_api_url=slack.api_url,
        slack_bot_token=slack.bot_token,
        slack_signing_secret=slack.signing_secret,
        slack_channels=json.dumps(CHANNELS),
        slack_user_map=json.dumps({"U0DAVE": "human:dave", "U0MAPPEDGUEST": "human:dave"}),
        slack_email_domains="example.com,partner.example",
        callback_secret=CALLBACK_SECRET,
        callback_allowed_hosts="127.0.0.1",
    )
    with running_stack(chat_settings):
        yield chat_settings


@pytest.fixture(scope="module")
def agent(chat) -> Agent:
    return Agent(chat, "agent:reporter", ("human:alice",))


def interact(chat, body: bytes, headers: dict[str, str]) -> httpx.Response:
    return httpx.post(f"{chat.approval_url}/slack/interactions", content=body, headers=headers, timeout=30)


def grant(agent: Agent, role: str = "analyst", **extra) -> str:
    action_id = agent.submit_ok(
        "iam.role.grant",
        f"iam://staging/roles/{role}",
        {"principal": "bob", "role": role, "password": "hunter2-never-shown"},
        reason=f"onboarding bob as {role}",
        **extra,
    )
    assert agent.wait_for_state(action_id, "needs_approval")["state"] == "needs_approval"
    return action_id


def message_in(slack: FakeSlack, action_id: str, channel: str = "C0SECURITY"):
    found = eventually(lambda: [m for m in slack.top_level(action_id) if m.channel == channel], timeout=30)
    assert found, f"no Slack message about {action_id} in {channel}; calls: {slack.calls[-5:]}"
    return found[0]


def audit_records(chat, action_id: str | None = None, event_type: str | None = None, timeout: float = 30) -> list:
    def matching():
        records = asyncio.run(read_audit_log(chat.kafka_bootstrap, Topics(chat.namespace, chat.partitions).audit))
        return [
            r
            for r in records
            if (action_id is None or r.action_id == action_id) and (event_type is None or r.event_type == event_type)
        ]

    return eventually(matching, timeout=timeout) or []


def refused_votes(chat, action_id: str, refusal: str) -> list:
    def found():
        return [
            r
            for r in audit_records(chat, action_id, "VoteRecorded", timeout=1)
            if json.loads(r.payload_json).get("refusal") == refusal
        ]

    return eventually(found, timeout=30) or []


def dead_letters(chat, error_type: str) -> list:
    def found():
        return [
            r
            for r in audit_records(chat, None, "DeadLetter", timeout=1)
            if json.loads(r.payload_json).get("error_type") == error_type
        ]

    return eventually(found, timeout=30) or []


# --- the message --------------------------------------------------------------------------------


def test_each_approver_group_gets_a_message_with_everything_needed_to_decide(chat, agent, slack) -> None:
    action_id = grant(agent)
    message = message_in(slack, action_id)
    shown = message.all_text()
    for fact in (
        "iam.role.grant",
        "iam://staging/roles/analyst",
        "onboarding bob as analyst",
        "agent:reporter for human:alice",
        "Expires",
        "Policy",
        '\\"role\\": \\"analyst\\"',
        "No approvals yet (0 of 1), waiting for security",
    ):
        assert fact in shown, f"{fact!r} missing from the Slack message"
    assert "hunter2" not in shown, "parameters in Slack are masked"
    assert [b["action_id"] for b in message.buttons()] == ["keyturn_approve", "keyturn_deny"]
    assert [m.channel for m in slack.top_level(action_id)] == ["C0SECURITY"], "one message per approver group target"


def test_a_row_deletion_message_shows_its_impact_preview(chat, agent, slack) -> None:
    table = f"slack_rows_{secrets.token_hex(3)}"
    with psycopg.connect(chat.sql_target_url, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {table} (id int)")
        conn.execute(f"INSERT INTO {table} SELECT generate_series(1, 1100)")
    action_id = agent.submit_ok(
        "shop.rows.delete",
        f"postgres://staging/shop/{table}",
        {"table": table, "where": "id > 0"},
        reason="purge the test rows",
    )
    assert agent.wait_for_state(action_id, "needs_approval")["state"] == "needs_approval"
    shown = message_in(slack, action_id, channel="C0APPROVALS").all_text()  # platform: the catch-all channel
    assert f"would delete 1,100 rows (exact count) in public.{table}" in shown
    assert "platform ×2" in shown, "over 1000 rows: two approvers"
    with psycopg.connect(chat.sql_target_url, autocommit=True) as conn:
        assert conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0] == 1100


def test_approving_in_slack_runs_the_action_and_the_message_shows_the_outcome(chat, agent, slack, webhook) -> None:
    action_id = grant(agent, callback_url=webhook.url)
    message = message_in(slack, action_id)
    stale_deny = slack.click(message, "keyturn_deny", "U0DAVE")
    answer = interact(chat, *slack.signed(slack.click(message, "keyturn_approve", "U0CAROL")))
    assert answer.status_code == 200, answer.text

    view = agent.wait(action_id)
    assert view["state"] == "succeeded", view
    assert eventually(lambda: not message.buttons() and "Approved by human:carol" in message.all_text()), (
        message.all_text()
    )
    told = eventually(lambda: slack.thread(message))
    assert told and "agent:reporter for human:alice" in told[-1].text and "it will run now" in told[-1].text

    vote = audit_records(chat, action_id, "VoteRecorded")
    assert json.loads(vote[0].payload_json)["vote"]["channel"] == "slack"

    # dave still had the message open: his Deny after the approval is refused, recorded, never shown as the outcome
    assert interact(chat, *slack.signed(stale_deny)).status_code == 200
    assert refused_votes(chat, action_id, "AlreadyResolved")
    assert agent.status(action_id)["state"] == "succeeded" and "Denied" not in message.all_text()
    assert not slack.views or action_id not in slack.views[-1].get("private_metadata", ""), (
        "no modal for a resolved action"
    )

    # the requester's webhook heard every state, signed with HMAC over timestamp and body
    assert eventually(lambda: webhook.states(action_id) == ["needs_approval", "approved", "succeeded"]), webhook.states(
        action_id
    )
    for headers, body in webhook.received:
        assert signature_valid(CALLBACK_SECRET.encode(), body, headers["x-keyturn-signature"], time.time())
        assert not signature_valid(b"another secret", body, headers["x-keyturn-signature"], time.time())


def test_the_message_shows_progress_after_each_vote_until_quorum(chat, agent, slack) -> None:
    action_id = grant(agent, role="db-admin")  # an admin role needs two people from security
    message = message_in(slack, action_id)
    assert interact(chat, *slack.signed(slack.click(message, "keyturn_approve", "U0CAROL"))).status_code == 200
    assert eventually(lambda: "Approved by human:carol (1 of 2), waiting for security" in message.all_text()), (
        message.all_text()
    )
    assert message.buttons(), "still pending: the buttons stay"
    assert agent.status(action_id)["state"] == "needs_approval"

    assert interact(chat, *slack.signed(slack.click(message, "keyturn_approve", "U0DAVE"))).status_code == 200
    assert agent.wait(action_id)["state"] == "succeeded"
    assert eventually(lambda: not message.buttons() and "Approved by human:carol, human:dave" in message.all_text())


def test_deny_opens_a_modal_for_the_reason_and_the_requester_sees_it(chat, agent, slack) -> None:
    action_id = grant(agent, role="writer")
    message = message_in(slack, action_id)
    assert interact(chat, *slack.signed(slack.click(message, "keyturn_deny", "U0DAVE"))).status_code == 200
    assert agent.status(action_id)["state"] == "needs_approval", "clicking Deny only asks why"
    modal = slack.views[-1]
    assert modal["callback_id"] == "keyturn_deny_reason" and action_id in modal["private_metadata"]

    answer = interact(chat, *slack.signed(slack.submit(modal, "U0DAVE", "writers need a ticket")))
    assert answer.status_code == 200 and not answer.content, answer.text  # an empty answer closes the modal
    view = agent.wait(action_id)
    assert view["state"] == "denied"
    assert eventually(
        lambda: not message.buttons() and "Denied by human:dave: writers need a ticket" in message.all_text()
    )
    assert eventually(lambda: any("it will not run" in m.text for m in slack.thread(message)))


# --- bad input: a clear error, an audit record, and no change of state ---------------------------


def test_forged_signature_is_refused_and_counted_not_recorded(chat, agent, slack) -> None:
    # anyone who reaches the port can send one: it is counted, and writes nothing to the DLQ or the audit
    action_id = grant(agent, role="auditor")
    message = message_in(slack, action_id)
    before = unattributed_refusals(chat, "slack", "forged_signature")
    body, headers = slack.signed(slack.click(message, "keyturn_approve", "U0CAROL"), secret="not-the-signing-secret")
    answer = interact(chat, body, headers)
    assert answer.status_code == 401 and answer.json()["error"] == "forged_signature"
    assert unattributed_refusals(chat, "slack", "forged_signature") == before + 1
    assert dead_letters_now(chat, "forged_signature") == []
    assert agent.status(action_id)["state"] == "needs_approval"


def test_a_timestamp_older_than_five_minutes_is_refused_and_counted(chat, agent, slack) -> None:
    action_id = grant(agent, role="auditor")
    message = message_in(slack, action_id)
    before = unattributed_refusals(chat, "slack", "stale_timestamp")
    answer = interact(
        chat, *slack.signed(slack.click(message, "keyturn_approve", "U0CAROL"), timestamp=int(time.time()) - 6 * 60)
    )
    assert answer.status_code == 401 and answer.json()["error"] == "stale_timestamp"
    assert "5 minutes" in answer.json()["message"] or "300 s" in answer.json()["message"]
    assert unattributed_refusals(chat, "slack", "stale_timestamp") == before + 1
    assert dead_letters_now(chat, "stale_timestamp") == []
    assert agent.status(action_id)["state"] == "needs_approval"


def test_a_replayed_interaction_changes_nothing(chat, agent, slack) -> None:
    action_id = grant(agent, role="db-admin")
    message = message_in(slack, action_id)
    body, headers = slack.signed(slack.click(message, "keyturn_approve", "U0CAROL"))
    assert interact(chat, body, headers).status_code == 200
    replay = interact(chat, body, headers)
    assert replay.status_code == 409 and replay.json()["error"] == "replayed_interaction"
    letters = dead_letters(chat, "replayed_interaction")
    # Slack signed the replay, so the account it names is known: the refusal is recorded under it
    assert letters and json.loads(letters[0].payload_json)["principal"].endswith("/U0CAROL")
    approval = httpx.get(
        f"{chat.approval_url}/v1/approvals/{action_id}",
        headers={"Authorization": f"Bearer {mint(chat, 'human:carol')}"},
    ).json()
    assert approval["status"] == "pending" and approval["summary"].startswith("Approved by human:carol (1 of 2)")


@pytest.mark.parametrize(
    "user, refusal, recorded_as",
    [
        ("U0MALLORY", "UnknownChatUser", "slack:T0KEYTURN/U0MALLORY"),  # no email, not in the map
        ("U0BOT", "UnknownChatUser", "slack:T0KEYTURN/U0BOT"),  # bots never approve
        ("U0GUEST", "UnknownChatUser", "slack:T0KEYTURN/U0GUEST"),  # a guest whose email is carol's: never human:carol
        ("U0ONECHANNEL", "UnknownChatUser", "slack:T0KEYTURN/U0ONECHANNEL"),  # a single-channel guest
        (
            "U0MAPPEDGUEST",
            "UnknownChatUser",
            "slack:T0KEYTURN/U0MAPPEDGUEST",
        ),  # the map does not make a guest an approver
        ("U0GONE", "UnknownChatUser", "slack:T0KEYTURN/U0GONE"),  # deactivated
        ("W0CONNECT", "UnknownChatUser", "slack:T0PARTNER/W0CONNECT"),  # Slack Connect: another organisation
        ("W0OTHERTEAM", "UnknownChatUser", "slack:T0PARTNER/W0OTHERTEAM"),  # another workspace
        (
            "U0ELSEWHERE",
            "UnknownChatUser",
            "slack:T0KEYTURN/U0ELSEWHERE",
        ),  # a domain not in KEYTURN_SLACK_EMAIL_DOMAINS
        ("U0PARTNER", "ApproverNotAuthorised", "human:carol@partner.example"),  # a listed partner domain keeps its name
        ("U0FRANK", "ApproverNotAuthorised", "human:frank"),  # db-owners, not security
        ("U0ALICE", "SelfApprovalRefused", "human:alice"),  # the human the agent acts for
    ],
)
def test_answers_from_people_who_may_not_approve_are_refused_recorded_and_explained(
    chat, agent, slack, user, refusal, recorded_as
) -> None:
    action_id = grant(agent, role="auditor")
    message = message_in(slack, action_id)
    answer = interact(chat, *slack.signed(slack.click(message, "keyturn_approve", user)))
    assert answer.status_code == 200  # Slack shows nothing for other codes; the person is told privately
    votes = refused_votes(chat, action_id, refusal)
    assert votes and [json.loads(v.payload_json)["vote"]["approver"]["id"] for v in votes] == [recorded_as]
    told = [
        e
        for e in slack.ephemeral
        if (e["user"] == user and refusal in e["text"]) or (refusal == "UnknownChatUser" and e["user"] == user)
    ]
    assert told and "not applied" in told[-1]["text"]
    assert agent.status(action_id)["state"] == "needs_approval"
    assert message.buttons() and "No approvals yet" in message.all_text(), (
        "the message does not pretend anything happened"
    )


def test_a_vote_on_a_different_digest_is_refused(chat, agent, slack) -> None:
    action_id = grant(agent, role="auditor")
    message = message_in(slack, action_id)
    payload = slack.click(message, "keyturn_approve", "U0CAROL")
    payload["actions"][0]["value"] = json.dumps({"action_id": action_id, "payload_digest": "sha256:" + "0" * 64})
    assert interact(chat, *slack.signed(payload)).status_code == 200
    assert refused_votes(chat, action_id, "DigestMismatch")
    assert agent.status(action_id)["state"] == "needs_approval"


# --- a click counts only for the action its message showed ------------------------------------------


def approval(chat, action_id: str) -> dict:
    answer = httpx.get(
        f"{chat.approval_url}/v1/approvals/{action_id}",
        headers={"Authorization": f"Bearer {mint(chat, 'human:carol')}"},
        timeout=30,
    )
    return answer.json() if answer.status_code == 200 else {}


def naming(payload: dict, action_id: str, digest: str) -> dict:
    """A click payload whose button value was edited to name another action (signed afterwards, as with the secret)."""
    payload["actions"][0]["value"] = json.dumps({"action_id": action_id, "payload_digest": digest})
    return payload


def refusal_of(vote) -> tuple[str, str, str]:
    recorded = json.loads(vote.payload_json)
    return recorded["vote"]["approver"]["id"], recorded["refusal"], recorded["message"]


@pytest.mark.parametrize("digest_of", ["the other action", "the action shown"])
def test_a_click_edited_to_name_another_action_is_refused_recorded_and_changes_nothing(
    chat, agent, slack, digest_of
) -> None:
    shown, other = grant(agent, role="auditor"), grant(agent, role="reader")
    message, other_message = message_in(slack, shown), message_in(slack, other)
    digest = approval(chat, other if digest_of == "the other action" else shown)["payload_digest"]
    answer = interact(chat, *slack.signed(naming(slack.click(message, "keyturn_approve", "U0CAROL"), other, digest)))
    assert answer.status_code == 200

    votes = refused_votes(chat, other, "MessageNotForAction")
    assert len(votes) == 1
    who, _, why = refusal_of(votes[0])
    assert who == "slack:T0KEYTURN/U0CAROL" and shown in why and other in why
    told = [e["text"] for e in slack.ephemeral if e["user"] == "U0CAROL" and other in e["text"]]
    assert told and "not applied" in told[-1] and f"posted for action {shown}" in told[-1]
    for action_id, shown_message in ((shown, message), (other, other_message)):
        assert agent.status(action_id)["state"] == "needs_approval"
        assert (
            approval(chat, action_id)["summary"].startswith("No approvals yet")
            and "No approvals yet" in shown_message.all_text()
        )

    # the same person on the message that shows the other action is heard
    assert interact(chat, *slack.signed(slack.click(other_message, "keyturn_approve", "U0CAROL"))).status_code == 200
    assert agent.wait(other)["state"] == "succeeded"
    assert agent.status(shown)["state"] == "needs_approval"


def test_an_action_whose_message_never_reached_slack_cannot_be_answered_in_slack(chat, agent, slack) -> None:
    shown = grant(agent, role="auditor")
    message = message_in(slack, shown)
    unposted = publish_decision(
        chat, ttl_s=600, groups=(("db-owners", 1),)
    )  # its only target, C0GONE, refuses the post
    opened = eventually(lambda: approval(chat, unposted), timeout=30)
    assert opened and opened["status"] == "pending"
    assert eventually(
        lambda: any(m == "chat.postMessage" and a.get("channel") == "C0GONE" for m, a in list(slack.calls)), timeout=30
    )
    assert not slack.top_level(unposted), "the message failed to send"

    answer = interact(
        chat,
        *slack.signed(naming(slack.click(message, "keyturn_approve", "U0FRANK"), unposted, opened["payload_digest"])),
    )
    assert answer.status_code == 200
    votes = refused_votes(chat, unposted, "MessageNotForAction")
    assert [refusal_of(v)[0] for v in votes] == ["slack:T0KEYTURN/U0FRANK"]
    assert any(unposted in e["text"] and "not applied" in e["text"] for e in slack.ephemeral if e["user"] == "U0FRANK")
    assert approval(chat, unposted)["status"] == "pending" and approval(chat, shown)["status"] == "pending"


def test_a_click_naming_an_action_keyturn_does_not_know_is_refused(chat, agent, slack) -> None:
    action_id = grant(agent, role="auditor")
    message = message_in(slack, action_id)
    unknown = str(uuid.uuid4())
    assert (
        interact(
            chat,
            *slack.signed(naming(slack.click(message, "keyturn_approve", "U0CAROL"), unknown, "sha256:" + "0" * 64)),
        ).status_code
        == 200
    )
    assert refused_votes(chat, unknown, "MessageNotForAction")
    assert any(unknown in e["text"] and "not applied" in e["text"] for e in slack.ephemeral if e["user"] == "U0CAROL")
    assert agent.status(action_id)["state"] == "needs_approval"


def test_a_deny_modal_re_pointed_at_another_action_is_refused_and_the_modal_as_opened_still_works(
    chat, agent, slack
) -> None:
    shown, other = grant(agent, role="auditor"), grant(agent, role="reader")
    message, other_message = message_in(slack, shown), message_in(slack, other)
    assert interact(chat, *slack.signed(slack.click(message, "keyturn_deny", "U0DAVE"))).status_code == 200
    modal = slack.views[-1]
    metadata = json.loads(modal["private_metadata"])
    assert metadata["action_id"] == shown
    metadata.update(action_id=other, payload_digest=approval(chat, other)["payload_digest"])
    re_pointed = {**modal, "private_metadata": json.dumps(metadata)}

    answer = interact(chat, *slack.signed(slack.submit(re_pointed, "U0DAVE", "not this one")))
    assert answer.status_code == 200 and answer.json()["response_action"] == "errors", answer.text
    shown_error = answer.json()["errors"]["reason"]
    assert "not applied" in shown_error and other in shown_error
    votes = refused_votes(chat, other, "MessageNotForAction")
    assert [refusal_of(v)[:2] for v in votes] == [("slack:T0KEYTURN/U0DAVE", "MessageNotForAction")]
    assert agent.status(other)["state"] == "needs_approval" and "No approvals yet" in other_message.all_text()
    assert agent.status(shown)["state"] == "needs_approval"

    # the modal as Keyturn opened it denies the action its message showed
    answer = interact(chat, *slack.signed(slack.submit(modal, "U0DAVE", "auditors need a ticket")))
    assert answer.status_code == 200 and not answer.content, answer.text
    assert agent.wait(shown)["state"] == "denied"
    assert agent.status(other)["state"] == "needs_approval"


def test_a_vote_after_resolution_is_refused_and_approval_is_never_shown_twice(chat, agent, slack) -> None:
    action_id = grant(agent, role="reader")
    message = message_in(slack, action_id)
    stale_click = slack.click(message, "keyturn_approve", "U0DAVE")  # dave still has the old message open
    denied = keyturn_cli(chat, "deny", action_id, "--reason", "not today", token=mint(chat, "human:carol"))
    assert denied.returncode == 0, denied.stderr
    assert agent.wait(action_id)["state"] == "denied"
    assert interact(chat, *slack.signed(stale_click)).status_code == 200
    assert refused_votes(chat, action_id, "AlreadyResolved")
    assert agent.wait(action_id)["state"] == "denied", "no approval after a denial"
    assert eventually(lambda: "Denied by human:carol: not today" in message.all_text() and not message.buttons())
    assert "Approved" not in message.all_text()


# --- break-glass ------------------------------------------------------------------------------------


def test_break_glass_runs_without_approval_tells_every_approver_channel_and_is_flagged(chat, agent, slack) -> None:
    action_id = agent.submit_ok(
        "iam.role.grant",
        "iam://prod/roles/incident-responder",
        {"principal": "bob", "role": "incident-responder", "break_glass": True, "incident_id": "INC-4242"},
        reason="payments are down; bob is on call",
    )
    view = agent.wait(action_id)
    assert view["state"] == "succeeded", view
    notices = eventually(
        lambda: sorted(m.channel for m in slack.top_level(action_id)) == ["C0APPROVALS", "C0ONCALL", "C0SECURITY"]
    )
    assert notices, [m.channel for m in slack.top_level(action_id)]
    for message in slack.top_level(action_id):
        assert (
            "Break-glass" in message.text
            and "INC-4242" in message.all_text()
            and "mandatory review" in message.all_text()
        )
        assert message.buttons()  # the review's answers: No objection / Object…
    decided = audit_records(chat, action_id, "ActionDecided")
    assert decided and {"break_glass", "mandatory_review"} <= set(decided[0].flags)

    # a security member reviews it where the notice is: an objection asks why, then counts
    notice = message_in(slack, action_id, "C0SECURITY")
    assert interact(chat, *slack.signed(slack.click(notice, "keyturn_deny", "U0CAROL"))).status_code == 200
    modal = slack.views[-1]
    assert modal["title"]["text"] == "Object to break-glass" and action_id in modal["private_metadata"]
    answer = interact(chat, *slack.signed(slack.submit(modal, "U0CAROL", "the role outlived the incident")))
    assert answer.status_code == 200 and not answer.content, answer.text
    assert eventually(
        lambda: any("review of break-glass action" in e["text"] and e["user"] == "U0CAROL" for e in slack.ephemeral)
    )

    def objections() -> list:
        recorded = [json.loads(r.payload_json) for r in audit_records(chat, action_id, "VoteRecorded", timeout=1)]
        return [v for v in recorded if v["accepted"] and v["vote"]["reason"] == "the role outlived the incident"]

    assert eventually(objections, timeout=30), "the objection is on the audit record"
    # every copy of the notice now shows the review on record, and keeps its answers for the others
    for message in slack.top_level(action_id):
        assert eventually(
            lambda m=message: "human:carol objected: the role outlived the incident" in m.all_text(), timeout=30
        ), message.all_text()
        assert message.buttons()
    # a second click by the same reviewer is refused (each reviews once), and told why
    assert interact(chat, *slack.signed(slack.click(notice, "keyturn_approve", "U0CAROL"))).status_code == 200
    assert eventually(lambda: any("DuplicateVote" in e["text"] for e in slack.ephemeral if e["user"] == "U0CAROL"))
    assert agent.status(action_id)["state"] == "succeeded"  # it already ran: a review undoes nothing


# --- reminders, escalation, expiry (decisions with short clocks, as the policy service would publish them) ---


def test_approvers_are_reminded_then_the_fallback_group_is_asked_and_may_approve_alone(chat, slack) -> None:
    slack.add_user("U0ERIN", "erin@example.com")
    action_id = publish_decision(
        chat, ttl_s=20, groups=(("security", 2),), reminders=(0.2,), escalation_group="security-oncall"
    )
    message = message_in(slack, action_id)
    assert eventually(lambda: any("Reminder" in m.text for m in slack.thread(message)), timeout=30), (
        "reminded at 20 % of the TTL"
    )
    reminder = next(m for m in slack.thread(message) if "Reminder" in m.text)
    assert "waiting for 2 from security" in reminder.text and "Expires" in reminder.text

    fallback = message_in(slack, action_id, "C0ONCALL")  # escalated half way: a message for the fallback group
    assert "Escalated to security-oncall" in fallback.all_text() and fallback.buttons()
    assert interact(chat, *slack.signed(slack.click(fallback, "keyturn_approve", "U0ERIN"))).status_code == 200
    for shown in (message, fallback):
        assert eventually(lambda shown=shown: "Approved by human:erin" in shown.all_text() and not shown.buttons()), (
            shown.all_text()
        )
    assert len([m for m in slack.thread(message) if "Reminder" in m.text]) == 1, "each reminder once"


def test_an_approval_nobody_answers_expires_and_the_message_says_so(chat, slack) -> None:
    action_id = publish_decision(chat, ttl_s=3, groups=(("security", 1),))
    message = message_in(slack, action_id)
    assert eventually(lambda: "Expired" in message.all_text() and not message.buttons(), timeout=30), message.all_text()
    assert "Denied" not in message.all_text(), "a TTL running out is expired, never denied"
    assert eventually(lambda: any("it will not run" in m.text for m in slack.thread(message)))


SEEDED = "AKIAQWERTYUIOP123456 5500005555555559 seeded.victim@example.org"


@pytest.mark.parametrize("field", ["user", "team", "trigger", "deep"])
def test_what_a_click_carries_in_its_ids_is_refused_before_anything_is_written(chat, agent, slack, field) -> None:
    action_id = grant(agent, "auditor")
    message = message_in(slack, action_id)
    payload = slack.click(message, "keyturn_approve", "U0CAROL")
    if field == "user":
        payload["user"]["id"] = "U0" + SEEDED
    elif field == "team":
        payload["team"]["id"] = payload["user"]["team_id"] = SEEDED
    elif field == "trigger":
        payload["trigger_id"] = SEEDED
    body, headers = slack.signed(payload)
    if field == "deep":  # a signed payload nested past any parser's depth
        body, headers = slack.signed_body(b"payload=" + b"%5B" * 100_000 + b"%5D" * 100_000)
    answer = interact(chat, body, headers)
    assert answer.status_code == 400 and answer.json()["error"] == "malformed_payload", answer.text
    assert not any(part in answer.text for part in SEEDED.split())
    assert dead_letters(chat, "malformed_payload")
    assert agent.status(action_id)["state"] == "needs_approval"
    assert_not_on_approval_topics(chat, SEEDED.split())
