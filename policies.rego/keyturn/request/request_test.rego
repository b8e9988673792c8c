package keyturn.request_test

import data.keyturn.fixtures_test as fixtures
import data.keyturn.request

test_a_well_formed_request_has_no_problems if {
	request.well_formed with input as fixtures.base_request
	count(request.problems) == 0 with input as fixtures.base_request
}

test_a_request_without_context_or_chain_is_well_formed if {
	minimal := json.remove(fixtures.base_request, ["context", "requester/chain"])
	request.well_formed with input as minimal
}

malformed_cases := {
	"no input object": {"input": "read.table", "problem": "input must be a JSON object"},
	"action id is not a uuid": {
		"input": object.union(fixtures.base_request, {"action_id": "42"}),
		"problem": "action_id must be a UUID string",
	},
	"action is not dotted": {
		"input": object.union(fixtures.base_request, {"action": "DROP"}),
		"problem": "action must be a dotted action type such as db.export",
	},
	"resource is empty": {
		"input": object.union(fixtures.base_request, {"resource": ""}),
		"problem": "resource must be a non-empty string",
	},
	"parameters is a list": {
		"input": object.union(fixtures.base_request, {"parameters": ["a"]}),
		"problem": "parameters must be a JSON object",
	},
	"reason is missing": {
		"input": json.remove(fixtures.base_request, ["reason"]),
		"problem": "reason must be a string",
	},
	"requester id is missing": {
		"input": json.remove(fixtures.base_request, ["requester/id"]),
		"problem": "requester.id must be a non-empty string",
	},
	"requester kind is unknown": {
		"input": object.union(fixtures.base_request, {"requester": {"kind": "robot"}}),
		"problem": "requester.kind must be one of agent, human, service",
	},
	"chain holds a number": {
		"input": object.union(fixtures.base_request, {"requester": {"chain": ["human:alice", 7]}}),
		"problem": "requester.chain must be an array of principal ids",
	},
	"chain is a string": {
		"input": object.union(fixtures.base_request, {"requester": {"chain": "human:alice"}}),
		"problem": "requester.chain must be an array of principal ids",
	},
	"environment is unknown word": {
		"input": object.union(fixtures.base_request, {"environment": "prod"}),
		"problem": "environment must be one of production, staging, development, unknown",
	},
	"submitted_at is not rfc 3339": {
		"input": object.union(fixtures.base_request, {"submitted_at": "yesterday"}),
		"problem": "submitted_at must be an RFC 3339 timestamp",
	},
	"context is a string": {
		"input": object.union(fixtures.base_request, {"context": "tuesday"}),
		"problem": "context must be an object with hour_utc and weekday",
	},
	"hour is out of range": {
		"input": object.union(fixtures.base_request, {"context": {"hour_utc": 24}}),
		"problem": "context.hour_utc must be an integer from 0 to 23",
	},
	"weekday is a fraction": {
		"input": object.union(fixtures.base_request, {"context": {"weekday": 2.5}}),
		"problem": "context.weekday must be an integer from 1 (Monday) to 7 (Sunday)",
	},
}

test_malformed_input_is_named[name] if {
	some name, tc in malformed_cases
	tc.problem in request.problems with input as tc.input
	not request.well_formed with input as tc.input
}

test_missing_input_is_named if {
	"input must be a JSON object" in request.problems
	not request.well_formed
}

environment_cases := {
	"service says staging, resource says nothing": {
		"resource": "https://api.example.internal/v1/x",
		"stated": "staging",
		"want": "staging",
	},
	"resource host says production": {
		"resource": "postgres://prod/analytics/customers",
		"stated": "unknown",
		"want": "production",
	},
	"stricter of the two wins": {
		"resource": "https://api.prod.example.internal/v1",
		"stated": "staging",
		"want": "production",
	},
	"resource says development": {
		"resource": "postgres://dev/scratch",
		"stated": "unknown",
		"want": "development",
	},
	"resource sub-domain says staging": {
		"resource": "https://billing.stg.example.internal/",
		"stated": "development",
		"want": "staging",
	},
	"upper-case resource says production": {
		"resource": "POSTGRES://PROD/analytics",
		"stated": "staging",
		"want": "production",
	},
	"nobody knows": {"resource": "https://api.example.internal/v1/x", "stated": "unknown", "want": "unknown"},
	"a look-alike word is not an environment": {
		"resource": "https://products.example.internal/",
		"stated": "unknown",
		"want": "unknown",
	},
}

test_environment[name] if {
	some name, tc in environment_cases
	req := fixtures.action_request("read.table", tc.resource, tc.stated, {})
	request.environment == tc.want with input as req
}

test_unknown_environment_counts_as_production if {
	req := fixtures.action_request("read.table", "https://api.example.internal/v1/x", "unknown", {})
	request.in_production with input as req
}

test_staging_is_not_production if {
	not request.in_production with input as fixtures.base_request
}

test_agent_acting_for_a_human_is_human_backed if {
	request.human_backed with input as fixtures.base_request
	not request.unattended_agent with input as fixtures.base_request
}

test_human_requester_is_human_backed if {
	request.human_backed with input as fixtures.by_human(fixtures.base_request)
}

test_agent_acting_for_nobody_is_unattended if {
	request.unattended_agent with input as fixtures.unattended(fixtures.base_request)
	not request.human_backed with input as fixtures.unattended(fixtures.base_request)
}

test_agent_without_a_chain_acts_for_nobody if {
	req := json.remove(fixtures.base_request, ["requester/chain"])
	request.chain == [] with input as req
	request.unattended_agent with input as req
}

test_agent_acting_for_a_service_is_not_human_backed if {
	req := object.union(fixtures.base_request, {"requester": {"chain": ["service:scheduler"]}})
	not request.human_backed with input as req
	not request.unattended_agent with input as req
}

test_absent_parameters_read_as_empty if {
	request.parameters == {} with input as json.remove(fixtures.base_request, ["parameters"])
	request.action == "" with input as json.remove(fixtures.base_request, ["action"])
}

business_hours_cases := {
	"tuesday morning": {"context": {"hour_utc": 10, "weekday": 2}, "off": false},
	"tuesday before eight": {"context": {"hour_utc": 7, "weekday": 2}, "off": true},
	"tuesday at six pm": {"context": {"hour_utc": 18, "weekday": 2}, "off": true},
	"saturday noon": {"context": {"hour_utc": 12, "weekday": 6}, "off": true},
}

test_off_hours[name] if {
	some name, tc in business_hours_cases
	req := object.union(fixtures.base_request, {"context": tc.context})
	request.off_hours == tc.off with input as req
}

test_time_comes_from_submitted_at_without_context if {
	# 2025-03-08 is a Saturday.
	req := object.union(json.remove(fixtures.base_request, ["context"]), {"submitted_at": "2025-03-08T21:30:00Z"})
	request.hour_utc == 21 with input as req
	request.weekday == 6 with input as req
	request.off_hours with input as req
	request.submitted_when == "Saturday 21:00 UTC" with input as req
}

test_unknown_time_counts_as_off_hours if {
	req := object.union(json.remove(fixtures.base_request, ["context"]), {"submitted_at": "soon"})
	request.off_hours with input as req
	request.submitted_when == "an unknown time" with input as req
}
