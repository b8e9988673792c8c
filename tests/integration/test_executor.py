"""The executor through the real stack: a temporary role per SQL statement, a token per HTTP call,
checks before anything runs, capped and masked results, failures as outcomes, and no
credential left anywhere afterwards.

The SQL target is a private PostgreSQL that checks passwords and logs every statement; the
HTTP target is a local HTTPS server that verifies each token with the executor's JWKS.
"""

from __future__ import annotations

import asyncio
import io
import json
import time
import uuid
from dataclasses import replace
from datetime import UTC, datetime

import httpx
import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from keyturn.audit.stream import read_audit_log
from keyturn.bus.codec import registry
from keyturn.bus.topics import Topics
from keyturn.core.canonical import canonical_json
from keyturn.core.events import (
    ActionDecided,
    ActionExecuted,
    ApprovalResolved,
    DecisionOutcome,
    ExecutionOutcome,
    ResolutionOutcome,
    Vote,
    VoteChoice,
    payload_digest,
)
from keyturn.core.principal import Principal, PrincipalKind
from keyturn.db import schema_name
from keyturn.executor.plugins.base import Command, ExecutionFailed
from keyturn.executor.plugins.sql import SqlPlugin, grants_for, run_one
from keyturn.executor.plugins.sql_roles import Grants, create_role, drop_role, role_name_for
from keyturn.executor.plugins.sql_text import statement_shape
from tests.conftest import ARTIFACTS, free_port
from tests.integration.conftest import (
    Agent,
    approval_shown,
    eventually,
    keyturn_cli,
    mint,
    namespace_topics,
    produce,
    read_topic,
    warrant,
)
from tests.integration.test_executor_support import (  # noqa: F401  (fixtures)
    PEER_HOST,
    UNREACHABLE_HOST,
    ExecutorUnderTest,
    HttpsPeer,
    SqlTarget,
    https_peer,
    put_secret,
    sql_target,
    witnessed_secrets,
)

pytestmark = pytest.mark.integration

STAGING = "postgres://staging/shop"
RESULT_ROWS = 5


@pytest.fixture(scope="module")
def shop(sql_target: SqlTarget) -> SqlTarget:
    """Tables on the SQL target, owned by the executor's admin role (so it can grant on them)."""
    with sql_target.admin() as conn:
        conn.execute("""
            CREATE TABLE customers (id serial PRIMARY KEY, email text, password text, city text);
            INSERT INTO customers (email, password, city)
                SELECT 'customer' || n || '@example.com', 'hunter' || n, 'Lyon' FROM generate_series(1, 12) n;
            CREATE TABLE marks (id serial PRIMARY KEY, note text NOT NULL);
            CREATE TABLE vault (secret text);
            INSERT INTO vault VALUES ('the crown jewels');
            CREATE FUNCTION peek_vault() RETURNS text LANGUAGE sql AS 'SELECT secret FROM vault LIMIT 1';
            CREATE FUNCTION add_mark_as_owner() RETURNS int LANGUAGE sql SECURITY DEFINER
                AS $$ INSERT INTO marks (note) VALUES ('by definer') RETURNING id $$;
            CREATE ROLE reporting NOLOGIN;
            CREATE ROLE carl NOLOGIN;
            CREATE TABLE sessions (id serial PRIMARY KEY, expired boolean NOT NULL);
            INSERT INTO sessions (expired) SELECT n <= 10 FROM generate_series(1, 15) n;
        """)
    return sql_target


@pytest.fixture(scope="module")
def executor(settings, services, shop: SqlTarget, https_peer: HttpsPeer, tmp_path_factory):
    witness = tmp_path_factory.mktemp("witness") / "minted.txt"
    overrides = {
        "KEYTURN_SQL_TARGET_URL": shop.url,
        "KEYTURN_SQL_STATEMENT_TIMEOUT_S": "3",
        "KEYTURN_HTTP_ALLOWED_HOSTS": f"{PEER_HOST},{UNREACHABLE_HOST}",
        "KEYTURN_HTTP_CONNECT_TO": (
            f"{PEER_HOST}=127.0.0.1:{https_peer.port},{UNREACHABLE_HOST}=127.0.0.1:{free_port()}"
        ),
        "KEYTURN_HTTP_CA_FILE": str(https_peer.ca_file),
        # long enough that a peer answering on a loaded CI host is not taken for one that does not
        # answer (2 s once failed a GET there); /v1/slow sleeps past it
        "KEYTURN_HTTP_TIMEOUT_S": "5",
        "KEYTURN_EXECUTOR_MAX_RESULT_ROWS": str(RESULT_ROWS),
    }
    with ExecutorUnderTest(settings, services, overrides, witness=witness) as running:
        yield running


@pytest.fixture(scope="module")
def agent(settings, services, executor) -> Agent:
    """agent:reporter acting for human:alice (a person behind it: staging writes are allowed)."""
    return Agent(settings, "agent:reporter", ("human:alice",))


def marks(target: SqlTarget, note: str) -> int:
    with target.admin() as conn:
        return conn.execute("SELECT count(*) FROM marks WHERE note = %s", (note,)).fetchone()[0]


def outcome(agent: Agent, action_id: str) -> dict:
    """The requester's view of a finished action (from the intake's status API)."""
    view = agent.wait(action_id)
    if not view["terminal"] and executed_events(agent.settings, action_id):
        pytest.fail(
            f"the executor published the outcome of {action_id}, but the intake's status still says "
            f"{view['state']!r}: the intake dropped an ActionExecuted that it read before the ActionDecided"
        )
    return view


