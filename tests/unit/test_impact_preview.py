"""The impact preview without servers: what OPA sees of it, how the decision carries it bound
to the payload, the tolerance the policy grants, and the executor's check before a commit."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from keyturn.core.events import Digest, ImpactPreview
from keyturn.core.impact import NotPreviewable, bounded, deletion_statement, preview_plan
from keyturn.executor.impact import ImpactExceeded, enforce_impact
from keyturn.policy.decider import PREVIEWS_AT_ONCE, PolicyDecider
from tests.fakes.service_ports import FakeOpa, FakePreviewer
from tests.unit.service_events import requested

NOW = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
TOLERANCE = {"extra_rows": 10, "extra_fraction": 0.05}


def preview(rows: int, **changes) -> ImpactPreview:
    base = ImpactPreview(Digest("ab" * 32), "computed", "delete", NOW, rows=rows, method="exact")
    return replace(base, **changes)


def needs_two(document: dict) -> dict:
    """A stand-in for the Rego rule (tested in policies.rego): over 1000 deleted rows, two approvers."""
    impact = document.get("impact", {})
    if impact.get("status") == "unavailable":
        groups = [{"name": "db-owners", "min": 1}]
    elif impact.get("rows", 0) > 1000:
        groups = [{"name": "platform", "min": 2}]
    else:
        return {"decision": {"outcome": "allowed", "reasons": ["small"], "impact_tolerance": TOLERANCE}}
    return {
        "decision": {
            "outcome": "needs_approval",
            "reasons": ["impact"],
            "approvals": {"groups": groups},
            "impact_tolerance": TOLERANCE,
        }
    }


async def test_the_preview_reaches_opa_and_the_decision_carries_it_bound_to_the_payload() -> None:
    seen: list[dict] = []
    opa = FakeOpa(lambda document: seen.append(document) or needs_two(document))
    decider = PolicyDecider(opa, 5, previewer=FakePreviewer({"big": 1500, "small": 40, "down": None}))
    big, small, down, other = (requested(a, action="orders.rows.delete") for a in ("big", "small", "down", "other"))

    decided = await decider.decide(big)
    assert seen[-1]["impact"] == {
        "status": "computed",
        "operation": "delete",
        "rows": 1500,
        "method": "exact",
        "tables": ["public.orders"],
    }
    assert decided.outcome.value == "needs_approval" and decided.approvals.groups[0].min_approvals == 2
    assert decided.impact.rows == 1500 and decided.impact.payload_digest == big.payload_digest
    assert decided.impact.max_rows == 1500 + 75, "5 % of 1500 is more than 10 rows"

    assert (await decider.decide(small)).impact.max_rows == 50, "10 rows are more than 5 % of 40"

    unavailable = await decider.decide(down)
    assert seen[-1]["impact"] == {"status": "unavailable", "operation": "delete", "tables": ["public.orders"]}
    assert unavailable.outcome.value == "needs_approval", "a failed preview never lets an action through unseen"
    assert unavailable.impact.max_rows is None and unavailable.impact.summary().startswith("impact unknown")

    plain = await decider.decide(other)
    assert "impact" not in seen[-1] and plain.impact is None


class SlowTarget(FakePreviewer):
    """Each dry run takes a moment; records how many ran at once."""

    def __init__(self, rows: dict[str, int | None]) -> None:
        super().__init__(rows)
        self.now = self.most = 0

    async def preview(self, request):
        self.now += 1
        self.most = max(self.most, self.now)
        await asyncio.sleep(0.02)
        self.now -= 1
        return await super().preview(request)


async def test_a_batch_of_writes_is_previewed_several_at_a_time_and_each_decision_keeps_its_own() -> None:
    """One after another, a batch of 64 SQL writes waited for 64 connections and counts in turn."""
    rows = {f"w{i}": 10 * i for i in range(20)}
    previewer = SlowTarget(rows)
    decider = PolicyDecider(FakeOpa(needs_two), 5, previewer=previewer)
    requests = [requested(a, action="orders.rows.delete") for a in rows]
    decided = await decider.decide_many(requests)
    assert [d.impact.rows for d in decided] == list(rows.values()), "each decision carries its own preview, in order"
    assert [d.impact.payload_digest for d in decided] == [r.payload_digest for r in requests]
    assert previewer.most == PREVIEWS_AT_ONCE, "several dry runs at once, never more than the bound"


def test_a_tolerance_the_policy_did_not_give_allows_no_growth() -> None:
    assert bounded(preview(100), None).max_rows == 100
    assert bounded(preview(100), {"extra_rows": -5, "extra_fraction": "lots"}).max_rows == 100
    assert bounded(preview(1000), TOLERANCE).max_rows == 1050


def test_the_executor_refuses_growth_past_the_bound_naming_both_counts() -> None:
    approved = bounded(preview(100), TOLERANCE)
    enforce_impact(approved, Digest("ab" * 32), 110)  # within: nothing raised
    with pytest.raises(ImpactExceeded) as refused:
        enforce_impact(approved, Digest("ab" * 32), 111)
    assert (
        "111 rows" in str(refused.value) and "counted 100" in str(refused.value) and "at most 110" in str(refused.value)
    )
    assert (refused.value.previewed, refused.value.real, refused.value.allowed) == (100, 111, 110)
    with pytest.raises(ImpactExceeded, match="another payload"):
        enforce_impact(approved, Digest("cd" * 32), 1)
    enforce_impact(None, Digest("ab" * 32), 10**9)  # no preview: nothing to enforce


def test_what_a_preview_runs_for_each_sql_backed_action() -> None:
    assert preview_plan("sql.query", {"statement": "DELETE FROM t WHERE a"}, "DELETE").operation == "delete"
    assert preview_plan("sql.query", {"statement": "SELECT 1"}, None).operation == "read"
    assert preview_plan("db.export", {"query": "SELECT * FROM t"}, None).operation == "export"
    assert preview_plan("read.table", {"table": "orders"}, None) is None, "nothing to run: no preview"
    plan = preview_plan("orders.rows.delete", {"table": "shop.orders", "where": "created < now()"}, None)
    assert plan.statement == "DELETE FROM shop.orders WHERE (created < now())"
    assert deletion_statement({"table": "orders"}) is None
    # only a condition: a clause after it is inside the parentheses, where PostgreSQL refuses it
    returning = deletion_statement({"table": "orders", "where": "id = 4 RETURNING (SELECT val FROM secrets)"})
    assert returning == "DELETE FROM orders WHERE (id = 4 RETURNING (SELECT val FROM secrets))"
    with pytest.raises(NotPreviewable):
        deletion_statement({"table": "orders; DROP TABLE x", "where": "true"})


def test_people_read_the_preview_in_one_line() -> None:
    assert (
        preview(1204, tables=("public.orders",)).summary() == "would delete 1,204 rows (exact count) in public.orders"
    )
    estimated = preview(90000, operation="update", method="estimate")
    assert estimated.summary() == "would update 90,000 rows (EXPLAIN estimate)"


async def test_the_seal_opens_only_for_parameters_that_name_sql() -> None:
    from keyturn.config import REPO_ROOT
    from keyturn.core.parameters import ParameterCatalog
    from keyturn.policy.catalog import SOURCE
    from keyturn.policy.impact import SqlPreviewer

    opened: list[str] = []

    def opener(request):
        opened.append(request.action_id)
        raise RuntimeError("the fake seal does not open")

    previewer = SqlPreviewer("postgresql://nobody@127.0.0.1:1/none", ParameterCatalog.load(REPO_ROOT / SOURCE), opener)
    assert await previewer.preview(requested("r1", action="read.table", parameters={"row_count": 5})) is None
    assert await previewer.preview(requested("g1", action="iam.role.grant", parameters={"role": "x"})) is None
    assert opened == [], "nothing to dry-run: the clear parameters stay sealed"
    failed = await previewer.preview(requested("q1", action="sql.query", parameters={"statement": "DELETE FROM t"}))
    assert opened == ["q1"] and failed.status == "unavailable" and "RuntimeError" in failed.detail


async def test_a_failed_preview_never_quotes_a_value_the_masked_parameters_hide(monkeypatch) -> None:
    from keyturn.config import REPO_ROOT
    from keyturn.core.canonical import canonical_json
    from keyturn.core.parameters import ParameterCatalog
    from keyturn.masking.protect import mask_parameters
    from keyturn.policy.catalog import SOURCE
    from keyturn.policy.impact import SqlPreviewer

    clear = {"statement": "UPDATE t SET pin = 1", "api_token": "kt-tok-4f1e9a22"}
    request = replace(
        requested("q2", action="sql.query", parameters=clear),
        parameters_json=canonical_json(mask_parameters(clear)),  # the copy the topics carry
    )

    async def quoting(*_):  # as a database error quotes a literal
        raise ValueError(f'invalid input syntax for type integer: "{clear["api_token"]}"')

    previewer = SqlPreviewer(
        "postgresql://nobody@127.0.0.1:1/none", ParameterCatalog.load(REPO_ROOT / SOURCE), lambda _: clear
    )
    monkeypatch.setattr(previewer, "_dry_run", quoting)
    failed = await previewer.preview(request)
    assert failed.status == "unavailable" and "kt-tok-4f1e9a22" not in failed.detail, failed.detail
    assert failed.detail.endswith('integer: "<SECRET>"')  # what the masked copy shows in its place
