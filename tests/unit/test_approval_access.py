"""Who sees what in the approval service, and what it refuses at its doors, through its HTTP routes
(the API, the console and its history) wired on in-memory fakes: what a caller notices, no server.

An approval is shown to the chain that asked for it and to approvers (members of any group in the
policy's data); anyone else is answered exactly as for an action that is not on record.
"""

from __future__ import annotations

import re
from datetime import timedelta

import httpx
import pytest
from fastapi import FastAPI

from keyturn.approval.console import SIGN_IN_ERRORS, mount_console
from keyturn.approval.console_history import mount_history
from keyturn.approval.http import mount_routes
from keyturn.approval.runtime import ApprovalRuntime
from keyturn.bus.codec import registry
from keyturn.config import Settings
from keyturn.core import events
from keyturn.core.approval import API_VOTE_CHANNELS, VOTE_CHANNELS, shown_channel
from keyturn.core.principal import Principal, PrincipalKind
from tests.fakes.approval_store import Broker, FakePolicyEngine, InMemoryApprovalStore
from tests.fakes.history_store import MemoryHistoryStore
from tests.unit.test_approval_desk import DIGEST, MEMBERS, OPENED, TOPICS, decision

REQUESTER = "agent:reporter>human:alice"  # the token of decision()'s requester: the agent acting for alice
OUTSIDERS = ["agent:other", "human:mallory"]  # valid tokens, in no approver group and not in the chain
IDS_NAMING_NOTHING = ["a\x00b", "a\nb", "x" * 201, "AKIA6CYI2KVFDEKCVYOT"]  # the last: what masking hides names nothing


class Verifier:
    """Takes the bearer token as the principal: ``id`` or ``agent-id>acting-for`` (the real verifier
    is tested on its own)."""

    def verify(self, token: str) -> Principal:
        name, _, acting_for = token.partition(">")
        kind = PrincipalKind.AGENT if name.startswith("agent:") else PrincipalKind.HUMAN
        return Principal(name, kind, (acting_for,) if acting_for else ())


class Service:
    """The approval service's HTTP app on fakes, as ``app.py`` mounts it."""

    def __init__(self) -> None:
        self.broker, self.store = Broker(), InMemoryApprovalStore()
        self.opa = FakePolicyEngine(MEMBERS)
        self.runtime = ApprovalRuntime(Settings(callback_secret="unit"), TOPICS, self.broker)
        self.runtime.wire(self.store, self.opa).clock = lambda: OPENED + timedelta(seconds=1)
        self.history = MemoryHistoryStore()
        self.app = FastAPI()
        mount_routes(self.app, self.runtime.desk, Verifier)
        console = mount_console(self.app, self.runtime.desk, Verifier, None)

        async def history_of() -> MemoryHistoryStore:
            return self.history

        mount_history(self.app, console, history_of)

    def client(self, who: str) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.app),
            base_url="http://approval",
            headers={"Authorization": f"Bearer {who}"},
        )

    async def opened(self, **kwargs) -> events.ActionDecided:
        decided = decision(**kwargs)
        desk = await self.runtime.desk()
        assert await desk.take_decision(decided, registry().encode_event(decided)) in ("opened", "break_glass")
        return decided

    def recorded(self) -> list:
        return [
            e
            for e in (registry().decode_event(v) for _, _, v in self.broker.sent)
            if isinstance(e, events.VoteRecorded)
        ]


def as_unknown(answer: httpx.Response, action_id: str) -> tuple:
    """What a caller can tell from an answer about ``action_id``, with the id itself left out."""
    return answer.status_code, answer.headers.get("retry-after"), answer.text.replace(action_id, "<id>")


# --- the inbox ------------------------------------------------------------------------------------


async def test_the_inbox_lists_only_what_the_caller_may_decide() -> None:
    service = Service()
    decided = await service.opened()

    async def inbox(who: str) -> list[str]:
        async with service.client(who) as client:
            answer = await client.get("/v1/approvals")
        assert answer.status_code == 200
        return [item["action_id"] for item in answer.json()]

    assert await inbox("human:carol") == [decided.action_id]  # in security, the group it needs
    assert await inbox("human:erin") == []  # an approver, but of another group
    assert await inbox("human:alice") == []  # in security, but the chain that asked
    for outsider in OUTSIDERS:
        assert await inbox(outsider) == []


