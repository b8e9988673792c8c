package keyturn.network_test

import data.keyturn.network

host_cases := {
	"https url with path": {"url": "https://api.example.internal/v1/x", "host": "api.example.internal"},
	"port is dropped": {"url": "https://api.example.internal:8443/v1", "host": "api.example.internal"},
	"host is lower-cased": {"url": "HTTPS://API.Example.Internal/", "host": "api.example.internal"},
	"userinfo is skipped": {"url": "https://api.example.internal@evil.example.net/x", "host": "evil.example.net"},
	"database url": {"url": "postgres://prod/analytics/customers", "host": "prod"},
	"object store url": {"url": "blob://exports.example.internal/daily.csv", "host": "exports.example.internal"},
}

test_host_of[name] if {
	some name, tc in host_cases
	network.host_of(tc.url) == tc.host
}

test_host_of_is_undefined_for_what_is_not_a_url[url] if {
	some url in ["", "api.example.internal/v1", "/relative/path", "https:///no-host"]
	not network.host_of(url)
}

test_scheme_of if {
	network.scheme_of("HTTPS://api.example.internal/") == "https"
	network.scheme_of("sftp://files.example.net/in") == "sftp"
	not network.scheme_of("api.example.internal")
}

domain_cases := {
	"exact domain": {"host": "example.internal", "inside": true},
	"sub-domain": {"host": "exports.example.internal", "inside": true},
	"look-alike suffix": {"host": "evilexample.internal", "inside": false},
	"other domain": {"host": "files.example.net", "inside": false},
}

test_host_in_domains[name] if {
	some name, tc in domain_cases
	domains := ["example.internal", "corp.example.com"]
	tc.inside == network.host_in_domains(tc.host, domains)
}