def sql(agent: Agent, statement: str, resource: str = STAGING, *, unpreviewable: bool = False, **parameters) -> dict:
    """Submit a statement and wait for its outcome. One its impact preview cannot dry-run (the target
    refuses it, or it is not one statement) waits for db-owners (impact.preview_unavailable); frank
    approves it here, having seen the preview's reason, so the executor's own checks are what is tested."""
    action_id = agent.submit_ok("sql.query", resource, {"statement": statement, **parameters})
    if unpreviewable:
        assert agent.wait_for_state(action_id, "needs_approval")["state"] == "needs_approval"
        frank = {"Authorization": f"Bearer {mint(agent.settings, 'human:frank')}"}
        shown = approval_shown(agent.settings, action_id, "human:frank")
        assert shown["impact"]["status"] == "unavailable" and shown["impact"]["detail"], shown["impact"]
        vote = {"choice": "approve", "payload_digest": shown["payload_digest"], "channel": "api", "reason": "test"}
        answer = httpx.post(
            f"{agent.settings.approval_url}/v1/approvals/{action_id}/votes", json=vote, headers=frank, timeout=30
        )
        assert answer.status_code == 200, answer.text
    return outcome(agent, action_id)


def http(agent: Agent, path: str, host: str = PEER_HOST, method: str = "GET") -> dict:
    return outcome(agent, agent.submit_ok("http.request", f"https://{host}{path}", {"method": method}))


def executed_events(settings, action_id: str) -> list[ActionExecuted]:
    found = read_topic(settings, Topics(settings.namespace, settings.partitions).executed)
    return [event for event, _ in found if isinstance(event, ActionExecuted) and event.action_id == action_id]


# --- sql ------------------------------------------------------------------------------------------


def test_a_read_runs_as_a_role_made_for_that_one_statement(agent: Agent) -> None:
    view = sql(agent, "SELECT current_user AS who, session_user AS login")
    assert view["state"] == "succeeded", view
    row = view["result"]["rows"][0]
    assert row["who"] == row["login"] == role_name_for(view["action_id"])


def test_a_large_read_comes_back_as_a_row_count_and_the_first_rows_masked(agent: Agent) -> None:
    view = sql(agent, "SELECT id, email, password, city FROM customers ORDER BY id", max_rows=100)
    assert view["state"] == "succeeded", view
    result = view["result"]
    assert result["row_count"] == 12 and result["truncated"] is True
    assert [row["id"] for row in result["rows"]] == [1, 2, 3, 4, 5]
    assert {row["email"] for row in result["rows"]} == {"<EMAIL_ADDRESS>"}
    assert {row["password"] for row in result["rows"]} == {"<SECRET>"}
    assert result["rows"][0]["city"] == "Lyon"


def test_a_column_the_policy_masks_stays_masked_under_another_name(agent: Agent) -> None:
    view = sql(agent, "SELECT password AS p, city AS town FROM customers ORDER BY id", max_rows=3)
    assert view["state"] == "succeeded", view
    rows = view["result"]["rows"]
    assert {row["p"] for row in rows} == {"<SECRET>"} and "hunter" not in str(view), rows
    assert {row["town"] for row in rows} == {"Lyon"}, "a column the policy does not mask is shown"
    assert "_source_columns" not in view["result"]


def test_max_rows_caps_what_comes_back(agent: Agent) -> None:
    result = sql(agent, "SELECT id FROM customers ORDER BY id", max_rows=2)["result"]
    assert (result["row_count"], len(result["rows"]), result["truncated"]) == (12, 2, True)


def test_a_read_cannot_write_even_through_a_function_that_could(agent: Agent, shop: SqlTarget) -> None:
    view = sql(agent, "SELECT add_mark_as_owner()")
    assert view["state"] == "failed", view
    assert "read-only transaction" in view["reasons"][0]
    assert marks(shop, "by definer") == 0


def test_a_write_changes_its_table_once(agent: Agent, shop: SqlTarget) -> None:
    view = sql(agent, "INSERT INTO marks (note) VALUES ('written once') RETURNING id")
    assert view["state"] == "succeeded", view
    assert view["result"]["row_count"] == 1
    assert marks(shop, "written once") == 1


def test_the_role_holds_only_the_tables_the_statement_names(agent: Agent, shop: SqlTarget) -> None:
    view = sql(agent, "INSERT INTO marks (note) SELECT peek_vault()", unpreviewable=True)
    assert view["state"] == "failed", view
    reason = view["reasons"][0]
    assert "permission denied for table vault" in reason
    assert "INSERT on public.marks" in reason  # what the role did hold, so the requester can fix the statement
    with shop.admin() as conn:
        assert conn.execute("SELECT count(*) FROM marks WHERE note = 'the crown jewels'").fetchone()[0] == 0


def test_an_approved_production_write_runs_after_the_key_turn(agent: Agent, settings, shop: SqlTarget) -> None:
    action_id = agent.submit_ok(
        "sql.query",
        "postgres://prod/shop",
        {"statement": "UPDATE marks SET note = 'approved' WHERE note = 'written once'"},
    )
    assert agent.wait_for_state(action_id, "needs_approval")["state"] == "needs_approval"
    assert marks(shop, "approved") == 0
    approved = keyturn_cli(settings, "approve", action_id, "--reason", "change 7", token=mint(settings, "human:frank"))
    assert approved.returncode == 0, approved.stderr
    view = outcome(agent, action_id)
    assert view["state"] == "succeeded", view
    assert view["result"] == {"row_count": 1}
    assert marks(shop, "approved") == 1


def test_a_statement_error_fails_with_the_reason_for_the_requester_and_the_audit(agent: Agent, settings) -> None:
    view = sql(agent, "SELECT no_such_column FROM customers", unpreviewable=True)
    assert view["state"] == "failed"
    assert view["reasons"] == ['PostgreSQL: column "no_such_column" does not exist [42703]']

    def audited():
        return [
            r
            for r in asyncio.run(
                read_audit_log(settings.kafka_bootstrap, Topics(settings.namespace, settings.partitions).audit)
            )
            if r.action_id == view["action_id"] and r.event_type == "ActionExecuted"
        ]

    records = eventually(audited)
    assert records and "no_such_column" in records[0].payload_json


def test_a_statement_that_fails_on_a_value_never_shows_the_value(agent: Agent) -> None:
    view = sql(agent, "SELECT city::int FROM customers")
    assert view["state"] == "failed", view
    assert "Lyon" not in str(view) and "[22P02]" in view["reasons"][0], view["reasons"]


