"""Accepting a request: validate it, give it an id, mask and seal its parameters, store, publish.

HTTP and the submissions topic both end here, so both get the same checks.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from collections.abc import Set as AbstractSet
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from keyturn.bus.http import RepeatedKey, strict_json
from keyturn.bus.publisher import Publisher
from keyturn.bus.refusals import validation_problems
from keyturn.core.canonical import canonical_json
from keyturn.core.environments import spelling_problem
from keyturn.core.events import ActionRequested, Digest, SubmissionChannel, payload_digest
from keyturn.core.parameters import ParameterCatalog
from keyturn.core.principal import Principal
from keyturn.core.text import problem_in, words_problem
from keyturn.faults import is_transient
from keyturn.intake.store import NewAction, StoredAction, StoreUnavailable
from keyturn.masking.protect import hidden_in_name, mask_text, without_hidden

if TYPE_CHECKING:
    from keyturn.masking.masker import PhoneCoreBudget

log = logging.getLogger(__name__)

ACTION_PATTERN = re.compile(r"^[a-z][a-z0-9_-]*(\.[a-z0-9_-]+)+$")
IDEMPOTENCY_NAMESPACE = uuid.UUID("6f1c3b0e-6c3e-4f7c-9a55-2b8f0d6e7a10")
MAX_PARAMETERS_BYTES = 64 * 1024
MAX_PARAMETERS_DEPTH = 32  # below the masker's own limit, so accepted parameters can always be masked
# What a request names things with travels in clear (topics, rows, the policy's input, chat
# cards): only parameter values and the reason are masked, and parameters sealed. So a secret
# or a person's data in a name is refused, naming where and what kind, and the caller moves it
# into the parameters. A server's address is no one's personal data in a resource or a webhook.
NAMES_MAY_HOLD = {"resource": {"IP_ADDRESS"}, "callback_url": {"IP_ADDRESS"}}


def _containers(value: Any) -> Iterator[tuple[dict[str, Any] | list[Any], int]]:
    """Every object and array in a JSON ``value`` with its depth (the outermost is 1), without
    recursion: what ``json_depth`` and ``_keys`` read."""
    stack = [(value, 1)]
    while stack:
        current, depth = stack.pop()
        if isinstance(current, dict | list):
            yield current, depth
            children = current.values() if isinstance(current, dict) else current
            stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))


#: Characters of text in a batch from which its masking runs in a worker thread (``Intake._store_many``).
HEAVY_TEXT_CHARS = 8192


def weight(submission: ActionSubmission) -> int:
    """The text of a submission that masking reads, counted up to ``HEAVY_TEXT_CHARS``."""
    return text_weight(submission.parameters, HEAVY_TEXT_CHARS) + len(submission.reason)


def heavy(submission: ActionSubmission) -> bool:
    """Whether masking ``submission`` alone is worth a worker thread."""
    return weight(submission) >= HEAVY_TEXT_CHARS


def text_weight(value: Any, enough: int) -> int:
    """Characters in the strings (keys included) of a JSON value, counted until ``enough``."""
    weight = 0
    stack = [value]
    while stack and weight < enough:
        node = stack.pop()
        if isinstance(node, str):
            weight += len(node)
        elif isinstance(node, dict):
            weight += sum(len(k) for k in node if isinstance(k, str))
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return weight


def json_depth(value: Any) -> int:
    """How deeply objects and arrays nest in ``value`` (a scalar is 0), without recursion."""
    return max((depth for _, depth in _containers(value)), default=0)


class ActionSubmission(BaseModel):
    """The body of ``POST /v1/actions``."""

    model_config = ConfigDict(extra="forbid")

    action: str = Field(
        ..., min_length=3, max_length=128, description="Dotted action type, e.g. db.export", examples=["read.table"]
    )
    resource: str = Field(
        ...,
        min_length=1,
        max_length=2048,
        description="What the action touches",
        examples=["postgres://staging/analytics/orders"],
    )
    parameters: dict[str, Any] = Field(
        default_factory=dict, description="Action parameters; masked before any topic carries them"
    )
    reason: str = Field(..., min_length=1, max_length=4000, description="Why the agent needs this, shown to approvers")
    idempotency_key: str | None = Field(
        None, min_length=1, max_length=200, description="Same key from the same principal → same action"
    )
    callback_url: str | None = Field(
        None,
        max_length=2048,
        pattern=r"^https?://[^\s/]+(/\S*)?$",
        description="Optional webhook told each outcome, HMAC-signed (X-Keyturn-Signature)",
        examples=["https://agent.example.internal/keyturn"],
    )

    @field_validator("action")
    @classmethod
    def _dotted(cls, value: str) -> str:
        if not ACTION_PATTERN.match(value):
            raise ValueError("action must be lower-case dotted words such as 'db.export' or 'iam.role.grant'")
        if (why := _secret_in_name(value, "action")) is not None:
            raise ValueError(why)
        return value

    @field_validator("resource", "reason", "idempotency_key", "callback_url")
    @classmethod
    def _text(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return value
        if (why := words_problem(value)) is not None:
            raise ValueError(why)
        if info.field_name != "reason" and (why := _secret_in_name(value, info.field_name)) is not None:
            raise ValueError(why)
        if info.field_name == "reason" and not value.strip():  # approvers must have a sentence to read
            raise ValueError("say in words why this is needed: a reason of only spaces tells approvers nothing")
        if info.field_name == "resource" and (not value.strip() or value != value.strip()):
            # what approvers read and policies match: " prod" must not pass for something else
            raise ValueError("name the resource without spaces around it (and not only spaces)")
        if info.field_name == "resource" and (why := spelling_problem(value)) is not None:
            raise ValueError(why)
        return value

    @field_validator("parameters")
    @classmethod
    def _bounded(cls, value: dict[str, Any]) -> dict[str, Any]:
        if (why := problem_in(value, "parameters")) is not None:
            raise ValueError(why)
        keys = _keys(value)
        if sum(map(str.isdigit, "".join(keys))) > MAX_KEY_DIGITS:
            raise ValueError(
                f"the keys of the parameters hold more than {MAX_KEY_DIGITS} digits; names travel in clear, "
                "so numbers belong in values (a list), which are masked and sealed"
            )
        if keys and (why := _secret_in_name(keys, "parameter_keys")) is not None:
            raise ValueError(why)
        if json_depth(value) > MAX_PARAMETERS_DEPTH:
            raise ValueError(f"parameters nest deeper than {MAX_PARAMETERS_DEPTH} levels")
        if len(canonical_json(value).encode()) > MAX_PARAMETERS_BYTES:
            raise ValueError(f"parameters exceed {MAX_PARAMETERS_BYTES} bytes as JSON")
        return value


#: Between names checked together as one text: no pattern joins across it (no digit, space or
#: separator a card, phone or key pattern allows), so each name is judged as on its own, with
#: one pass of the masking for all of them instead of one per name (a thousand keys cost seconds).
_NAMES_APART = "\n#\u00a7#\n"
#: Digits the keys of one submission's parameters may hold in all: names travel in clear, numbers
#: belong in values; and each key that could be a phone number costs the check about a millisecond.
MAX_KEY_DIGITS = 1024


def _secret_in_name(value: str | list[str], field: str | None) -> str | None:
    """Why a name (``NAMES_MAY_HOLD``) cannot be taken: what masking finds in it, by kind."""
    text = _NAMES_APART.join(value) if isinstance(value, list) else value
    kinds = hidden_in_name(text) - NAMES_MAY_HOLD.get(field or "", set())
    if not kinds:
        return None
    what = "a key of the parameters" if field == "parameter_keys" else "it"
    return (
        f"{what} holds what looks like {', '.join(sorted(kinds))}; names travel in clear, so such a value "
        "belongs in a parameter's value, which is masked and sealed"
    )


def _keys(value: Any) -> list[str]:
    """Every object key in a JSON value."""
    return [key for node, _ in _containers(value) if isinstance(node, dict) for key in node if isinstance(key, str)]


def masked_reason(reason: str, parameters: dict[str, Any], masked_json: str, mask: tuple[str, ...]) -> str:
    """The reason approvers are shown: masked as free text is, and without any value masking hid in
    the parameters (``protect.without_hidden``). A reason repeating a password the parameters
    carry ("rotate <it> for bob") holds nothing a recogniser finds by its shape alone."""
    if "<" in masked_json or mask:  # a placeholder in the masked copy: something was hidden
        reason = without_hidden(reason, parameters, json.loads(masked_json), mask)
    return mask_text(reason)


class IdempotencyConflict(Exception):
    """The idempotency key was used before by this principal for a different request."""


def submission_from_record(record: dict[str, Any]) -> ActionSubmission:
    """A submission from an ``ActionSubmitted`` record (parameters travel as a JSON string)."""
    try:  # read as the HTTP body is (``strict_json``): a key named twice is refused on both paths
        parameters = strict_json(record["parameters_json"])
    except RepeatedKey:
        raise InvalidSubmission(["parameters_json: an object holds the same key twice"]) from None
    except (ValueError, RecursionError):
        raise InvalidSubmission(["parameters_json: not JSON"]) from None
    try:
        return ActionSubmission.model_validate(
            {**{k: v for k, v in record.items() if k != "parameters_json"}, "parameters": parameters}
        )
    except ValidationError as exc:
        raise InvalidSubmission(validation_problems(exc.errors(include_input=False))) from None


class InvalidSubmission(ValueError):
    """A submission that fails validation; ``problems`` name fields and rules, never values."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


