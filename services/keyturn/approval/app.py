"""Approval service: holds needs-approval actions until approvers answer, or the TTL runs out.

consumes  <ns>.actions.decided (needs approval; break-glass) · <ns>.actions.executed (requester webhooks),
          group <ns>-approval-actions · <ns>.audit (the console's history: a projection of the
          last 30 days), group <ns>-approval-history
produces  <ns>.actions.resolved (approved / denied / expired) · <ns>.approvals.votes (every
          vote, accepted or refused) · <ns>.dlq (refused chat interactions)
routes    GET /v1/approvals · GET /v1/approvals/{id} · POST /v1/approvals/{id}/votes ·
          POST /slack/interactions · POST /api/messages (Teams) · /console (web console) · /console/history
state     approvals, votes, and outboxes for events, chat notifications and webhooks in PostgreSQL
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Any

from fastapi import FastAPI

from keyturn.approval.console import mount_console
from keyturn.approval.console_history import mount_history
from keyturn.approval.http import mount_routes
from keyturn.approval.runtime import ApprovalRuntime
from keyturn.approval.slack_interactions import mount_slack
from keyturn.bus import headers
from keyturn.bus.http import BoundedRequests, embedded_server
from keyturn.bus.loop import Stage
from keyturn.bus.warrants import Warrants, log_skipped
from keyturn.config import Settings
from keyturn.core.events import ActionDecided, ActionExecuted
from keyturn.faults import supervised, until_done
from keyturn.masking.protect import keyring_for
from keyturn.roots import stream_worker

log = logging.getLogger(__name__)

# What the desk has a part in (``ApprovalDesk.concerns``): approvals to open, break-glass
# actions, and webhooks; other decisions and executions are skipped undecoded.
DESK_EVENTS = headers.wanting(
    {
        "ActionDecided": headers.any_of(
            headers.outcome_in("needs_approval"), headers.flag(headers.BREAK_GLASS), headers.flag(headers.CALLBACK)
        ),
        "ActionExecuted": headers.flag(headers.CALLBACK),
    }
)


def create_app(settings: Settings):
    app, topics, publisher = stream_worker(settings, "approval")
    keyring = keyring_for(settings.seal_keys, settings.keys_dir)
    # the executor runs an approval only from this service (bus.warrants); its outbox sends them
    publisher.warrants = Warrants(keyring, (topics.resolved, topics.votes))  # votes: the audit counts them
    # and this service takes decisions and outcomes only from theirs: one written to the topics by
    # anyone else opens no approval and tells no chat and no requester's webhook
    vouching = Warrants(keyring, (topics.decided, topics.executed))
    runtime = ApprovalRuntime(settings, topics, publisher.send_raw, publisher.send_raw_all)
    http = FastAPI(title="Keyturn approvals", version="0.1.0", description="Answer pending actions.")
    mount_routes(http, runtime.desk, runtime.verifier)
    console = mount_console(http, runtime.desk, runtime.verifier, runtime.console_sign_in, runtime.console_form_key)
    http.add_middleware(
        BoundedRequests,
        max_body_bytes=settings.max_body_bytes,
        max_header_bytes=settings.max_header_bytes,
        on_refused=partial(runtime.refused_at_the_edge, console_session=console.signed_in),
    )
    mount_history(http, console, runtime.history)
    if runtime.slack is not None:
        mount_slack(http, runtime.desk, runtime.slack, settings.slack_signing_secret)

    @app.task
    async def follow_actions():
        desk = await until_done(runtime.desk, "approval: opening the database")

        def vouched(batch: list[tuple[ActionDecided | ActionExecuted, Any]]) -> list[tuple[Any, Any]]:
            kept, refused = vouching.sorted(batch)
            log_skipped(refused, "approval")
            return kept

        async def follow(event: ActionDecided | ActionExecuted, message) -> None:
            if not vouched([(event, message)]):
                return
            if isinstance(event, ActionExecuted):
                await desk.note_executed(event)
            elif done := await desk.take_decision(event, bytes(message.value)):
                log.info("%s: %s (%s)", done, event.action_id, event.request.action)

        async def follow_many(batch: list[tuple[ActionDecided | ActionExecuted, Any]]) -> None:
            # decisions first, together (an action's execution never comes before its decision is
            # taken), then executions in arrival order
            batch = vouched(batch)
            decided = [(e, bytes(m.value)) for e, m in batch if isinstance(e, ActionDecided)]
            for action_id, done in (await desk.take_decisions(decided)).items():
                log.info("%s: %s", done, action_id)
            for event, _ in batch:
                if isinstance(event, ActionExecuted):
                    await desk.note_executed(event)

        stage = Stage(
            publisher,
            (ActionDecided, ActionExecuted),
            handle=follow,
            on_failure=desk.end_failed,
            handle_many=follow_many,
            wants=DESK_EVENTS,
        )
        await supervised("approval: following decisions", lambda: runtime.follow_actions(stage))

    @app.timer(interval=1.0)
    async def keep_time():
        if runtime.ready:
            await runtime.keep_time()

    @app.timer(interval=1.0)
    async def deliver_notifications():
        if runtime.ready:
            await runtime.deliver()

    @app.task
    async def keep_history():
        # the console's history, a projection of the audit topic (approval/history.py)
        # supervised: whatever fails here restarts the follower, never the approval service
        await supervised("approval: the history follower", lambda: runtime.follow_audit(publisher))

    @app.task
    async def serve_api():
        await runtime.desk()
        if runtime.teams is not None:
            await runtime.teams.mount(http, runtime.desk)
        await embedded_server(
            http,
            settings.approval_host,
            settings.approval_port,
            event_loop=settings.event_loop,
            access_log=bool(settings.access_log),
        ).serve()

    return app
