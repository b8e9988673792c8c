package keyturn.catalog.sql_test

import data.keyturn.catalog.sql
import data.keyturn.decision
import data.keyturn.fixtures_test as fixtures

production_db := "postgres://prod/analytics"

staging_db := "postgres://staging/analytics"

query(resource, environment, statement, max_rows) := fixtures.action_request(
	"sql.query", resource, environment,
	{"statement": statement, "max_rows": max_rows},
)

in_production(statement) := query("postgres://prod/analytics", "production", statement, 100)

in_staging(statement) := query("postgres://staging/analytics", "staging", statement, 100)

db_owners := [{"name": "db-owners", "min": 1}]

db_owners_and_security := [{"name": "db-owners", "min": 1}, {"name": "security", "min": 1}]

class_cases := {
	"select": {"statement": "SELECT * FROM customers", "class": "read"},
	"lower-case select with leading space": {"statement": "  select 1", "class": "read"},
	"parenthesised select": {"statement": "(SELECT 1) UNION (SELECT 2)", "class": "read"},
	"select after a line comment": {"statement": "-- weekly\nSELECT 1", "class": "read"},
	"read-only cte": {"statement": "WITH t AS (SELECT 1) SELECT * FROM t", "class": "read"},
	"explain": {"statement": "EXPLAIN SELECT * FROM customers", "class": "read"},
	"show": {"statement": "SHOW search_path", "class": "read"},
	"insert": {"statement": "INSERT INTO t VALUES (1)", "class": "write"},
	"update": {"statement": "UPDATE t SET a = 1 WHERE id = 2", "class": "write"},
	"cte that deletes": {"statement": "WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d", "class": "write"},
	"explain analyze runs the statement": {"statement": "EXPLAIN ANALYZE SELECT 1", "class": "write"},
	"copy": {"statement": "COPY t FROM '/tmp/x.csv'", "class": "write"},
	"create index": {"statement": "CREATE INDEX i ON t (a)", "class": "ddl"},
	"alter table": {"statement": "ALTER TABLE t ADD COLUMN b int", "class": "ddl"},
	"grant": {"statement": "GRANT SELECT ON t TO reporter", "class": "ddl"},
	"select into creates a table": {"statement": "SELECT * INTO backup FROM t", "class": "ddl"},
	"drop hidden behind a block comment": {"statement": "/* harmless */ DROP TABLE t", "class": "ddl"},
	"most severe statement wins": {"statement": "SELECT 1; DROP TABLE t;", "class": "ddl"},
	"drop after a dash-dash string literal": {"statement": "SELECT '--'; DROP TABLE t", "class": "ddl"},
	"drop after a comment that hides it is still counted": {"statement": "SELECT 1 -- x; DROP TABLE t", "class": "ddl"},
	"a semicolon inside a comment leaves an unrecognised part": {
		"statement": "/* a; b */ (SELECT 1)",
		"class": "unrecognised",
	},
	"unknown keyword": {"statement": "FROBNICATE t", "class": "unrecognised"},
	"a delete behind a nested block comment is not read as the select inside it": {
		"statement": "/* /* */ SELECT */ DELETE FROM t WHERE id = 2",
		"class": "unrecognised",
	},
	"a line comment ends at a carriage return": {
		"statement": "--\rDELETE FROM t WHERE id = 3 AND (\nSELECT true)",
		"class": "write",
	},
	"no keyword at all": {"statement": "42", "class": "unrecognised"},
}

test_statement_class[name] if {
	some name, tc in class_cases
	sql.statement_class == tc.class with input as in_staging(tc.statement)
}