class NoExecutor(InvalidSubmission):
    """The catalog refuses the action outright (``data.keyturn.execution``: ``{"refused": why}``)."""

    error_type = "no_executor"


class InvalidParameters(InvalidSubmission):
    """Parameters that do not match their action's schema in the catalog (``core.parameters``)."""

    error_type = "invalid_parameters"


def request_digest(payload: Digest, principals: list[str], masked_reason: str, callback_url: str | None) -> Digest:
    """What a retry under the same idempotency key must repeat: the payload (action, resource,
    parameters), everyone the request acts for, the reason as stored (masked) and the webhook.
    The key is the requester's alone (``action_id_for``), so the same agent acting for someone
    else, or asking for another webhook, under a used key is a different request (409), never
    the earlier action handed back: that would let a person approve what was asked in their
    name, and drop the webhook the caller asked for."""
    return Digest.of_json(
        {"payload": str(payload), "principals": principals, "reason": masked_reason, "callback_url": callback_url}
    )


def same_request(stored: StoredAction, new: NewAction) -> bool:
    """Whether ``new`` repeats the request ``stored`` holds (a retry), by ``request_digest``; a row
    stored before it was kept is compared by its payload and principals."""
    if stored.request_digest is not None:
        return stored.request_digest == new.request_digest
    return stored.payload_digest == new.payload_digest and sorted(stored.principals) == new.principals


