"""``guard``: a decorator that turns every call of a function into a Keyturn action.

    kt = Keyturn(URL, token=TOKEN)

    @kt.guard("sql.query", resource="postgres://staging/{database}", reason="{why}")   # or keyturn.sdk.guard(...)
    def query(database: str, statement: str, max_rows: int = 100, why: str = "report") -> Any:
        ...

Each call is submitted with ``resource``, ``reason`` and ``parameters`` built from the call's
arguments, then waits for the action's end. What happens next is the ``mode``:

- ``"auto"`` (default): the action's end says who performs it, as the catalog and the stack
  decide. ``succeeded`` by one of Keyturn's executors: the executor's (masked) result is
  returned and the body does not run. ``approved_external`` (no executor for the family; the
  caller performs it, with a receipt), or ``succeeded`` through the executor's no-op plugin:
  the body runs, once, and its return value is returned. An ``approved_external`` action whose
  receipt has expired (a repeated call that found an old action by its idempotency key) raises
  ``ReceiptExpired`` instead: the body never runs on a spent approval; a repeated call that finds
  its action already approved raises ``ApprovalSpent`` (the approved call may have run it). The
  body runs on copies of the arguments that became parameters, taken when the call was made.
- ``"executor"``: the body never runs; the executor's result is returned (an action left to
  the caller raises ``UnexpectedState``: nothing performed it).
- ``"local"``: the body performs the action once it is approved; an action Keyturn's
  executor already performed raises ``UnexpectedState`` rather than running it twice.

Any other end raises its exception (``Denied``, ``ApprovalRefused``, ``Expired``,
``ExecutionFailed``, ``OutcomeUnknown``, ``UnexpectedState``), and the body does not run.
While the body runs, ``current_action()`` is the approved action (its id and ``receipt``).

Arguments become the action's parameters by default (every argument bound by name, defaults
included); ``parameters=`` takes a list of argument names, or a callable. ``resource``,
``reason`` and ``idempotency_key`` are strings formatted with the call's arguments
(``"{database}"``) or callables; every callable is called with the call's own arguments.
"""

from __future__ import annotations

import asyncio
import contextvars
import copy
import functools
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from keyturn.sdk import errors
from keyturn.sdk.models import APPROVED_EXTERNAL, SUCCEEDED, Action, Submitted, receipt_expiry

if TYPE_CHECKING:
    from keyturn.sdk.client import AsyncKeyturn, Keyturn

Mode = Literal["auto", "executor", "local"]
MODES = ("auto", "executor", "local")
Built = str | Callable[..., Any]
# The states a submission's answer may name for an action approved and over: whoever it was
# approved for may already have performed it.
ENDED_APPROVED = frozenset({APPROVED_EXTERNAL, SUCCEEDED})


