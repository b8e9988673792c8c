"""An in-memory ``approval.history.HistoryStore`` with the real one's guarantees: rows keyed by
sequence (a batch stored twice changes nothing), stage outcomes that only move from unknown to
known, retention by request time, search over id, type, requester and acting-for principals."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from keyturn.approval.history import ActionChange, ActionSummary, HistoryRow


class MemoryHistoryStore:
    def __init__(self) -> None:
        self.rows: dict[int, HistoryRow] = {}
        self.lines: dict[str, ActionSummary] = {}

    async def store(self, rows: Sequence[HistoryRow], changes: Sequence[ActionChange], keep_after: int | None) -> None:
        for row in rows:
            self.rows.setdefault(row.sequence, row)
        for change in changes:
            line = self.lines.get(change.action_id)
            if line is None:
                line = ActionSummary(change.action_id, change.at, None, None, (), None, None, None, None)
            self.lines[change.action_id] = replace(
                line,
                requested_at=change.at if change.requested else min(line.requested_at, change.at),
                action=line.action or change.action,
                requester=line.requester or change.requester,
                acting_for=line.acting_for or change.acting_for,
                decision=change.decision or line.decision,
                approval=change.approval or line.approval,
                execution=change.execution or line.execution,
                other=change.other or line.other,
            )
        if keep_after is None:
            return
        old = {a for a, line in self.lines.items() if line.requested_at < keep_after}
        self.rows = {s: r for s, r in self.rows.items() if r.action_id not in old}
        self.lines = {a: line for a, line in self.lines.items() if a not in old}

    async def rows_since(self, since: int) -> list[HistoryRow]:
        wanted = {a for a, line in self.lines.items() if line.requested_at >= since}
        return [self.rows[s] for s in sorted(self.rows) if self.rows[s].action_id in wanted]

    async def rows_of(self, action_id: str) -> list[HistoryRow]:
        return [self.rows[s] for s in sorted(self.rows) if self.rows[s].action_id == action_id]

    async def actions(self, since: int, until: int, search: str, limit: int) -> list[ActionSummary]:
        needle = search.lower()

        def matches(line: ActionSummary) -> bool:
            fields = (line.action_id, line.action or "", line.requester or "", " ".join(line.acting_for))
            return not needle or any(needle in f.lower() for f in fields)

        found = [line for line in self.lines.values() if since <= line.requested_at < until and matches(line)]
        found.sort(key=lambda line: (-line.requested_at, line.action_id))
        return found[:limit]
