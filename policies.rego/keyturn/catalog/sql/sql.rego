# METADATA
# title: SQL
# description: |
#   sql.query runs parameters.statement against the resource's database. Each statement
#   (split on ";", comments removed) is classified by its first keyword as read, write,
#   ddl or unrecognised, and the most severe class decides: reads are allowed outside
#   production and in production under a row cap (parameters.max_rows); production writes
#   need db-owners; DDL needs db-owners, and security too in production; DROP, TRUNCATE
#   and DELETE/UPDATE without WHERE are denied in production.
# schemas:
#   - input: schema.decision.decision_input
package keyturn.catalog.sql

import data.keyturn.request
import data.keyturn.verdict

destructive_keywords := {"drop", "truncate"}

# METADATA
# description: True for sql.query.
covers_action if request.action == "sql.query"

# METADATA
# description: Fields of sql.query that carry secrets.
masked_fields contains field if {
	covers_action
	some field in ["parameters.password", "parameters.connection_string"]
}

# METADATA
# description: Columns masked in the rows sql.query returns, as in an export's file (data.keyturn.export.masked_columns).
masked_fields contains sprintf("columns.%s", [column]) if {
	covers_action
	some column in data.keyturn.export.masked_columns
}

# METADATA
# description: |
#   The statements in parameters.statement, one per ";", each without its leading comments,
#   blanks and parentheses. The text is split before comments are removed so that a "--"
#   inside a string literal cannot hide the statements after it; splitting too often only
#   adds statements, and so only makes the verdict stricter.
statements contains statement if {
	covers_action
	is_string(request.parameters.statement)
	some part in split(request.parameters.statement, ";")
	statement := regex.replace(part, `(?s)^(?:\s|\(|--[^\n\r]*|/\*.*?\*/)*`, "")
	statement != ""
}

# (PostgreSQL ends a "--" comment at a carriage return as well as a line feed)
without_comments(sql) := regex.replace(regex.replace(sql, `(?s)/\*.*?\*/`, " "), `--[^\n\r]*`, " ")

# METADATA
# description: |
#   The text without its string literals, quoted identifiers and dollar-quoted strings: a
#   WHERE written inside one (an alias "where", a value 'where') is no condition. Where the
#   removal is not exact (a dollar quote closed by another tag), it removes more, so a
#   condition is only ever missed, and the verdict is only ever stricter.
without_literals(sql) := regex.replace(sql, `(?s)'(?:[^']|'')*'|"(?:[^"]|"")*"|\$[A-Za-z_0-9]*\$.*?\$[A-Za-z_0-9]*\$`, " ")

# METADATA
# description: |
#   PostgreSQL nests block comments ("/* /* */ */" is one comment); a regular expression cannot
#   count them, so a statement whose text still holds "/*" or "*/" once the comments it can
#   read are removed is not read at all: unrecognised, never a read.
nested_or_unclosed_comment if {
	covers_action
	is_string(request.parameters.statement)
	regex.match(`/\*|\*/`, without_comments(without_literals(request.parameters.statement)))
}

# METADATA
# scope: document
# description: The first keyword of a statement, lower-cased; "" when it starts with no word.
default keyword_of(_) := ""

keyword_of(statement) := lower(word) if [word] := regex.find_n(`^[A-Za-z]+`, statement, 1)

# METADATA
# description: read, write, ddl or unrecognised, by the statement's first keyword.
class_of(statement) := "ddl" if {
	keyword_of(statement) in {
		"create", "alter", "drop", "truncate", "grant", "revoke", "comment", "rename",
		"reindex", "vacuum", "cluster", "refresh", "do", "security", "import",
	}
} else := "ddl" if {
	# SELECT ... INTO creates a table.
	keyword_of(statement) == "select"
	regex.match(`(?i)\binto\b`, statement)
} else := "write" if {
	keyword_of(statement) in {"insert", "update", "delete", "merge", "upsert", "replace", "copy", "call", "lock"}
} else := "write" if {
	# A CTE may modify data; EXPLAIN ANALYZE runs the statement it explains.
	keyword_of(statement) in {"with", "explain"}
	regex.match(`(?i)\b(insert|update|delete|merge|analyze)\b`, statement)
} else := "read" if {
	keyword_of(statement) in {"select", "show", "explain", "values", "table", "with"}
} else := "unrecognised"

statement_classes contains class_of(statement) if some statement in statements

statement_classes contains "unrecognised" if nested_or_unclosed_comment

