"""The real intake HTTP app on in-memory ports, served over a real socket: what the SDK's unit
tests talk to. Routes, Problem bodies, Retry-After, idempotency and the long-poll are the
intake's own; only the store, the broker and the token keys are fakes (``service_ports``).

The test moves an action along its lifecycle with ``decide``/``resolve``/``execute``, which feed
the status follower exactly as the lifecycle topics would. ``lose_answers(n)`` makes the next
``n`` answers to ``POST /v1/actions`` arrive only after the client gave up on them (the request
itself is taken), the way an answer is lost to a timeout.
"""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import uvicorn

from keyturn.bus.codec import registry
from keyturn.bus.warrants import Warrants
from keyturn.core.canonical import canonical_json
from keyturn.core.events import (
    ActionDecided,
    ActionExecuted,
    ActionRequested,
    ApprovalRequirement,
    ApprovalResolved,
    DecisionOutcome,
    Digest,
    ExecutionOutcome,
    GroupRequirement,
    Provenance,
    ResolutionOutcome,
    Vote,
    VoteChoice,
)
from keyturn.core.principal import Principal, PrincipalKind
from keyturn.identity import InvalidToken
from keyturn.intake.app import create_app
from keyturn.intake.status import StatusFollower
from keyturn.intake.submissions import Intake
from keyturn.intake.wiring import IntakeWiring
from keyturn.masking.protect import parameter_protector
from keyturn.masking.sealing import Keyring
from tests.conftest import free_port
from tests.fakes.service_ports import FakeActionStore, Record, fake_publisher

AGENT_TOKEN = "agent-token"
AGENT = Principal("agent:reporter", PrincipalKind.AGENT, ("human:alice",))


class TokenVerifier:
    """Accepts the tokens of ``valid`` (a set the test may change)."""

    def __init__(self) -> None:
        self.valid = {AGENT_TOKEN}

    def verify(self, token: str) -> Principal:
        if token not in self.valid:
            raise InvalidToken("bad_signature", "the token's signature does not verify")
        return AGENT


class _Server(uvicorn.Server):
    def install_signal_handlers(self) -> None:  # runs in a thread; the test process keeps its signals
        pass


