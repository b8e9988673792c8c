"""What the sql plugin reads from a statement before granting its temporary role anything, and how
its role statements meet a concurrent grant."""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Any

import psycopg
import pytest
from psycopg import sql

from keyturn.executor.plugins.sql_roles import (
    COLLISION_ATTEMPTS,
    ROLE_PREFIX,
    SCRAM_ITERATIONS,
    Grants,
    Relation,
    grant,
    retry_collisions,
    role_name_for,
    scram_sha256_verifier,
)
from keyturn.executor.plugins.sql_text import UnsupportedStatement, statement_shape, tokenize


@pytest.mark.parametrize(
    ("statement", "reads"),
    [
        ("SELECT * FROM orders", ("orders",)),
        ("select id from sales.orders o join customers c on o.c = c.id", ("sales.orders", "customers")),
        ('SELECT * FROM a, b x, "Odd Name" WHERE a.id IN (SELECT id FROM c)', ("a", "b", '"Odd Name"', "c")),
        ("SELECT * FROM a JOIN b ON a.id = b.id, c", ("a", "b", "c")),
        ("SELECT * FROM generate_series(1, 3) g, orders", ("orders",)),
        ("SELECT extract(year FROM created_at), x IS DISTINCT FROM y FROM events", ("events",)),
        ("WITH recent AS (SELECT * FROM orders) SELECT * FROM recent JOIN items USING (id)", ("orders", "items")),
        ("TABLE public.orders;", ("public.orders",)),
        ("(SELECT 1 FROM a) UNION (SELECT 1 FROM b)", ("a", "b")),
        ("VALUES (1), (2)", ()),
        ("SELECT pg_sleep(1)", ()),
    ],
)
def test_a_read_names_the_tables_it_reads(statement: str, reads: tuple[str, ...]) -> None:
    shape = statement_shape(statement)
    assert shape.kind == "read"
    assert shape.reads == reads
    assert shape.write_target is None


def test_keywords_inside_strings_and_comments_count_for_nothing() -> None:
    shape = statement_shape("SELECT 'x; DROP TABLE users', $$DELETE$$ /* FROM secrets */ -- JOIN vault\nFROM notes")
    assert shape.kind == "read" and shape.reads == ("notes",)


@pytest.mark.parametrize(
    ("statement", "target", "privilege", "reads"),
    [
        ("INSERT INTO marks (note) VALUES ('x')", "marks", "INSERT", ()),
        ("INSERT INTO marks (note) SELECT 'x' FROM pg_sleep(1)", "marks", "INSERT", ()),
        ("INSERT INTO archive SELECT * FROM orders", "archive", "INSERT", ("orders",)),
        ("INSERT INTO marks (note) VALUES ('x') RETURNING id", "marks", "INSERT", ("marks",)),
        ("UPDATE accounts SET balance = 0 WHERE id = 1", "accounts", "UPDATE", ("accounts",)),
        (
            "UPDATE ONLY accounts a SET x = l.x FROM limits l WHERE l.id = a.id",
            "accounts",
            "UPDATE",
            ("accounts", "limits"),
        ),
        ("DELETE FROM sessions USING users u WHERE u.id = sessions.uid", "sessions", "DELETE", ("sessions", "users")),
        (
            "WITH old AS (SELECT id FROM sessions) DELETE FROM sessions WHERE id IN (SELECT id FROM old)",
            "sessions",
            "DELETE",
            ("sessions",),
        ),
    ],
)
def test_a_write_names_its_target_and_what_it_reads(
    statement: str, target: str, privilege: str, reads: tuple[str, ...]
) -> None:
    shape = statement_shape(statement)
    assert (shape.kind, shape.write_target, shape.write_privilege) == ("write", target, privilege)
    assert shape.reads == tuple(sorted(reads))


@pytest.mark.parametrize(
    ("statement", "says"),
    [
        ("DROP TABLE orders", "DROP is not one of them"),
        ("CREATE ROLE admin SUPERUSER", "CREATE is not one of them"),
        ("GRANT ALL ON orders TO public", "GRANT is not one of them"),
        ("COPY orders TO '/tmp/x'", "COPY is not one of them"),
        ("SELECT 1; DELETE FROM orders", "one statement per command"),
        # PostgreSQL ends a -- comment at a carriage return too: the COMMIT is code, not comment
        ("UPDATE orders SET x = x WHERE false --\r; COMMIT; DROP TABLE orders", "one statement per command"),
        ("SELECT * INTO copy FROM orders", "SELECT … INTO creates a table"),
        ("WITH gone AS (DELETE FROM orders RETURNING *) SELECT * FROM gone", "uses DELETE"),
        ("WITH gone AS (DELETE FROM a RETURNING *) INSERT INTO b SELECT * FROM gone", "WITH part that uses DELETE"),
        ("SELECT * FROM orders FOR UPDATE", "uses UPDATE"),
        ("INSERT marks VALUES (1)", "INSERT must be followed by INTO"),
        ("SELECT (1", "never closed"),
        ("SELECT 'open", "cannot read the statement"),
        ("   ;  ", "the statement is empty"),
    ],
)
def test_anything_else_is_refused_with_a_reason(statement: str, says: str) -> None:
    with pytest.raises(UnsupportedStatement) as refused:
        statement_shape(statement)
    assert says in str(refused.value)