async def test_an_approver_who_answered_no_longer_finds_it_in_the_inbox() -> None:
    service = Service()
    decided = await service.opened(min_approvals=2)
    async with service.client("human:carol") as carol:
        voted = await carol.post(
            f"/v1/approvals/{decided.action_id}/votes", json={"choice": "approve", "payload_digest": str(DIGEST)}
        )
        assert voted.status_code == 200 and voted.json()["status"] == "pending"
        assert (await carol.get("/v1/approvals")).json() == []
    async with service.client("human:dave") as dave:
        assert [item["action_id"] for item in (await dave.get("/v1/approvals")).json()] == [decided.action_id]


async def test_the_inbox_says_try_again_while_the_policy_engine_is_away() -> None:
    service = Service()
    await service.opened()
    service.opa.down = True
    async with service.client("human:carol") as carol:
        answer = await carol.get("/v1/approvals")
    assert answer.status_code == 503 and answer.json()["detail"]["error"] == "policy_unavailable"
    assert answer.headers["retry-after"]


async def test_the_console_inbox_lists_only_what_the_person_may_decide() -> None:
    service = Service()
    decided = await service.opened()
    async with service.client("human:carol") as carol:
        assert f"/console/actions/{decided.action_id}" in (await carol.get("/console")).text
    async with service.client("human:mallory") as mallory:
        page = await mallory.get("/console")
    assert page.status_code == 200 and 'id="inbox-empty"' in page.text
    assert decided.action_id not in page.text


# --- one approval -----------------------------------------------------------------------------------


@pytest.mark.parametrize("break_glass", [False, True])
@pytest.mark.parametrize("who", ["human:carol", "human:erin", "agent:reporter", "human:alice", REQUESTER])
async def test_an_approval_is_shown_to_approvers_and_to_the_chain_that_asked(who: str, break_glass: bool) -> None:
    service = Service()
    decided = await service.opened(break_glass=break_glass)
    async with service.client(who) as client:
        answer = await client.get(f"/v1/approvals/{decided.action_id}")
    assert answer.status_code == 200
    assert answer.json()["action_id"] == decided.action_id and answer.json()["reason"] == "onboarding"


@pytest.mark.parametrize("break_glass", [False, True])
@pytest.mark.parametrize("outsider", OUTSIDERS)
async def test_anyone_else_is_answered_as_for_an_action_not_on_record(outsider: str, break_glass: bool) -> None:
    service = Service()
    decided = await service.opened(break_glass=break_glass)
    unknown = decision().action_id  # never taken: nothing is on record for it
    async with service.client(outsider) as client:
        hidden = await client.get(f"/v1/approvals/{decided.action_id}")
        missing = await client.get(f"/v1/approvals/{unknown}")
    assert as_unknown(hidden, decided.action_id) == as_unknown(missing, unknown)
    assert hidden.status_code == 425  # the answer an unknown id gets (its decision may be on its way)
    for shown in ("onboarding", "agent:reporter", "human:alice", "analyst", str(DIGEST)):
        assert shown not in hidden.text


@pytest.mark.parametrize("outsider", OUTSIDERS)
async def test_a_console_page_is_an_outsider_s_as_for_an_action_not_on_record(outsider: str) -> None:
    service = Service()
    decided = await service.opened()
    unknown = decision().action_id
    async with service.client(outsider) as client:
        for waited in (0, 10):  # reloading, then given up: the page of an action not on record
            hidden = await client.get(f"/console/actions/{decided.action_id}", params={"waited": waited})
            missing = await client.get(f"/console/actions/{unknown}", params={"waited": waited})
            assert as_unknown(hidden, decided.action_id) == as_unknown(missing, unknown)
            assert "onboarding" not in hidden.text and "agent:reporter" not in hidden.text
        assert hidden.status_code == 404
    async with service.client("human:carol") as carol:
        page = await carol.get(f"/console/actions/{decided.action_id}")
    assert page.status_code == 200 and "onboarding" in page.text and 'id="vote"' in page.text


async def test_an_outsider_s_vote_is_still_refused_and_recorded() -> None:
    service = Service()
    decided = await service.opened()
    async with service.client("human:mallory") as mallory:
        answer = await mallory.post(
            f"/v1/approvals/{decided.action_id}/votes", json={"choice": "approve", "payload_digest": str(DIGEST)}
        )
    assert answer.status_code == 403 and answer.json()["detail"]["error"] == "ApproverNotAuthorised"
    assert [(r.vote.approver.id, r.refusal) for r in service.recorded()] == [("human:mallory", "ApproverNotAuthorised")]