def test_a_statement_past_its_timeout_fails_and_changes_nothing(agent: Agent, shop: SqlTarget) -> None:
    view = sql(agent, "INSERT INTO marks (note) SELECT 'too slow' FROM pg_sleep(10)")
    assert view["state"] == "failed", view
    assert view["reasons"] == ["the statement ran longer than 3s; PostgreSQL cancelled it and nothing was changed"]
    assert marks(shop, "too slow") == 0


def test_a_statement_the_plugin_cannot_read_is_refused_not_guessed(agent: Agent, shop: SqlTarget) -> None:
    view = sql(agent, "SELECT 1; INSERT INTO marks (note) VALUES ('smuggled')", unpreviewable=True)
    assert view["state"] == "failed"
    assert "one statement per command" in view["reasons"][0]
    assert marks(shop, "smuggled") == 0


def test_a_second_statement_hidden_behind_a_carriage_return_comment_never_runs(agent: Agent, shop: SqlTarget) -> None:
    # PostgreSQL ends a -- comment at a carriage return: read as one statement, this would commit the
    # command's transaction early and run the rest outside its bound and its rollback
    statement = "UPDATE marks SET note = note WHERE false --\r; COMMIT; INSERT INTO marks (note) VALUES ('past it')"
    view = sql(agent, statement, unpreviewable=True)
    assert view["state"] == "failed" and "one statement per command" in view["reasons"][0], view
    assert marks(shop, "past it") == 0


def test_postgresql_itself_refuses_a_second_statement_in_a_command(shop: SqlTarget) -> None:
    # whatever the shape check reads, the statement goes in the extended protocol, which runs one
    async def run() -> None:
        async with await psycopg.AsyncConnection.connect(shop.url) as conn:
            with pytest.raises(psycopg.errors.SyntaxError, match="multiple commands"):
                await run_one(conn, "SELECT 1; INSERT INTO marks (note) VALUES ('second')")

    asyncio.run(run())
    assert marks(shop, "second") == 0


def test_a_statement_that_turns_its_timeout_off_is_still_stopped_at_the_limit(agent: Agent, shop: SqlTarget) -> None:
    statement = (
        "SELECT x FROM (SELECT set_config('statement_timeout', '0', false) AS x "
        "UNION ALL SELECT pg_sleep(8)::text) AS s"
    )
    started = time.monotonic()
    view = sql(agent, statement, max_rows=1)
    assert view["state"] == "failed", view
    assert view["reasons"] == ["the statement ran longer than 3s; PostgreSQL cancelled it and nothing was changed"]
    assert time.monotonic() - started < 8 + 5, "stopped at the command's limit, not at the statement's own end"


def test_a_refused_connection_fails_with_the_reason_once_the_target_stayed_away() -> None:
    plugin = SqlPlugin(f"postgresql://keyturn:keyturn@127.0.0.1:{free_port()}/keyturn")
    plugin.settle_s, plugin.settle_every_s = 0.5, 0.1  # a restart is waited for (30 s by default)
    command = Command(str(uuid.uuid4()), "sql.query", STAGING, {"statement": "SELECT 1"}, 300)
    with pytest.raises(ExecutionFailed) as failed:
        asyncio.run(plugin.execute(command))
    assert str(failed.value).startswith("nothing was changed: cannot connect to the SQL target")
    assert "Connection refused" in str(failed.value) and "did not answer within 0.5s" in str(failed.value)


@pytest.mark.parametrize(
    "wrong, says",
    [
        ({"password": "not-the-password"}, "password authentication failed"),
        ({"dbname": "no_such_db"}, "does not exist"),
    ],
)
def test_a_target_that_refuses_the_login_itself_fails_at_once_instead_of_being_waited_for(
    shop: SqlTarget, wrong: dict, says: str
) -> None:
    """A wrong password or database is a configuration to fix: the command fails on the first
    answer, where a target that is away (a restart) is tried again for 30 s."""
    plugin = SqlPlugin(make_conninfo(shop.url, **wrong))
    attempts: list[str] = []
    connect = plugin._connect_admin

    async def counted(target):
        attempts.append(target.name)
        return await connect(target)

    plugin._connect_admin = counted  # type: ignore[method-assign]
    command = Command(str(uuid.uuid4()), "sql.query", STAGING, {"statement": "SELECT 1"}, 300)
    with pytest.raises(ExecutionFailed) as failed:
        asyncio.run(plugin.execute(command))
    assert len(attempts) == 1, "not tried again"
    assert "refused the login itself" in str(failed.value) and says in str(failed.value)
    assert plugin.settle_s == 30  # the wait it was spared


def test_postgresql_refuses_a_credential_once_it_has_expired(shop: SqlTarget) -> None:
    name = role_name_for(str(uuid.uuid4()))

    async def create():
        async with await psycopg.AsyncConnection.connect(shop.url, autocommit=True) as admin:
            return await create_role(admin, name, 2.0, Grants())

    role = asyncio.run(create())
    try:
        with psycopg.connect(shop.url, user=role.name, password=role.password) as conn:  # valid: it works
            assert conn.execute("SELECT current_user").fetchone()[0] == name
        time.sleep(3)
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            psycopg.connect(shop.url, user=role.name, password=role.password)
        assert f'User "{name}" has an expired password' in shop.log_path.read_text()
    finally:

        async def drop():
            async with await psycopg.AsyncConnection.connect(shop.url, autocommit=True) as admin:
                await drop_role(admin, name)

        asyncio.run(drop())


# --- http -----------------------------------------------------------------------------------------


