"""Approvers answer in Microsoft Teams: Adaptive Cards with Action.Execute, refreshed as votes arrive.

The five services run over the real Kafka, OPA and PostgreSQL; Teams is a local Bot Connector
and token issuer (tests/fakes/teams.py). Inbound activities are authenticated by the Teams SDK
against that issuer's OpenID keys.
"""

from __future__ import annotations

import asyncio
import json

import httpx
import psycopg
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from keyturn.audit.stream import read_audit_log
from keyturn.bus.topics import Topics
from keyturn.db import schema_name
from tests.fakes.teams import TENANT, FakeTeams
from tests.integration.approval_stack import (
    assert_not_on_approval_topics,
    dead_letters_now,
    publish_decision,
    running_stack,
    stack_settings,
    unattributed_refusals,
)
from tests.integration.conftest import Agent, eventually, mint

pytestmark = pytest.mark.integration

SECURITY = "19:security@thread.tacv2"
ONCALL = "19:oncall@thread.tacv2"
GONE = "19:gone@thread.tacv2"  # a conversation the bot is not in: nothing sent there arrives


@pytest.fixture(scope="module")
def teams() -> FakeTeams:
    fake = FakeTeams(unreachable={GONE}).start()
    fake.add_member("29:carol", "aad-carol", "carol@example.com")
    fake.add_member("29:dave", "aad-dave", None)  # known through the configured map
    fake.add_member("29:alice", "aad-alice", "alice@example.com")
    fake.add_member("29:frank", "aad-frank", "frank@example.com")
    # accounts that are not carol although their email says carol (carol is in security)
    fake.add_member(
        "29:guest", "aad-guest", "carol@partner.example", upn="carol_partner.example#EXT#@example.com", role="guest"
    )
    fake.add_member(
        "29:guest-own-domain",
        "aad-guest-own",
        "carol@example.com",
        upn="carol_example.com#EXT#@example.com",
        role="guest",
    )
    fake.add_member(
        "29:ext-login", "aad-ext-login", "carol@example.com", upn="carol_example.com#EXT#@example.com"
    )  # role not said
    fake.add_member(
        "29:mapped-guest", "aad-mapped-guest", "dave@example.com", role="guest"
    )  # in the user map, still a guest
    fake.add_member(
        "29:other-tenant", "aad-other-tenant", "carol@example.com", tenant="00000000-0000-4000-8000-00000000beef"
    )
    fake.add_member("29:partner", "aad-partner", "carol@partner.example")  # a full member from a listed partner domain
    fake.add_member("29:elsewhere", "aad-elsewhere", "carol@elsewhere.example")  # a domain not in the list
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def chat(settings, teams):
    chat_settings = stack_settings(
        settings,
        teams_app_id=teams.app_id,
        teams_app_password=teams.app_password,
        teams_service_url=teams.service_url,
        teams_token_url=teams.token_url,
        teams_openid_url=teams.openid_url,
        teams_token_issuer=teams.issuer,
        teams_conversations=json.dumps({"security": [SECURITY], "db-owners": [GONE], "*": [ONCALL]}),
        teams_user_map=json.dumps({"aad-dave": "human:dave", "aad-mapped-guest": "human:dave"}),
        teams_tenant_id=TENANT,
        teams_email_domains="example.com,partner.example",
    )
    with running_stack(chat_settings):
        yield chat_settings


@pytest.fixture(scope="module")
def agent(chat) -> Agent:
    return Agent(chat, "agent:reporter", ("human:alice",))


def grant(agent: Agent, role: str) -> str:
    action_id = agent.submit_ok(
        "iam.role.grant",
        f"iam://staging/roles/{role}",
        {"principal": "bob", "role": role, "token": "tok-never-shown"},
        reason=f"bob needs {role}",
    )
    assert agent.wait_for_state(action_id, "needs_approval")["state"] == "needs_approval"
    return action_id


def card_for(teams: FakeTeams, action_id: str):
    found = eventually(lambda: [a for a in teams.cards_about(action_id) if a.conversation == SECURITY], timeout=30)
    assert found, f"no card for {action_id}; refused calls: {teams.refused_calls}"
    return found[0]


def click(chat, teams: FakeTeams, card, verb: str, user: str, **inputs) -> dict:
    answer = teams.post(chat.approval_url, teams.invoke(card, verb, user, inputs=inputs), teams.inbound_token())
    assert answer.status_code == 200, answer.text
    return answer.json()