def action_id_for(principal: Principal, idempotency_key: str | None) -> str:
    """A fresh id, or one derived from (principal, key) so retries map to the same action."""
    if idempotency_key is None:
        return str(uuid.uuid4())
    return str(uuid.uuid5(IDEMPOTENCY_NAMESPACE, f"{principal.id}\n{idempotency_key}"))


class IntakeStore(Protocol):
    """The store ``Intake`` writes to: one row per action id, the first insert wins."""

    async def insert_many(self, rows: Sequence[NewAction]) -> list[tuple[StoredAction, bool]]: ...

    async def mark_published(self, action_id: str, *, at_once: bool = False) -> None: ...

    def acknowledged(self, action_id: str) -> bool:
        """Whether this process saw the action's event acknowledged, its mark not yet written."""
        ...


Submitted = tuple[StoredAction, bool]
"""(the stored action, created?) for one submission."""

Gathered = tuple[Principal, ActionSubmission, SubmissionChannel, "asyncio.Future[Any]"]
"""A submission waiting for its batch: who, what, through which channel, and its caller's answer."""


class _Unprepared(Exception):
    """Submission ``index`` of a batch failed before anything of the batch was stored."""

    def __init__(self, index: int, error: Exception) -> None:
        super().__init__(index, error)
        self.index = index
        self.error = error