def test_an_http_call_carries_a_token_minted_for_that_call_only(agent: Agent, https_peer: HttpsPeer) -> None:
    view = http(agent, "/v1/whoami")
    action_id = view["action_id"]
    assert view["state"] == "succeeded", view
    body = view["result"]["body"]
    assert body["verified"] is True  # the peer checked signature, issuer, audience, expiry and the call
    assert body["subject"] == "service:keyturn-executor"
    assert body["acts_for"] == ["agent:reporter", "human:alice"]
    assert body["action_id"] == action_id
    assert body["audience"] == f"https://{PEER_HOST}"
    assert body["lifetime_s"] == 60  # the policy's credential TTL for http.request
    assert body["contact"] == "<EMAIL_ADDRESS>"  # results are masked on their way back


def test_an_http_answer_with_many_items_is_capped(agent: Agent) -> None:
    view = http(agent, "/v1/items")
    assert view["state"] == "succeeded", view
    body = view["result"]["body"]
    assert (body["row_count"], len(body["rows"]), body["truncated"]) == (80, RESULT_ROWS, True)
    assert body["rows"][0]["owner"] == "<EMAIL_ADDRESS>"


def test_a_minted_token_is_worthless_for_another_target(agent: Agent, https_peer: HttpsPeer) -> None:
    from keyturn.executor.plugins.http import TOKEN_ISSUER
    from keyturn.identity import InvalidToken, TokenVerifier

    assert http(agent, "/v1/whoami")["state"] == "succeeded"
    token = https_peer.tokens[-1]
    elsewhere = TokenVerifier(
        str(https_peer.jwks_path), issuer=TOKEN_ISSUER, audience=f"https://{UNREACHABLE_HOST}", algorithms=("ES256",)
    )
    with pytest.raises(InvalidToken) as refused:
        elsewhere.verify(token)
    assert refused.value.code == "wrong_audience"


def test_an_http_target_that_does_not_answer_in_time_fails(agent: Agent) -> None:
    view = http(agent, "/v1/slow")
    assert view["state"] == "failed"
    assert view["reasons"] == [f"{PEER_HOST} did not answer within 5s"]


def test_an_http_target_that_refuses_the_connection_fails(agent: Agent) -> None:
    view = http(agent, "/hook", host=UNREACHABLE_HOST)
    assert view["state"] == "failed"
    assert view["reasons"][0].startswith(f"cannot connect to {UNREACHABLE_HOST}: ")
    assert "Connection refused" in view["reasons"][0] and view["reasons"][0].endswith("nothing was sent")


# --- checks before execution, and never twice -----------------------------------------------------


def _first_decided(settings, action_id: str) -> ActionDecided:
    found = read_topic(settings, Topics(settings.namespace, settings.partitions).decided)
    return next(event for event, _ in found if isinstance(event, ActionDecided) and event.action_id == action_id)


def test_a_forged_order_with_other_parameters_is_refused_before_anything_runs(
    agent: Agent, settings, shop: SqlTarget
) -> None:
    action_id = sql(agent, "SELECT 1")["action_id"]
    decided = _first_decided(settings, action_id)
    forged_id = str(uuid.uuid4())
    other = {"statement": "INSERT INTO marks (note) VALUES ('forged')"}
    # an allowed decision for other parameters, reusing a genuine sealed copy and digest, and
    # warranted, as if the policy itself had gone wrong (without a warrant it never gets this far:
    # test_an_approval_nobody_gave_…): the seal and the digest still refuse it
    forged = replace(
        decided,
        action_id=forged_id,
        event_id=f"decided:{forged_id}",
        request=replace(decided.request, action_id=forged_id, parameters_json=canonical_json(other)),
    )
    topic, value = Topics(settings.namespace, settings.partitions).decided, registry().encode_event(forged)
    produce(settings, topic, value, key=forged_id.encode(), headers=warrant(settings, topic, forged_id.encode(), value))
    executed = eventually(lambda: executed_events(settings, forged_id), timeout=60)
    assert executed and executed[0].outcome.value == "failed"
    assert executed[0].error.startswith("refused before execution: ")
    assert payload_digest("sql.query", STAGING, other) != decided.request.payload_digest
    assert marks(shop, "forged") == 0


def test_a_redelivered_order_is_answered_from_the_ledger_not_run_again(agent: Agent, settings, shop: SqlTarget) -> None:
    view = sql(agent, "INSERT INTO marks (note) VALUES ('redelivered')")
    assert view["state"] == "succeeded" and marks(shop, "redelivered") == 1
    sent = next(  # the record as the broker would deliver it again: the same bytes, the policy's warrant
        m
        for e, m in read_topic(settings, Topics(settings.namespace, settings.partitions).decided)
        if isinstance(e, ActionDecided) and e.action_id == view["action_id"]
    )
    produce(settings, sent.topic, sent.value, key=sent.key, headers=list(sent.headers))

    def republished():
        found = executed_events(settings, view["action_id"])
        return found if len(found) >= 2 else None

    executed = eventually(republished, timeout=60)
    assert [e.outcome.value for e in executed] == ["succeeded", "succeeded"]
    assert executed[0].finished_at == executed[1].finished_at  # the recorded event, republished
    assert marks(shop, "redelivered") == 1


# --- credential hygiene (last: besides its own actions, it scans what every test above left) -------


# --- iam and deletion: GRANT / REVOKE and a bounded DELETE, each as a role made for it ------------


def approved(settings, agent: Agent, action: str, resource: str, parameters: dict, approver: str) -> dict:
    action_id = agent.submit_ok(action, resource, parameters)
    assert agent.wait_for_state(action_id, "needs_approval")["state"] == "needs_approval"
    vote = keyturn_cli(settings, "approve", action_id, "--reason", "checked", token=mint(settings, approver))
    assert vote.returncode == 0, vote.stderr
    return outcome(agent, action_id)


def members_of(target: SqlTarget, role: str) -> list[str]:
    with target.admin() as conn:
        return [
            r[0]
            for r in conn.execute(
                "SELECT p.rolname FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.roleid "
                "JOIN pg_roles p ON p.oid = m.member WHERE r.rolname = %s ORDER BY 1",
                (role,),
            )
        ]


