# METADATA
# title: Data export
# description: |
#   db.export copies rows to parameters.destination (a URL). Inside the company (a host in
#   data.keyturn.export.internal_domains) small exports are allowed and large ones need
#   data-owners; outside the company security and data-owners must both approve, and a
#   huge export (more than data.keyturn.limits.export_huge_rows) is denied.
# schemas:
#   - input: schema.decision.decision_input
package keyturn.catalog.export

import data.keyturn.network
import data.keyturn.request
import data.keyturn.verdict

# METADATA
# description: True for db.export.
covers_action if request.action == "db.export"

# METADATA
# description: Fields of db.export that carry secrets.
masked_fields contains "parameters.destination_credentials" if covers_action

# METADATA
# description: Columns the export executor writes masked in the file (data.keyturn.export.masked_columns).
masked_fields contains sprintf("columns.%s", [column]) if {
	covers_action
	some column in data.keyturn.export.masked_columns
}

declared_rows := request.parameters.row_count if {
	is_number(request.parameters.row_count)
	request.parameters.row_count >= 0
}

# The larger of what the requester declared and what the impact preview counted.
row_count := max({declared_rows, request.previewed_rows}) if request.previewed_rows

row_count := declared_rows if not request.previewed_rows

# The file waits for the requester to download it from Keyturn (keyturn://requester): where it
# goes after that, Keyturn cannot tell, so it is judged as leaving the company. Any other
# destination is where the executor delivers the file, and nowhere else.
to_the_requester if request.parameters.destination == "keyturn://requester"

destination_host := network.host_of(request.parameters.destination) if not to_the_requester

destination_host := "the requester (a download)" if to_the_requester

destination_is_inside_the_company if {
	network.host_in_domains(destination_host, data.keyturn.export.internal_domains)
}

details_are_missing if {
	covers_action
	not declared_rows
}

details_are_missing if {
	covers_action
	not destination_host
}

# Only judged once it is clear how much goes where.
details_are_given if {
	covers_action
	not details_are_missing
}

leaves_the_company if {
	details_are_given
	not destination_is_inside_the_company
}

stays_inside_the_company if {
	details_are_given
	destination_is_inside_the_company
}

volume_is_huge if row_count > data.keyturn.limits.export_huge_rows

volume_is_large if row_count > data.keyturn.limits.export_approval_rows

small_internal_export if {
	stays_inside_the_company
	not volume_is_large
}

unattended_export_in_production if {
	small_internal_export
	request.unattended_agent
	request.in_production
}

# METADATA
# scope: document
# description: What this family says about the action.
verdicts contains verdict.deny("export.export_details_are_missing", msg) if {
	details_are_missing
	msg := "db.export needs parameters.row_count (a number of rows) and parameters.destination (a URL)"
}

verdicts contains verdict.deny("export.huge_export_leaves_the_company", msg) if {
	leaves_the_company
	volume_is_huge
	msg := sprintf(
		"db.export of %s rows to %s, outside the company, exceeds %d rows",
		[format_int(row_count, 10), destination_host, data.keyturn.limits.export_huge_rows],
	)
}

verdicts contains verdict.approve_all("export.export_leaves_the_company", msg, groups) if {
	leaves_the_company
	msg := sprintf(
		"db.export of %s rows to %s leaves the company: security and data-owners must both approve",
		[format_int(row_count, 10), destination_host],
	)
	groups := [verdict.group("security", 1), verdict.group("data-owners", 1)]
}

verdicts contains verdict.allow("export.small_internal_export", msg) if {
	small_internal_export
	not unattended_export_in_production
	msg := sprintf("db.export of %s rows stays inside the company (%s)", [format_int(row_count, 10), destination_host])
}

verdicts contains verdict.approve_all("export.unattended_export_in_production", msg, groups) if {
	unattended_export_in_production
	msg := "db.export from production by an agent acting for nobody: data-owners must approve"
	groups := [verdict.group("data-owners", 1)]
}

verdicts contains verdict.approve_all("export.large_internal_export", msg, [verdict.group("data-owners", 1)]) if {
	stays_inside_the_company
	volume_is_large
	msg := sprintf(
		"db.export of %s rows, more than %d: data-owners must approve",
		[format_int(row_count, 10), data.keyturn.limits.export_approval_rows],
	)
}

verdicts contains verdict.approve_all("export.huge_internal_export_from_production", msg, groups) if {
	stays_inside_the_company
	volume_is_huge
	request.in_production
	msg := sprintf(
		"db.export of %s rows from production, more than %d: security must approve as well",
		[format_int(row_count, 10), data.keyturn.limits.export_huge_rows],
	)
	groups := [verdict.group("data-owners", 1), verdict.group("security", 1)]
}
