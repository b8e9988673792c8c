"""The policy stage with a fake OPA, decision record and broker: OPA's answer becomes the
decision, OPA away for too long becomes a denial, a redelivery republishes the kept decision,
and a request the stage fails on ends denied (policy_error)."""

from __future__ import annotations

import dataclasses
import functools

import pytest

from keyturn.bus import loop
from keyturn.bus.codec import registry
from keyturn.bus.loop import Stage, run
from keyturn.bus.warrants import Warrants
from keyturn.core.events import ActionDecided, ActionRequested, DeadLetter, DecisionOutcome
from keyturn.faults import until_done
from keyturn.policy.decider import PolicyDecider, PolicyStage
from tests.fakes.service_ports import FakeDecisions, FakeOpa, ListSource, Record, fake_publisher
from tests.unit.service_events import KEYRING, requested

NEEDS_APPROVAL = {
    "decision": {
        "outcome": "needs_approval",
        "reasons": ["production"],
        "approvals": {"groups": [{"name": "db-owners"}]},
    }
}


WARRANTS_REQUESTED = Warrants(KEYRING, ("unit.actions.requested",))


def answers(outcome: str, **extra) -> dict:
    return {"decision": {"outcome": outcome, "reasons": [f"because {outcome}"], **extra}}


def stage_with(opa: FakeOpa, *, unavailable_after_s: float = 30.0, clock=None):
    publisher, send = fake_publisher("policy")
    decider = PolicyDecider(opa, unavailable_after_s, retry_every_s=0, **({"clock": clock} if clock else {}))
    return PolicyStage(decider, FakeDecisions(), publisher, WARRANTS_REQUESTED), send


def decisions(send) -> list[ActionDecided]:
    return [e for e in send.events("unit.actions.decided")]


@pytest.mark.parametrize(
    "answer, outcome",
    [
        (answers("allowed"), DecisionOutcome.ALLOWED),
        (answers("denied"), DecisionOutcome.DENIED),
        (NEEDS_APPROVAL, DecisionOutcome.NEEDS_APPROVAL),
        ({"decision": {"outcome": "maybe"}}, DecisionOutcome.DENIED),  # malformed: denied, saying why
        ({"no": "decision"}, DecisionOutcome.DENIED),
    ],
)
async def test_opas_answer_becomes_the_published_decision(answer, outcome) -> None:
    stage, send = stage_with(FakeOpa(lambda _: answer))
    await stage.decide(requested("a1"), sent_by_intake(requested("a1")))
    [decision] = decisions(send)
    assert (decision.action_id, decision.outcome) == ("a1", outcome)
    assert (decision.provenance.policy_revision, decision.provenance.decision_id) == ("sha256:fake", "decision-1#0")
    if outcome is DecisionOutcome.NEEDS_APPROVAL:
        assert [g.name for g in decision.approvals.groups] == ["db-owners"]


async def test_the_input_opa_gets_names_the_request() -> None:
    inputs: list[dict] = []
    stage, _ = stage_with(FakeOpa(lambda document: inputs.append(document) or answers("allowed")))
    await stage.decide(
        requested("a1", resource="postgres://prod/analytics/orders"),
        sent_by_intake(requested("a1", resource="postgres://prod/analytics/orders")),
    )
    assert (inputs[0]["action_id"], inputs[0]["environment"]) == ("a1", "production")


async def test_opa_away_longer_than_the_patience_is_a_denial_never_an_allow() -> None:
    now = [0.0]

    def clock() -> float:
        now[0] += 10.0  # each look at the clock is ten seconds later
        return now[0]

    opa = FakeOpa(lambda _: answers("allowed"))
    opa.down = True
    stage, send = stage_with(opa, unavailable_after_s=30.0, clock=clock)
    await stage.decide(requested("a1"), sent_by_intake(requested("a1")))
    [decision] = decisions(send)
    assert decision.outcome is DecisionOutcome.DENIED
    assert decision.reasons[0].startswith("policy_unavailable:")
    assert opa.queries >= 2  # it was asked again while it was away


