"""What approvers are shown in chat, and the checks on what comes back: pure functions, no I/O."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from datetime import UTC, datetime, timedelta
from urllib.parse import quote

import pytest
from slack_sdk.signature import SignatureVerifier

from keyturn.approval import slack_messages, teams_cards
from keyturn.approval.callbacks import host_allowed, sign, signature_valid
from keyturn.approval.channels import ChatTargets, ChatTargetsInvalid, principal_map
from keyturn.approval.slack import SlackChannel
from keyturn.approval.slack_interactions import (
    UNSIGNED,
    InteractionRefused,
    interaction_id,
    parse_payload,
    read_interaction,
    verify_request,
)
from keyturn.approval.views import MASKED, impact_view, masked_parameters, reason_missing
from keyturn.core.events import Digest, ImpactPreview
from tests.fakes.slack import block_problem

NOW = datetime(2026, 3, 4, 10, 0, tzinfo=UTC)
SECRET = "slack-signing-secret"


def view(**changes) -> dict:
    base = {
        "action_id": "0b6f1d4e-1111-4222-8333-444455556666",
        "action": "iam.role.grant",
        "resource": "iam://staging/roles/analyst",
        "parameters": {"principal": "human:bob", "role": "analyst"},
        "reason": "onboarding",
        "requester": "agent:reporter",
        "acting_for": ["human:alice"],
        "payload_digest": "sha256:" + "ab" * 32,
        "status": "pending",
        "groups": [{"name": "security", "have": 0, "need": 1, "approvers": []}],
        "summary": "No approvals yet (0 of 1), waiting for security",
        "policy_reasons": ["granting analyst needs security"],
        "expires_at": (NOW + timedelta(hours=1)).isoformat(),
        "escalation_group": "security-oncall",
        "incident_id": "INC-1",
    }
    return {**base, **changes}


def texts(message: dict) -> str:
    return json.dumps(message, ensure_ascii=False)


# --- Slack messages ---------------------------------------------------------------------------------


def test_a_pending_message_carries_approve_and_deny_bound_to_the_digest_shown() -> None:
    message = slack_messages.approval_message(view())
    buttons = [e for b in message["blocks"] if b["type"] == "actions" for e in b["elements"]]
    assert [b["action_id"] for b in buttons] == [slack_messages.APPROVE, slack_messages.DENY]
    assert all(
        json.loads(b["value"]) == {"action_id": view()["action_id"], "payload_digest": view()["payload_digest"]}
        for b in buttons
    )


@pytest.mark.parametrize("status", ["approved", "denied", "expired"])
def test_a_resolved_message_has_no_buttons_and_says_how_it_ended(status: str) -> None:
    message = slack_messages.approval_message(view(status=status, summary=f"{status} summary"))
    assert not [b for b in message["blocks"] if b["type"] == "actions"]
    assert slack_messages.STATUS_TITLES[status] in message["text"] and f"{status} summary" in texts(message)


def test_what_an_agent_wrote_cannot_ping_link_or_format_in_slack() -> None:
    hostile = "<!channel> please <https://evil.example|click here> & approve"
    message = slack_messages.approval_message(
        view(reason=hostile, resource="<@U0BOSS>", parameters={"note": "<!here>"})
    )
    shown = texts(message["blocks"])
    assert (
        "<!channel>" not in shown
        and "<https://evil" not in shown
        and "<@U0BOSS>" not in shown
        and "<!here>" not in shown
    )
    assert "&lt;!channel&gt;" in shown and "&amp; approve" in shown


# Text an agent or a person wrote, with everything mrkdwn would draw: emphasis, code, a bare URL
# (auto-linked), an emoji shortcode and a mention.
FORMATTED = "*bold* _italic_ ~strike~ `code` https://evil.example/verify :tada: <!here>"
FORMATTING = ["*bold*", "_italic_", "~strike~", "`code`", "https://evil.example", ":tada:", "<!here>", "&lt;!here"]


def text_objects(blocks: list) -> list[dict]:
    """Every text object a reader sees in ``blocks``: section texts and fields, context elements,
    headers (buttons are Keyturn's own)."""
    found = []
    for block in blocks:
        if isinstance(block.get("text"), dict):
            found.append(block["text"])
        found.extend(block.get("fields") or [])
        if block["type"] == "context":
            found.extend(e for e in block["elements"] if e.get("type") in ("plain_text", "mrkdwn"))
    return found


def assert_shown_as_written(blocks: list, *, expected_plain: int) -> None:
    """No formatted (mrkdwn) text carries any of what was written; it is all in plain_text objects,
    with emoji off; and Slack would take the blocks."""
    texts_ = text_objects(blocks)
    for text in texts_:
        if text["type"] == "mrkdwn":
            assert not any(bit in text["text"] for bit in FORMATTING), text
    holding = [t for t in texts_ if "*bold* _italic_ ~strike~ `code` https://evil.example/verify :tada:" in t["text"]]
    assert len(holding) >= expected_plain and all(t["type"] == "plain_text" and not t["emoji"] for t in holding)
    assert all("&lt;!here&gt;" in t["text"] and "<!here>" not in t["text"] for t in holding)
    assert block_problem(blocks) is None, block_problem(blocks)


def test_what_an_agent_or_an_approver_wrote_is_shown_as_written_in_an_approval_message() -> None:
    shown = view(
        resource=FORMATTED,
        reason=FORMATTED,
        parameters={"note": FORMATTED},
        policy_reasons=[FORMATTED],
        impact={"summary": FORMATTED},
        summary=f"Approved by human:carol_smith (1 of 2), waiting for {FORMATTED}",
    )
    message = slack_messages.approval_message(shown)
    assert_shown_as_written(message["blocks"], expected_plain=6)  # resource, reason, impact, policy, params, summary
    assert "<!here>" not in message["text"] and "&lt;!here&gt;" in message["text"]  # what notifications show
    labels = [t["text"] for t in text_objects(message["blocks"]) if t["type"] == "mrkdwn"]
    assert "*Reason*" in labels and "*Resource*" in labels  # Keyturn's own labels stay bold


def test_a_denial_s_reason_is_shown_as_written_in_the_message_the_modal_and_the_replies() -> None:
    denied = view(status="denied", summary=f"Denied by human:dave: {FORMATTED}", resource=FORMATTED)
    assert_shown_as_written(slack_messages.approval_message(denied)["blocks"], expected_plain=2)
    modal = slack_messages.deny_modal(denied, channel="C1", message_ts="1.2")
    assert_shown_as_written(modal["blocks"], expected_plain=1)
    for reply in (
        slack_messages.outcome_reply(denied, None),
        slack_messages.outcome_reply(denied, "<@U0ALICE>"),
        slack_messages.reminder_reply({**denied, "status": "pending"}, 0.5),
        slack_messages.escalation_reply(denied),
    ):
        assert_shown_as_written(reply["blocks"], expected_plain=1)
        assert "<!here>" not in reply["text"] and "&lt;!here&gt;" in reply["text"]  # what notifications show
    pinged = slack_messages.outcome_reply(denied, "<@U0ALICE>")
    assert pinged["blocks"][0]["text"] == {"type": "mrkdwn", "text": "<@U0ALICE>:"}  # the requester is still pinged
    reminder = slack_messages.reminder_reply({**denied, "status": "pending"}, 0.5)
    assert "<!date^" in reminder["blocks"][-1]["elements"][0]["text"]  # the deadline in each reader's time zone


def test_a_break_glass_notice_shows_the_incident_the_reason_and_the_reviews_as_written() -> None:
    shown = view(
        status="break_glass",
        break_glass=True,
        incident_id=FORMATTED,
        reason=FORMATTED,
        summary="Break-glass by agent:reporter for human:alice",
        reviews=[f"human:dave objected: {FORMATTED}"],
    )
    message = slack_messages.break_glass_message(shown)
    assert_shown_as_written(message["blocks"], expected_plain=3)  # incident, reason, reviews


def test_every_slack_message_keyturn_sends_has_a_shape_slack_takes() -> None:
    for status in ("pending", "approved", "denied", "expired"):
        assert block_problem(slack_messages.approval_message(view(status=status))["blocks"]) is None
    empty = view(reason="", policy_reasons=[], impact=None, parameters={})
    assert block_problem(slack_messages.approval_message(empty)["blocks"]) is None  # no empty text
    assert block_problem(slack_messages.approval_message(view(reason=None))["blocks"]) is None
    assert block_problem(slack_messages.break_glass_message(view(status="break_glass"))["blocks"]) is None
    assert block_problem(slack_messages.deny_modal(view(), channel="C1", message_ts="1")["blocks"]) is None
    for reply in (slack_messages.escalation_reply(view()), slack_messages.reminder_reply(view(), 0.8)):
        assert block_problem(reply["blocks"]) is None and reply["text"]


async def test_what_a_person_is_told_privately_is_plain_text_too() -> None:
    class Client:
        async def chat_postEphemeral(self, **sent) -> None:
            self.sent = sent

    client = Client()
    channel = SlackChannel(client, ChatTargets({}), {})  # type: ignore[arg-type]
    await channel.tell_user("C1", "U0DAVE", f":white_check_mark: Denied by human:dave: {FORMATTED}")
    [section] = client.sent["blocks"]
    assert section["text"]["type"] == "plain_text" and "*bold* _italic_" in section["text"]["text"]
    assert section["text"]["emoji"]  # Keyturn's leading :white_check_mark: is still drawn
    assert "<!here>" not in json.dumps(client.sent) and block_problem(client.sent["blocks"]) is None


def test_text_cut_to_slack_s_limits_never_ends_inside_an_escaped_character() -> None:
    message = slack_messages.approval_message(view(reason="&" * 5000, resource="<" * 5000))
    assert block_problem(message["blocks"]) is None
    for text in text_objects(message["blocks"]):
        assert not text["text"].endswith(("&", "&a", "&am", "&amp", "&l", "&lt")), text["text"][-8:]


def test_long_parameters_and_titles_stay_within_slack_limits() -> None:
    message = slack_messages.approval_message(view(action="x." + "a" * 400, parameters={"blob": "z" * 10_000}))
    for block in message["blocks"]:
        text = (block.get("text") or {}).get("text", "")
        assert len(text) <= (150 if block["type"] == "header" else 3000)
    assert "truncated" in texts(message)


def test_the_deny_modal_remembers_the_action_and_digest_it_was_opened_for() -> None:
    modal = slack_messages.deny_modal(view(), channel="C0SEC", message_ts="1.2")
    assert modal["callback_id"] == slack_messages.DENY_MODAL
    assert json.loads(modal["private_metadata"]) == {
        "action_id": view()["action_id"],
        "payload_digest": view()["payload_digest"],
        "channel": "C0SEC",
        "ts": "1.2",
    }
    assert modal["blocks"][-1]["block_id"] == slack_messages.REASON_BLOCK


def test_break_glass_notices_name_the_incident_and_offer_the_review_answers() -> None:
    shown = view(status="break_glass", break_glass=True, summary="Break-glass by agent:reporter for human:alice")
    message = slack_messages.break_glass_message(shown)
    assert "INC-1" in texts(message) and "mandatory review" in texts(message)
    [answers] = [b for b in message["blocks"] if b["type"] == "actions"]
    assert [(e["action_id"], e["text"]["text"]) for e in answers["elements"]] == [
        (slack_messages.APPROVE, "No objection"),
        (slack_messages.DENY, "Object…"),
    ]
    assert all(
        json.loads(e["value"]) == {"action_id": shown["action_id"], "payload_digest": shown["payload_digest"]}
        for e in answers["elements"]
    )  # bound to the action and the parameters shown, as an approval's
    modal = slack_messages.deny_modal(shown, channel="C0SEC", message_ts="1.2")
    assert modal["title"]["text"] == "Object to break-glass" and modal["submit"]["text"] == "Object"
    assert "audit record" in texts(modal)

    card = teams_cards.card_json(teams_cards.break_glass_card(shown))
    assert [(a["title"], a["verb"], a["data"]["payload_digest"]) for a in card["actions"]] == [
        ("No objection", "approve", shown["payload_digest"]),
        ("Object", "deny", shown["payload_digest"]),
    ]
    assert any(e.get("type") == "Input.Text" and e["id"] == teams_cards.REASON_INPUT for e in card["body"])
    assert card["refresh"]["action"]["verb"] == teams_cards.REFRESH
    counted = teams_cards.card_json(teams_cards.break_glass_card(shown, notice="Recorded as the review of …"))
    assert "Recorded as the review of" in texts(counted)
    assert "Reviews on record" not in texts(message) + texts(card)

    reviewed = {**shown, "reviews": ["human:carol: no objection", "human:dave objected: <@U1> *wrong* incident"]}
    edited = slack_messages.break_glass_message(reviewed)
    assert "Reviews on record" in texts(edited) and "human:carol: no objection" in texts(edited)
    assert "<@U1>" not in texts(edited)  # what a reviewer wrote cannot ping or format
    assert [b for b in edited["blocks"] if b["type"] == "actions"] == [answers]  # the answers stay for others
    edited_card = teams_cards.card_json(teams_cards.break_glass_card(reviewed))
    assert "Reviews on record: human:carol: no objection; human:dave objected" in texts(edited_card)
    assert [a["title"] for a in edited_card["actions"]] == ["No objection", "Object"]


# --- Teams cards ------------------------------------------------------------------------------------


def test_a_denial_and_an_objection_each_ask_for_their_reason_in_their_own_words() -> None:
    pending, reviewed, over = {"status": "pending"}, {"status": "break_glass"}, {"status": "approved"}
    assert reason_missing(pending, "deny", "  ") == "A denial needs a reason; the requester will see it."
    assert reason_missing(reviewed, "deny", None) == "An objection needs a reason; it goes on the audit record."
    assert reason_missing(pending, "deny", "wrong table") is None
    assert reason_missing(reviewed, "approve", None) is None  # no objection needs no reason
    assert reason_missing(over, "deny", None) is None  # the desk refuses it with its own words
    assert reason_missing(None, "deny", None) is None


def test_a_pending_card_offers_universal_actions_and_a_reason_box() -> None:
    card = teams_cards.card_json(teams_cards.approval_card(view()))
    assert [(a["type"], a["verb"], a["data"]["payload_digest"]) for a in card["actions"]] == [
        ("Action.Execute", "approve", view()["payload_digest"]),
        ("Action.Execute", "deny", view()["payload_digest"]),
    ]
    assert any(e.get("type") == "Input.Text" and e["id"] == teams_cards.REASON_INPUT for e in card["body"])
    assert card["refresh"]["action"]["verb"] == teams_cards.REFRESH


def test_slack_and_teams_show_the_impact_preview_apart_from_the_policy_reasons() -> None:
    preview = ImpactPreview(
        Digest("ab" * 32), "computed", "delete", NOW, rows=1204, method="exact", tables=("public.o",)
    )
    shown = view(impact=impact_view(preview))
    slack_text = texts(slack_messages.approval_message(shown))
    teams_text = texts(teams_cards.card_json(teams_cards.approval_card(shown)))
    for text in (slack_text, teams_text):
        assert "would delete 1,204 rows (exact count) in public.o" in text
        assert "granting analyst needs security" in text
    unknown = view(impact=impact_view(ImpactPreview(Digest("ab" * 32), "unavailable", "delete", NOW, detail="down")))
    assert "impact unknown: the preview failed (down)" in texts(slack_messages.approval_message(unknown))
    assert "Impact preview" not in texts(slack_messages.approval_message(view(impact=None)))


def test_a_resolved_card_has_no_actions_and_a_refused_answer_is_shown_in_red() -> None:
    card = teams_cards.card_json(
        teams_cards.approval_card(view(status="denied", summary="Denied by human:dave: no"), problem="not applied")
    )
    assert "actions" not in card and not any(e.get("type") == "Input.Text" for e in card["body"])
    assert any(run["text"] == "not applied" and run.get("color") == "Attention" for run in text_runs(card))


def text_runs(card: dict) -> list[dict]:
    return [run for e in card["body"] if e.get("type") == "RichTextBlock" for run in e["inlines"]]


HOSTILE_MARKDOWN = "[verify your account](https://evil.example) **now**\n- approve"


def test_what_an_agent_or_reviewer_wrote_cannot_link_or_format_in_teams() -> None:
    shown = view(reason=HOSTILE_MARKDOWN, resource=HOSTILE_MARKDOWN, parameters={"note": HOSTILE_MARKDOWN})
    cards = [
        teams_cards.card_json(teams_cards.approval_card(shown)),
        teams_cards.card_json(teams_cards.break_glass_card({**shown, "reviews": [HOSTILE_MARKDOWN]})),
    ]
    for card in cards:
        # Markdown is read in a TextBlock and in a Fact's value; a TextRun is shown as written
        assert not [e for e in card["body"] if e.get("type") in ("TextBlock", "FactSet")]
        shown_as_written = " ".join(run["text"] for run in text_runs(card))
        assert "Reason: " + HOSTILE_MARKDOWN in shown_as_written and "Resource: " + HOSTILE_MARKDOWN in shown_as_written
        assert all(run["type"] == "TextRun" for run in text_runs(card))
    assert "Reviews on record: " + HOSTILE_MARKDOWN in " ".join(run["text"] for run in text_runs(cards[1]))


# --- who hears about what ----------------------------------------------------------------------------


def test_targets_follow_the_groups_with_a_catch_all_and_no_repeats() -> None:
    targets = ChatTargets.from_json(
        json.dumps({"security": ["C0SEC", "U0DAVE"], "db-owners": "C0SEC", "*": ["C0ALL"]}), "X"
    )
    assert targets.targets_for(["security", "db-owners", "platform"]) == ("C0SEC", "U0DAVE", "C0ALL")
    assert targets.every_target() == ("C0SEC", "U0DAVE", "C0ALL")
    assert ChatTargets.from_json("", "X").targets_for(["security"]) == ()


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", '{"security": [3]}', '{"security": ""}'])
def test_a_broken_channel_map_is_refused_with_the_setting_named(text: str) -> None:
    with pytest.raises(ChatTargetsInvalid, match="KEYTURN_SLACK_CHANNELS"):
        ChatTargets.from_json(text, "KEYTURN_SLACK_CHANNELS")


def test_a_user_map_must_name_principals() -> None:
    assert principal_map('{"U0CAROL": "human:carol"}', "M") == {"U0CAROL": "human:carol"}
    with pytest.raises(ChatTargetsInvalid):
        principal_map('{"U0CAROL": "carol"}', "M")


def test_masked_paths_from_the_decision_are_hidden_wherever_they_are() -> None:
    parameters = {"password": "p", "headers": {"authorization": "Bearer x", "accept": "json"}, "role": "analyst"}
    shown = masked_parameters(
        parameters, ("parameters.password", "parameters.headers.authorization", "parameters.missing.deep", "resource")
    )
    assert shown == {"password": MASKED, "headers": {"authorization": MASKED, "accept": "json"}, "role": "analyst"}
    assert parameters["password"] == "p", "the event's own copy is left alone"


# --- Slack requests -----------------------------------------------------------------------------------


def slack_signed(body: bytes, timestamp: int, secret: str = SECRET) -> str:
    return "v0=" + hmac.new(secret.encode(), f"v0:{timestamp}:".encode() + body, hashlib.sha256).hexdigest()


def test_a_request_signed_by_slack_within_five_minutes_is_accepted() -> None:
    now = time.time()
    body = b"payload=%7B%7D"
    verify_request(SignatureVerifier(SECRET), body, str(int(now) - 299), slack_signed(body, int(now) - 299), now)


@pytest.mark.parametrize(
    "timestamp_offset, secret, error",
    [
        (-301, SECRET, "stale_timestamp"),
        (+301, SECRET, "stale_timestamp"),
        (0, "another-secret", "forged_signature"),
    ],
)
def test_stale_or_forged_requests_are_refused(timestamp_offset: int, secret: str, error: str) -> None:
    now = time.time()
    body = b"payload=%7B%7D"
    timestamp = int(now) + timestamp_offset
    with pytest.raises(InteractionRefused) as refused:
        verify_request(SignatureVerifier(SECRET), body, str(timestamp), slack_signed(body, timestamp, secret), now)
    assert refused.value.error == error and refused.value.status == 401


@pytest.mark.parametrize("timestamp", [None, "", "yesterday"])
def test_a_request_without_a_timestamp_is_refused(timestamp) -> None:
    with pytest.raises(InteractionRefused) as refused:
        verify_request(SignatureVerifier(SECRET), b"", timestamp, "v0=00", time.time())
    assert refused.value.error == "missing_timestamp"


@pytest.mark.parametrize("timestamp", ["\xb2", "\u0661\u0662\u0663", "1" * 5000, "-1", "1e9", "0x10", " "])
def test_a_timestamp_that_is_not_a_unix_time_is_refused_as_unsigned_not_as_a_crash(timestamp: str) -> None:
    with pytest.raises(InteractionRefused) as refused:
        verify_request(SignatureVerifier(SECRET), b"", timestamp, "v0=00", time.time())
    assert (refused.value.status, refused.value.error) == (400, "missing_timestamp")
    assert refused.value.error in UNSIGNED  # counted, never recorded: nobody signed it


def test_a_tampered_body_fails_the_signature() -> None:
    now = int(time.time())
    signature = slack_signed(b"payload=%7B%22a%22%3A1%7D", now)
    with pytest.raises(InteractionRefused, match="does not match"):
        verify_request(SignatureVerifier(SECRET), b"payload=%7B%22a%22%3A2%7D", str(now), signature, now)


def test_interactions_are_told_apart_by_team_and_trigger() -> None:
    assert interaction_id({"team": {"id": "T1"}, "user": {"id": "U1"}, "trigger_id": "123.abc"}) == "T1:123.abc"
    assert interaction_id({"team": {"id": "T1"}, "user": {"id": "U1"}, "actions": [{"action_ts": "9.1"}]}) == "T1:9.1"
    with pytest.raises(InteractionRefused):
        interaction_id({"team": {"id": "T1"}, "user": {"id": "U1"}})


@pytest.mark.parametrize(
    "body", [b"", b"payload=not-json", b"other=1", b"payload=%7B%22type%22%3A%22block_actions%22%7D"]
)
def test_bodies_that_are_not_interactions_are_refused(body: bytes) -> None:
    with pytest.raises(InteractionRefused) as refused:
        parse_payload(body)
    assert refused.value.error == "malformed_payload"


# --- requester webhooks --------------------------------------------------------------------------------


def test_webhook_signatures_bind_secret_time_and_body() -> None:
    body, now = b'{"state":"approved"}', int(time.time())
    header = sign(b"s3cret", body, now)
    assert header.startswith(f"t={now},v1=")
    assert signature_valid(b"s3cret", body, header, now)
    assert not signature_valid(b"other", body, header, now)
    assert not signature_valid(b"s3cret", body + b" ", header, now)
    assert not signature_valid(b"s3cret", body, header, now + 301), "an old delivery is refused by the receiver"


@pytest.mark.parametrize("timestamp", ["\xb2", "1" * 5000, ""])
def test_a_webhook_signature_with_a_malformed_time_is_refused_not_a_crash(timestamp: str) -> None:
    body = b'{"state":"approved"}'
    mac = sign(b"s3cret", body, 0).split("v1=", 1)[1]
    assert not signature_valid(b"s3cret", body, f"t={timestamp},v1={mac}", time.time())


@pytest.mark.parametrize(
    "url, allowed",
    [
        ("https://agent.example.internal/hook", True),
        ("http://127.0.0.1:8123/hook", True),
        ("http://127.0.0.1:9999/hook", False),
        ("https://metadata.google.internal/computeMetadata", False),
        ("file:///etc/passwd", False),
        ("https://agent.example.internal.evil.example/hook", False),
    ],
)
def test_webhooks_only_go_to_allowed_hosts(url: str, allowed: bool) -> None:
    assert host_allowed(url, frozenset({"agent.example.internal", "127.0.0.1:8123"})) is allowed


# --- what a signed request may still get wrong ------------------------------------------------------


def test_a_body_that_is_not_utf8_is_refused_as_unsigned_not_as_a_crash() -> None:
    now = int(time.time())
    with pytest.raises(InteractionRefused) as refused:
        verify_request(SignatureVerifier(SECRET), b"payload=\xff\xfe", str(now), "v0=00", now)
    assert (refused.value.status, refused.value.error) == (401, "forged_signature")


def test_a_signed_body_that_is_not_utf8_passes_the_signature_and_fails_as_malformed() -> None:
    now, body = int(time.time()), b"payload=\xff\xfe"
    verify_request(SignatureVerifier(SECRET), body, str(now), slack_signed(body, now), now)
    with pytest.raises(InteractionRefused) as refused:
        parse_payload(body)
    assert (refused.value.status, refused.value.error) == (400, "malformed_payload")


CLICK = {
    "type": "block_actions",
    "team": {"id": "T1"},
    "user": {"id": "U1"},
    "trigger_id": "1.2",
    "channel": {"id": "C1"},
    "container": {"message_ts": "9.9"},
    "actions": [
        {
            "action_id": slack_messages.APPROVE,
            "value": '{"action_id": "a", "payload_digest": "sha256:00"}',
            "action_ts": "9.1",
        }
    ],
}


def test_a_well_formed_click_is_read_into_the_answer_it_carries() -> None:
    click = read_interaction(CLICK)
    assert (click.user, click.team, click.button, click.channel, click.message_ts) == (
        "U1",
        "T1",
        slack_messages.APPROVE,
        "C1",
        "9.9",
    )
    assert click.shown == {"action_id": "a", "payload_digest": "sha256:00"}


@pytest.mark.parametrize(
    "change, field",
    [
        ({"team": "T1"}, "team"),
        ({"actions": {"action_id": "keyturn_approve"}}, "actions"),
        ({"actions": ["keyturn_approve"]}, "actions"),
        ({"channel": ["C1"]}, "channel"),
        ({"container": 5}, "container"),
        ({"trigger_id": {"id": 1}}, "trigger_id"),
        ({"team": {}, "user": {"id": "U1", "team_id": 7}}, "user.team_id"),
    ],
)
def test_a_signed_click_whose_fields_are_not_what_slack_sends_is_refused_naming_the_field(
    change: dict, field: str
) -> None:
    payload = {**CLICK, **change}
    with pytest.raises(InteractionRefused) as refused:
        interaction_id(payload)
        read_interaction(payload)
    assert (refused.value.status, refused.value.error) == (400, "malformed_payload")
    assert field in str(refused.value)


def test_an_unknown_button_is_refused_without_repeating_what_was_sent() -> None:
    sent = "x_ghp_BD8nS3llTM440I8QAUwEB3hy7LnHlP2ED106"
    click = {**CLICK, "actions": [{**CLICK["actions"][0], "action_id": sent}]}
    with pytest.raises(InteractionRefused) as refused:
        read_interaction(click)
    assert (refused.value.status, refused.value.error) == (400, "unsupported_interaction")
    assert sent not in str(refused.value) and "ghp_" not in str(refused.value)
    assert slack_messages.APPROVE in str(refused.value)


@pytest.mark.parametrize(
    "change, what",
    [
        ({"message": {"ts": "8.8"}}, "container.message_ts and message.ts"),
        ({"container": {"message_ts": "9.9", "channel_id": "C2"}}, "channel.id and container.channel_id"),
    ],
)
def test_a_click_that_names_two_different_messages_is_refused(change: dict, what: str) -> None:
    with pytest.raises(InteractionRefused, match=what) as refused:
        read_interaction({**CLICK, **change})
    assert (refused.value.status, refused.value.error) == (400, "malformed_payload")


def test_a_click_is_bound_to_its_message_wherever_slack_names_it() -> None:
    only_message = {**CLICK, "container": {"type": "message"}, "message": {"ts": "9.9"}}
    only_container = {**CLICK, "channel": None, "container": {"message_ts": "9.9", "channel_id": "C1"}}
    for payload in (CLICK, only_message, only_container):
        click = read_interaction(payload)
        assert (click.channel, click.message_ts) == ("C1", "9.9")


def test_a_deny_modal_is_bound_to_the_message_its_metadata_names() -> None:
    metadata = {"action_id": "a", "payload_digest": "sha256:00", "channel": "C1", "ts": "9.9"}
    modal = slack_messages.deny_modal(view(), channel="C1", message_ts="9.9")
    assert json.loads(modal["private_metadata"]) == {
        **metadata,
        "action_id": view()["action_id"],
        "payload_digest": view()["payload_digest"],
    }
    state = {"values": {slack_messages.REASON_BLOCK: {slack_messages.REASON_BLOCK: {"value": "no"}}}}
    submitted = read_interaction(
        {
            "type": "view_submission",
            "user": {"id": "U1", "team_id": "T1"},
            "view": {
                "callback_id": slack_messages.DENY_MODAL,
                "private_metadata": json.dumps(metadata),
                "state": state,
            },
        }
    )
    assert (submitted.shown["action_id"], submitted.channel, submitted.message_ts, submitted.user_team) == (
        "a",
        "C1",
        "9.9",
        "T1",
    )


@pytest.mark.parametrize(
    "change, field",
    [
        ({"user": {"id": "U\x001"}}, "user"),
        ({"trigger_id": "1.\x002"}, "trigger_id"),
        ({"channel": {"id": "C\x001"}}, "channel.id"),
        ({"actions": [{**CLICK["actions"][0], "value": '{"action_id": "a\\u0000b"}'}]}, "button value"),
        ({"actions": [{**CLICK["actions"][0], "value": '{"payload_digest": "sha256:00"}'}]}, "button value"),
    ],
)
def test_a_signed_click_naming_what_no_record_can_hold_is_refused_naming_the_field(change: dict, field: str) -> None:
    payload = {**CLICK, **change}
    with pytest.raises(InteractionRefused) as refused:
        parse_payload(b"payload=" + quote(json.dumps(payload)).encode())
        interaction_id(payload)
        read_interaction(payload)
    assert (refused.value.status, refused.value.error) == (400, "malformed_payload")
    assert field in str(refused.value)


def test_a_deny_reason_with_a_nul_character_is_refused_naming_the_field() -> None:
    view = {
        "callback_id": slack_messages.DENY_MODAL,
        "private_metadata": '{"action_id": "a"}',
        "state": {"values": {slack_messages.REASON_BLOCK: {slack_messages.REASON_BLOCK: {"value": "ticket-\x00-42"}}}},
    }
    with pytest.raises(InteractionRefused) as refused:
        read_interaction({"type": "view_submission", "user": {"id": "U1"}, "view": view})
    assert (refused.value.status, refused.value.error) == (400, "malformed_payload")
    assert "reason holds a NUL character" in str(refused.value) and "ticket" not in str(refused.value)


def test_a_deny_reason_that_is_not_text_is_refused() -> None:
    view = {
        "callback_id": slack_messages.DENY_MODAL,
        "private_metadata": '{"action_id": "a"}',
        "state": {"values": {slack_messages.REASON_BLOCK: {slack_messages.REASON_BLOCK: {"value": ["no"]}}}},
    }
    with pytest.raises(InteractionRefused, match="reason"):
        read_interaction({"type": "view_submission", "user": {"id": "U1"}, "view": view})


@pytest.mark.parametrize(
    "activity, where",
    [
        ({}, "the activity"),
        (
            {
                "type": "invoke",
                "name": "no/such/invoke",
                "id": "1",
                "channelId": "msteams",
                "from": {"id": "29:x"},
                "conversation": {"id": "19:c"},
                "recipient": {"id": "28:bot"},
                "serviceUrl": "https://smba.invalid/",
            },
            "invoke",
        ),
    ],
)
def test_teams_activities_the_sdk_cannot_read_are_named_before_it_answers_500(activity: dict, where: str) -> None:
    from keyturn.approval.teams import activity_problem

    problem = activity_problem(activity)
    assert problem is not None and problem.startswith(where)


def test_a_teams_card_click_is_an_activity_the_sdk_reads() -> None:
    from keyturn.approval.teams import activity_problem

    assert (
        activity_problem(
            {
                "type": "invoke",
                "name": "adaptiveCard/action",
                "id": "1",
                "channelId": "msteams",
                "from": {"id": "29:x"},
                "conversation": {"id": "19:c"},
                "recipient": {"id": "28:bot"},
                "serviceUrl": "https://smba.invalid/",
                "value": {"action": {"type": "Action.Execute", "verb": "approve", "data": {"action_id": "a"}}},
            }
        )
        is None
    )