@dataclass(frozen=True)
class Call:
    """The arguments a guarded body runs with (copies of those that became parameters)."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any]


_current: contextvars.ContextVar[Action | None] = contextvars.ContextVar("keyturn_current_action", default=None)


def current_action() -> Action | None:
    """The approved action whose guarded body is running now (None outside a guarded body)."""
    return _current.get()


def guard(
    action: str,
    *,
    resource: Built,
    reason: Built,
    parameters: Sequence[str] | Callable[..., Any] | None = None,
    idempotency_key: Built | None = None,
    mode: Mode = "auto",
    timeout: float | None = None,
    client: Keyturn | AsyncKeyturn | None = None,
) -> Callable[[Any], Any]:
    """Make every call of the decorated function an action ``action`` (see the module's documentation).

    ``client`` is the ``Keyturn`` or ``AsyncKeyturn`` to submit through (``kt.guard(...)`` passes
    itself); without one, the default client (``keyturn.sdk.configure``, or ``KEYTURN_INTAKE_URL`` and
    ``KEYTURN_TOKEN``), looked up at each call, so decorating needs no token yet. ``timeout`` bounds
    the wait for the action's end (None: as long as it takes; an approval has its own expiry). With
    ``Keyturn`` it decorates plain functions and coroutine functions (the blocking calls then run in a
    worker thread); with ``AsyncKeyturn``, coroutine functions only.
    """
    checked_mode(mode)
    from keyturn.sdk.client import AsyncKeyturn, default_client

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        signature = inspect.signature(fn)
        is_async = inspect.iscoroutinefunction(fn)
        if isinstance(client, AsyncKeyturn) and not is_async:
            raise TypeError(
                f"{fn.__qualname__} is not a coroutine function: guard it with Keyturn (blocking), not AsyncKeyturn"
            )

        def request(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[dict[str, Any], Call]:
            """(what is submitted, the call the body runs with): the arguments that become parameters
            are copied first, so code still holding the caller's objects cannot change what the body
            does after approvers saw them."""
            given = signature.bind(*args, **kwargs)
            if not callable(parameters):
                for name in parameters if parameters is not None else list(given.arguments):
                    if name in given.arguments and name not in ("self", "cls"):
                        given.arguments[name] = copy.deepcopy(given.arguments[name])
            call = Call(tuple(given.args), dict(given.kwargs))
            bound = signature.bind(*call.args, **call.kwargs)
            bound.apply_defaults()
            named = dict(bound.arguments)
            built: dict[str, Any] = {
                "resource": build_text(resource, "resource", named, call.args, call.kwargs),
                "reason": build_text(reason, "reason", named, call.args, call.kwargs),
                "parameters": build_parameters(parameters, named, call.args, call.kwargs),
            }
            if idempotency_key is not None:
                built["idempotency_key"] = build_text(idempotency_key, "idempotency_key", named, call.args, call.kwargs)
            return built, call

        def unchanged(built: dict[str, Any], call: Call, done: Action) -> None:
            """Raise ``UnexpectedState`` when what the call's arguments build now is not what was
            approved: a ``parameters=`` callable may read objects the copy above cannot see."""
            again, _ = request(call.args, call.kwargs)
            if (again["resource"], again["parameters"]) != (built["resource"], built["parameters"]):
                raise errors.UnexpectedState(
                    f"{action} {done.action_id}: the call's arguments changed while it waited for approval; "
                    "the body was not run on values nobody approved",
                    done,
                )

        if is_async:

            @functools.wraps(fn)
            async def guarded_async(*args: Any, **kwargs: Any) -> Any:
                built, call = request(args, kwargs)
                through = client or default_client()
                if isinstance(through, AsyncKeyturn):
                    submitted = await through.submit(action, **built)
                    done = (await through.wait(submitted.action_id, timeout)).raise_for_outcome()
                else:
                    submitted = await asyncio.to_thread(lambda: through.submit(action, **built))
                    done = (await asyncio.to_thread(through.wait, submitted.action_id, timeout)).raise_for_outcome()
                run_body, value = settle(done, mode, found=submitted)
                if not run_body:
                    return value
                unchanged(built, call, done)
                token = _current.set(done)
                try:
                    return await fn(*call.args, **call.kwargs)
                finally:
                    _current.reset(token)

            return guarded_async

        @functools.wraps(fn)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            built, call = request(args, kwargs)
            through = client or default_client()
            assert not isinstance(through, AsyncKeyturn)
            submitted = through.submit(action, **built)
            done = through.wait(submitted.action_id, timeout).raise_for_outcome()
            run_body, value = settle(done, mode, found=submitted)
            if not run_body:
                return value
            unchanged(built, call, done)
            token = _current.set(done)
            try:
                return fn(*call.args, **call.kwargs)
            finally:
                _current.reset(token)

        return guarded

    return decorate


def checked_mode(mode: str) -> Mode:
    """``mode`` if it is one of ``MODES``; refused when a guard or tool is made, not at its first call."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
    return mode  # type: ignore[return-value]


def settle(done: Action, mode: Mode, *, found: Submitted | None = None) -> tuple[bool, Any]:
    """What a guarded call does with its action's end: (run the body?, the value to return otherwise).
    Raises the end's exception when it did not end approved, and ``UnexpectedState`` when ``mode``
    cannot be honoured (see the module's documentation). ``found``, the submission's answer: an
    action its idempotency key found already over (``Submitted.found``) raises ``ApprovalSpent``
    rather than run the body a second time on one approval."""
    done.raise_for_outcome()
    if mode != "local" and done.performed_by_keyturn:
        return False, done.result
    if mode != "executor" and done.left_to_the_caller:
        if found is not None and found.found and found.state in ENDED_APPROVED:
            raise errors.ApprovalSpent(
                f"{done.action} {done.action_id} was already approved ({found.state}) when this call found it "
                f"by its idempotency key {found.idempotency_key!r}: the call that was approved may have run "
                "the body, which runs at most once per approval; submit with a new key to perform it again",
                done,
            )
        if done.state == APPROVED_EXTERNAL:
            spent(done)
        return True, None
    who = "the executor already performed it" if done.performed_by_keyturn else "nothing performed it"
    raise errors.UnexpectedState(
        f"{done.action} {done.action_id} ended {done.state} and {who}; guard mode {mode!r} cannot "
        "return a result for it (see the catalog entry: mode='auto' follows it)",
        done,
    )


def spent(done: Action) -> None:
    """Raise ``ReceiptExpired`` when an ``approved_external`` action's receipt can no longer be acted on:
    a repeated call (the same idempotency key finds the old action) must not perform it again on an
    approval whose window closed. The signature is the performing system's to check (``verify_receipt``)."""
    closes = receipt_expiry(done.receipt)
    if closes is None:
        raise errors.ReceiptExpired(f"{done.action} {done.action_id} was approved, but carries no receipt expiry", done)
    if datetime.now(UTC) >= closes:
        raise errors.ReceiptExpired(
            f"{done.action} {done.action_id} was approved, but its receipt expired at {closes.isoformat()}; "
            "the body was not run: submit a new action to perform it now",
            done,
        )


def build_text(spec: Built, name: str, named: dict[str, Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    if callable(spec):
        value = spec(*args, **kwargs)
    else:
        try:
            value = spec.format(**named)
        except (KeyError, IndexError) as exc:
            raise TypeError(f"guard {name}={spec!r} names an argument the function does not have: {exc}") from None
    if not isinstance(value, str):
        raise TypeError(f"guard {name} must build a string, not {type(value).__name__}")
    return value


def build_parameters(
    spec: Sequence[str] | Callable[..., Any] | None,
    named: dict[str, Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> dict[str, Any]:
    if spec is None:
        return {k: v for k, v in named.items() if k not in ("self", "cls")}
    if callable(spec):
        value = spec(*args, **kwargs)
        if not isinstance(value, dict):
            raise TypeError(f"guard parameters must build a dict, not {type(value).__name__}")
        return value
    missing = [name for name in spec if name not in named]
    if missing:
        raise TypeError(f"guard parameters name arguments the function does not have: {', '.join(missing)}")
    return {name: named[name] for name in spec}
