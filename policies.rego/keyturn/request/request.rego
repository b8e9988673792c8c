# METADATA
# title: Request facts
# description: |
#   Facts about the action request (the decision input) that every catalog family reads:
#   what is malformed about it, the environment it touches, who the requester acts for,
#   and whether it arrived outside business hours. Families read these instead of
#   re-deriving them, so one input is judged the same way everywhere.
# schemas:
#   - input: schema.decision.decision_input
package keyturn.request

principal_kinds := {"agent", "human", "service"}

# Strictest first: when sources disagree, the strictest known environment wins.
known_environments_by_strictness := ["production", "staging", "development"]

iso_weekdays := {
	"Monday": 1, "Tuesday": 2, "Wednesday": 3, "Thursday": 4,
	"Friday": 5, "Saturday": 6, "Sunday": 7,
}

weekday_names := {1: "Monday", 2: "Tuesday", 3: "Wednesday", 4: "Thursday", 5: "Friday", 6: "Saturday", 7: "Sunday"}

# Input validation: every problem is a sentence the requester can act on.

# METADATA
# scope: document
# description: What is missing or malformed in the input; empty when the input is well formed.
problems contains "input must be a JSON object" if not input_is_object

problems contains "action_id must be a UUID string" if not action_id_is_uuid

problems contains "action must be a dotted action type such as db.export" if not action_is_dotted

problems contains "resource must be a non-empty string" if not resource_is_named

problems contains "parameters must be a JSON object" if not parameters_are_an_object

problems contains "reason must be a string" if not reason_is_a_string

problems contains "requester.id must be a non-empty string" if not asking_principal_is_named

problems contains "requester.kind must be one of agent, human, service" if not asking_principal_kind_is_known

problems contains "requester.chain must be an array of principal ids" if {
	chain_is_given
	not chain_is_principal_ids
}

problems contains "environment must be one of production, staging, development, unknown" if {
	not environment_is_a_contract_value
}

problems contains "submitted_at must be an RFC 3339 timestamp" if not submitted_at_ns

problems contains "context must be an object with hour_utc and weekday" if {
	context_is_given
	not is_object(input.context)
}

problems contains "context.hour_utc must be an integer from 0 to 23" if {
	"hour_utc" in object.keys(context)
	not hour_is_valid
}

problems contains "context.weekday must be an integer from 1 (Monday) to 7 (Sunday)" if {
	"weekday" in object.keys(context)
	not weekday_is_valid
}

# METADATA
# scope: document
# description: True when the input has no problems; families only judge well-formed input.
default well_formed := false

well_formed if count(problems) == 0

# A negated check on a missing field must still fire, so each check is its own rule:
# `not is_string(input.reason)` would be undefined, not true, when input.reason is missing.
input_is_object if is_object(input)

action_id_is_uuid if {
	regex.match(`^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$`, input.action_id)
}

action_is_dotted if regex.match(`^[a-z][a-z0-9_-]*(\.[a-z][a-z0-9_-]*)+$`, input.action)

resource_is_named if non_empty_string(input.resource)

parameters_are_an_object if is_object(input.parameters)

reason_is_a_string if is_string(input.reason)

asking_principal_is_named if non_empty_string(input.requester.id)

asking_principal_kind_is_known if input.requester.kind in principal_kinds

environment_is_a_contract_value if input.environment in {"production", "staging", "development", "unknown"}

hour_is_valid if integer_between(input.context.hour_utc, 0, 23)

weekday_is_valid if integer_between(input.context.weekday, 1, 7)

context_is_given if "context" in object.keys(input)

default context := {}

context := input.context if is_object(input.context)

chain_is_given if "chain" in object.keys(object.get(input, "requester", {}))

chain_is_principal_ids if {
	is_array(input.requester.chain)
	every principal in input.requester.chain {
		non_empty_string(principal)
	}
}

non_empty_string(value) if {
	is_string(value)
	value != ""
}

integer_between(value, low, high) if {
	is_number(value)
	round(value) == value
	value >= low
	value <= high
}

submitted_at_ns := time.parse_rfc3339_ns(input.submitted_at)

# Who asks, and for whom.

# METADATA
# scope: document
# description: The action type, or "" when the input has none (so messages stay printable).
default action := ""

action := input.action if is_string(input.action)

# METADATA
# scope: document
# description: The action's parameters, or {} when they are missing or not an object.
default parameters := {}

parameters := input.parameters if is_object(input.parameters)

# METADATA
# scope: document
# description: The principals the requester acts for; an absent chain means acting for nobody.
default chain := []

chain := input.requester.chain if chain_is_principal_ids

# METADATA
# scope: document
# description: True when a person asks directly, or the requester acts for one (a human-prefixed id in its chain).
human_backed if input.requester.kind == "human"

human_backed if {
	some principal in chain
	startswith(principal, "human:")
}

# METADATA
# description: An agent acting for nobody (empty chain) gets the strictest treatment.
unattended_agent if {
	input.requester.kind == "agent"
	count(chain) == 0
}

# Where the action lands.

# Environments named by the service, and by the resource patterns in data.keyturn.environments.
environment_claims contains input.environment if input.environment in {"production", "staging", "development"}

environment_claims contains name if {
	some name, patterns in data.keyturn.environments
	some pattern in patterns
	regex.match(pattern, input.resource)
}

# METADATA
# scope: document
# description: |
#   The strictest environment that the service or the resource patterns name;
#   "unknown" when neither names one. Families treat "unknown" like production.
default environment := "unknown"

environment := [name | some name in known_environments_by_strictness; name in environment_claims][0]

# METADATA
# description: True for production, and for an environment nobody could name.
in_production if environment in {"production", "unknown"}

# When it arrived.

# METADATA
# description: The hour (UTC) the request was submitted, from context or else from submitted_at.
hour_utc := input.context.hour_utc if {
	hour_is_valid
} else := time.clock([submitted_at_ns, "UTC"])[0]

# METADATA
# description: The ISO weekday (1 = Monday) the request was submitted, from context or else from submitted_at.
weekday := input.context.weekday if {
	weekday_is_valid
} else := iso_weekdays[time.weekday([submitted_at_ns, "UTC"])]

# METADATA
# scope: document
# description: True outside the business hours in data.keyturn.business_hours, or when the time is unknown.
default off_hours := true

off_hours := false if {
	weekday in data.keyturn.business_hours.weekdays
	hour_utc >= data.keyturn.business_hours.start_hour_utc
	hour_utc < data.keyturn.business_hours.end_hour_utc
}

# METADATA
# scope: document
# description: When the request arrived, for messages, e.g. "Saturday 03:00 UTC".
default submitted_when := "an unknown time"

submitted_when := sprintf("%s %02d:00 UTC", [weekday_names[weekday], hour_utc])

# METADATA
# description: |
#   The rows the impact preview counted (or EXPLAIN estimated) for a SQL-backed action;
#   undefined when there was no preview or it was unavailable.
previewed_rows := input.impact.rows if {
	is_object(input.impact)
	input.impact.status == "computed"
	is_number(input.impact.rows)
}