def table_grants(target: SqlTarget, grantee: str, table: str) -> list[str]:
    with target.admin() as conn:
        return [
            r[0]
            for r in conn.execute(
                "SELECT privilege_type FROM information_schema.role_table_grants WHERE grantee = %s "
                "AND table_name = %s ORDER BY 1",
                (grantee, table),
            )
        ]


def role_exists(target: SqlTarget, name: str) -> bool:
    with target.admin() as conn:
        return conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)).fetchone() is not None


def test_an_approved_role_grant_is_in_pg_auth_members_and_a_revoke_removes_it(
    agent: Agent, settings, shop: SqlTarget
) -> None:
    parameters = {"role": "reporting", "principal": "carl"}
    view = approved(settings, agent, "iam.role.grant", "iam://staging/roles/reporting", parameters, "human:carol")
    assert view["state"] == "succeeded", view
    assert view["result"]["performed"] == "GRANT reporting TO carl"
    assert members_of(shop, "reporting") == ["carl"]
    assert not role_exists(shop, role_name_for(view["action_id"])), "the command's credential outlived it"

    revoked = outcome(agent, agent.submit_ok("iam.role.revoke", "iam://staging/roles/reporting", parameters))
    assert revoked["state"] == "succeeded", revoked  # staging, a person behind it: allowed
    assert members_of(shop, "reporting") == []


def test_an_approved_permission_change_is_in_role_table_grants(agent: Agent, settings, shop: SqlTarget) -> None:
    parameters = {"principal": "carl", "table": "sessions", "privileges": ["SELECT", "UPDATE"], "change": "grant"}
    view = approved(
        settings, agent, "iam.permission.change", "iam://staging/tables/sessions", parameters, "human:carol"
    )
    assert view["state"] == "succeeded", view
    assert table_grants(shop, "carl", "sessions") == ["SELECT", "UPDATE"]


@pytest.mark.parametrize(
    "statement",
    [
        "SELECT name FROM {schema}.secrets",
        "UPDATE {schema}.approvals SET principals = '{{}}'",
        "TABLE {schema}.executions",
    ],
)
def test_keyturns_own_tables_are_never_a_statements_target(settings, services, statement: str) -> None:
    """Where the SQL target is the database Keyturn runs on (the development default), a statement
    naming its own tables is refused before any credential is made for it."""
    shape = statement_shape(statement.format(schema=schema_name(settings.namespace)))

    async def grants() -> Grants:
        async with await psycopg.AsyncConnection.connect(settings.database_url, autocommit=True) as admin:
            return await grants_for(admin, shape, "keyturn's own database")

    with pytest.raises(ExecutionFailed, match=r"is Keyturn's own state .* never an action's target"):
        asyncio.run(grants())


@pytest.mark.parametrize("role", ["pg_execute_server_program", "files_reader", "role_maker"])
def test_a_role_that_reaches_beyond_tables_is_never_granted(agent: Agent, settings, shop: SqlTarget, role: str) -> None:
    with shop.admin() as conn:  # roles that hand out the server itself, directly or through a membership
        if role == "files_reader" and not role_exists(shop, role):
            conn.execute("CREATE ROLE files_reader NOLOGIN")
            conn.execute("GRANT pg_read_server_files TO files_reader")
        if role == "role_maker" and not role_exists(shop, role):
            conn.execute("CREATE ROLE role_maker NOLOGIN CREATEROLE")
    parameters = {"role": role, "principal": "carl"}
    view = approved(settings, agent, "iam.role.grant", f"iam://staging/roles/{role}", parameters, "human:carol")
    assert view["state"] == "failed", view
    assert any("Keyturn never grants it, and nothing was changed" in reason for reason in view["reasons"]), view
    assert "carl" not in members_of(shop, role) and "carl" not in members_of(shop, "pg_read_server_files")


def test_a_grant_naming_a_role_the_target_lacks_fails_and_changes_nothing(agent: Agent, shop: SqlTarget) -> None:
    parameters = {"role": "no_such_role", "principal": "carl"}
    view = outcome(agent, agent.submit_ok("iam.role.revoke", "iam://staging/roles/x", parameters))
    assert view["state"] == "failed"
    assert any("role 'no_such_role' does not exist on the target" in reason for reason in view["reasons"]), view


def expired_sessions(target: SqlTarget) -> int:
    with target.admin() as conn:
        return conn.execute("SELECT count(*) FROM sessions WHERE expired").fetchone()[0]


def test_a_deletion_larger_than_approved_is_rolled_back_and_fails_with_the_count(
    agent: Agent, settings, shop: SqlTarget
) -> None:
    before = expired_sessions(shop)
    parameters = {"table": "sessions", "where": "expired", "max_rows": 3}
    view = approved(settings, agent, "db.rows.delete", "postgres://staging/shop/sessions", parameters, "human:judy")
    assert view["state"] == "failed", view
    assert f"would remove {before} rows from public.sessions, more than the 3 approved" in str(view)
    assert expired_sessions(shop) == before == 10, "the DELETE was rolled back"
    assert not role_exists(shop, role_name_for(view["action_id"]))