async def test_opa_back_within_the_patience_decides_normally() -> None:
    opa = FakeOpa(lambda _: answers("allowed"))
    opa.down = True
    original = opa.query

    async def back_on_second_try(path, document):
        if opa.queries == 1:
            opa.down = False
        return await original(path, document)

    opa.query = back_on_second_try
    stage, send = stage_with(opa)
    await stage.decide(requested("a1"), sent_by_intake(requested("a1")))
    assert [d.outcome for d in decisions(send)] == [DecisionOutcome.ALLOWED]


async def test_a_redelivered_request_republishes_the_kept_decision_without_asking_opa_again() -> None:
    opa = FakeOpa(lambda _: answers("allowed"))
    stage, send = stage_with(opa)
    await stage.decide(requested("a1"), sent_by_intake(requested("a1")))
    opa.answer = lambda _: answers("denied")  # a new policy would answer differently now
    await stage.decide(requested("a1"), sent_by_intake(requested("a1")))
    first, second = send.acked
    assert first == second
    assert opa.queries == 1


async def test_a_request_the_stage_fails_on_is_dead_lettered_and_ends_denied(monkeypatch) -> None:
    monkeypatch.setattr(loop, "until_done", functools.partial(until_done, first_wait_s=0.001))

    def broken(_document):
        raise KeyError("a bug in the stage")

    opa = FakeOpa(broken)
    stage, send = stage_with(opa)
    request = requested("a1")
    source = ListSource([[sent_by_intake(request, offset=5)]])
    await run(source, Stage(stage.publisher, (ActionRequested,), handle=stage.decide, on_failure=stage.on_failure))
    [decision] = decisions(send)
    assert decision.outcome is DecisionOutcome.DENIED
    assert decision.reasons[0].startswith("policy_error:")
    [letter] = [e for e in send.events("unit.dlq") if isinstance(e, DeadLetter)]
    assert (letter.error_type, letter.offset) == ("handler_failed", 5)
    assert source.committed  # the stream goes on
    # a redelivery after the failure republishes the denial, whatever OPA says now
    opa.answer = lambda _: answers("allowed")
    await stage.decide(request, sent_by_intake(request))
    assert [d.outcome for d in decisions(send)] == [DecisionOutcome.DENIED, DecisionOutcome.DENIED]


def request_records(*action_ids: str, offset: int = 0) -> list[Record]:
    return [sent_by_intake(requested(a), offset=offset + n) for n, a in enumerate(action_ids)]


def sent_by_intake(request: ActionRequested, offset: int = 0) -> Record:
    """``request`` as the intake sends it: a record with the intake's warrant (``bus.warrants``)."""
    key, value = request.action_id.encode(), registry().encode_event(request)
    headers = WARRANTS_REQUESTED.signed("unit.actions.requested", key, value, [])
    return Record("unit.actions.requested", 0, offset, key, value, headers=headers)


async def test_a_request_anyone_but_the_intake_wrote_to_the_topic_is_not_decided() -> None:
    """A request on the topic names whatever requester it likes and skipped the intake's checks:
    without the intake's warrant it is dead-lettered, and no decision is made or sent for it."""
    opa = FakeOpa(lambda _: answers("allowed"))
    stage, send = stage_with(opa)
    genuine = sent_by_intake(requested("a2"), offset=1)
    forged = [
        Record("unit.actions.requested", 0, 0, b"a1", registry().encode_event(requested("a1"))),
        dataclasses.replace(genuine, offset=2, key=b"a3", value=registry().encode_event(requested("a3"))),
    ]
    await run(ListSource([[forged[0], genuine, forged[1]]]), batch_stage(stage))
    assert [d.action_id for d in decisions(send)] == ["a2"] and opa.queries == 1
    letters = [e for e in send.events("unit.dlq") if isinstance(e, DeadLetter)]
    assert [(letter.offset, letter.error_type) for letter in letters] == [
        (0, "unwarranted_request"),
        (2, "unwarranted_request"),
    ]
    await stage.on_failure(requested("a1"), forged[0], RuntimeError("irrelevant"))
    assert [d.action_id for d in decisions(send)] == ["a2"], "nor does a failure on it end it denied"