# METADATA
# description: |
#   The impact preview read the statement with the executor's own reader (the one PostgreSQL's
#   grants follow): when it found a write, the statement is a write, whatever its text looks
#   like to the expressions above.
statement_classes contains "write" if {
	covers_action
	input.impact.operation in {"insert", "update", "delete"}
}

# METADATA
# description: The most severe class among the statements.
statement_class := [class | some class in ["ddl", "unrecognised", "write", "read"]; class in statement_classes][0]

destructive_statement if {
	some statement in statements
	keyword_of(statement) in destructive_keywords
}

unbounded_delete_or_update if {
	some statement in statements
	keyword_of(statement) in {"delete", "update"}
	not regex.match(`(?i)\bwhere\b`, without_comments(without_literals(statement)))
}

default max_rows := -1

max_rows := request.parameters.max_rows if {
	is_number(request.parameters.max_rows)
	request.parameters.max_rows >= 0
}

read_is_capped if {
	max_rows >= 0
	max_rows <= data.keyturn.limits.sql_production_max_rows
}

production_read if {
	statement_class == "read"
	request.in_production
}

schema_change if statement_class in {"ddl", "unrecognised"}

# METADATA
# description: A production incident may run a read under break-glass.
break_glass_permitted if production_read

# METADATA
# scope: document
# description: What this family says about the action.
verdicts contains verdict.deny("sql.statement_is_missing", msg) if {
	covers_action
	count(statements) == 0
	msg := "sql.query needs parameters.statement, a non-empty SQL statement"
}

verdicts contains verdict.deny("sql.drop_or_truncate_in_production", msg) if {
	destructive_statement
	request.in_production
	msg := "DROP and TRUNCATE are never run in production through Keyturn"
}

verdicts contains verdict.deny("sql.unbounded_delete_or_update_in_production", msg) if {
	unbounded_delete_or_update
	request.in_production
	msg := "DELETE or UPDATE without WHERE is never run in production through Keyturn"
}

verdicts contains verdict.allow("sql.read_outside_production", msg) if {
	statement_class == "read"
	not request.in_production
	msg := sprintf("sql.query only reads, in %s", [request.environment])
}

verdicts contains verdict.allow("sql.capped_read_in_production", msg) if {
	production_read
	read_is_capped
	not request.unattended_agent
	msg := sprintf("sql.query only reads, at most %d rows", [max_rows])
}

verdicts contains verdict.approve_all("sql.uncapped_read_in_production", msg, [verdict.group("db-owners", 1)]) if {
	production_read
	not read_is_capped
	msg := sprintf(
		"sql.query reads production with parameters.max_rows absent or above %d: db-owners must approve",
		[data.keyturn.limits.sql_production_max_rows],
	)
}

verdicts contains verdict.approve_all("sql.unattended_read_in_production", msg, [verdict.group("db-owners", 1)]) if {
	production_read
	request.unattended_agent
	msg := "sql.query reads production for an agent acting for nobody: db-owners must approve"
}

verdicts contains verdict.allow("sql.write_outside_production_for_a_person", msg) if {
	statement_class == "write"
	not request.in_production
	request.human_backed
	msg := sprintf("sql.query writes in %s on behalf of a person", [request.environment])
}

verdicts contains verdict.approve_all("sql.unattended_write_outside_production", msg, groups) if {
	statement_class == "write"
	not request.in_production
	not request.human_backed
	msg := sprintf("sql.query writes in %s with no person behind it: db-owners must approve", [request.environment])
	groups := [verdict.group("db-owners", 1)]
}

verdicts contains verdict.approve_all("sql.write_in_production", msg, [verdict.group("db-owners", 1)]) if {
	statement_class == "write"
	request.in_production
	msg := "sql.query writes in production: db-owners must approve"
}

verdicts contains verdict.approve_all("sql.schema_change_outside_production", msg, groups) if {
	schema_change
	not request.in_production
	msg := sprintf(
		"sql.query changes the schema (%s) in %s: db-owners must approve",
		[statement_class, request.environment],
	)
	groups := [verdict.group("db-owners", 1)]
}

verdicts contains verdict.approve_all("sql.schema_change_in_production", msg, groups) if {
	schema_change
	request.in_production
	msg := sprintf(
		"sql.query changes the schema (%s) in production: db-owners and security must both approve",
		[statement_class],
	)
	groups := [verdict.group("db-owners", 1), verdict.group("security", 1)]
}