def test_an_approval_nobody_gave_written_to_the_topics_runs_nothing_and_the_approval_stays_open(
    agent: Agent, settings, shop: SqlTarget
) -> None:
    """Anyone who can write Keyturn's topics (an agent submitting over Kafka holds a producer) is
    not the approval service: an approved resolution with a made-up vote, and the decision said
    allowed, are dead-lettered without their services' warrants, and nothing runs."""
    before = expired_sessions(shop)
    parameters = {"table": "sessions", "where": "expired", "max_rows": 10}
    action_id = agent.submit_ok("db.rows.delete", "postgres://staging/shop/sessions", parameters)
    assert agent.wait_for_state(action_id, "needs_approval")["state"] == "needs_approval"
    topics = Topics(settings.namespace, settings.partitions)
    decided = next(
        e for e, _ in read_topic(settings, topics.decided) if isinstance(e, ActionDecided) and e.action_id == action_id
    )
    now = datetime.now(UTC)
    judy = Vote(Principal("human:judy", PrincipalKind.HUMAN), VoteChoice.APPROVE, decided.request.payload_digest, now)
    forged = ApprovalResolved(
        f"resolved:{action_id}", action_id, ResolutionOutcome.APPROVED, now, decided, (judy,), "approved"
    )
    produce(settings, topics.resolved, registry().encode_event(forged), key=action_id.encode())
    allowed = replace(decided, outcome=DecisionOutcome.ALLOWED)
    produce(settings, topics.decided, registry().encode_event(allowed), key=action_id.encode())
    # and a request in someone else's name, with no token, straight onto the requested topic
    ceo = str(uuid.uuid4())
    request = replace(
        decided.request,
        action_id=ceo,
        event_id=f"requested:{ceo}",
        requester=Principal("human:ceo", PrincipalKind.HUMAN),
    )
    produce(settings, topics.requested, registry().encode_event(request), key=ceo.encode())

    def refused() -> list:
        letters = [
            e
            for e, _ in read_topic(settings, topics.dlq)
            if getattr(e, "error_type", None) == "unwarranted_order" and action_id in e.reason
        ]
        return letters if len(letters) == 2 else []

    letters = eventually(refused, timeout=60)
    assert all("nothing was run" in letter.reason for letter in letters), letters
    undecided = eventually(
        lambda: [
            e
            for e, _ in read_topic(settings, topics.dlq)
            if getattr(e, "error_type", None) == "unwarranted_request" and ceo in e.reason
        ],
        timeout=60,
    )
    assert undecided and not [e for e, _ in read_topic(settings, topics.decided) if getattr(e, "action_id", "") == ceo]
    assert not executed_events(settings, action_id) and expired_sessions(shop) == before
    assert agent.wait_for_state(action_id, "needs_approval", timeout=1)["state"] == "needs_approval"
    assert approval_shown(settings, action_id, "human:judy")["status"] == "pending", "the approval stays open"

    # a success nobody had: the audit, whose topic it is, refuses it, and chains none of the forgeries
    forged_success = ActionExecuted(
        f"executed:{action_id}",
        action_id,
        ExecutionOutcome.SUCCEEDED,
        "deletion",
        decided.request.payload_digest,
        datetime.now(UTC),
    )
    produce(settings, topics.executed, registry().encode_event(forged_success), key=action_id.encode())
    eventually(
        lambda: [
            e
            for e, _ in read_topic(settings, topics.dlq)
            if getattr(e, "error_type", None) == "unwarranted_event" and action_id in e.reason
        ],
        timeout=60,
    )
    audit_log = asyncio.run(read_audit_log(settings.kafka_bootstrap, topics.audit))
    chained = [r.event_type for r in audit_log if r.action_id == action_id]
    assert chained.count("ActionDecided") == 1 and not {"ApprovalResolved", "ActionExecuted"} & set(chained), chained
    assert not [r for r in audit_log if r.action_id == ceo and r.event_type == "ActionRequested"]
    assert agent.wait_for_state(action_id, "needs_approval", timeout=1)["state"] == "needs_approval"


def test_a_deletion_within_the_approved_count_deletes_exactly_those_rows(
    agent: Agent, settings, shop: SqlTarget
) -> None:
    parameters = {"table": "sessions", "where": "expired", "max_rows": 10}
    view = approved(settings, agent, "db.rows.delete", "postgres://staging/shop/sessions", parameters, "human:judy")
    assert view["state"] == "succeeded", view
    assert view["result"] == {"table": "public.sessions", "deleted_rows": 10, "approved_rows": 10}
    with shop.admin() as conn:
        assert conn.execute("SELECT count(*), bool_or(expired) FROM sessions").fetchone() == (5, False)


def test_rows_a_deletion_removes_through_cascades_count_toward_its_bound_and_its_preview(
    agent: Agent, settings, shop: SqlTarget
) -> None:
    with shop.admin() as conn:
        conn.execute("CREATE TABLE cascade_parent (id int PRIMARY KEY)")
        conn.execute(
            "CREATE TABLE cascade_child (id serial PRIMARY KEY, "
            "parent int NOT NULL REFERENCES cascade_parent (id) ON DELETE CASCADE)"
        )
        conn.execute("INSERT INTO cascade_parent VALUES (1), (2)")
        conn.execute("INSERT INTO cascade_child (parent) SELECT 1 FROM generate_series(1, 50)")

    def children() -> int:
        with shop.admin() as conn:
            return conn.execute("SELECT count(*) FROM cascade_child").fetchone()[0]

    parameters = {"table": "cascade_parent", "where": "id = 1", "max_rows": 1}
    action_id = agent.submit_ok("db.rows.delete", "postgres://staging/shop/cascade_parent", parameters)
    assert agent.wait_for_state(action_id, "needs_approval")["state"] == "needs_approval"
    impact = approval_shown(settings, action_id, "human:judy")["impact"]
    # what approvers are shown counts the 50 rows the cascade removes, and names their table
    assert impact["rows"] == 51 and "public.cascade_child" in impact["tables"], impact
    vote = keyturn_cli(settings, "approve", action_id, "--reason", "checked", token=mint(settings, "human:judy"))
    assert vote.returncode == 0, vote.stderr
    view = outcome(agent, action_id)
    assert view["state"] == "failed", view
    assert "51 rows from public.cascade_parent (50 of them in other tables" in str(view), view
    assert children() == 50, "rolled back: the cascade too"

    # within its bound, the result says what the cascade did as well
    parameters = {"table": "cascade_parent", "where": "id = 1", "max_rows": 51}
    view = approved(
        settings, agent, "db.rows.delete", "postgres://staging/shop/cascade_parent", parameters, "human:judy"
    )
    assert view["state"] == "succeeded", view
    assert view["result"]["deleted_rows"] == 1 and view["result"]["rows_changed"] == 51, view["result"]
    assert "public.cascade_child" in view["result"]["tables_changed"] and children() == 0


