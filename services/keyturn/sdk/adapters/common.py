"""What every adapter shares: the reason a model must give, the call that submits and waits (telling
listeners while people decide), and what the model reads when a call did not go through."""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from keyturn.sdk import errors
from keyturn.sdk.client import AsyncKeyturn, Keyturn
from keyturn.sdk.guard import Built, Mode, build_parameters, build_text, settle
from keyturn.sdk.models import Action

log = logging.getLogger("keyturn.sdk.adapters")
WAITING_EVENT = "keyturn_waiting"

REASON_FIELD = "reason"  # the argument a gated tool adds, unless the tool has its own
REASON_HELP = "Why this action is needed, in one or two sentences; the people who approve it read this."
_NO_RETRY = "Do not call the tool again for this; tell the user."
_GOVERNED = (
    "Governed by Keyturn: each call is checked by policy and may wait for a person's approval; a refusal "
    "comes back with its reasons."
)


def missing_framework(adapter: str, framework: str, extra: str, missing: ImportError) -> ImportError:
    """The error an adapter raises when its framework is not installed: what is missing, and the
    extra that installs it."""
    return ImportError(f"{adapter} needs {framework} ({missing.name} is missing): pip install 'keyturn-sdk[{extra}]'")


def schema_with_reason(schema: dict[str, Any], reason: Any, *, strict: bool = False) -> tuple[dict[str, Any], bool]:
    """A tool's argument ``schema`` with the required ``reason`` a model must give, unless the tool builds
    its reason itself (``reason`` given) or has an argument of that name; and whether it has one.
    ``strict`` schemas (OpenAI's) take no ``minLength``; either way ``model_reason`` checks what comes."""
    schema = dict(schema)  # properties and required are rebuilt below, never changed in place
    own_reason = REASON_FIELD in schema.get("properties", {})
    if reason is None and not own_reason:
        field: dict[str, Any] = {"type": "string", "description": REASON_HELP}
        if not strict:
            field["minLength"] = 1
        schema["properties"] = {**schema.get("properties", {}), REASON_FIELD: field}
        schema["required"] = [*schema.get("required", []), REASON_FIELD]
    return schema, own_reason


def take_reason(given: dict[str, Any], own_reason: bool) -> Any:
    """The reason the model gave among a call's arguments ``given``: taken out of them, unless it is
    one of the tool's own arguments (then it stays, and is the submitted reason too)."""
    return given.get(REASON_FIELD) if own_reason else given.pop(REASON_FIELD, None)


class ReasonMissing(ValueError):
    """The model gave no reason, or a blank one: nothing is submitted (approvers would read "None")."""


def model_reason(why: Any) -> str:
    """The reason the model gave, when it is a sentence: the one rule every adapter applies (a missing
    reason, a non-string, or only spaces raises ``ReasonMissing``; schemas' ``minLength`` let spaces in)."""
    if not isinstance(why, str) or not why.strip():
        raise ReasonMissing(f"{REASON_FIELD} is required: {REASON_HELP}")
    return why