def audit_of(chat, action_id: str | None, event_type: str) -> list:
    def found():
        records = asyncio.run(read_audit_log(chat.kafka_bootstrap, Topics(chat.namespace, chat.partitions).audit))
        return [r for r in records if (action_id is None or r.action_id == action_id) and r.event_type == event_type]

    return eventually(found, timeout=30) or []


def refused(chat, action_id: str, refusal: str) -> bool:
    return bool(
        eventually(
            lambda: [
                r for r in audit_of(chat, action_id, "VoteRecorded") if json.loads(r.payload_json)["refusal"] == refusal
            ],
            timeout=30,
        )
    )


def test_each_group_gets_a_card_with_what_to_decide_and_universal_actions(chat, agent, teams) -> None:
    action_id = grant(agent, "analyst")
    card = card_for(teams, action_id)
    shown = card.all_text()
    for fact in (
        "iam.role.grant",
        "iam://staging/roles/analyst",
        "bob needs analyst",
        "agent:reporter for human:alice",
        "Expires",
        "No approvals yet (0 of 1), waiting for security",
    ):
        assert fact in shown
    assert "tok-never-shown" not in shown
    assert [(a["type"], a["verb"]) for a in card.actions()] == [
        ("Action.Execute", "approve"),
        ("Action.Execute", "deny"),
    ]
    assert card.card()["refresh"]["action"]["verb"] == "refresh"
    assert teams.token_requests and teams.token_requests[-1]["client_id"] == teams.app_id, (
        "app token by client credentials"
    )


def test_approving_in_teams_answers_with_the_refreshed_card_and_updates_every_copy(chat, agent, teams) -> None:
    action_id = grant(agent, "db-admin")  # two from security
    card = card_for(teams, action_id)
    first = click(chat, teams, card, "approve", "29:carol")
    assert first["statusCode"] == 200 and first["type"] == "application/vnd.microsoft.card.adaptive"
    assert "Approved by human:carol (1 of 2), waiting for security" in json.dumps(first["value"])
    assert eventually(lambda: "Approved by human:carol (1 of 2)" in card.all_text() and card.actions())

    second = click(chat, teams, card, "approve", "29:dave")
    assert "Approved by human:carol, human:dave" in json.dumps(second["value"]) and "actions" not in second["value"]
    assert agent.wait(action_id)["state"] == "succeeded"
    assert eventually(lambda: not card.actions() and "Approved by human:carol, human:dave" in card.all_text())
    assert eventually(lambda: any("it will run now" in r.all_text() for r in teams.replies_to(card)))
    outcome = next(r for r in teams.replies_to(card) if "it will run now" in r.all_text())
    assert outcome.body.get("textFormat") == "plain"  # people's words in it are shown as written, not as Markdown
    refreshed = click(chat, teams, card, "refresh", "29:frank")
    assert "Approved by human:carol, human:dave" in json.dumps(refreshed["value"])


def test_deny_needs_a_reason_typed_on_the_card(chat, agent, teams) -> None:
    action_id = grant(agent, "writer")
    card = card_for(teams, action_id)
    asked = click(chat, teams, card, "deny", "29:carol")
    assert "A denial needs a reason" in json.dumps(asked["value"])
    assert agent.status(action_id)["state"] == "needs_approval"
    denied = click(chat, teams, card, "deny", "29:carol", reason="writers need a ticket")
    assert "Denied by human:carol: writers need a ticket" in json.dumps(denied["value"])
    assert agent.wait(action_id)["state"] == "denied"


def test_a_reason_no_record_can_hold_is_refused_on_the_card_naming_the_field(chat, agent, teams) -> None:
    action_id = grant(agent, "writer")
    card = card_for(teams, action_id)
    refused = click(chat, teams, card, "deny", "29:carol", reason="ticket-\x00-42")
    assert "reason: holds a NUL character" in json.dumps(refused["value"])
    assert "ticket-" not in json.dumps(refused["value"])
    assert agent.status(action_id)["state"] == "needs_approval"  # nothing was recorded: it can be answered
    denied = click(chat, teams, card, "deny", "29:carol", reason="writers need a ticket")
    assert "Denied by human:carol: writers need a ticket" in json.dumps(denied["value"])