cases := {
	"read in staging is allowed": {
		"request": query(staging_db, "staging", "SELECT * FROM customers", null),
		"outcome": "allowed",
		"rule": "sql.read_outside_production",
	},
	"capped read in production is allowed": {
		"request": in_production("SELECT * FROM customers"),
		"outcome": "allowed",
		"rule": "sql.capped_read_in_production",
	},
	"read in production without a cap needs db-owners": {
		"request": query(production_db, "production", "SELECT * FROM customers", null),
		"outcome": "needs_approval",
		"rule": "sql.uncapped_read_in_production",
		"groups": db_owners,
	},
	"read in production above the cap needs db-owners": {
		"request": query(production_db, "production", "SELECT * FROM customers", 5000),
		"outcome": "needs_approval",
		"rule": "sql.uncapped_read_in_production",
		"groups": db_owners,
	},
	"capped read in production by an agent acting for nobody needs db-owners": {
		"request": fixtures.unattended(in_production("SELECT 1")),
		"outcome": "needs_approval",
		"rule": "sql.unattended_read_in_production",
		"groups": db_owners,
	},
	"write in staging for a person is allowed": {
		"request": in_staging("UPDATE t SET a = 1 WHERE id = 2"),
		"outcome": "allowed",
		"rule": "sql.write_outside_production_for_a_person",
	},
	"write in staging by an agent acting for nobody needs db-owners": {
		"request": fixtures.unattended(in_staging("INSERT INTO t VALUES (1)")),
		"outcome": "needs_approval",
		"rule": "sql.unattended_write_outside_production",
		"groups": db_owners,
	},
	"write in production needs db-owners": {
		"request": in_production("UPDATE t SET a = 1 WHERE id = 2"),
		"outcome": "needs_approval",
		"rule": "sql.write_in_production",
		"groups": db_owners,
	},
	"delete without where in production is denied": {
		"request": in_production("DELETE FROM customers"),
		"outcome": "denied",
		"rule": "sql.unbounded_delete_or_update_in_production",
	},
	"delete whose where is commented out in production is denied": {
		"request": in_production("DELETE FROM customers -- WHERE id = 7"),
		"outcome": "denied",
		"rule": "sql.unbounded_delete_or_update_in_production",
	},
	"ddl in staging needs db-owners": {
		"request": in_staging("CREATE INDEX i ON t (a)"),
		"outcome": "needs_approval",
		"rule": "sql.schema_change_outside_production",
		"groups": db_owners,
	},
	"drop in staging needs db-owners": {
		"request": in_staging("DROP TABLE scratch"),
		"outcome": "needs_approval",
		"rule": "sql.schema_change_outside_production",
		"groups": db_owners,
	},
	"ddl in production needs db-owners and security": {
		"request": in_production("ALTER TABLE t ADD COLUMN b int"),
		"outcome": "needs_approval",
		"rule": "sql.schema_change_in_production",
		"groups": db_owners_and_security,
	},
	"unrecognised statement in production needs db-owners and security": {
		"request": in_production("FROBNICATE t"),
		"outcome": "needs_approval",
		"rule": "sql.schema_change_in_production",
		"groups": db_owners_and_security,
	},
	"drop in production is denied": {
		"request": in_production("DROP TABLE customers"),
		"outcome": "denied",
		"rule": "sql.drop_or_truncate_in_production",
	},
	"truncate in production is denied": {
		"request": in_production("truncate customers"),
		"outcome": "denied",
		"rule": "sql.drop_or_truncate_in_production",
	},
	"drop smuggled after a read in production is denied": {
		"request": in_production("SELECT 1; DROP TABLE customers"),
		"outcome": "denied",
		"rule": "sql.drop_or_truncate_in_production",
	},
	"a missing statement is denied": {
		"request": fixtures.action_request("sql.query", staging_db, "staging", {}),
		"outcome": "denied",
		"rule": "sql.statement_is_missing",
	},
	"a statement of only separators is denied": {
		"request": in_staging(" ; ;"),
		"outcome": "denied",
		"rule": "sql.statement_is_missing",
	},
}

test_sql[name] if {
	some name, tc in cases
	fixtures.decision_matches(decision.decision, tc) with input as tc.request
}

test_sql_masks_connection_secrets if {
	d := decision.decision with input as in_staging("SELECT 1")
	"parameters.password" in d.mask
	"parameters.connection_string" in d.mask
	d.credential_ttl_s == 300
}

test_sql_masks_the_columns_an_export_masks_in_the_rows_it_returns if {
	d := decision.decision with input as in_staging("SELECT email FROM customers")
	"columns.email" in d.mask
	"columns.ssn" in d.mask
}

test_a_write_the_preview_found_is_a_write_whatever_the_text_looks_like if {
	request := object.union(
		in_staging("SELECT 1"),
		{"impact": {"status": "computed", "operation": "delete", "rows": 3}},
	)
	sql.statement_class == "write" with input as request
}

unbounded_cases := {
	"an alias named where": "DELETE FROM t AS \"where\"",
	"a value that says where": "UPDATE t SET note = 'where'",
	"a dollar-quoted where": "UPDATE t SET note = $$ where $$",
	"a where in a comment": "DELETE FROM t -- where id = 1",
	"a where after a carriage-return comment": "DELETE FROM t --\r/* where */",
}

test_a_where_inside_a_literal_or_comment_is_no_condition[name] if {
	some name, statement in unbounded_cases
	sql.unbounded_delete_or_update with input as in_production(statement)
}

test_a_real_where_after_a_literal_is_a_condition if {
	not sql.unbounded_delete_or_update with input as in_production("UPDATE t SET note = '--' WHERE id = 1")
}