def built_request(
    resource: Built,
    reason: Built | None,
    parameters: Sequence[str] | Callable[..., Any] | None,
    named: dict[str, Any],
    why: Any,
    *,
    values: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """What a gated call submits, from its validated arguments ``named``: the resource and reason
    built from them (the model's ``why`` when the tool builds no reason: ``ReasonMissing`` unless it is a
    sentence), and the parameters (built from ``values``, the arguments as JSON, when ``named`` holds
    other Python values)."""
    return {
        "resource": build_text(resource, "resource", named, (), named),
        "reason": build_text(reason, "reason", named, (), named) if reason is not None else model_reason(why),
        "parameters": build_parameters(parameters, named if values is None else values, (), named),
    }


def invalid_arguments(tool: str, problem: Exception) -> str:
    """What the model reads when its arguments (its reason among them) are refused before submission."""
    return f"Keyturn: the arguments of {tool} are invalid, nothing was submitted: {problem}"


def governed(description: str | None) -> str:
    """A gated tool's description: its own, and what the model should expect of it."""
    return f"{description or ''}\n\n{_GOVERNED}".lstrip()


async def governed_call(
    client: Keyturn | AsyncKeyturn,
    action: str,
    built: dict[str, Any],
    *,
    mode: Mode,
    timeout: float | None,
    notice_after_s: float,
    on_waiting: Callable[[dict[str, Any]], Any] | None,
    raise_refusals: bool,
) -> tuple[bool, Any]:
    """Submit, wait and settle (``guard.settle``): (run the body?, what the tool answers otherwise); a
    refusal is the sentence the model reads (``refusal_for_a_model``) unless ``raise_refusals``."""
    try:
        done = await call_async(
            client,
            action,
            built,
            timeout=timeout,
            notice_after_s=notice_after_s,
            on_waiting=on_waiting or (lambda notice: None),
        )
        return settle(done, mode)
    except errors.KeyturnError as exc:
        if raise_refusals:
            raise
        return False, refusal_for_a_model(exc, action)


def refusal_for_a_model(exc: errors.KeyturnError, action: str) -> str:
    """What the model reads when a gated call did not go through: what happened, why, and what not to do."""
    why = "; ".join(getattr(exc, "reasons", ()) or ()) or "no reason given"
    if isinstance(exc, errors.ApprovalRefused):
        return f"Keyturn: an approver refused {action} (action {exc.action_id}): {why}. {_NO_RETRY}"
    if isinstance(exc, errors.Denied):
        return f"Keyturn: {action} was denied by the policy (action {exc.action_id}): {why}. {_NO_RETRY}"
    if isinstance(exc, errors.Expired):
        return f"Keyturn: nobody approved {action} in time (action {exc.action_id}); it expired. {_NO_RETRY}"
    if isinstance(exc, errors.OutcomeUnknown):
        return (
            f"Keyturn: {action} (action {exc.action_id}) may or may not have taken effect: {why}. Do not repeat it; "
            "tell the user it needs checking."
        )
    if isinstance(exc, errors.ExecutionFailed):
        return f"Keyturn: {action} failed and did not take effect (action {exc.action_id}): {exc.error or why}."
    if isinstance(exc, errors.WaitTimeout):
        waiting = exc.action
        who = ", ".join(waiting.approver_groups) or "its approvers"
        until = f" until {waiting.expires_at}" if waiting.expires_at else ""
        return (
            f"Keyturn: {action} (action {waiting.action_id}) is still {waiting.state}, waiting for {who}{until}. "
            "Do not call the tool again: that would ask for a second action."
        )
    if isinstance(exc, errors.InvalidRequest):
        return f"Keyturn refused the request as malformed: {exc.detail}"
    if isinstance(exc, errors.Unavailable):
        return f"Keyturn is unavailable right now ({exc.detail}); nothing was done. Try again later."
    return f"Keyturn: {action} did not go through: {exc}"


def waiting_notice(action: str, pending: Action) -> dict[str, Any]:
    """What listeners are told while an action waits: its id, state, who must approve and until when."""
    log.info("%s %s waits (%s) for %s", action, pending.action_id, pending.state, pending.approver_groups)
    return {
        "action_id": pending.action_id,
        "action": action,
        "state": pending.state,
        "approver_groups": pending.approver_groups,
        "expires_at": pending.expires_at,
    }


def call_sync(
    client: Keyturn,
    action: str,
    built: dict[str, Any],
    *,
    timeout: float | None,
    notice_after_s: float,
    on_waiting: Callable[[dict[str, Any]], Any],
) -> Action:
    """Submit and wait for the end (``WaitTimeout`` past ``timeout``); ``on_waiting(notice)`` once the action
    is still open after ``notice_after_s``."""
    started = time.monotonic()
    submitted = client.submit(action, **built)
    try:
        return client.wait(submitted.action_id, _first_wait(timeout, notice_after_s))
    except errors.WaitTimeout as pending:
        if timeout is not None and time.monotonic() - started >= timeout:
            raise
        on_waiting(waiting_notice(action, pending.action))
        return client.wait(submitted.action_id, _rest(timeout, started))


async def call_async(
    client: Keyturn | AsyncKeyturn,
    action: str,
    built: dict[str, Any],
    *,
    timeout: float | None,
    notice_after_s: float,
    on_waiting: Callable[[dict[str, Any]], Any],
) -> Action:
    """``call_sync`` for an event loop: awaited with ``AsyncKeyturn``, in a worker thread with ``Keyturn``;
    ``on_waiting`` may be a coroutine function."""

    async def submit() -> Any:
        if isinstance(client, AsyncKeyturn):
            return await client.submit(action, **built)
        return await asyncio.to_thread(lambda: client.submit(action, **built))

    async def wait(action_id: str, seconds: float | None) -> Action:
        if isinstance(client, AsyncKeyturn):
            return await client.wait(action_id, seconds)
        return await asyncio.to_thread(client.wait, action_id, seconds)

    # each step awaited here, not in a thread, so that ``on_waiting`` runs in the caller's context
    started = time.monotonic()
    submitted = await submit()
    try:
        return await wait(submitted.action_id, _first_wait(timeout, notice_after_s))
    except errors.WaitTimeout as pending:
        if timeout is not None and time.monotonic() - started >= timeout:
            raise
        await _maybe_await(on_waiting(waiting_notice(action, pending.action)))
        return await wait(submitted.action_id, _rest(timeout, started))


async def _maybe_await(value: Any) -> None:
    if inspect.isawaitable(value):
        await value


def _first_wait(timeout: float | None, notice_after_s: float) -> float:
    return notice_after_s if timeout is None else min(timeout, notice_after_s)


def _rest(timeout: float | None, started: float) -> float | None:
    return None if timeout is None else max(0.0, timeout - (time.monotonic() - started))