class IntakeServer:
    def __init__(self) -> None:
        self.store = FakeActionStore()
        self.publisher, self.send = fake_publisher("intake")
        self.intake = Intake(self.store, self.publisher, parameter_protector(Keyring.generate("sdk-unit")))
        # lifecycle events reach it as the services send them: records with their warrants (``_apply``)
        topics = self.publisher.topics
        self.warrants = Warrants(Keyring.generate("sdk-unit"), (topics.decided, topics.resolved, topics.executed))
        self.follower = StatusFollower(self.store, self.publisher, self.warrants)
        self.verifier = TokenVerifier()
        self.requests: list[tuple[str, str, str | None]] = []  # (method, path, authorization)
        self._lose = 0
        self.loop: asyncio.AbstractEventLoop | None = None
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"

    def lose_answers(self, count: int) -> None:
        self._lose = count

    async def _wire(self) -> IntakeWiring:
        self.loop = asyncio.get_running_loop()
        return IntakeWiring(
            store=self.store,
            intake=self.intake,
            publisher=self.publisher,
            follower=self.follower,
            verifier=self.verifier,
            jwks={"keys": []},
            health={"database": self.store.ping},
        )

    def _app(self) -> Any:
        app = create_app(wire=self._wire)

        async def recording(scope: dict[str, Any], receive: Any, send: Any) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            authorization = dict(scope["headers"]).get(b"authorization")
            self.requests.append((scope["method"], scope["path"], authorization.decode() if authorization else None))
            if scope["method"] == "POST" and self._lose > 0:
                self._lose -= 1
                held: list[dict[str, Any]] = []

                async def hold(message: dict[str, Any]) -> None:
                    held.append(message)

                await app(scope, receive, hold)  # the request is taken and stored ...
                await asyncio.sleep(1.0)  # ... and its answer comes after the client gave up
                for message in held:
                    try:
                        await send(message)
                    except Exception:
                        return
                return
            await app(scope, receive, send)

        return recording

    def __enter__(self) -> IntakeServer:
        config = uvicorn.Config(self._app(), host="127.0.0.1", port=self.port, log_level="warning", lifespan="on")
        self.server = _Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("the fake intake did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *_: Any) -> None:
        self.server.should_exit = True
        self.thread.join(5)

    def on_server(self, coroutine: Any) -> Any:
        """Run ``coroutine`` on the server's event loop and return its result."""
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(5)

    # -- the lifecycle, as the other services would move it ----------------------------------

    def latest(self) -> str:
        """The id of the action submitted last."""
        return list(self.store.rows)[-1]

    def submitted(self) -> ActionRequested:
        """The request submitted last, as the intake stored it."""
        return _decode(self.store.rows[self.latest()].requested_event)

    def _apply(self, event: Any) -> None:
        assert self.follower.stage.handle_batch is not None
        topics = self.publisher.topics
        topic = {"ActionDecided": topics.decided, "ApprovalResolved": topics.resolved}.get(
            type(event).__name__, topics.executed
        )
        key, value = event.action_id.encode(), registry().encode_event(event)
        record = Record(topic, 0, 0, key, value, headers=self.warrants.signed(topic, key, value, []))
        self.on_server(self.follower.stage.handle_batch([(event, record)]))

    def decide(
        self,
        action_id: str,
        outcome: str,
        reasons: tuple[str, ...] = (),
        groups: tuple[str, ...] = (),
        pending_ttl_s: int = 3600,
    ) -> ActionDecided:
        request = _decode(self.store.rows[action_id].requested_event)
        approvals = (
            ApprovalRequirement(tuple(GroupRequirement(g) for g in groups), pending_ttl_s, 600) if groups else None
        )
        decided = ActionDecided(
            event_id=f"decided:{action_id}",
            action_id=action_id,
            outcome=DecisionOutcome(outcome),
            provenance=Provenance("rev-1", "decision-1", Digest("0" * 64), _later(request, 1)),
            decided_at=_later(request, 1),
            request=request,
            reasons=reasons,
            approvals=approvals,
        )
        self._apply(decided)
        return decided

    def resolve(self, decided: ActionDecided, outcome: str, approver: str = "human:carol", why: str = "") -> None:
        choice = VoteChoice.APPROVE if outcome == "approved" else VoteChoice.DENY
        vote = Vote(
            Principal(approver, PrincipalKind.HUMAN),
            choice,
            decided.request.payload_digest,
            decided.decided_at + timedelta(seconds=1),
            why or None,
        )
        self._apply(
            ApprovalResolved(
                event_id=f"resolved:{decided.action_id}",
                action_id=decided.action_id,
                outcome=ResolutionOutcome(outcome),
                resolved_at=decided.decided_at + timedelta(seconds=2),
                decision=decided,
                votes=(vote,) if outcome != "expired" else (),
                summary=why or f"{outcome} by {approver}",
            )
        )

    def execute(
        self, action_id: str, outcome: str, result: Any = None, plugin: str = "sql", error: str | None = None
    ) -> None:
        request = _decode(self.store.rows[action_id].requested_event)
        self._apply(
            ActionExecuted(
                event_id=f"executed:{action_id}",
                action_id=action_id,
                outcome=ExecutionOutcome(outcome),
                plugin=plugin,
                payload_digest=request.payload_digest,
                finished_at=_later(request, 5),
                result_json=canonical_json(result) if result is not None else None,
                error=error,
            )
        )

    def after(self, seconds: float, move: Any) -> threading.Timer:
        """Call ``move()`` after ``seconds``, while the client waits."""
        timer = threading.Timer(seconds, move)
        timer.start()
        return timer

    def on_submission(self, *steps: Any, delay: float = 0.0, timeout: float = 30.0) -> threading.Thread:
        """Once the next action is stored, wait ``delay`` seconds and call each step with its id, while the
        client waits. Keyed to the submission itself, not to a guessed time after the call began: on a busy
        machine the first submission of a module can take longer than any such guess."""
        seen = len(self.store.rows)

        def watch() -> None:
            deadline = time.monotonic() + timeout
            while len(self.store.rows) <= seen:
                if time.monotonic() > deadline:
                    return  # nothing submitted: the test's own wait fails, with its own message
                time.sleep(0.005)
            time.sleep(delay)
            action_id = list(self.store.rows)[seen]
            for step in steps:
                step(action_id)

        thread = threading.Thread(target=watch, daemon=True)
        thread.start()
        return thread


def _decode(data: bytes) -> ActionRequested:
    event = registry().decode_event(data)
    assert isinstance(event, ActionRequested)
    return event


def _later(request: ActionRequested, seconds: float) -> datetime:
    return max(request.requested_at, datetime.now(UTC)) + timedelta(seconds=seconds)


def answering(status: dict) -> httpx.MockTransport:
    """A transport answering every submission with ``status``'s id and every read with ``status``: for the
    states the app above cannot produce yet (``approved_external`` with a receipt, states the SDK does
    not know)."""

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            return httpx.Response(202, json={"action_id": status["action_id"], "state": "requested"})
        return httpx.Response(200, json=status)

    return httpx.MockTransport(handler)


def external_result(receipt: dict) -> dict:
    """An ``approved_external`` action's result as the external executor writes it: the receipt inside."""
    return {"performed_by": "external", "note": "Keyturn did not perform this action", "receipt": receipt}


def shaped(state: str, terminal: bool, **extra) -> dict:
    """A status answer in the shape of ``GET /v1/actions/{id}``."""
    return {
        "action_id": "8d0f4b5e-1c7a-4b57-9a8e-0d1f6f1c2b3a",
        "action": "iam.role.grant",
        "resource": "iam://staging/roles/analyst",
        "requester": "agent:reporter",
        "state": state,
        "terminal": terminal,
        "reasons": [],
        "result": None,
        "payload_digest": "sha256:" + "0" * 64,
        "history": [{"event": "ActionRequested"}],
        **extra,
    }