def batch_stage(stage: PolicyStage) -> Stage:
    return Stage(
        stage.publisher,
        (ActionRequested,),
        handle=stage.decide,
        on_failure=stage.on_failure,
        handle_many=stage.decide_batch,
    )


async def test_a_batch_is_one_opa_query_and_each_decision_keeps_its_own_provenance() -> None:
    outcome_of = {"a1": "allowed", "a2": "denied", "a3": "allowed"}
    opa = FakeOpa(lambda document: answers(outcome_of[document["action_id"]]))
    stage, send = stage_with(opa)
    source = ListSource([request_records("a1", "a2", "a3")])
    await run(source, batch_stage(stage))
    got = decisions(send)
    assert [(d.action_id, d.outcome.value) for d in got] == [("a1", "allowed"), ("a2", "denied"), ("a3", "allowed")]
    assert opa.queries == 1
    assert [d.provenance.decision_id for d in got] == ["decision-1#0", "decision-1#1", "decision-1#2"]
    assert len({str(d.provenance.input_digest) for d in got}) == 3  # each its own input
    assert all(d.provenance.policy_revision == "sha256:fake" for d in got)
    assert len(source.committed) == 1


async def test_a_batch_republishes_kept_decisions_and_asks_opa_only_for_the_new_ones() -> None:
    asked: list[str] = []
    opa = FakeOpa(lambda document: asked.append(document["action_id"]) or answers("allowed"))
    stage, send = stage_with(opa)
    await run(ListSource([request_records("a1")]), batch_stage(stage))
    opa.answer = lambda document: asked.append(document["action_id"]) or answers("denied")
    await run(ListSource([request_records("a1", "a2", "a1")]), batch_stage(stage))
    assert asked == ["a1", "a2"]
    first, *again = [value for topic, key, value in send.acked if key == b"a1"]
    assert again == [first, first]  # the kept decision, once per delivery
    assert [d.outcome.value for d in decisions(send) if d.action_id == "a2"] == ["denied"]


async def test_opa_away_denies_the_whole_batch_and_an_invalid_answer_too() -> None:
    now = [0.0]

    def clock() -> float:
        now[0] += 10.0
        return now[0]

    opa = FakeOpa(lambda _: answers("allowed"))
    opa.down = True
    stage, send = stage_with(opa, unavailable_after_s=30.0, clock=clock)
    await run(ListSource([request_records("a1", "a2")]), batch_stage(stage))
    assert [(d.outcome.value, d.reasons[0].split(":")[0]) for d in decisions(send)] == [
        ("denied", "policy_unavailable"),
        ("denied", "policy_unavailable"),
    ]

    class ShortAnswer(FakeOpa):
        async def query(self, path, input_document):
            answer = await super().query(path, input_document)
            return type(answer)({"decisions": answer.result["decisions"][:1]}, answer.decision_id)

    stage, send = stage_with(ShortAnswer(lambda _: answers("allowed")))
    await run(ListSource([request_records("b1", "b2")]), batch_stage(stage))
    assert [(d.outcome.value, d.reasons[0].split(":")[0]) for d in decisions(send)] == [
        ("denied", "policy_invalid"),
        ("denied", "policy_invalid"),
    ]


async def test_a_batch_that_fails_is_handled_per_request_and_only_the_failing_one_ends_policy_error(
    monkeypatch,
) -> None:
    monkeypatch.setattr(loop, "until_done", functools.partial(until_done, first_wait_s=0.001))

    def answer(document):
        if document["action_id"] == "bad":
            raise KeyError("a bug in the stage")
        return answers("allowed")

    stage, send = stage_with(FakeOpa(answer))
    source = ListSource([request_records("a1", "bad", "a2")])
    await run(source, batch_stage(stage))
    outcomes = {d.action_id: (d.outcome.value, d.reasons[0].split(":")[0]) for d in decisions(send)}
    assert outcomes == {
        "a1": ("allowed", "because allowed"),
        "a2": ("allowed", "because allowed"),
        "bad": ("denied", "policy_error"),
    }
    [letter] = [e for e in send.events("unit.dlq") if isinstance(e, DeadLetter)]
    assert (letter.error_type, letter.offset) == ("handler_failed", 1)
    assert len(source.committed) == 1
