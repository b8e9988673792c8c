# METADATA
# title: Keyturn batch decision
# description: |
#   The entry point the policy service queries for a batch of requests
#   (POST /v1/data/keyturn/batch with {"input": {"batch": [...]}}, reading result.decisions):
#   data.keyturn.decision.decision for every item of input.batch, in the same order. The
#   policies read nothing but their input and data, so an item is decided exactly as it would
#   be alone; one query instead of one per request. The package holds nothing else.
package keyturn.batch

import data.keyturn.decision

# METADATA
# scope: document
# title: Decisions
# description: |
#   One decision per item of input.batch, in order; [] when input.batch is absent. An item
#   that is not a well-formed request gets its own denial, as it would alone.
# entrypoint: true
decisions := [d |
	some item in input.batch
	d := decision.decision with input as item
]