async def test_while_the_policy_engine_is_away_an_outsider_still_cannot_tell_what_exists() -> None:
    service = Service()
    decided = await service.opened()
    service.opa.down = True
    unknown = decision().action_id
    async with service.client("human:mallory") as mallory:
        hidden = await mallory.get(f"/v1/approvals/{decided.action_id}")
        missing = await mallory.get(f"/v1/approvals/{unknown}")
    assert as_unknown(hidden, decided.action_id) == as_unknown(missing, unknown)
    assert hidden.status_code == 503 and hidden.json()["detail"]["error"] == "policy_unavailable"
    async with service.client(REQUESTER) as requester:  # its own needs no policy engine
        assert (await requester.get(f"/v1/approvals/{decided.action_id}")).status_code == 200
    async with service.client("human:carol") as carol:
        page = await carol.get(f"/console/actions/{decided.action_id}")
    assert page.status_code == 503 and page.headers["retry-after"] and "onboarding" not in page.text


async def test_the_history_and_the_approvals_share_who_is_an_approver() -> None:
    service = Service()
    async with service.client("human:erin") as erin:
        assert (await erin.get("/console/history/act-1")).status_code == 404  # let in; nothing kept for it
    async with service.client("human:mallory") as mallory:
        assert (await mallory.get("/console/history/act-1")).status_code == 403
    service.opa.down = True
    async with service.client("human:erin") as erin:
        assert (await erin.get("/console/history/act-1")).status_code == 503


# --- a vote is a person's own --------------------------------------------------------------------------

DAVE_FOR_CAROL = "human:dave>human:carol"  # a token: sub human:dave, act [human:carol]


async def test_a_vote_through_a_delegated_token_is_refused_so_two_approvers_means_two_people() -> None:
    service = Service()
    decided = await service.opened(min_approvals=2)
    vote = {"choice": "approve", "payload_digest": str(DIGEST)}
    async with service.client(DAVE_FOR_CAROL) as dave_for_carol:
        delegated = await dave_for_carol.post(f"/v1/approvals/{decided.action_id}/votes", json=vote)
    async with service.client("human:carol") as carol:
        own = await carol.post(f"/v1/approvals/{decided.action_id}/votes", json=vote)
        shown = (await carol.get(f"/v1/approvals/{decided.action_id}")).json()
    assert delegated.status_code == 403
    assert delegated.json()["detail"]["error"] == "DelegatedVoteRefused"
    assert "acting for human:carol" in delegated.json()["detail"]["message"]
    assert own.status_code == 200 and own.json()["status"] == "pending"
    assert shown["status"] == "pending" and shown["summary"].startswith("Approved by human:carol (1 of 2)")
    recorded = [(r.vote.approver.id, r.vote.approver.chain, r.accepted, r.refusal) for r in service.recorded()]
    assert recorded == [
        ("human:dave", ("human:carol",), False, "DelegatedVoteRefused"),  # recorded like any refused vote
        ("human:carol", (), True, None),
    ]


async def test_a_delegated_token_is_offered_nothing_to_see_or_decide_and_its_console_vote_is_refused() -> None:
    service = Service()
    decided = await service.opened()
    async with service.client(DAVE_FOR_CAROL) as dave_for_carol:
        inbox = (await dave_for_carol.get("/v1/approvals")).json()
        shown = await dave_for_carol.get(f"/v1/approvals/{decided.action_id}")
        page = await dave_for_carol.get(f"/console/actions/{decided.action_id}")
        history = await dave_for_carol.get("/console/history")
        csrf = re.search(r'name="csrf" value="([^"]+)"', (await dave_for_carol.get("/console")).text).group(1)
        form = await dave_for_carol.post(
            f"/console/actions/{decided.action_id}/vote",
            data={"choice": "approve", "reason": "", "payload_digest": str(DIGEST), "csrf": csrf},
        )
    assert inbox == []
    # an approver reads actions in their own name only, as they vote: acting for someone, they are no approver
    assert shown.status_code == 425 and decided.request.reason not in shown.text
    assert decided.request.reason not in page.text and 'id="vote"' not in page.text
    assert history.status_code == 403
    # the vote is refused and recorded under the caller; the page answered shows nothing of the action
    assert form.status_code == 425 and decided.request.reason not in form.text
    assert [(r.vote.channel, r.refusal) for r in service.recorded()] == [("console", "DelegatedVoteRefused")]
    assert service.store.tables.approvals[decided.action_id].status == "pending"


# --- ids that cannot name an action -----------------------------------------------------------------