def test_a_break_glass_use_is_reviewed_on_its_card(chat, teams) -> None:
    responder = Agent(chat, "agent:incident-bot", ("human:erin",))
    action_id = responder.submit_ok(
        "iam.role.grant",
        "iam://prod/roles/incident-responder",
        {"principal": "bob", "role": "incident-responder", "break_glass": True, "incident_id": "INC-7331"},
        reason="checkout is down; on call needs the role",
    )
    assert responder.wait(action_id)["state"] == "succeeded"  # it ran without approval
    card = card_for(teams, action_id)
    assert "INC-7331" in card.all_text() and "mandatory review" in card.all_text()
    assert [(a["title"], a["verb"]) for a in card.actions()] == [("No objection", "approve"), ("Object", "deny")]

    asked = click(chat, teams, card, "deny", "29:carol")  # an objection needs a reason: nothing recorded
    assert "An objection needs a reason" in json.dumps(asked["value"])
    objected = click(chat, teams, card, "deny", "29:carol", reason="the role outlived the incident")
    assert "Recorded as the review of break-glass action" in json.dumps(objected["value"])
    assert eventually(
        lambda: [
            r
            for r in audit_of(chat, action_id, "VoteRecorded")
            if json.loads(r.payload_json)["accepted"]
            and json.loads(r.payload_json)["vote"]["reason"] == "the role outlived the incident"
        ],
        timeout=30,
    ), "the objection is on the audit record"
    # the notice sent to the conversation now shows the review on record, its answers kept for others
    assert eventually(
        lambda: (
            "Reviews on record: human:carol objected: the role outlived the incident" in card.all_text()
            and card.actions()
        ),
        timeout=30,
    ), card.all_text()
    again = click(chat, teams, card, "approve", "29:carol")  # each reviewer reviews once
    assert "DuplicateVote" in json.dumps(again["value"])
    assert responder.status(action_id)["state"] == "succeeded"  # a review undoes nothing


@pytest.mark.parametrize(
    "case", ["no token", "foreign key", "wrong audience", "expired", "no expiry", "wrong service url"]
)
def test_unauthenticated_bot_requests_are_refused_and_counted_not_recorded(chat, agent, teams, case) -> None:
    action_id = grant(agent, "auditor")
    card = card_for(teams, action_id)
    token = {
        "no token": None,
        "foreign key": teams.inbound_token(key=rsa.generate_private_key(public_exponent=65537, key_size=2048)),
        "wrong audience": teams.inbound_token(audience="another-bot"),
        "expired": teams.inbound_token(expires_in=-3600),
        "no expiry": teams.inbound_token(expires_in=None),  # good forever, were it taken
        "wrong service url": teams.inbound_token(service_url="https://elsewhere.invalid/"),
    }[case]
    before = unattributed_refusals(chat, "teams", "unauthenticated_bot_request")
    answer = teams.post(chat.approval_url, teams.invoke(card, "approve", "29:carol"), token)
    assert answer.status_code == 401 and answer.json()["error"] == "unauthenticated_bot_request"
    # anyone who reaches the port can send one: counted, never written to the DLQ or the audit
    assert unattributed_refusals(chat, "teams", "unauthenticated_bot_request") == before + 1
    assert dead_letters_now(chat, "unauthenticated_bot_request") == []
    assert agent.status(action_id)["state"] == "needs_approval"


def test_a_replayed_activity_changes_nothing(chat, agent, teams) -> None:
    action_id = grant(agent, "db-admin")
    card = card_for(teams, action_id)
    activity, token = teams.invoke(card, "approve", "29:carol"), teams.inbound_token()
    assert teams.post(chat.approval_url, activity, token).status_code == 200
    replay = teams.post(chat.approval_url, activity, token).json()
    assert replay["type"] == "application/vnd.microsoft.activity.message" and "already received" in replay["value"]
    letters = eventually(
        lambda: [r for r in audit_of(chat, None, "DeadLetter") if "replayed_interaction" in r.payload_json]
    )
    assert letters and json.loads(letters[0].payload_json)["principal"] == "teams:aad-carol"
    assert agent.status(action_id)["state"] == "needs_approval"