def test_a_deletion_condition_cannot_carry_a_clause_after_it(agent: Agent, settings, shop: SqlTarget) -> None:
    with shop.admin() as conn:
        before = conn.execute("SELECT count(*) FROM sessions").fetchone()[0]
    parameters = {"table": "sessions", "where": "true RETURNING (SELECT 1)", "max_rows": 1}
    action_id = agent.submit_ok("db.rows.delete", "postgres://staging/shop/sessions", parameters)
    assert agent.wait_for_state(action_id, "needs_approval")["state"] == "needs_approval"
    # the condition stands in parentheses, so PostgreSQL reads the clause as a syntax error: the preview
    # (the very statement the executor would run) says so, and nothing is deleted
    impact = approval_shown(settings, action_id, "human:judy")["impact"]
    assert impact["status"] == "unavailable" and "syntax error" in impact["detail"], impact
    with shop.admin() as conn:
        assert conn.execute("SELECT count(*) FROM sessions").fetchone()[0] == before


# --- export: a file with the policy's masked columns masked, downloaded once -----------------------


def export_for_the_requester(settings, agent: Agent, parameters: dict) -> dict:
    """An export the requester downloads: judged as leaving the company, so security and data-owners approve."""
    action_id = agent.submit_ok("db.export", "postgres://staging/shop/customers", parameters)
    assert agent.wait_for_state(action_id, "needs_approval")["state"] == "needs_approval"
    for approver in ("human:carol", "human:heidi"):
        vote = keyturn_cli(settings, "approve", action_id, "--reason", "checked", token=mint(settings, approver))
        assert vote.returncode == 0, vote.stderr
    return outcome(agent, action_id)


def test_an_export_is_delivered_to_its_destination_and_nowhere_else(
    agent: Agent, settings, https_peer: HttpsPeer
) -> None:
    parameters = {
        "query": "SELECT id, email, city FROM customers ORDER BY id",
        "row_count": 12,
        "destination": f"https://{PEER_HOST}/drop/customers.csv",
        "format": "csv",
    }
    view = outcome(agent, agent.submit_ok("db.export", "postgres://staging/shop/customers", parameters))
    assert view["state"] == "succeeded", view  # a small export inside the company: allowed, and delivered there
    result = view["result"]
    assert result["delivered"] == {"to": f"https://{PEER_HOST}/drop/customers.csv", "status": 201}
    assert "download" not in result and agent.http.get(f"/v1/exports/{view['action_id']}").status_code == 404
    text = https_peer.uploads["/drop/customers.csv"].decode()
    assert text.count("\n") == 13 and "@example.com" not in text and "Lyon" in text  # masked, as a download is
    assert https_peer.verified[-1]["keyturn_action_id"] == view["action_id"]  # a token for that one call

    # a destination the executor cannot deliver to is refused before anything runs: the policy judged
    # the export by where it said it would go, so it goes there or nowhere
    elsewhere = {**parameters, "destination": "https://nowhere.example.internal/never-contacted"}
    view = outcome(agent, agent.submit_ok("db.export", "postgres://staging/shop/customers", elsewhere))
    assert view["state"] == "failed" and "not in KEYTURN_HTTP_ALLOWED_HOSTS" in str(view), view
    assert "Nothing was exported" in str(view) and agent.http.get(f"/v1/exports/{view['action_id']}").status_code == 404


def test_an_export_is_a_parquet_file_with_masked_columns_that_downloads_once(agent: Agent, settings) -> None:
    import pyarrow.parquet as pq

    parameters = {
        "query": "SELECT id, email, password, city FROM customers ORDER BY id",
        "row_count": 12,
        "destination": "keyturn://requester",
    }
    view = export_for_the_requester(settings, agent, parameters)
    assert view["state"] == "succeeded", view
    result = view["result"]
    assert (result["exported_rows"], result["format"]) == (12, "parquet")
    assert sorted(result["masked_columns"]) == ["email", "password"]

    first = agent.http.get(result["download"]["path"])
    assert first.status_code == 200, first.text
    rows = pq.read_table(io.BytesIO(first.content)).to_pylist()
    assert len(rows) == 12 and {r["city"] for r in rows} == {"Lyon"}  # unmasked columns as they are
    assert not any("@example.com" in r["email"] or "hunter" in r["password"] for r in rows), rows[0]
    assert rows[0]["email"].startswith("<") and rows[0]["password"].startswith("<")

    again = agent.http.get(result["download"]["path"])
    assert again.status_code == 410 and "already downloaded" in again.json()["detail"]
    stranger = Agent(settings, "agent:stranger")
    assert stranger.http.get(result["download"]["path"]).status_code == 404

    aliased = {**parameters, "query": "SELECT email AS contact, city FROM customers", "format": "csv"}
    view = export_for_the_requester(settings, agent, aliased)
    assert view["state"] == "succeeded" and view["result"]["masked_values"] == 12, view
    text = agent.http.get(view["result"]["download"]["path"]).text
    # the column the policy masks, under an alias: masked whole as that column is
    assert "@example.com" not in text and text.count("<MASKED>") == 12, text


# --- secrets: referenced by name, resolved only inside the executor --------------------------------

SECRET_VALUE = f"kt-partner-key-{uuid.uuid4().hex}"  # a marker the leak scan below searches everywhere


def test_a_secret_reference_reaches_the_target_resolved_and_comes_back_redacted(
    agent: Agent, settings, https_peer: HttpsPeer
) -> None:
    put_secret(settings, "partner-key", SECRET_VALUE)  # the CLI prints nothing of it
    parameters = {"method": "GET", "headers": {"X-Api-Key": {"secret": "partner-key"}}}
    view = outcome(agent, agent.submit_ok("http.request", f"https://{PEER_HOST}/v1/whoami", parameters))
    assert view["state"] == "succeeded", view
    assert https_peer.api_keys[-1] == SECRET_VALUE  # the target got the secret itself
    assert view["result"]["body"]["api_key_received"].startswith("<SECRET")  # its echo came back redacted
    assert SECRET_VALUE not in json.dumps(view)

    missing = {"method": "GET", "headers": {"X-Api-Key": {"secret": "no-such-secret"}}}
    refused = outcome(agent, agent.submit_ok("http.request", f"https://{PEER_HOST}/v1/whoami", missing))
    assert refused["state"] == "failed"
    assert any("no secret named 'no-such-secret'" in reason for reason in refused["reasons"]), refused


