"""The approval API and the service's clock, wired as ``runtime.py`` wires them but on in-memory
fakes: what a client of ``/v1/approvals`` sees, with no server."""

from __future__ import annotations

from datetime import timedelta

import httpx
from fastapi import FastAPI

from keyturn.approval.http import mount_routes
from keyturn.approval.runtime import ApprovalRuntime
from keyturn.bus.codec import registry
from keyturn.config import Settings
from keyturn.core import events
from keyturn.core.principal import Principal, PrincipalKind
from tests.fakes.approval_store import Broker, FakePolicyEngine, InMemoryApprovalStore
from tests.unit.test_approval_desk import DIGEST, MEMBERS, OPENED, TOPICS, TTL, decision


class Verifier:
    """Takes the bearer token as the principal's name (the real verifier is tested on its own)."""

    def verify(self, token: str) -> Principal:
        return Principal(token, PrincipalKind.HUMAN)


def wired() -> tuple[ApprovalRuntime, InMemoryApprovalStore, Broker, httpx.AsyncClient]:
    broker, store = Broker(), InMemoryApprovalStore()
    runtime = ApprovalRuntime(Settings(callback_secret="unit"), TOPICS, broker)
    runtime.wire(store, FakePolicyEngine(MEMBERS)).clock = lambda: OPENED + timedelta(seconds=1)
    app = FastAPI()
    mount_routes(app, runtime.desk, Verifier)
    client = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://approval",
        headers={"Authorization": "Bearer human:carol"},
    )
    return runtime, store, broker, client


async def test_an_approval_not_open_yet_is_answered_425_with_retry_after_then_taken() -> None:
    runtime, _, broker, client = wired()
    decided = decision()
    vote = {"choice": "approve", "payload_digest": str(DIGEST)}
    async with client:
        shown = await client.get(f"/v1/approvals/{decided.action_id}")
        early = await client.post(f"/v1/approvals/{decided.action_id}/votes", json=vote)

        assert (shown.status_code, shown.headers["retry-after"], shown.json()["detail"]["error"]) == (
            425,
            "1",
            "not_open_yet",
        )
        assert (early.status_code, early.headers["retry-after"], early.json()["detail"]["error"]) == (
            425,
            "1",
            "not_open_yet",
        )
        assert broker.sent == []  # nothing recorded

        await (await runtime.desk()).take_decision(decided, registry().encode_event(decided))
        assert (await client.get(f"/v1/approvals/{decided.action_id}")).json()["payload_digest"] == str(DIGEST)
        taken = await client.post(f"/v1/approvals/{decided.action_id}/votes", json=vote)

    assert taken.status_code == 200 and taken.json()["status"] == "approved"
    assert [type(registry().decode_event(v)).__name__ for _, _, v in broker.sent] == [
        "VoteRecorded",
        "ApprovalResolved",
    ]


async def test_a_refused_vote_is_published_by_the_route_without_a_flush() -> None:
    runtime, _, broker, client = wired()
    decided = decision()
    await (await runtime.desk()).take_decision(decided, registry().encode_event(decided))
    async with client:
        refused = await client.post(
            f"/v1/approvals/{decided.action_id}/votes",
            headers={"Authorization": "Bearer human:bob"},
            json={"choice": "approve", "payload_digest": str(DIGEST)},
        )

    assert refused.status_code == 403 and refused.json()["detail"]["error"] == "ApproverNotAuthorised"
    assert [registry().decode_event(v).refusal for _, _, v in broker.sent] == ["ApproverNotAuthorised"]


async def test_the_clock_expires_what_is_due_and_publishes_it() -> None:
    runtime, store, broker, _ = wired()
    decided = decision()
    desk = await runtime.desk()
    await desk.take_decision(decided, registry().encode_event(decided))
    desk.clock = lambda: OPENED + TTL + timedelta(seconds=1)

    await runtime.keep_time()

    resolved = [registry().decode_event(v) for _, _, v in broker.sent]
    assert [(type(e).__name__, e.outcome) for e in resolved] == [("ApprovalResolved", events.ResolutionOutcome.EXPIRED)]
    assert store.tables.approvals[decided.action_id].status == "expired"


async def test_a_vote_naming_its_choice_twice_is_refused_not_read_one_way() -> None:
    runtime, _, broker, client = wired()
    decided = decision()
    desk = await runtime.desk()
    await desk.take_decision(decided, registry().encode_event(decided))
    body = f'{{"choice":"deny","payload_digest":"{DIGEST}","choice":"approve"}}'.encode()
    async with client:
        answer = await client.post(
            f"/v1/approvals/{decided.action_id}/votes", content=body, headers={"Content-Type": "application/json"}
        )
    assert answer.status_code == 422 and "the same key twice" in answer.text, answer.text
    assert not [
        e for e in (registry().decode_event(v) for _, _, v in broker.sent) if isinstance(e, events.VoteRecorded)
    ]


async def test_a_vote_body_that_is_not_utf8_is_refused_and_recorded_under_the_caller() -> None:
    runtime, _, broker, client = wired()
    decided = decision()
    await (await runtime.desk()).take_decision(decided, registry().encode_event(decided))
    body = f'{{"choice":"approve","payload_digest":"{DIGEST}"}}'.encode("utf-16")
    async with client:
        answer = await client.post(
            f"/v1/approvals/{decided.action_id}/votes", content=body, headers={"Content-Type": "application/json"}
        )
    assert answer.status_code == 400 and "UTF-8" in answer.text, answer.text
    [letter] = [e for e in (registry().decode_event(v) for _, _, v in broker.sent) if isinstance(e, events.DeadLetter)]
    assert letter.principal == "human:carol" and letter.error_type == "unparseable_body"
