"""The plugin interface: one class per kind of action, registered by action prefix.

Writing a plugin (see ``external.py`` for the smallest, ``sql.py``, ``iam.py`` and ``http.py`` for real ones):

- ``name``: a short word shown in ``ActionExecuted.plugin`` and the audit.
- ``async execute(command)``: perform the command **once** and return a JSON-able result.
  The executor has already checked the decision, the approval window and the parameters'
  digest, and recorded in its ledger that the command started. Mint whatever credential the
  command needs for this one command (``command.credential_ttl_s`` is its lifetime) and
  destroy it before returning, in a ``finally``. Never retry a side effect.
  Raise ``ExecutionFailed`` when nothing happened (or nothing was committed) and say why;
  raise ``OutcomeUnknown`` when it may have happened. Any other exception counts as failed.
- ``async abandon(command)`` (optional): called instead of ``execute`` when an earlier run
  of this command started and never finished (the executor died). Clean up what that run
  may have left (its credential, its sessions) and return evidence as a JSON-able dict;
  never perform the command.
- ``async settle(command)`` (optional): called after a successful ``abandon`` (the dead run's
  sessions ended, its credential dropped, so the target's state is final) with the clear
  parameters and what the dead run noted (``command.noted``): return a result when the
  command's change is in effect (the action ends ``succeeded``), raise ``ExecutionFailed`` when
  nothing changed (``failed``), anything else when it cannot tell (``outcome_unknown``). Only
  read; never perform the command.
- ``await command.note({...})`` (in ``execute``): keep, in the ledger, what a ``settle`` would
  need to tell the outcome after the executor's death (a SQL write notes its transaction id
  just before its COMMIT). It raises ``ExecutionFailed`` when the note could not be kept (the
  database away, or the start taken over by another executor): change nothing then.
- ``repeatable = True`` (optional): running the command again has no effect outside Keyturn (a
  receipt is signed, nothing is performed). A run interrupted before its outcome was recorded is
  then run again instead of ending ``outcome_unknown``; never set it on a plugin with side effects.
- ``async start()`` (optional): called once when the executor starts.

Results go back to the requester masked and capped by the executor, not by the plugin;
a plugin returns rows as ``{"row_count": n, "rows": [...]}`` so they can be capped.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from keyturn.core.events import ImpactPreview
from keyturn.core.principal import Principal


@dataclass(frozen=True)
class Command:
    """One approved command: what to do, with the clear parameters, and for whom."""

    action_id: str
    action: str
    resource: str
    parameters: dict[str, Any]
    credential_ttl_s: int
    requester: Principal | None = None
    # what cleared it: the approved digest, who approved, the policy revision, the window's end
    payload_digest: str = ""
    approvers: tuple[str, ...] = ()
    decision: str = "allowed"  # "allowed" by the policy, or "approved" by people
    policy_revision: str = ""
    decision_id: str = ""
    execute_before: datetime | None = None
    mask: tuple[str, ...] = ()  # the decision's mask: parameters.<field>, and columns.<name> an export masks
    # the approved impact preview (SQL-backed actions): a write enforces its bound with
    # ``executor.impact.enforce_impact`` before it commits
    impact: ImpactPreview | None = None
    # parameters that were secret references, by field: ``{"connection_string": "NAME"}``; the value in
    # ``parameters`` is the resolved secret, so a message about it names the secret, never the value
    secret_fields: dict[str, str] = field(default_factory=dict)
    # keeps what a settle after the executor's death needs (see the module's text); None: nothing kept
    keep_note: Callable[[dict[str, Any]], Awaitable[bool]] | None = field(default=None, repr=False)
    # what an interrupted run of this command noted (given to ``abandon`` and ``settle``); None when
    # that run was started by an executor that kept no notes
    noted: dict[str, Any] | None = None

    async def note(self, progress: dict[str, Any]) -> None:
        """Keep ``progress`` with the command's start in the ledger, or raise ``ExecutionFailed``."""
        if self.keep_note is None:
            raise ExecutionFailed("this run cannot keep notes in the ledger; nothing was changed")
        try:
            kept = await self.keep_note(progress)
        except Exception as exc:  # the database away: the caller changes nothing
            failed = f"the ledger could not be written ({type(exc).__name__}); nothing was changed"
            raise ExecutionFailed(failed) from None
        if not kept:
            raise ExecutionFailed("another executor holds this command's start now; nothing was changed here")


class ExecutionFailed(Exception):
    """The command did not take effect; the message is shown to the requester and audited."""


class OutcomeUnknown(Exception):
    """The command may or may not have taken effect; the message says what is known."""


class Plugin(Protocol):
    """A family's executor. It may have ``turns_for(command)`` (an ``asyncio.Semaphore``): how
    many of its commands run at once where ``command`` runs; the runner waits for a turn before
    the command's time limit starts, and before a crashed run's cleanup (``abandon``)."""

    name: str

    async def execute(self, command: Command) -> Any:
        """Perform the command once; return a JSON-able result."""