LEDGER_PASSWORD = f"kt-ledger-{uuid.uuid4().hex}"  # the referenced target's credential, searched for below
LEDGER_SECRET: list[str] = []  # the connection string, once the test below made it


def test_a_sql_statement_runs_on_the_target_its_connection_string_reference_names(
    agent: Agent, settings, shop: SqlTarget
) -> None:
    """A second database (its own owner, password and table) named only by a secret reference: the
    statement runs there, as a role made for it; the default target is untouched."""
    suffix = uuid.uuid4().hex[:8]
    owner, database = f"ledger_owner_{suffix}", f"ledger_{suffix}"
    with shop.superuser() as conn:
        conn.execute("SET log_statement = 'none'")  # the server logs every statement: not this password
        conn.execute(f"CREATE ROLE {owner} LOGIN CREATEROLE PASSWORD '{LEDGER_PASSWORD}'")
        conn.execute(f"CREATE DATABASE {database} OWNER {owner}")
    url = f"postgresql://{owner}:{LEDGER_PASSWORD}@127.0.0.1:{shop.port}/{database}"
    LEDGER_SECRET.append(url)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE payments (id serial PRIMARY KEY, note text NOT NULL)")
        conn.execute("INSERT INTO payments (note) VALUES ('opening balance')")
    put_secret(settings, "ledger-db", url)

    # payments exists only on the referenced database: on the default target this could not run
    view = sql(
        agent,
        "INSERT INTO payments (note) VALUES ('by reference') RETURNING note",
        unpreviewable=True,  # no dry run on a target only the executor can resolve: people approve
        connection_string={"secret": "ledger-db"},
    )
    assert view["state"] == "succeeded", view
    assert view["result"]["rows"] == [{"note": "by reference"}]
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT note FROM payments ORDER BY id").fetchall() == [
            ("opening balance",),
            ("by reference",),
        ]
    assert shop.temporary_roles() == []  # the role made for it was dropped (roles are per server)
    assert LEDGER_PASSWORD not in json.dumps(view) and owner not in json.dumps(view)

    # a clear connection string is refused at the door, naming the field, not echoing it
    clear = agent.submit("sql.query", STAGING, {"statement": "SELECT 1", "connection_string": url})
    assert clear.status_code in (400, 422), clear.text
    assert "connection_string" in clear.text and LEDGER_PASSWORD not in clear.text

    # a secret that is no connection string: the error names the secret, never its value
    put_secret(settings, "not-a-dsn", f"{LEDGER_PASSWORD} is not a dsn")
    broken = sql(agent, "SELECT 1", unpreviewable=True, connection_string={"secret": "not-a-dsn"})
    assert broken["state"] == "failed"
    assert any("'not-a-dsn' does not hold a PostgreSQL connection string" in r for r in broken["reasons"]), broken
    assert LEDGER_PASSWORD not in json.dumps(broken)


def test_no_temporary_role_is_left_behind(agent: Agent, shop: SqlTarget) -> None:
    assert sql(agent, "SELECT count(*) FROM customers")["state"] == "succeeded"
    assert sql(agent, "SELECT no_such_column FROM customers", unpreviewable=True)["state"] == "failed"
    assert shop.temporary_roles() == []


def test_no_minted_credential_appears_in_any_topic_log_or_audit_record(
    agent: Agent, settings, executor: ExecutorUnderTest, https_peer: HttpsPeer, shop: SqlTarget
) -> None:
    assert sql(agent, "SELECT email FROM customers WHERE id = 1")["state"] == "succeeded"
    assert http(agent, "/v1/whoami")["state"] == "succeeded"
    minted = witnessed_secrets(executor.witness)
    tokens = [m for m in minted if m.count(".") == 2]
    passwords = [m for m in minted if m not in tokens]
    assert tokens and passwords, "the tests above minted SQL passwords and HTTP tokens"
    assert set(https_peer.tokens) <= set(tokens)  # the peer got only tokens the executor minted
    # and the secrets resolved from references: an http header, a sql target's connection string
    secrets = [s.encode() for s in minted] + [v.encode() for v in (SECRET_VALUE, LEDGER_PASSWORD, *LEDGER_SECRET)]

    places: dict[str, bytes] = {}
    found_topics = namespace_topics(settings)
    assert Topics(settings.namespace, settings.partitions).executed in found_topics
    for topic in found_topics:
        places[f"topic {topic}"] = b"\n".join(
            (m.key or b"") + b"\t" + (m.value or b"") for _, m in read_topic(settings, topic)
        )
    for log in sorted((ARTIFACTS / "logs" / settings.namespace).glob("*.log")):
        places[f"log {log.name}"] = log.read_bytes()
    places["audit records"] = "\n".join(
        canonical_json(r.to_dict())
        for r in asyncio.run(
            read_audit_log(settings.kafka_bootstrap, Topics(settings.namespace, settings.partitions).audit)
        )
    ).encode()
    places["SQL target server log"] = shop.log_path.read_bytes()
    with psycopg.connect(settings.database_url) as conn:
        rows = conn.execute(f'SELECT executed_event FROM "{schema_name(settings.namespace)}".executions').fetchall()
    places["execution ledger"] = b"\n".join(bytes(r[0] or b"") for r in rows)

    assert b"CREATE ROLE" in places["SQL target server log"] and b"SCRAM-SHA-256$" in places["SQL target server log"]
    assert any(b"executed" in content for name, content in places.items() if name.startswith("log "))
    leaks = [(name, secret[:6] + b"...") for name, content in places.items() for secret in secrets if secret in content]
    assert leaks == [], f"minted credentials found in: {leaks}"