def test_a_card_action_keyturn_never_offered_is_refused_and_recorded(chat, agent, teams) -> None:
    action_id = grant(agent, "db-admin")
    card = card_for(teams, action_id)
    activity = teams.invoke(card, "approve", "29:carol")
    activity["value"]["action"]["verb"] = "escalate"
    answer = teams.post(chat.approval_url, activity, teams.inbound_token()).json()
    assert "does not know this card action" in answer["value"] and "escalate" not in answer["value"]
    letters = eventually(
        lambda: [r for r in audit_of(chat, None, "DeadLetter") if "unsupported_interaction" in r.payload_json]
    )
    assert letters and json.loads(letters[0].payload_json)["principal"] == "teams:aad-carol"
    assert agent.status(action_id)["state"] == "needs_approval"


@pytest.mark.parametrize(
    "user, refusal, recorded_as",
    [
        ("29:nobody", "UnknownChatUser", "teams:29:nobody"),  # not a member the connector knows
        (
            "29:guest",
            "UnknownChatUser",
            "teams:aad-guest",
        ),  # a guest whose email local part is carol's: never human:carol
        ("29:guest-own-domain", "UnknownChatUser", "teams:aad-guest-own"),  # a guest with an email in the own domain
        ("29:ext-login", "UnknownChatUser", "teams:aad-ext-login"),  # a #EXT# login name
        ("29:mapped-guest", "UnknownChatUser", "teams:aad-mapped-guest"),  # the map does not make a guest an approver
        ("29:other-tenant", "UnknownChatUser", "teams:aad-other-tenant"),  # an account of another tenant
        ("29:elsewhere", "UnknownChatUser", "teams:aad-elsewhere"),  # a domain not in KEYTURN_TEAMS_EMAIL_DOMAINS
        (
            "29:partner",
            "ApproverNotAuthorised",
            "human:carol@partner.example",
        ),  # a listed partner domain keeps its name
        ("29:frank", "ApproverNotAuthorised", "human:frank"),
        ("29:alice", "SelfApprovalRefused", "human:alice"),
    ],
)
def test_answers_from_people_who_may_not_approve_are_refused_and_shown_on_their_card(
    chat, agent, teams, user, refusal, recorded_as
) -> None:
    action_id = grant(agent, "auditor")
    card = card_for(teams, action_id)
    answer = click(chat, teams, card, "approve", user)
    assert "Your answer was not applied" in json.dumps(answer["value"])
    assert refused(chat, action_id, refusal)
    votes = [json.loads(r.payload_json)["vote"]["approver"]["id"] for r in audit_of(chat, action_id, "VoteRecorded")]
    assert votes == [recorded_as], "recorded under the chat account, never under a principal it does not own"
    assert agent.status(action_id)["state"] == "needs_approval"
    assert "No approvals yet" in card.all_text()


# --- a card answer counts only for the action the card showed -----------------------------------------


def approval(chat, action_id: str) -> dict:
    answer = httpx.get(
        f"{chat.approval_url}/v1/approvals/{action_id}",
        headers={"Authorization": f"Bearer {mint(chat, 'human:carol')}"},
        timeout=30,
    )
    return answer.json() if answer.status_code == 200 else {}


def naming(activity: dict, action_id: str, digest: str) -> dict:
    """An invoke whose card data was edited to name another action."""
    activity["value"]["action"]["data"].update(action_id=action_id, payload_digest=digest)
    return activity


def refusals(chat, action_id: str) -> list[tuple[str, str, str]]:
    return [
        (v["vote"]["approver"]["id"], v["refusal"], v["message"])
        for v in (json.loads(r.payload_json) for r in audit_of(chat, action_id, "VoteRecorded"))
    ]


@pytest.mark.parametrize(
    "verb, digest_of", [("approve", "the other action"), ("approve", "the action shown"), ("deny", "the other action")]
)
def test_a_card_answer_edited_to_name_another_action_is_refused_recorded_and_changes_nothing(
    chat, agent, teams, verb, digest_of
) -> None:
    shown, other = grant(agent, "auditor"), grant(agent, "reader")
    card, other_card = card_for(teams, shown), card_for(teams, other)
    digest = approval(chat, other if digest_of == "the other action" else shown)["payload_digest"]
    activity = naming(teams.invoke(card, verb, "29:carol", inputs={"reason": "not this one"}), other, digest)
    answer = teams.post(chat.approval_url, activity, teams.inbound_token())
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["type"] == "application/vnd.microsoft.activity.message", "never the other action's card"
    assert "not applied" in body["value"] and f"posted for action {shown}" in body["value"]
    assert refused(chat, other, "MessageNotForAction")
    assert [r[:2] for r in refusals(chat, other)] == [("teams:aad-carol", "MessageNotForAction")]
    for action_id, shown_card in ((shown, card), (other, other_card)):
        assert agent.status(action_id)["state"] == "needs_approval"
        assert "No approvals yet" in shown_card.all_text() and shown_card.actions()

    # the same person on the card that shows the other action is heard
    click(chat, teams, other_card, "approve", "29:carol")
    assert agent.wait(other)["state"] == "succeeded"
    assert agent.status(shown)["state"] == "needs_approval"


