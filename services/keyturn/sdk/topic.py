"""Submitting actions over Kafka, for agents that submit many: ``<namespace>.submissions``.

    from keyturn.sdk.topic import TopicSubmitter

    async with TopicSubmitter("broker:9092", token=AGENT_TOKEN, namespace="keyturn") as topic:
        sent = await topic.submit("read.table", "postgres://staging/analytics/orders", reason="nightly report")
    # follow it over HTTP like any other action:
    done = await AsyncKeyturn(URL, token=AGENT_TOKEN).wait(sent.action_id)

Each message is an ``ActionSubmitted`` record, Avro single-object encoded (``C3 01``, the
schema's CRC-64-AVRO fingerprint, the body), with the agent's bearer token in the
``authorization`` header: the intake verifies it exactly as on HTTP and accepts the submission
under that principal, or dead-letters it with the reason. The topic gives no answer back, so
every submission carries an idempotency key (made here when not given) and ``submit`` returns
the action id the intake derives from the token's subject and that key; ``wait`` on it over
HTTP. Publishing again with the same key can never create a second action.

Needs ``aiokafka`` and ``fastavro`` (the SDK's ``topic`` extra).
"""

from __future__ import annotations

import base64
import inspect
import io
import json
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

try:
    import fastavro
    from aiokafka import AIOKafkaProducer
    from fastavro.schema import fingerprint, parse_schema, to_parsing_canonical_form
except ImportError as missing:  # pragma: no cover - depends on what is installed
    raise ImportError(
        f"keyturn.sdk.topic needs aiokafka and fastavro ({missing.name} is missing): pip install 'keyturn-sdk[topic]'"
    ) from missing

__all__ = ["ACTION_SUBMITTED_SCHEMA", "TopicSubmitted", "TopicSubmitter", "action_id_for", "encode_submission"]

# The intake's record, as schemas/keyturn.ActionSubmitted.avsc defines it (a unit test proves they are the
# same): the SDK ships without the services' schema directory.
ACTION_SUBMITTED_SCHEMA: dict[str, Any] = {
    "type": "record",
    "name": "ActionSubmitted",
    "namespace": "keyturn",
    "doc": "An agent's request published straight to the submissions topic; the JWT travels in the "
    "'authorization' header.",
    "fields": [
        {"name": "action", "type": "string"},
        {"name": "resource", "type": "string"},
        {"name": "parameters_json", "type": "string", "doc": "The parameters as a JSON object."},
        {"name": "reason", "type": "string"},
        {"name": "idempotency_key", "type": ["null", "string"], "default": None},
    ],
}
_PARSED = parse_schema(ACTION_SUBMITTED_SCHEMA, _write_hint=False)
_HEADER = b"\xc3\x01" + bytes.fromhex(fingerprint(to_parsing_canonical_form(_PARSED), "CRC-64-AVRO"))
# How the intake turns (principal, idempotency key) into an action id (intake/submissions.py, proved equal by
# a unit test): the same key from the same principal is the same action.
IDEMPOTENCY_NAMESPACE = uuid.UUID("6f1c3b0e-6c3e-4f7c-9a55-2b8f0d6e7a10")


@dataclass(frozen=True)
class TopicSubmitted:
    """A submission the broker acknowledged: the action id the intake will give it, and its key."""

    action_id: str
    idempotency_key: str
    partition: int
    offset: int


def action_id_for(principal_id: str, idempotency_key: str) -> str:
    """The action id the intake gives a submission of ``principal_id`` with ``idempotency_key``."""
    return str(uuid.uuid5(IDEMPOTENCY_NAMESPACE, f"{principal_id}\n{idempotency_key}"))


def token_subject(token: str) -> str:
    """The ``sub`` claim of a JWT, read without verifying it (only to predict the action id; the intake
    verifies the token)."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return str(claims["sub"])
    except (IndexError, ValueError, KeyError, TypeError) as exc:
        raise ValueError("the token is not a JWT with a 'sub' claim") from exc


def encode_submission(
    action: str,
    resource: str,
    parameters: Mapping[str, Any] | None,
    reason: str,
    idempotency_key: str | None,
) -> bytes:
    """One ``ActionSubmitted`` record, Avro single-object encoded."""
    record = {
        "action": action,
        "resource": resource,
        "parameters_json": json.dumps(
            dict(parameters or {}), separators=(",", ":"), ensure_ascii=False, allow_nan=False
        ),
        "reason": reason,
        "idempotency_key": idempotency_key,
    }
    buffer = io.BytesIO()
    buffer.write(_HEADER)
    fastavro.schemaless_writer(buffer, _PARSED, record)
    return buffer.getvalue()


class TopicSubmitter:
    """Publishes submissions to ``<namespace>.submissions`` (or ``topic``) with the agent's token.

    Give ``bootstrap_servers`` (plus any ``AIOKafkaProducer`` keyword: TLS, SASL) or a started
    ``producer`` of your own. ``token_provider`` (plain or async) is asked for every message, so
    a token that expires can be renewed. Messages are acknowledged by all in-sync replicas
    (``acks="all"``, idempotent producer) before ``submit`` returns.
    """

    def __init__(
        self,
        bootstrap_servers: str | None = None,
        *,
        token: str | None = None,
        token_provider: Callable[[], str | Awaitable[str]] | None = None,
        namespace: str = "keyturn",
        topic: str | None = None,
        producer: Any = None,
        **producer_options: Any,
    ) -> None:
        if (token is None) == (token_provider is None):
            raise ValueError("give exactly one of token= (a bearer token) or token_provider= (a callable)")
        if (bootstrap_servers is None) == (producer is None):
            raise ValueError("give exactly one of bootstrap_servers= or producer=")
        self.topic = topic or f"{namespace}.submissions"
        self._token = token
        self._token_provider = token_provider
        self._own_producer = producer is None
        self._producer = producer or AIOKafkaProducer(
            bootstrap_servers=bootstrap_servers, acks="all", enable_idempotence=True, **producer_options
        )

    async def start(self) -> None:
        if self._own_producer:
            await self._producer.start()

    async def stop(self) -> None:
        if self._own_producer:
            await self._producer.stop()

    async def __aenter__(self) -> TopicSubmitter:
        await self.start()
        return self

    async def __aexit__(self, *_: Any) -> None:
        await self.stop()

    async def _current_token(self) -> str:
        if self._token is not None:
            return self._token
        assert self._token_provider is not None
        token = self._token_provider()
        if inspect.isawaitable(token):
            token = await token
        return str(token)

    async def submit(
        self,
        action: str,
        resource: str,
        parameters: Mapping[str, Any] | None = None,
        *,
        reason: str,
        idempotency_key: str | None = None,
    ) -> TopicSubmitted:
        """Publish one submission and return once the broker acknowledged it (not once the intake took it:
        follow ``action_id`` over HTTP; a submission the intake refuses is dead-lettered and never gets
        that id)."""
        token = await self._current_token()
        key = idempotency_key or f"sdk-{uuid.uuid4()}"
        value = encode_submission(action, resource, parameters, reason, key)
        metadata = await self._producer.send_and_wait(
            self.topic, value, key=key.encode(), headers=[("authorization", f"Bearer {token}".encode())]
        )
        return TopicSubmitted(action_id_for(token_subject(token), key), key, metadata.partition, metadata.offset)