def test_a_role_name_is_the_same_for_every_try_of_one_action() -> None:
    name = role_name_for("6f1c2f2e-8d3b-4b4a-9a53-1d2c3b4a5f60")
    assert name == ROLE_PREFIX + "6f1c2f2e8d3b4b4a9a531d2c3b4a5f60"
    assert name == role_name_for("6F1C2F2E-8D3B-4B4A-9A53-1D2C3B4A5F60")
    assert len(role_name_for("not-a-uuid")) <= 63  # PostgreSQL's identifier limit


def test_the_scram_verifier_is_what_postgresql_would_store_and_hides_the_password() -> None:
    salt = b"0123456789abcdef"
    verifier = scram_sha256_verifier("pencil", salt=salt)
    method, _, rest = verifier.partition("$")
    iterations_salt, _, keys = rest.partition("$")
    stored_key, _, server_key = keys.partition(":")
    assert method == "SCRAM-SHA-256" and iterations_salt == f"{SCRAM_ITERATIONS}:{base64.b64encode(salt).decode()}"
    salted = hashlib.pbkdf2_hmac("sha256", b"pencil", salt, SCRAM_ITERATIONS)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    assert base64.b64decode(stored_key) == hashlib.sha256(client_key).digest()
    assert base64.b64decode(server_key) == hmac.new(salted, b"Server Key", "sha256").digest()
    assert "pencil" not in verifier
    assert scram_sha256_verifier("pencil") != scram_sha256_verifier("pencil")  # a fresh salt each time


COLLISION = psycopg.errors.InternalError_("tuple concurrently updated")
DEADLOCK = psycopg.errors.DeadlockDetected("deadlock detected")
REFUSAL = psycopg.errors.InsufficientPrivilege("permission denied for table marks")


@pytest.mark.parametrize(
    ("failures", "tries", "ends_with"),
    [
        ([COLLISION, COLLISION], 3, "made"),  # another transaction updated the privileges first: again
        ([DEADLOCK], 2, "made"),  # chosen as a deadlock's victim, rolled back: again
        ([COLLISION] * COLLISION_ATTEMPTS, COLLISION_ATTEMPTS, COLLISION),  # then it fails with the reason
        ([REFUSAL], 1, REFUSAL),  # a refusal is not a collision: never run twice
    ],
)
async def test_a_collided_privilege_statement_is_tried_again_and_nothing_else_is(
    failures: list[Exception], tries: int, ends_with: object
) -> None:
    calls: list[int] = []

    async def attempt() -> str:
        calls.append(1)
        if len(calls) <= len(failures):
            raise failures[len(calls) - 1]
        return "made"

    if isinstance(ends_with, Exception):
        with pytest.raises(type(ends_with)):
            await retry_collisions(attempt)
    else:
        assert await retry_collisions(attempt) == ends_with
    assert len(calls) == tries


async def test_grants_go_out_in_one_order_whatever_order_the_statement_named_its_tables() -> None:
    sent: list[str] = []

    class Recording:
        async def execute(self, statement: Any) -> None:
            sent.append(statement.as_string(None))

    grants = Grants(
        tables={Relation("shop", "orders"): ("SELECT",), Relation("public", "marks"): ("INSERT",)},
        sequences=(Relation("shop", "z_seq"), Relation("public", "marks_id_seq")),
    )
    await grant(Recording(), sql.Identifier("keyturn_cmd_x"), grants)  # type: ignore[arg-type]
    assert sent == [
        'GRANT USAGE ON SCHEMA "public" TO "keyturn_cmd_x"',
        'GRANT USAGE ON SCHEMA "shop" TO "keyturn_cmd_x"',
        'GRANT INSERT ON TABLE "public"."marks" TO "keyturn_cmd_x"',
        'GRANT SELECT ON TABLE "shop"."orders" TO "keyturn_cmd_x"',
        'GRANT USAGE ON SEQUENCE "public"."marks_id_seq" TO "keyturn_cmd_x"',
        'GRANT USAGE ON SEQUENCE "shop"."z_seq" TO "keyturn_cmd_x"',
    ]


def test_an_operator_ends_where_a_comment_begins_as_postgresql_reads_it() -> None:
    # "*/*" is not one operator: PostgreSQL reads "1 * 2" with a comment between
    assert [t.text for t in tokenize("SELECT 1 */* x */ 2")] == ["SELECT", "1", "*", "2"]
    assert [t.text for t in tokenize("SELECT 1 <-- x\n 2")] == ["SELECT", "1", "<", "2"]
