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
  ``ReceiptExpired`` instead: the body never runs on a spent approval.
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
import functools
import inspect
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from keyturn.sdk import errors
from keyturn.sdk.models import APPROVED_EXTERNAL, Action, receipt_expiry

if TYPE_CHECKING:
    from keyturn.sdk.client import AsyncKeyturn, Keyturn

Mode = Literal["auto", "executor", "local"]
MODES = ("auto", "executor", "local")
Built = str | Callable[..., Any]

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

        def request(args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            named = dict(bound.arguments)
            built: dict[str, Any] = {
                "resource": build_text(resource, "resource", named, args, kwargs),
                "reason": build_text(reason, "reason", named, args, kwargs),
                "parameters": build_parameters(parameters, named, args, kwargs),
            }
            if idempotency_key is not None:
                built["idempotency_key"] = build_text(idempotency_key, "idempotency_key", named, args, kwargs)
            return built

        if is_async:

            @functools.wraps(fn)
            async def guarded_async(*args: Any, **kwargs: Any) -> Any:
                built = request(args, kwargs)
                through = client or default_client()
                if isinstance(through, AsyncKeyturn):
                    done = await through.run(action, timeout=timeout, **built)
                else:
                    done = await asyncio.to_thread(through.run, action, timeout=timeout, **built)
                run_body, value = settle(done, mode)
                if not run_body:
                    return value
                token = _current.set(done)
                try:
                    return await fn(*args, **kwargs)
                finally:
                    _current.reset(token)

            return guarded_async

        @functools.wraps(fn)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            built = request(args, kwargs)
            done = (client or default_client()).run(action, timeout=timeout, **built)
            assert isinstance(done, Action)
            run_body, value = settle(done, mode)
            if not run_body:
                return value
            token = _current.set(done)
            try:
                return fn(*args, **kwargs)
            finally:
                _current.reset(token)

        return guarded

    return decorate


def checked_mode(mode: str) -> Mode:
    """``mode`` if it is one of ``MODES``; refused when a guard or tool is made, not at its first call."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
    return mode  # type: ignore[return-value]


def settle(done: Action, mode: Mode) -> tuple[bool, Any]:
    """What a guarded call does with its action's end: (run the body?, the value to return otherwise).
    Raises the end's exception when it did not end approved, and ``UnexpectedState`` when ``mode``
    cannot be honoured (see the module's documentation)."""
    done.raise_for_outcome()
    if mode != "local" and done.performed_by_keyturn:
        return False, done.result
    if mode != "executor" and done.left_to_the_caller:
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
