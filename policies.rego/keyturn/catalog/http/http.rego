# METADATA
# title: Outbound HTTP
# description: |
#   http.request calls the URL in resource with parameters.method. Only https hosts in
#   data.keyturn.http.allowed_hosts are reachable: reading methods are allowed, writing
#   methods need platform, anything else is denied.
# schemas:
#   - input: schema.decision.decision_input
package keyturn.catalog.http

import data.keyturn.network
import data.keyturn.request
import data.keyturn.verdict

reading_methods := {"GET", "HEAD", "OPTIONS"}

writing_methods := {"POST", "PUT", "PATCH", "DELETE"}

# METADATA
# description: True for http.request.
covers_action if request.action == "http.request"

# METADATA
# description: Fields of http.request that carry secrets.
masked_fields contains field if {
	covers_action
	some field in ["parameters.headers.authorization", "parameters.headers.cookie", "parameters.body.password"]
}

default method := ""

method := upper(request.parameters.method) if is_string(request.parameters.method)

default host := ""

host := network.host_of(input.resource)

default scheme := ""

scheme := network.scheme_of(input.resource)

default port := ""

port := network.port_of(input.resource)

# A host on the list is its https origin (port 443); another port of it is allowed only where the
# list names host:port, so an allow-listed name does not open every service the machine runs.
host_is_allow_listed if {
	host in data.keyturn.http.allowed_hosts
	port in {"", "443"}
}

host_is_allow_listed if {
	port != ""
	concat(":", [host, port]) in data.keyturn.http.allowed_hosts
}

default origin := ""

origin := host if port in {"", "443"}

origin := concat(":", [host, port]) if not port in {"", "443"}

reachable if {
	covers_action
	scheme == "https"
	host_is_allow_listed
}

# METADATA
# scope: document
# description: What this family says about the action.
verdicts contains verdict.deny("http.scheme_is_not_https", msg) if {
	covers_action
	scheme != "https"
	msg := sprintf("http.request must use https, not %q", [scheme])
}

verdicts contains verdict.deny("http.host_is_not_allow_listed", msg) if {
	covers_action
	not host_is_allow_listed
	msg := sprintf("http.request to %q: the host is not in the allow-list", [origin])
}

verdicts contains verdict.deny("http.method_is_not_supported", msg) if {
	covers_action
	not method in reading_methods
	not method in writing_methods
	msg := sprintf("http.request with method %q: use one of GET, HEAD, OPTIONS, POST, PUT, PATCH, DELETE", [method])
}

verdicts contains verdict.allow("http.read_from_an_allow_listed_host", msg) if {
	reachable
	method in reading_methods
	msg := sprintf("http.request %s to allow-listed host %s", [method, host])
}

verdicts contains verdict.approve_all("http.write_to_an_allow_listed_host", msg, [verdict.group("platform", 1)]) if {
	reachable
	method in writing_methods
	msg := sprintf("http.request %s to %s changes something: platform must approve", [method, host])
}