def test_an_action_whose_card_never_reached_teams_cannot_be_answered_in_teams(chat, agent, teams) -> None:
    shown = grant(agent, "auditor")
    card = card_for(teams, shown)
    unposted = publish_decision(
        chat, ttl_s=600, groups=(("db-owners", 1),)
    )  # its only conversation is one the bot is not in
    opened = eventually(lambda: approval(chat, unposted), timeout=30)
    assert opened and opened["status"] == "pending"
    assert not teams.cards_about(unposted)

    answer = teams.post(
        chat.approval_url,
        naming(teams.invoke(card, "approve", "29:frank"), unposted, opened["payload_digest"]),
        teams.inbound_token(),
    )
    assert answer.status_code == 200 and "not applied" in answer.json()["value"]
    assert refused(chat, unposted, "MessageNotForAction")
    assert [r[0] for r in refusals(chat, unposted)] == ["teams:aad-frank"]
    assert approval(chat, unposted)["status"] == "pending" and approval(chat, shown)["status"] == "pending"


def test_a_card_refresh_shows_only_the_action_the_card_was_sent_for(chat, agent, teams) -> None:
    shown, other = grant(agent, "auditor"), grant(agent, "reader")
    card = card_for(teams, shown)
    forged = naming(teams.invoke(card, "refresh", "29:frank"), other, approval(chat, other)["payload_digest"])
    answer = teams.post(chat.approval_url, forged, teams.inbound_token()).json()
    assert answer["type"] == "application/vnd.microsoft.activity.message" and "not one Keyturn sent" in answer["value"]
    assert "reader" not in json.dumps(answer)
    assert "auditor" in json.dumps(click(chat, teams, card, "refresh", "29:frank")["value"])


SEEDED = "AKIAQWERTYUIOP123456 5500005555555559 seeded.victim@example.org"


def test_what_an_activity_carries_in_its_ids_is_never_written_down_and_odd_bodies_are_client_errors(
    chat, agent, teams
) -> None:
    action_id = grant(agent, "auditor")
    card = card_for(teams, action_id)
    token = teams.inbound_token()

    def post(body: bytes, with_token: bool = True) -> httpx.Response:
        headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if with_token else {})}
        return httpx.post(f"{chat.approval_url}/api/messages", content=body, headers=headers, timeout=30)

    deep = b"[" * 100_000 + b"]" * 100_000
    assert post(deep, with_token=False).status_code == 401  # the token is judged before the body is read
    assert post(deep).status_code == 400 and post(deep).json()["error"] == "malformed_activity"
    odd_verb = teams.invoke(card, "approve", "29:carol")
    odd_verb["value"]["action"]["verb"] = "\ud800"
    assert post(json.dumps(odd_verb).encode()).status_code == 400

    # a seeded secret where Teams puts ids: the card's action, the account, the activity id
    named = teams.invoke(card, "approve", "29:carol")
    named["value"]["action"]["data"]["action_id"] = SEEDED
    assert "names no action" in teams.post(chat.approval_url, named, token).json()["value"]
    stranger = teams.invoke(card, "approve", f"29:{SEEDED}", aad_object_id=SEEDED)
    stranger["id"] = SEEDED
    assert "not applied" in json.dumps(teams.post(chat.approval_url, stranger, token).json())
    refused_as = eventually(lambda: refusals(chat, action_id), timeout=30)
    assert refused_as[0][0].startswith("teams:sha256:") and refused_as[0][1] == "UnknownChatUser"
    assert agent.status(action_id)["state"] == "needs_approval"

    assert_not_on_approval_topics(chat, SEEDED.split())
    with psycopg.connect(
        chat.database_url, autocommit=True, options=f"-c search_path={schema_name(chat.namespace)}"
    ) as conn:
        kept = " ".join(str(row) for row in conn.execute("SELECT * FROM approval_interactions_seen"))
    assert "AKIAQWERTYUIOP123456" not in kept and "sha256:" in kept
