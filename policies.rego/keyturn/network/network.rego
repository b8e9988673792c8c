# METADATA
# title: Network names
# description: Host names taken out of URLs and matched against allow-lists in policy data.
package keyturn.network

# METADATA
# description: |
#   The lower-cased host of an absolute URL (scheme://[userinfo@]host[:port]/...).
#   Userinfo is skipped so https://trusted@elsewhere/ yields elsewhere, not trusted.
host_of(url) := lower(parts[2]) if {
	[parts] := regex.find_all_string_submatch_n(`^([a-zA-Z][a-zA-Z0-9+.-]*)://(?:[^/?#@]*@)?([^/?#:@]+)`, url, 1)
}

# METADATA
# description: |
#   The port an absolute URL names after its host, as written ("" when it names none).
default port_of(_) := ""

port_of(url) := parts[1] if {
	[parts] := regex.find_all_string_submatch_n(`^[a-zA-Z][a-zA-Z0-9+.-]*://(?:[^/?#@]*@)?[^/?#:@]+:([^/?#]*)`, url, 1)
}

# METADATA
# description: The lower-cased scheme of an absolute URL, e.g. https.
scheme_of(url) := lower(parts[1]) if {
	[parts] := regex.find_all_string_submatch_n(`^([a-zA-Z][a-zA-Z0-9+.-]*)://`, url, 1)
}

# METADATA
# scope: document
# description: True when host is one of domains or a sub-domain of one.
default host_in_domains(_, _) := false

host_in_domains(host, domains) if host in domains

host_in_domains(host, domains) if {
	some domain in domains
	endswith(host, concat("", [".", domain]))
}
