"""The console's history pages: the last 30 days' figures and charts, and every action's timeline.

``/console/history`` (search by action id, type, requester or acting-for principal; filter by
outcome) and ``/console/history/{action_id}``. Signed-in people only, like every console page,
and of them only approvers: members of an approver group in the policy's data
(``data.keyturn.groups``, asked of OPA: ``ApprovalDesk.is_approver``), since the history shows
every action, not just theirs.
The data is the approval service's projection of the audit topic (``approval.history``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from keyturn.approval.console import TEMPLATES, Console
from keyturn.approval.desk import DeskUnavailable
from keyturn.approval.history import HISTORY_DAYS, HistoryStore, history_page
from keyturn.approval.views import masked_parameters
from keyturn.audit.replay import TimelineStep, timeline_step
from keyturn.audit.report.model import CATEGORY_LABELS, category_label
from keyturn.audit.report.render import duration_text, when_text
from keyturn.bus.http import id_in_path, shown_id
from keyturn.core.approval import shown_channel
from keyturn.core.principal import Principal
from keyturn.core.text import words_problem
from keyturn.masking.protect import mask_text

TEMPLATES.filters["ms"] = when_text
CHARTS_TTL_S = 60.0  # the charts of the window are drawn at most once a minute


class HistoryAccess:
    """Who may read the history: approvers (``ApprovalDesk.is_approver``, the rule that also lets
    them see any action's approval)."""

    def __init__(self, console: Console) -> None:
        self.console = console

    async def allows(self, person: Principal) -> bool | None:
        """True or False, or None when the policy engine cannot be asked now."""
        desk = await self.console.desk_of()
        try:
            return await desk.is_approver(person)
        except DeskUnavailable:
            return None


class _FiguresCache:
    """The window's figures and charts, kept ``CHARTS_TTL_S``: folding a month of records and
    drawing happen at most once a minute, in a worker thread (matplotlib would hold the event
    loop, and the votes waiting on it, for seconds). The list of actions is always read fresh."""

    def __init__(self) -> None:
        self.at = -CHARTS_TTL_S
        self.report: Any = None
        self.charts: dict[str, str] = {}
        self.lock = asyncio.Lock()

    @property
    def fresh(self) -> bool:
        return self.report is not None and time.monotonic() - self.at <= CHARTS_TTL_S

    async def page(self, store: HistoryStore, search: str, outcome: str) -> tuple[Any, dict[str, str]]:
        async with self.lock:
            page = await history_page(
                store, search=search, outcome=outcome, figures=self.report if self.fresh else None
            )
            if not self.fresh or page.report is not self.report:
                self.charts = await asyncio.to_thread(self._draw, page.report)
                self.report, self.at = page.report, time.monotonic()
        return page, self.charts

    @staticmethod
    def _draw(report: Any) -> dict[str, str]:
        from keyturn.audit.report import charts

        try:
            charts.check_available()
        except charts.ChartsUnavailable as missing:  # matplotlib is the report extra
            return {"outcomes": f'<p class="muted">No chart: {missing}</p>', "decision_times": "", "approvers": ""}
        return {
            "outcomes": charts.outcomes_per_day(report),
            "decision_times": charts.decision_times(report),
            "approvers": charts.approvers(report),
        }


def mount_history(app: FastAPI, console: Console, history_of: Callable[[], Awaitable[HistoryStore]]) -> None:
    """Add ``/console/history`` to the console."""
    access = HistoryAccess(console)
    cache = _FiguresCache()

    async def gate(request: Request) -> tuple[Principal, str] | Response:
        signed_in = await console.session(request)
        if signed_in is None:
            return RedirectResponse("/console/sign-in", status_code=303)
        person, token = signed_in
        allowed = await access.allows(person)
        if allowed:
            return signed_in
        message = (
            "The policy engine is unavailable, so who may read the history cannot be checked; try again shortly."
            if allowed is None
            else "The history shows every action; only members of an approver group may read it."
        )
        return console.render(
            "history_denied.html",
            503 if allowed is None else 403,
            approver=person,
            csrf=console.csrf(token),
            message=message,
        )

    @app.get("/console/history", response_class=HTMLResponse, include_in_schema=False)
    async def history(request: Request, q: str = "", outcome: str = "") -> Response:
        signed = await gate(request)
        if isinstance(signed, Response):
            return signed
        person, token = signed
        # a search is looked up in PostgreSQL (which cannot hold a NUL) and repeated on the page:
        # words nobody could have typed are refused saying so, as every other console input is
        for field, value in (("search", q[:200]), ("outcome", outcome[:64])):
            if (why := words_problem(value)) is not None:
                return console.render(
                    "history_denied.html",
                    400,
                    approver=person,
                    csrf=console.csrf(token),
                    message=f"The {field} {why}; nothing was searched. Search with plain words.",
                )
        page, charts = await cache.page(await history_of(), q[:200], outcome[:64])
        # the search is free text from the link, so it goes back into the box masked: a link cannot
        # put a secret on the page (the history holds masked values: a secret matched nothing anyway)
        shown = await asyncio.to_thread(mask_text, q[:200]) if q else ""
        return console.render(
            "history.html",
            approver=person,
            csrf=console.csrf(token),
            page=page,
            report=page.report,
            charts=charts,
            q=shown,
            outcome=outcome[:64],
            outcomes=sorted(set(CATEGORY_LABELS) | set(page.report.categories)),
            label=category_label,
            days=HISTORY_DAYS,
            seconds=duration_text,
            quote=quote,
        )

    @app.get("/console/history/{action_id}", response_class=HTMLResponse, include_in_schema=False)
    async def history_action(request: Request, action_id: str) -> Response:
        signed = await gate(request)
        if isinstance(signed, Response):
            return signed
        person, token = signed
        known = id_in_path(action_id)  # an id no record can hold is not looked up, nor repeated
        rows = await (await history_of()).rows_of(action_id) if known else []
        if not rows:
            return console.render(
                "history_denied.html",
                404,
                approver=person,
                csrf=console.csrf(token),
                message=f"No history is kept for {f'action {action_id}' if shown_id(action_id) else 'this link'} "
                f"(the last {HISTORY_DAYS} days are).",
            )
        story = await asyncio.to_thread(_action_story, action_id, rows)  # masking is CPU work: off the loop
        return console.render("history_action.html", approver=person, csrf=console.csrf(token), **story)


def _action_story(action_id: str, rows: list[Any]) -> dict[str, Any]:
    """The action's facts (masked parameters, votes, impact, outcome) and its timeline.

    What people and agents wrote (the request's reason, vote notes, refusal messages, the
    timeline's why) and the parameters are masked again before they are shown, as the compliance
    report does: they were masked before they entered the audit, and this keeps a recogniser added
    since then, or a record an older version wrote, from showing a value in clear.
    """
    from keyturn.audit.report.model import outcome_category
    from keyturn.masking.protect import mask_parameters, mask_text

    def text(value: Any) -> Any:
        return mask_text(value) if isinstance(value, str) and value else value

    request: dict[str, Any] = {}
    mask: list[str] = []
    stages: dict[str, str | None] = {"decision": None, "approval": None, "execution": None, "other": None}
    votes: list[dict[str, Any]] = []
    impact: Any = None
    for row in rows:
        payload = json.loads(row.payload_json)
        kind = row.event_type
        if kind == "ActionRequested":
            request = payload
        elif kind == "ActionDecided":
            request = request or payload.get("request") or {}
            mask = list(payload.get("mask") or ())
            stages["decision"] = payload.get("outcome")
        elif kind == "ApprovalResolved":
            stages["approval"] = payload.get("outcome")
        elif kind == "ActionExecuted":
            stages["execution"] = payload.get("outcome")
        elif kind != "VoteRecorded" and isinstance(payload.get("outcome"), str):
            stages["other"] = payload["outcome"]
        if kind == "VoteRecorded":
            vote = payload.get("vote") or {}
            votes.append(
                {
                    "approver": (vote.get("approver") or {}).get("id"),
                    "choice": vote.get("choice"),
                    "accepted": bool(payload.get("accepted")),
                    "refusal": payload.get("refusal"),
                    "reason": text(vote.get("reason") if payload.get("accepted") else payload.get("message")),
                    "channel": shown_channel(vote.get("channel")),
                }
            )
        if payload.get("impact") is not None:  # an impact preview, where the decision carries one
            impact = payload["impact"]
    try:
        parameters = mask_parameters(json.loads(request.get("parameters_json") or "{}"))
    except ValueError:  # unreadable, or not maskable: not shown
        parameters = {}
    category = outcome_category(stages["decision"], stages["approval"], stages["execution"], stages["other"])
    return {
        "action_id": action_id,
        "request": {**request, "reason": text(request.get("reason"))},
        "requester": (request.get("requester") or {}).get("id"),
        "acting_for": list((request.get("requester") or {}).get("chain") or ()),
        "parameters": json.dumps(masked_parameters(parameters, mask), indent=2, sort_keys=True, ensure_ascii=False),
        "votes": votes,
        "impact": json.dumps(impact, indent=2, sort_keys=True, ensure_ascii=False) if impact is not None else None,
        "outcome": category,
        "outcome_label": category_label(category),
        "steps": [_step_masked(timeline_step(row.record()), text) for row in rows],
    }


def _step_masked(step: TimelineStep, text: Callable[[Any], Any]) -> TimelineStep:
    return dataclasses.replace(step, who=text(step.who), what=text(step.what), why=text(step.why))
