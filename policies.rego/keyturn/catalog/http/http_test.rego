package keyturn.catalog.http_test

import data.keyturn.decision
import data.keyturn.fixtures_test as fixtures

call(url, method) := fixtures.action_request("http.request", url, "staging", {"method": method})

api := "https://api.example.internal/v1/x"

platform := [{"name": "platform", "min": 1}]

cases := {
	"get from an allow-listed host is allowed": {
		"request": call(api, "GET"),
		"outcome": "allowed",
		"rule": "http.read_from_an_allow_listed_host",
	},
	"lower-case head is a reading method": {
		"request": call("https://status.example.com/health", "head"),
		"outcome": "allowed",
		"rule": "http.read_from_an_allow_listed_host",
	},
	"post to an allow-listed host needs platform": {
		"request": call("https://hooks.example.internal/deploy", "POST"),
		"outcome": "needs_approval",
		"rule": "http.write_to_an_allow_listed_host",
		"groups": platform,
	},
	"delete on an allow-listed host needs platform": {
		"request": call(api, "DELETE"),
		"outcome": "needs_approval",
		"rule": "http.write_to_an_allow_listed_host",
		"groups": platform,
	},
	"an allow-listed host on its https port is the host itself": {
		"request": call("https://api.example.internal:443/v1/x", "GET"),
		"outcome": "allowed",
		"rule": "http.read_from_an_allow_listed_host",
	},
	"another port of an allow-listed host is not on the list": {
		"request": call("https://api.example.internal:8090/echo", "GET"),
		"outcome": "denied",
		"rule": "http.host_is_not_allow_listed",
		"reason": "http.request to \"api.example.internal:8090\": the host is not in the allow-list",
	},
	"get from an unknown host is denied": {
		"request": call("https://paste.example.net/raw", "GET"),
		"outcome": "denied",
		"rule": "http.host_is_not_allow_listed",
	},
	"userinfo cannot borrow an allow-listed name": {
		"request": call("https://api.example.internal@paste.example.net/raw", "GET"),
		"outcome": "denied",
		"rule": "http.host_is_not_allow_listed",
	},
	"plain http is denied": {
		"request": call("http://api.example.internal/v1/x", "GET"),
		"outcome": "denied",
		"rule": "http.scheme_is_not_https",
	},
	"a resource that is not a URL is denied": {
		"request": call("api.example.internal", "GET"),
		"outcome": "denied",
		"rule": "http.host_is_not_allow_listed",
	},
	"trace is denied": {
		"request": call(api, "TRACE"),
		"outcome": "denied",
		"rule": "http.method_is_not_supported",
	},
	"a missing method is denied": {
		"request": fixtures.action_request("http.request", api, "staging", {}),
		"outcome": "denied",
		"rule": "http.method_is_not_supported",
	},
}

test_http[name] if {
	some name, tc in cases
	fixtures.decision_matches(decision.decision, tc) with input as tc.request
}

test_http_masks_credentials_in_headers if {
	d := decision.decision with input as call(api, "GET")
	"parameters.headers.authorization" in d.mask
	"parameters.headers.cookie" in d.mask
}

test_a_port_the_list_names_with_its_host_is_allowed if {
	some v in data.keyturn.catalog.http.verdicts with input as call("https://hooks.example.internal:8443/x", "GET")
		with data.keyturn.http.allowed_hosts as ["hooks.example.internal:8443"]
	v.rule == "http.read_from_an_allow_listed_host"
}
