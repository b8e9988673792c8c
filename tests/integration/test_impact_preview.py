"""The impact preview and parameter schemas over the real servers.

The session's services run against a SQL target of their own (``target_database``); the policy
service previews each SQL-backed action there before OPA is asked, with a 1 s time limit.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from datetime import UTC, datetime, timedelta

import httpx
import psycopg
import pytest

from keyturn.audit.stream import read_audit_log
from keyturn.bus.topics import Topics
from keyturn.executor.plugins.sql_roles import sweep_expired_roles
from tests.integration.conftest import Agent, approval_shown, eventually, keyturn_cli, mint, read_topic

pytestmark = pytest.mark.integration

STAGING = "postgres://staging/shop"
PRODUCTION = "postgres://prod/shop"
STALE = 1200  # over data.keyturn.impact.two_approvers_over_rows (1000)
FRESH = 800


@pytest.fixture(scope="module")
def shop(settings) -> str:
    """``impact_orders`` on the session's SQL target, owned by the target's admin role."""
    with psycopg.connect(settings.sql_target_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE impact_orders (id serial PRIMARY KEY, status text NOT NULL, note text)")
        for status, count in (("stale", STALE), ("fresh", FRESH)):
            conn.execute("INSERT INTO impact_orders (status) SELECT %s FROM generate_series(1, %s)", (status, count))
        conn.execute("ANALYZE impact_orders")
    return settings.sql_target_url


@pytest.fixture(scope="module")
def agent(settings, services, shop) -> Agent:
    """agent:reporter acting for human:alice: a staging write with a person behind it is allowed outright."""
    return Agent(settings, "agent:reporter", ("human:alice",))


def preview_roles(target: str) -> set[str]:
    with psycopg.connect(target, autocommit=True) as conn:
        return {r[0] for r in conn.execute("SELECT rolname FROM pg_roles WHERE rolname LIKE 'keyturn_preview%'")}


def rows(target: str, where: str = "true") -> int:
    with psycopg.connect(target, autocommit=True) as conn:
        return conn.execute(f"SELECT count(*) FROM impact_orders WHERE {where}").fetchone()[0]


def console_pages(settings, action_id: str, name: str) -> tuple[str, str]:
    """(the inbox, the action's page) as ``human:name`` sees them in the web console."""
    with httpx.Client(base_url=settings.approval_url, follow_redirects=False, timeout=30) as client:
        form = client.get("/console/sign-in")
        nonce = re.search(r'name="nonce" value="([^"]+)"', form.text).group(1)
        assert client.post("/console/sign-in", data={"nonce": nonce, "name": name}).status_code == 303
        inbox = client.get("/console")
        page = client.get(f"/console/actions/{action_id}")
        assert inbox.status_code == 200 and page.status_code == 200, page.text[:300]
        return inbox.text, page.text


def vote(settings, action_id: str, approver: str, digest: str) -> None:
    answer = httpx.post(
        f"{settings.approval_url}/v1/approvals/{action_id}/votes",
        json={"choice": "approve", "payload_digest": digest, "channel": "api", "reason": "checked the preview"},
        headers={"Authorization": f"Bearer {mint(settings, approver)}"},
        timeout=30,
    )
    assert answer.status_code == 200, answer.text


def test_a_large_delete_is_previewed_unchanged_needs_two_approvers_and_is_refused_when_it_grew(
    settings, agent: Agent, shop: str
) -> None:
    statement = "DELETE FROM impact_orders WHERE status = 'stale'"
    roles_before = preview_roles(shop)
    action_id = agent.submit_ok("sql.query", STAGING, {"statement": statement}, reason="purge stale orders")
    assert agent.wait_for_state(action_id, "needs_approval")["state"] == "needs_approval"
    assert rows(shop, "status = 'stale'") == STALE, "the preview counted inside a transaction it rolled back"
    assert preview_roles(shop) == roles_before, "the preview's role, and the privileges it held, outlived it"

    shown = approval_shown(settings, action_id, "human:frank")
    impact = shown["impact"]
    assert (impact["status"], impact["operation"], impact["rows"], impact["method"]) == (
        "computed",
        "delete",
        STALE,
        "exact",
    )
    assert impact["tables"] == ["public.impact_orders"]
    assert impact["payload_digest"] == shown["payload_digest"], "the preview is bound to the payload approved"
    assert impact["max_rows"] == STALE + 60, "the policy's tolerance: 5 % of 1200"
    assert [(g["name"], g["need"]) for g in shown["groups"]] == [("db-owners", 2)], "over 1000 rows: two approvers"
    assert "impact.large_deletion_needs_two_approvers" not in str(shown["policy_reasons"])  # people read sentences
    assert any("two of db-owners must approve" in r for r in shown["policy_reasons"])

    inbox, page = console_pages(settings, action_id, "grace")
    assert "would delete 1,200 rows (exact count) in public.impact_orders" in inbox
    assert "would delete 1,200 rows (exact count) in public.impact_orders" in page
    assert f"refuses to run it past {STALE + 60} rows" in page

    cli = keyturn_cli(settings, "approvals", "show", action_id, token=mint(settings, "human:frank"))
    assert cli.returncode == 0, cli.stderr
    assert "impact preview: would delete 1,200 rows (exact count) in public.impact_orders" in cli.stdout

    # the table grows between the preview and the execution, past the tolerance
    with psycopg.connect(shop, autocommit=True) as conn:
        conn.execute("INSERT INTO impact_orders (status) SELECT 'stale' FROM generate_series(1, 100)")
    vote(settings, action_id, "human:frank", shown["payload_digest"])
    vote(settings, action_id, "human:grace", shown["payload_digest"])
    ended = agent.wait(action_id)
    assert ended["state"] == "failed", ended
    error = str(ended)
    assert "1300 rows" in error and "counted 1200" in error and f"at most {STALE + 60}" in error, error
    assert rows(shop, "status = 'stale'") == STALE + 100, "the refused delete was rolled back"
    previews = [step["impact"]["summary"] for step in ended["history"] if step.get("impact")]
    assert previews == ["would delete 1,200 rows (exact count) in public.impact_orders"], "the requester sees it too"

    audit = Topics(settings.namespace, settings.partitions).audit
    recorded = eventually(
        lambda: [
            json.loads(r.payload_json)
            for r in asyncio.run(read_audit_log(settings.kafka_bootstrap, audit))
            if r.action_id == action_id and r.event_type == "ActionDecided"
        ]
    )
    assert recorded and recorded[0]["impact"]["rows"] == STALE, "the audit records the preview approvers saw"


def test_a_count_too_slow_for_the_time_limit_falls_back_to_explain(settings, agent: Agent, shop: str) -> None:
    statement = "UPDATE impact_orders SET note = 'touched' WHERE pg_sleep(0.005) IS NOT NULL"  # ~10 s to count
    roles_before = preview_roles(shop)
    started = time.monotonic()
    action_id = agent.submit_ok("sql.query", PRODUCTION, {"statement": statement}, reason="annotate")
    assert agent.wait_for_state(action_id, "needs_approval")["state"] == "needs_approval"
    assert time.monotonic() - started < 8, "a 1 s time limit, then EXPLAIN: the decision does not wait for the count"
    impact = approval_shown(settings, action_id, "human:frank")["impact"]
    assert (impact["status"], impact["operation"], impact["method"]) == ("computed", "update", "estimate"), impact
    assert isinstance(impact["rows"], int) and impact["rows"] > 0
    assert "longer than 1s" in impact["detail"] and "EXPLAIN estimate" in impact["summary"]
    assert rows(shop, "note IS NOT NULL") == 0, "nothing the preview touched was kept"
    assert preview_roles(shop) == roles_before, "neither the count's role nor the estimate's outlived them"


def test_a_parameter_mismatch_is_refused_naming_the_path_and_leaking_nothing(settings, agent: Agent) -> None:
    secret = "sk_live_51HkeyturnNeverShown0123456789"
    answer = agent.submit(
        "iam.role.grant", "iam://staging/roles/analyst", {"user": secret, "role": "analyst"}, reason="onboarding"
    )
    assert answer.status_code == 422
    assert answer.json()["problems"] == [
        "parameters.principal: is required by iam.role.grant",
        "parameters.user: is not a parameter of iam.role.grant",
    ]
    assert secret not in answer.text
    answer = agent.submit("sql.query", STAGING, {"statement": "SELECT 1", "max_rows": secret}, reason="typed wrong")
    assert answer.status_code == 422 and answer.json()["problems"] == ["parameters.max_rows: must be of type integer"]
    assert secret not in answer.text
    letters = eventually(
        lambda: [
            event
            for event, _ in read_topic(settings, Topics(settings.namespace, settings.partitions).dlq)
            if getattr(event, "error_type", None) == "invalid_parameters"
        ],
        timeout=30,
    )
    assert len(letters) >= 2 and all(letter.principal == "agent:reporter" for letter in letters)
    assert any("parameters.user: is not a parameter of iam.role.grant" in letter.problems for letter in letters)
    assert secret not in repr(letters)


def test_an_export_preview_counts_the_rows_it_would_write(settings, agent: Agent, shop: str) -> None:
    action_id = agent.submit_ok(
        "db.export",
        STAGING,
        {
            "query": "SELECT id, status FROM impact_orders WHERE status = 'fresh'",
            "row_count": 10,  # under-declared: the preview counts what the query returns
            "destination": "https://files.example.internal/exports/fresh.csv",
            "format": "csv",
        },
        reason="fresh orders for the report",
    )
    decided_topic = Topics(settings.namespace, settings.partitions).decided
    decided = eventually(
        lambda: [e for e, _ in read_topic(settings, decided_topic) if getattr(e, "action_id", None) == action_id]
    )
    assert decided, "no decision"
    impact = decided[0].impact
    assert (impact.status, impact.operation, impact.rows, impact.method) == ("computed", "export", FRESH, "exact")
    assert impact.tables == ("public.impact_orders",) and impact.payload_digest == decided[0].request.payload_digest
    assert any(f"db.export of {FRESH} rows" in reason for reason in decided[0].reasons), decided[0].reasons


def test_a_preview_role_an_earlier_build_left_behind_is_swept_with_its_privileges(shop: str) -> None:
    leftover = "keyturn_preview_leftover0001"
    with psycopg.connect(shop, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {leftover} NOLOGIN NOINHERIT")
        conn.execute(f"GRANT DELETE ON impact_orders TO {leftover}")

    async def sweep() -> list[str]:
        async with await psycopg.AsyncConnection.connect(shop, autocommit=True) as admin:
            return await sweep_expired_roles(admin)  # what the executor's SQL plugins run at start

    assert leftover in asyncio.run(sweep())
    assert leftover not in preview_roles(shop)


def test_an_executor_starting_leaves_a_dry_run_under_way_its_role(shop: str) -> None:
    """Any executor's start sweeps the cluster's roles; a preview role still valid is some policy's
    dry run in progress, which would otherwise end unavailable and ask people for nothing."""
    live, expired = "keyturn_preview_underway0001", "keyturn_preview_expired0001"
    with psycopg.connect(shop, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {live} LOGIN NOINHERIT VALID UNTIL '{datetime.now(UTC) + timedelta(minutes=1)}'")
        conn.execute(f"CREATE ROLE {expired} NOLOGIN NOINHERIT VALID UNTIL '{datetime.now(UTC) - timedelta(hours=1)}'")
        conn.execute(f"GRANT UPDATE ON impact_orders TO {live}, {expired}")

    async def sweep() -> list[str]:
        async with await psycopg.AsyncConnection.connect(shop, autocommit=True) as admin:
            return await sweep_expired_roles(admin)

    try:
        swept = asyncio.run(sweep())
        assert expired in swept and live not in swept
        assert live in preview_roles(shop) and expired not in preview_roles(shop)
    finally:
        with psycopg.connect(shop, autocommit=True) as conn:
            conn.execute(f"REVOKE ALL ON impact_orders FROM {live}")
            conn.execute(f"DROP ROLE {live}")


def test_an_export_that_grew_past_its_approved_preview_is_stopped_and_leaves_no_file(
    settings, agent: Agent, shop: str
) -> None:
    with psycopg.connect(shop, autocommit=True) as conn:
        conn.execute("CREATE TABLE export_growth (id serial PRIMARY KEY)")
        conn.execute("INSERT INTO export_growth SELECT FROM generate_series(1, 100)")
    action_id = agent.submit_ok(
        "db.export",
        STAGING,
        {
            "query": "SELECT id FROM export_growth",
            "row_count": 100,
            "destination": "keyturn://requester",  # a download, judged as leaving the company: people approve
            "format": "csv",
        },
        reason="growth report for the partner",
    )
    assert agent.wait_for_state(action_id, "needs_approval")["state"] == "needs_approval"
    shown = approval_shown(settings, action_id, "human:carol")
    assert shown["impact"]["rows"] == 100 and shown["impact"]["max_rows"] is not None
    bound = shown["impact"]["max_rows"]
    with psycopg.connect(shop, autocommit=True) as conn:  # the table grows before the approvals come in
        conn.execute("INSERT INTO export_growth SELECT FROM generate_series(1, 400)")
    for group in shown["groups"]:
        approver = {"security": "human:carol", "data-owners": "human:heidi"}[group["name"]]
        vote(settings, action_id, approver, shown["payload_digest"])
    ended = agent.wait(action_id)
    assert ended["state"] == "failed", ended
    assert f"past the {bound} the approved impact preview allows" in str(ended), ended
    assert "nothing was exported" in str(ended)
    assert agent.http.get(f"/v1/exports/{action_id}").status_code == 404, "no file was kept to download"


def unavailable_preview(settings, agent: Agent, statement: str) -> dict:
    """The impact an approver is shown for a production ``statement`` whose dry run must fail."""
    action_id = agent.submit_ok("sql.query", PRODUCTION, {"statement": statement}, reason="probe")
    assert agent.wait_for_state(action_id, "needs_approval")["state"] == "needs_approval"
    impact = approval_shown(settings, action_id, "human:frank")["impact"]
    assert impact["status"] == "unavailable", impact
    return impact


def test_a_dry_run_cannot_leave_its_role_or_its_transaction(settings, agent: Agent, shop: str) -> None:
    # a SELECT may call set_config('role', 'none'): in a session logged in as the policy's own user
    # that went back to it (Keyturn's tables, anyone's sessions); the dry run's role logs in itself
    # (every row counts when a query it starts runs as a user who may create roles: the policy's own;
    # with SET ROLE in the policy's session, all 2,000 did)
    escape = (
        "SELECT id FROM impact_orders WHERE set_config('role', 'none', true) IS NOT NULL AND query_to_xml("
        "'SELECT rolcreaterole FROM pg_roles WHERE rolname = current_user', true, false, '')::text LIKE '%true%'"
    )
    action_id = agent.submit_ok("sql.query", PRODUCTION, {"statement": escape}, reason="who am I")
    assert agent.wait_for_state(action_id, "needs_approval")["state"] == "needs_approval"
    impact = approval_shown(settings, action_id, "human:frank")["impact"]
    assert (impact["status"], impact["rows"]) == ("computed", 0), impact
    # a COMMIT behind a comment PostgreSQL ends at a carriage return: never run, by the shape check
    # or by the extended protocol, so the rolled-back transaction cannot be ended early
    smuggled = (
        "UPDATE impact_orders SET note = note WHERE false --\r; COMMIT; "
        "UPDATE impact_orders SET note = 'kept' WHERE status = 'fresh'"
    )
    impact = unavailable_preview(settings, agent, smuggled)
    assert "one statement per command" in impact["detail"], impact
    assert rows(shop, "note = 'kept'") == 0


def test_a_dry_run_that_fails_on_a_value_never_shows_the_value(settings, agent: Agent, shop: str) -> None:
    # the preview runs before anyone approved: a cast that fails on a row must not hand the row back
    impact = unavailable_preview(settings, agent, "SELECT 1 FROM impact_orders WHERE status::int = 1")
    assert "stale" not in impact["detail"] and "fresh" not in impact["detail"], impact["detail"]
    assert "[22P02]" in impact["detail"] and "invalid text representation" in impact["detail"]