@pytest.mark.parametrize("action_id", IDS_NAMING_NOTHING)
async def test_an_id_that_cannot_name_an_action_is_not_found_and_nothing_is_recorded(action_id: str) -> None:
    service = Service()
    await service.opened()
    path = re.sub("[\x00\n]", lambda m: f"%{ord(m.group()):02X}", action_id)
    vote = {"choice": "approve", "payload_digest": str(DIGEST)}
    async with service.client("human:carol") as carol:
        shown = await carol.get(f"/v1/approvals/{path}")
        voted = await carol.post(f"/v1/approvals/{path}/votes", json=vote)
        page = await carol.get(f"/console/actions/{path}")
        form = await carol.post(f"/console/actions/{path}/vote", data={**vote, "csrf": "any"})
        history = await carol.get(f"/console/history/{path}")
    assert (shown.status_code, voted.status_code) == (404, 404)
    assert shown.json()["detail"]["error"] == voted.json()["detail"]["error"] == "UnknownAction"
    assert (page.status_code, form.status_code, history.status_code) == (404, 404, 404)
    assert "\x00" not in page.text + form.text + history.text
    assert "AKIA6CYI2KVFDEKCVYOT" not in shown.text + voted.text + page.text + form.text + history.text
    assert service.broker.sent == []  # nothing recorded, not even a refusal


# --- a vote's reason ----------------------------------------------------------------------------------


@pytest.mark.parametrize("body", ['"ticket-\\u0000-42"', '"ticket-\\ud800-42"'])
async def test_a_reason_no_record_can_hold_is_refused_naming_the_field_and_no_vote_is_recorded(body: str) -> None:
    service = Service()
    decided = await service.opened()
    async with service.client("human:carol") as carol:
        answer = await carol.post(
            f"/v1/approvals/{decided.action_id}/votes",
            content=f'{{"choice": "deny", "payload_digest": "{DIGEST}", "reason": {body}}}'.encode(),
            headers={"Content-Type": "application/json"},
        )
        shown = (await carol.get(f"/v1/approvals/{decided.action_id}")).json()
    assert answer.status_code == 422
    assert [p.split(":")[0] for p in answer.json()["detail"]["problems"]] == ["reason"]
    assert "ticket-" not in answer.text  # the field is named, never its value
    assert service.recorded() == [] and service.store.tables.votes == []
    assert shown["status"] == "pending" and shown["summary"].startswith("No approvals yet")


@pytest.mark.parametrize(
    ("reason", "says"),
    [
        ("no\x00pe", "reason: holds a NUL character"),
        # refused, never cut: a cut at 2,000 characters left the start of a token in clear
        ("x" * 1990 + " ghp_" + "P5aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789", "longer than 2000 characters"),
    ],
)
async def test_a_console_reason_that_cannot_be_kept_as_written_is_refused_and_no_vote_is_recorded(
    reason: str, says: str
) -> None:
    service = Service()
    decided = await service.opened()
    async with service.client("human:carol") as carol:
        page = await carol.get(f"/console/actions/{decided.action_id}")
        csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
        answer = await carol.post(
            f"/console/actions/{decided.action_id}/vote",
            data={"choice": "deny", "reason": reason, "payload_digest": str(DIGEST), "csrf": csrf},
        )
    assert answer.status_code == 422 and says in answer.text
    assert "ghp_" not in answer.text
    assert service.recorded() == [] and service.store.tables.votes == []
    assert service.store.tables.approvals[decided.action_id].status == "pending"


# --- a vote's channel -----------------------------------------------------------------------------------

SECRETS = ["bob@example.com", "AKIAIOSFODNN7EXAMPLE"]
ODD_CHANNELS = [*SECRETS, "email", "", "CLI"]
# the service's own adapters name themselves: a caller of the API cannot claim to be one of them
ADAPTER_CHANNELS = sorted(VOTE_CHANNELS - API_VOTE_CHANNELS)


@pytest.mark.parametrize("channel", [*ODD_CHANNELS, *ADAPTER_CHANNELS])
async def test_a_channel_keyturn_does_not_have_is_refused_naming_the_field_and_recorded_under_the_caller(
    channel: str,
) -> None:
    service = Service()
    decided = await service.opened()
    vote = {"choice": "approve", "payload_digest": str(DIGEST), "channel": channel}
    async with service.client("human:carol") as carol:
        answer = await carol.post(f"/v1/approvals/{decided.action_id}/votes", json=vote)
    assert answer.status_code == 422
    assert [p.split(":")[0] for p in answer.json()["detail"]["problems"]] == ["channel"]
    assert service.recorded() == [] and service.store.tables.votes == []
    letters = [
        e for e in (registry().decode_event(v) for _, _, v in service.broker.sent) if isinstance(e, events.DeadLetter)
    ]
    assert [(letter.principal, letter.error_type) for letter in letters] == [("human:carol", "invalid_body")]
    if channel:  # the field is named, never its value
        assert channel not in answer.text
    if channel in SECRETS:  # and what was recorded holds no secret in clear (an excerpt is masked)
        assert all(channel not in v.decode(errors="replace") for _, _, v in service.broker.sent)


