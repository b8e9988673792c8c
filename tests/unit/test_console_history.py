"""The console's history: the audit projection the approval service keeps, and what its pages show."""

from __future__ import annotations

import json

from keyturn.approval.console_history import _action_story
from keyturn.approval.history import HISTORY_DAYS, coalesced, compact, history_page, rows_and_changes
from keyturn.audit.report.model import DAY_MS, build_report
from keyturn.core.audit.checkpoint import CheckpointVerifier
from tests.fakes.history_store import MemoryHistoryStore
from tests.unit.audit_history import SIGNER
from tests.unit.report_story import UNTIL, period, seeded

HISTORY, PLAN = seeded()
NOW = period()[1] - 1


async def filled() -> MemoryHistoryStore:
    store = MemoryHistoryStore()
    records = HISTORY.records
    for start in range(0, len(records), 37):  # in batches, one of them delivered twice
        rows, changes = rows_and_changes(records[start : start + 37])
        await store.store(rows, changes, keep_after=0)
        if start == 74:
            await store.store(rows, changes, keep_after=0)
    return store


async def test_the_page_counts_what_the_report_counts_over_the_same_window():
    page = await history_page(await filled(), now=NOW)
    verifier = CheckpointVerifier.from_keys([SIGNER.public_key])
    report = build_report(HISTORY.records, verifier, page.since, page.until)
    assert page.until - page.since == HISTORY_DAYS * DAY_MS
    assert page.report.integrity is None  # the console does not claim to have verified anything
    assert page.report.totals == report.totals and page.report.actions == report.actions > 0
    assert page.report.days == report.days
    assert page.report.groups == report.groups
    assert page.report.approvers == report.approvers
    assert page.report.rubber_stamps == report.rubber_stamps
    assert page.report.refusals_by_kind == report.refusals_by_kind


async def test_the_list_is_newest_first_searchable_and_filtered_by_outcome():
    store = await filled()
    everything = (await history_page(store, now=NOW, limit=1000)).actions
    in_window = [item for item in PLAN if item.requested_at < UNTIL]
    assert [line.action_id for line in everything] == [
        item.action_id for item in sorted(in_window, key=lambda item: item.requested_at, reverse=True)
    ]
    builder = (await history_page(store, search="BUILDER", now=NOW, limit=1000)).actions
    assert {line.action_id for line in builder} == {i.action_id for i in in_window if i.agent == "agent:builder"}
    assert [line.action_id for line in (await history_page(store, search="act-017", now=NOW)).actions] == ["act-017"]
    by_chain = (await history_page(store, search="human:alice", now=NOW, limit=1000)).actions
    assert len(by_chain) == len(in_window)  # every seeded action acts for human:alice
    expired = (await history_page(store, outcome="expired", now=NOW, limit=1000)).actions
    assert {line.action_id for line in expired} == {i.action_id for i in in_window if i.kind == "expired"}
    assert all(line.outcome == "expired" for line in expired)


async def test_an_action_s_story_masked_parameters_votes_outcome_and_timeline():
    store = await filled()
    item = next(i for i in PLAN if i.kind == "approved_ok" and i.refused)
    rows = await store.rows_of(item.action_id)
    story = _action_story(item.action_id, rows)
    assert story["outcome"] == "approved"
    assert [(v["approver"], v["accepted"]) for v in story["votes"]] == [
        (item.agent.replace("agent:", "human:"), False),
        (item.approver, True),
    ]
    assert len(story["steps"]) == len(rows) == 6  # request, decision, refused vote, vote, resolution, execution
    requested = json.loads(next(r for r in rows if r.event_type == "ActionRequested").payload_json)
    shown = json.loads(story["parameters"])  # the audit's copy, which this story seeds with values in clear
    assert shown.keys() == json.loads(requested["parameters_json"]).keys()
    assert shown == {"password": "<SECRET>", "contact": "<EMAIL_ADDRESS>", "note": "card ****1111"}  # masked again


