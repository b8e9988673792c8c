"""The intake's background work: the submissions consumer and the outbox sweep.

Agents that publish instead of calling HTTP get the same checks; what fails them is
dead-lettered by the intake (the submissions topic's owner). A submission carries its
parameters in clear (the agent's own channel in, like an HTTP body). Once accepted (masked,
sealed, stored) or dead-lettered, and committed, it is deleted from the topic, so the clear
copy lives only until the intake has taken it.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol

from aiokafka import TopicPartition
from aiokafka.admin import RecordsToDelete
from prometheus_client import Counter

from keyturn.bus.codec import UndecodableMessage, registry
from keyturn.bus.loop import KafkaSource, Message, Refused, Stage, dead_letter, run
from keyturn.bus.publisher import Publisher
from keyturn.core.events import SubmissionChannel
from keyturn.core.principal import Principal
from keyturn.faults import Unavailable, is_transient
from keyturn.identity import InvalidToken, bearer_token
from keyturn.intake.store import StoredAction, StoreUnavailable
from keyturn.intake.submissions import (
    ActionSubmission,
    IdempotencyConflict,
    Intake,
    InvalidParameters,
    NoExecutor,
    submission_from_record,
)

log = logging.getLogger(__name__)

REJECTED = Counter("keyturn_intake_rejected_total", "Submissions refused at intake", ["channel", "reason"])


class Verifier(Protocol):
    def verify(self, token: str) -> Principal: ...


def submissions_stage(intake: Intake, publisher: Publisher, verifier: Verifier) -> Stage:
    """The intake's stage for ``<ns>.submissions``: verify, decode, validate each record; submit
    the batch together.

    Every refusal is dead-lettered, whatever its cause; the dead letter holds no byte of the
    message and names the sender only when its token was verified. A database outage is
    waited out (the loop's rule), never dead-lettered.
    """

    def decode(message: Message) -> tuple[Principal, ActionSubmission]:
        principal: Principal | None = None
        try:
            authorization = [value for key, value in getattr(message, "headers", None) or () if key == "authorization"]
            if len(authorization) > 1:  # readers that take the first and the last would see two callers
                raise InvalidToken(
                    "malformed", "the record carries more than one authorization header; send exactly one"
                )
            principal = verifier.verify(bearer_token(_header_text(authorization[0] if authorization else None)))
            name, record = registry().decode(message.value or b"")  # no value: refused as truncated
            if name != "ActionSubmitted":
                raise UndecodableMessage("unexpected_type", f"{name} does not belong on {message.topic}")
            submission = submission_from_record(record)
            if submission.idempotency_key is None:
                # the record itself is the request: delivered again (a consumer's restart before its
                # commit), it is the same action, never a second one
                where = f"{message.topic}:{message.partition}:{message.offset}:{getattr(message, 'timestamp', '')}"
                submission = submission.model_copy(update={"idempotency_key": f"record:{where}"})
            return principal, submission
        except Exception as exc:
            # an outage (keys that cannot be fetched, a server away) is waited out, not refused: a
            # refused submission is deleted from the topic once dead-lettered
            if getattr(exc, "code", None) == "jwks_unavailable":
                raise Unavailable(f"cannot verify tokens right now: {exc}") from exc
            if is_transient(exc):
                raise
            raise _refused(exc, principal) from exc

    async def handle_batch(batch: list[tuple[tuple[Principal, ActionSubmission], Any]]) -> None:
        """The batch's valid submissions in one INSERT and one produce batch (``Intake.submit_many``);
        a conflicting one is dead-lettered on its own. Should the batch fail for a reason that is
        not an outage, each submission is tried alone, so only the one at fault is refused."""
        try:
            outcomes: list[Any] = await intake.submit_many([decoded for decoded, _ in batch], SubmissionChannel.TOPIC)
        except Exception as exc:
            if is_transient(exc):
                raise
            log.warning("a batch of %d submissions failed (%s); taking them one by one", len(batch), type(exc).__name__)
            outcomes = [await _alone(decoded) for decoded, _ in batch]
        for ((principal, _), message), outcome in zip(batch, outcomes, strict=True):
            if isinstance(outcome, Exception):
                await dead_letter(publisher, message, _refused(outcome, principal))

    async def _alone(decoded: tuple[Principal, ActionSubmission]) -> Any:
        try:
            return await intake.submit(*decoded, SubmissionChannel.TOPIC)
        except Exception as exc:
            if is_transient(exc):
                raise
            return exc

    return Stage(publisher, handle_batch=handle_batch, decode=decode)


def _header_text(value: bytes | None) -> str | None:
    """A Kafka header as text; bytes that are not UTF-8 cannot be a token, and are refused as one."""
    if not value:
        return None
    try:
        return value.decode()
    except UnicodeDecodeError:
        raise InvalidToken("malformed", "the authorization header is not UTF-8 text") from None


def _refused(exc: Exception, principal: Principal | None) -> Refused:
    error_type = exc.error_type if isinstance(exc, UndecodableMessage) else _error_type(exc)
    REJECTED.labels("topic", error_type).inc()
    return Refused(
        error_type,
        exc.reason if isinstance(exc, UndecodableMessage) else str(exc),
        principal=principal.id if principal else None,
        problems=tuple(getattr(exc, "problems", ())),
    )


def _error_type(exc: Exception) -> str:
    if isinstance(exc, InvalidToken):
        return f"token_{exc.code}"
    if isinstance(exc, IdempotencyConflict):
        return "idempotency_conflict"
    if isinstance(exc, NoExecutor):
        return NoExecutor.error_type
    if isinstance(exc, InvalidParameters):
        return "invalid_parameters"
    return "invalid_submission"


async def consume_submissions(consumer: Any, admin: Any, stage: Stage, *, forget_every_s: float = 2.0) -> None:
    """Run ``stage`` over a started submissions consumer; committed submissions are deleted
    from the topic (the broker's DeleteRecords through ``admin``) every ``forget_every_s``."""
    taken: dict[TopicPartition, int] = {}

    def remember(committed: dict[tuple[str, int], int]) -> None:
        taken.update({TopicPartition(topic, partition): offset for (topic, partition), offset in committed.items()})

    forgetting = asyncio.create_task(_forget_taken(admin, taken, forget_every_s))
    try:
        await run(KafkaSource(consumer, max_records=100, wait_ms=500, after_commit=remember), stage)
    finally:
        forgetting.cancel()
        await asyncio.gather(forgetting, return_exceptions=True)


async def _forget_taken(admin: Any, taken: dict[TopicPartition, int], every_s: float) -> None:
    forgotten: dict[TopicPartition, int] = {}
    while True:
        await asyncio.sleep(every_s)
        due = {tp: offset for tp, offset in list(taken.items()) if forgotten.get(tp) != offset}
        if not due:
            continue
        try:
            await admin.delete_records({tp: RecordsToDelete(before_offset=offset) for tp, offset in due.items()})
        except Exception as exc:  # retried on the next round; the records are committed, only their deletion waits
            log.warning("deleting taken submissions failed, trying again in %ss: %s", every_s, exc)
            continue
        forgotten.update(due)


class Outbox(Protocol):
    async def unpublished(self, older_than_s: float = 10.0, limit: int = 500) -> list[StoredAction]: ...


async def republish_outbox(intake: Intake, store: Outbox, every_s: float = 5.0) -> None:
    """Publish accepted requests a crash left unpublished (the outbox sweep)."""
    while True:
        await asyncio.sleep(every_s)
        await sweep_outbox(intake, store)


async def sweep_outbox(intake: Intake, store: Outbox) -> int:
    """One sweep; how many were published. A failure that goes away (the database or the broker
    away, or the broker leaving a publish unacknowledged for the intake's patience: a sweep never
    waits for good) ends the sweep until the next; any other is that action's alone, logged, and
    the actions behind it are still published."""
    published = 0
    try:
        for stored in await store.unpublished():
            try:
                async with asyncio.timeout(intake.publish_patience_s):
                    await intake.publish_stored(stored)
            except Exception as exc:
                if isinstance(exc, StoreUnavailable) or is_transient(exc):
                    raise
                log.error(
                    "outbox sweep: the event of action %s could not be published (%s); the sweep goes on",
                    stored.action_id,
                    type(exc).__name__,
                )
                continue
            published += 1
    except StoreUnavailable as exc:
        log.warning("outbox sweep waits for the database: %s", exc)
    except Exception as exc:
        if not is_transient(exc):
            log.exception("outbox sweep failed; retrying at the next sweep")
        else:
            why = "no acknowledgement in time" if isinstance(exc, TimeoutError) else type(exc).__name__
            log.warning("outbox sweep: %d published, the rest at the next sweep (%s)", published, why)
    return published