class Intake:
    """Turns verified submissions into published ``ActionRequested`` events, exactly once per id."""

    def __init__(
        self,
        store: IntakeStore,
        publisher: Publisher,
        protect: Any,
        *,
        catalog: ParameterCatalog | None = None,
        publish_patience_s: float = 5.0,
        refusal_for: Callable[[str], Awaitable[str | None]] | None = None,
        mask_for: Callable[[str], Awaitable[tuple[str, ...]]] | None = None,
        gather_max: int = 500,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.gather_max = gather_max  # the most single submissions stored as one batch
        self._gathered: list[Gathered] = []
        self._storing: asyncio.Task[None] | None = None
        # why the catalog refuses an action at the door (None: it does not); see keyturn.core.catalog
        self.refusal_for = refusal_for
        # the fields the policy masks for an action besides credential names (None: those alone)
        self.mask_for = mask_for
        self.publisher = publisher
        self.protect = protect  # masks and seals parameters (keyturn.masking)
        self.catalog = catalog  # the parameter schemas; None checks nothing (the policy still judges)
        # a request waits this long for the broker's ack; after that the stored action is
        # answered accepted and the outbox sweep publishes it
        self.publish_patience_s = publish_patience_s
        # when the broker last left a publish unanswered (``clock``), and the sends made without
        # waiting while that is recent (``_publish_all``)
        self.clock = clock
        self._unanswered_at: float | None = None
        self._unawaited: set[asyncio.Task[None]] = set()
        # one heavy masking at a time (``_store_many``), per event loop: an asyncio lock belongs to one
        self._heavy_masking: tuple[asyncio.AbstractEventLoop, asyncio.Lock] | None = None

    async def submit(
        self, principal: Principal, submission: ActionSubmission, channel: SubmissionChannel
    ) -> tuple[StoredAction, bool]:
        """(stored action, created?) — raises ``IdempotencyConflict`` on a reused key, ``NoExecutor`` for an
        action the catalog refuses, ``InvalidParameters`` when the parameters do not match their action's schema.

        Submissions that arrive while earlier ones are being stored are stored together, as one
        batch (group commit): one INSERT, one produce request and one acknowledgement wait for
        all of them, instead of one each. Nothing waits for company: a submission that finds the
        intake idle is stored at once, alone.
        """
        if heavy(submission):
            # alone, not gathered: the gathered batches are stored one after another, so every
            # submission arriving while a heavy one was masked waited for it (six agents sending
            # 64 KiB of phone numbers held a one-line request 50 s)
            (alone,) = await self.submit_many([(principal, submission)], channel)
            if isinstance(alone, Exception):
                raise alone
            return alone
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[Submitted | IdempotencyConflict | InvalidSubmission] = loop.create_future()
        self._gathered.append((principal, submission, channel, answer))
        storing = self._storing
        if storing is None or storing.done() or storing.get_loop() is not loop:  # (a loop that ended left its task)
            self._gathered = [item for item in self._gathered if item[3].get_loop() is loop]
            self._storing = asyncio.create_task(self._store_gathered())
        result = await answer
        if isinstance(result, Exception):
            raise result
        return result

    async def _store_gathered(self) -> None:
        """Store what ``submit`` gathered, a batch per channel, until nothing is left waiting.
        However it ends, no caller is left waiting: one whose batch never ran is answered that
        the intake stopped (503, try again)."""
        gathered: list[Gathered] = []
        try:
            while self._gathered:
                gathered, self._gathered = self._gathered[: self.gather_max], self._gathered[self.gather_max :]
                for channel in dict.fromkeys(item[2] for item in gathered):
                    await self._answer([item for item in gathered if item[2] == channel], channel)
        except BaseException:
            stopped = StoreUnavailable("the intake stopped before storing this submission; nothing was stored")
            for *_, answer in [*gathered, *self._gathered]:
                if not answer.done():
                    answer.set_exception(stopped)
            self._gathered = []
            raise
        finally:
            self._storing = None

    async def _answer(self, items: list[Gathered], channel: SubmissionChannel) -> None:
        """Store ``items`` together and answer each. A submission that cannot be prepared (masked,
        sealed, encoded) fails before anything of the batch is stored: it is answered with its
        own error and the others are stored without it. A failure of the INSERT is every caller's
        answer: a row may be stored already, so nothing is stored again (a keyless submission
        would become a second action); the outbox publishes what was. A failed publish is no
        caller's answer: the actions are stored, so accepted, and the outbox publishes them."""
        waiting = [item for item in items if not item[3].done()]  # a caller that went away is not stored
        while waiting:
            try:
                results = await self._submit_many(
                    [(principal, submission) for principal, submission, _, _ in waiting], channel
                )
            except _Unprepared as unprepared:
                *_, answer = waiting.pop(unprepared.index)
                answer.set_exception(unprepared.error)
                continue
            except Exception as exc:
                for *_, answer in waiting:
                    if not answer.done():
                        answer.set_exception(exc)
                return
            for (*_, answer), result in zip(waiting, results, strict=True):
                if not answer.done():
                    answer.set_result(result)
            return

    def _heavy_lock(self) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        if self._heavy_masking is None or self._heavy_masking[0] is not loop:
            self._heavy_masking = (loop, asyncio.Lock())
        return self._heavy_masking[1]

    async def refusal(self, submission: ActionSubmission) -> InvalidSubmission | None:
        """Why the catalog refuses this submission before anything is stored, or None."""
        why = await self.refusal_for(submission.action) if self.refusal_for is not None else None
        if why:
            return NoExecutor([f"action: {submission.action} is not carried out by Keyturn: {why}"])
        if self.catalog is not None:
            problems = self.catalog.problems(submission.action, submission.parameters)
            if problems:
                return InvalidParameters(problems)
        return None

    async def submit_many(
        self, submissions: Sequence[tuple[Principal, ActionSubmission]], channel: SubmissionChannel
    ) -> list[Submitted | IdempotencyConflict | InvalidSubmission]:
        """Accept a batch: one INSERT for all, one produce batch awaited together.

        For each submission, in order: (stored action, created?), the ``IdempotencyConflict`` of a
        key reused for a different request, or the ``InvalidSubmission`` (``NoExecutor``,
        ``InvalidParameters``) the catalog refuses it with (nothing of it stored). A key used twice
        in one batch for the same request gives one action (the second is answered as a repeat).
        """
        try:
            return await self._submit_many(submissions, channel)
        except _Unprepared as unprepared:
            raise unprepared.error from None

    async def _submit_many(
        self, submissions: Sequence[tuple[Principal, ActionSubmission]], channel: SubmissionChannel
    ) -> list[Submitted | IdempotencyConflict | InvalidSubmission]:
        """``submit_many``, raising ``_Unprepared`` when one submission fails before the INSERT."""
        refused = [await self.refusal(submission) for _, submission in submissions]
        accepted = [pair for pair, why in zip(submissions, refused, strict=True) if why is None]
        try:
            stored = iter(await self._store_many(accepted, channel))
        except _Unprepared as unprepared:  # its index among the accepted, as one among all
            among_all = [i for i, why in enumerate(refused) if why is None][unprepared.index]
            raise _Unprepared(among_all, unprepared.error) from unprepared.error
        return [why if why is not None else next(stored) for why in refused]

    async def _store_many(
        self, submissions: Sequence[tuple[Principal, ActionSubmission]], channel: SubmissionChannel
    ) -> list[Submitted | IdempotencyConflict]:
        if not submissions:
            return []
        now = datetime.now(UTC)
        masks: dict[str, tuple[str, ...]] = {}
        if self.mask_for is not None:  # before anything is stored: MaskUnknown leaves nothing behind
            for action in dict.fromkeys(submission.action for _, submission in submissions):
                masks[action] = await self.mask_for(action)

        def prepared() -> list[NewAction]:
            from keyturn.masking.masker import PhoneCoreBudget  # loaded with the masker the protector built

            rows: list[NewAction] = []
            # a caller's submissions stored together (a batch POST) share one budget of phone-number
            # checks, so a crafted batch costs what one crafted submission does; other callers'
            # submissions gathered with them are not masked the more for it
            phone_cores: dict[str, PhoneCoreBudget] = {}
            for index, (principal, submission) in enumerate(submissions):
                budget = phone_cores.setdefault(principal.id, PhoneCoreBudget())
                try:
                    rows.append(
                        self._prepared(principal, submission, channel, now, masks.get(submission.action, ()), budget)
                    )
                except Exception as exc:
                    raise _Unprepared(index, exc) from exc
            return rows

        # masking costs per character that could be personal data: a batch with much text is masked in a
        # worker thread, so a submission crafted to be costly slows itself, not every request and heartbeat;
        # one at a time, so the event loop shares the interpreter with one such thread, not with all of them
        if sum(weight(submission) for _, submission in submissions) >= HEAVY_TEXT_CHARS:
            async with self._heavy_lock():
                rows = await asyncio.to_thread(prepared)
        else:
            rows = prepared()
        stored_rows = await self.store.insert_many(rows)
        results: list[Submitted | IdempotencyConflict] = []
        to_publish: dict[str, StoredAction] = {}
        again: set[str] = set()
        for (principal, _), row, (stored, created) in zip(submissions, rows, stored_rows, strict=True):
            if not created and not same_request(stored, row):
                results.append(
                    IdempotencyConflict(
                        f"that idempotency key was already used by {principal.id} for a different "
                        f"request (action {stored.action_id}); use a new key for a new request"
                    )
                )
                continue
            results.append((stored, created))
            # a retry whose event this process saw acknowledged (its mark waits for the status) is
            # not sent again: under faults clients retry by the thousand
            if not stored.published and not self.store.acknowledged(stored.action_id):
                to_publish[stored.action_id] = stored
                if not created:  # a retry finding its event not yet marked published: sent again
                    again.add(stored.action_id)
        if to_publish:
            await self._publish_all(list(to_publish.values()), again)
        return results

    def _prepared(
        self,
        principal: Principal,
        submission: ActionSubmission,
        channel: SubmissionChannel,
        now: datetime,
        mask: tuple[str, ...] = (),
        phone_cores: PhoneCoreBudget | None = None,
    ) -> NewAction:
        """The row to store for one submission, with its event masked (credential names, and the
        policy's ``mask`` for its action; ``phone_cores``, checks shared with the caller's other
        submissions), sealed and encoded."""
        action_id = action_id_for(principal, submission.idempotency_key)
        digest = payload_digest(submission.action, submission.resource, submission.parameters)
        masked_json, sealed = self.protect(
            submission.parameters, action_id=action_id, payload_digest=digest, mask=mask, phone_cores=phone_cores
        )
        event = ActionRequested(
            event_id=f"requested:{action_id}",
            action_id=action_id,
            idempotency_key=submission.idempotency_key,
            action=submission.action,
            resource=submission.resource,
            parameters_json=masked_json,
            sealed_parameters=sealed,
            reason=masked_reason(submission.reason, submission.parameters, masked_json, mask),
            requester=principal,
            payload_digest=digest,
            requested_at=now,
            channel=channel,
            callback_url=submission.callback_url,
        )
        principals = sorted(principal.everyone)
        return NewAction(
            action_id=action_id,
            requester=principal.id,
            principals=principals,
            idempotency_key=submission.idempotency_key,
            payload_digest=str(digest),
            action=submission.action,
            resource=submission.resource,
            requested_event=self.publisher.encode(event),
            at=now,
            request_digest=str(request_digest(digest, principals, event.reason, submission.callback_url)),
        )

    async def _publish_all(self, stored: list[StoredAction], again: AbstractSet[str] = frozenset()) -> None:
        """Send every event at once (``Publisher.publish_all``) and wait for the acks together,
        within the patience; then mark them published.

        The actions are stored (the outbox), so an accepted answer holds even when the broker
        does not answer in time: the sweep publishes them later under the same event ids (all
        of the batch then, the ones that did arrive read twice as a redelivery).

        Within a patience of the broker leaving a publish unanswered, the events are sent and
        marked the same way, but the requests are answered without waiting for it: through an
        outage every request would otherwise wait the whole patience for its accepted answer
        (eight requests took 21 s), and when the broker is back these sends still get there at
        once, not at the sweep's next pass.
        """
        if self._unanswered_at is not None and self.clock() - self._unanswered_at < self.publish_patience_s:
            task = asyncio.create_task(self._publish_unawaited(stored, again))
            self._unawaited.add(task)
            task.add_done_callback(self._unawaited.discard)
            return
        await self._publish_and_mark(stored, again)

    async def sends_settled(self) -> None:
        """Until the sends made without waiting (``_publish_all``) have been acknowledged or given up."""
        await asyncio.gather(*self._unawaited, return_exceptions=True)

    async def _publish_unawaited(self, stored: list[StoredAction], again: AbstractSet[str]) -> None:
        try:
            await self._publish_and_mark(stored, again)
        except Exception as exc:  # the requests were answered: the stored rows are the sweep's now
            log.warning("%d accepted action(s) left to the outbox sweep: %s", len(stored), type(exc).__name__)

    async def _publish_and_mark(self, stored: list[StoredAction], again: AbstractSet[str]) -> None:
        topic = self.publisher.topics.requested
        try:
            async with asyncio.timeout(self.publish_patience_s):
                await self.publisher.publish_all([(topic, s.action_id, s.requested_event, None) for s in stored])
        except Exception as exc:
            if not is_transient(exc):
                # the actions are stored: they are accepted, and an error answered now would have a
                # keyless caller submit a second action; the outbox sweep publishes them
                log.error(
                    "accepted %d action(s); publishing their events failed (%s), left to the outbox sweep",
                    len(stored),
                    type(exc).__name__,
                )
                return
            self._unanswered_at = self.clock()
            reason = "no acknowledgement in time" if isinstance(exc, TimeoutError) else type(exc).__name__
            log.warning("accepted %d action(s); their events wait for the broker (%s)", len(stored), reason)
            return
        self._unanswered_at = None
        for s in stored:
            await self.store.mark_published(s.action_id, at_once=s.action_id in again)

    async def publish_stored(self, stored: StoredAction, *, again: bool = True) -> None:
        """Publish an accepted request's event: the first time, or ``again`` (the outbox sweep, a
        retried request), when its published mark is written at once rather than left for the
        action's first status change."""
        await self.publisher.publish_encoded(self.publisher.topics.requested, stored.action_id, stored.requested_event)
        self._unanswered_at = None  # the broker answers again: requests wait for their acks
        await self.store.mark_published(stored.action_id, at_once=again)