async def test_what_people_and_agents_wrote_is_masked_again_before_it_is_shown():
    import dataclasses

    store = await filled()
    item = next(i for i in PLAN if i.kind == "approved_ok" and i.refused)
    leaked = "ada.lovelace@example.com"

    def written_in_clear(row):  # a record stored before a recogniser knew this kind of value
        payload = json.loads(row.payload_json)
        if row.event_type == "ActionRequested":
            payload["reason"] = f"send it to {leaked}"
            payload["parameters_json"] = json.dumps({"recipient": leaked, "note": "monthly"})
        if row.event_type == "VoteRecorded":
            payload["vote"]["reason"] = f"ok, cc {leaked}"
            payload["message"] = f"refused for {leaked}"
        return dataclasses.replace(row, payload_json=json.dumps(payload))

    rows = [written_in_clear(row) for row in await store.rows_of(item.action_id)]
    story = _action_story(item.action_id, rows)
    shown = json.dumps(
        [
            story["request"]["reason"],
            story["parameters"],
            story["votes"],
            [dataclasses.astuple(s) for s in story["steps"]],
        ],
        default=str,
    )
    assert leaked not in shown
    assert story["request"]["reason"] == "send it to <EMAIL_ADDRESS>"
    assert json.loads(story["parameters"]) == {"recipient": "<EMAIL_ADDRESS>", "note": "monthly"}
    assert [v["reason"] for v in story["votes"]] == ["refused for <EMAIL_ADDRESS>", "ok, cc <EMAIL_ADDRESS>"]


def test_the_history_keeps_no_copy_a_timeline_never_shows():
    decided = next(r for r in HISTORY.records if r.event_type == "ActionDecided")
    payload = json.loads(decided.payload_json)
    assert payload["provenance"]["input_json"]
    kept = compact("ActionDecided", payload)
    assert "input_json" not in kept["provenance"] and kept["request"] == payload["request"]
    resolved = next(r for r in HISTORY.records if r.event_type == "ApprovalResolved")
    kept = compact("ApprovalResolved", json.loads(resolved.payload_json))
    assert "request" not in kept["decision"] and kept["decision"]["provenance"]["policy_revision"]


async def test_retention_drops_actions_requested_before_the_window():
    store = await filled()
    rows, changes = rows_and_changes(HISTORY.records[-3:])
    await store.store(rows, changes, keep_after=period()[0])
    assert all(line.requested_at >= period()[0] for line in store.lines.values())
    assert {r.action_id for r in store.rows.values()} == set(store.lines)


async def test_a_batch_makes_one_change_per_action_and_leaves_every_line_as_one_by_one_would():
    rows, changes = rows_and_changes(HISTORY.records)
    merged = coalesced(changes)
    assert len(merged) == len({c.action_id for c in changes}) < len(changes)
    one_by_one, together = MemoryHistoryStore(), MemoryHistoryStore()
    for change in changes:
        await one_by_one.store([], [change], keep_after=None)
    await together.store(rows, merged, keep_after=None)
    assert together.lines == one_by_one.lines
    assert (await history_page(together, now=NOW, limit=1000)).actions == (
        await history_page(one_by_one, now=NOW, limit=1000)
    ).actions


def test_a_payload_the_fast_reader_refuses_is_still_in_the_history():
    """orjson refuses an integer past 64 bits and text that is a ``str`` subclass; the standard
    library reads both, so such a record still has its row and changes its action's line, and
    text that is not JSON at all is left out as before."""
    import dataclasses

    from keyturn.core.canonical import CanonicalJson

    requested = next(r for r in HISTORY.records if r.event_type == "ActionRequested")
    payload = json.loads(requested.payload_json)
    huge = dataclasses.replace(requested, payload_json=json.dumps({**payload, "count": 2**70}))
    subclass = dataclasses.replace(requested, payload_json=CanonicalJson(requested.payload_json))
    broken = dataclasses.replace(requested, payload_json="{not json")
    rows, changes = rows_and_changes([huge, subclass, broken])
    assert [json.loads(row.payload_json).get("count") for row in rows] == [2**70, None]
    assert [change.action for change in changes] == [payload["action"]] * 2