def test_the_api_takes_only_the_channels_its_own_callers_are() -> None:
    assert {"api", "cli"} == API_VOTE_CHANNELS and ADAPTER_CHANNELS == ["console", "slack", "teams"]


@pytest.mark.parametrize("channel", ADAPTER_CHANNELS)
async def test_a_vote_posted_to_the_api_is_never_recorded_as_from_the_console_slack_or_teams(channel: str) -> None:
    service = Service()
    decided = await service.opened()
    vote = {"choice": "approve", "payload_digest": str(DIGEST), "channel": channel}
    async with service.client("human:carol") as carol:
        answer = await carol.post(f"/v1/approvals/{decided.action_id}/votes", json=vote)
        shown = (await carol.get(f"/v1/approvals/{decided.action_id}")).json()
    assert answer.status_code == 422 and answer.json()["detail"]["problems"][0].startswith("channel:")
    assert service.recorded() == [] and shown["status"] == "pending"  # nothing counted, from anywhere
    async with service.client("human:carol") as carol:  # the same vote, as what it is, counts
        taken = await carol.post(f"/v1/approvals/{decided.action_id}/votes", json={**vote, "channel": "api"})
    assert taken.status_code == 200 and [r.vote.channel for r in service.recorded()] == ["api"]


@pytest.mark.parametrize("channel", sorted(API_VOTE_CHANNELS))
async def test_every_channel_an_api_caller_may_claim_is_taken(channel: str) -> None:
    service = Service()
    decided = await service.opened()
    vote = {"choice": "approve", "payload_digest": str(DIGEST), "channel": channel}
    async with service.client("human:carol") as carol:
        answer = await carol.post(f"/v1/approvals/{decided.action_id}/votes", json=vote)
    assert answer.status_code == 200, answer.text
    assert [r.vote.channel for r in service.recorded()] == [channel]


def test_a_channel_recorded_before_the_set_was_closed_is_shown_as_other() -> None:
    assert [shown_channel(c) for c in ("slack", "bob@example.com", None, 7)] == ["slack", "other", "other", "other"]


# --- what a link may put on a console page ------------------------------------------------------------


async def test_the_sign_in_page_shows_the_words_of_a_known_error_code_and_nothing_of_any_other_text() -> None:
    service = Service()
    async with service.client("nobody") as browser:
        sent = await browser.post(
            "/console/sign-in", data={"nonce": "n", "name": "carol"}, cookies={"keyturn_sign_in": "n"}
        )
        known = await browser.get(sent.headers["location"])
        expired = await browser.get("/console/sign-in", params={"error": "token_expired"})
        planted = await browser.get("/console/sign-in", params={"error": "Call 555-0100 with AKIAIOSFODNN7EXAMPLE"})
        words = await browser.get("/console/sign-in", params={"error": SIGN_IN_ERRORS["bad_name"]})
    assert sent.headers["location"] == "/console/sign-in?error=no_token"  # no dev sign-in: a token is needed
    assert SIGN_IN_ERRORS["no_token"] in known.text
    assert "That token was refused (expired)." in expired.text
    for page in (planted, words):
        assert page.status_code == 200 and 'role="alert"' not in page.text
    assert "AKIA" not in planted.text and "555" not in planted.text


async def test_the_history_search_goes_back_into_its_box_masked() -> None:
    service = Service()
    async with service.client("human:erin") as erin:
        page = await erin.get("/console/history", params={"q": "AKIAIOSFODNN7EXAMPLE"})
        plain = await erin.get("/console/history", params={"q": "db.export"})
    assert page.status_code == 200 and "AKIAIOSFODNN7EXAMPLE" not in page.text
    assert 'value="db.export"' in plain.text


@pytest.mark.parametrize("search", [{"q": "a\x00b"}, {"q": "a\x1b[2Jb"}, {"outcome": "denied\x00"}])
async def test_a_history_search_no_record_can_hold_is_refused_with_a_page_saying_so(search) -> None:
    service = Service()
    async with service.client("human:erin") as erin:
        page = await erin.get("/console/history", params=search)
    assert page.status_code == 400 and "nothing was searched" in page.text, page.text
    assert "\x00" not in page.text and "\x1b" not in page.text
