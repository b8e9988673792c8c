"""The report's top denial reasons count the rules that denied, each with its own reason: a decision
names its denials ({rule, reason}); ``rules`` also lists rules a denial overrode and ``reasons`` is
linked to none. Decisions recorded before denials were named are counted as inferred."""

from __future__ import annotations

import io
import json

import fastavro

from keyturn.audit.report.model import build_report, denied_by
from keyturn.audit.report.render import render_html
from keyturn.bus.codec import MAGIC, SCHEMA_DIR, registry, schema_fingerprint
from keyturn.core.audit.checkpoint import CheckpointVerifier
from keyturn.core.canonical import to_millis
from keyturn.core.events import ActionDecided, Denial
from keyturn.policy.decisions import decided_from_answer, policy_input, provenance_for
from tests.unit.audit_history import SIGNER, History, at
from tests.unit.test_policy_input import NOW, request

VERIFIER = CheckpointVerifier.from_keys([SIGNER.public_key])
PERIOD = (to_millis(at(-60)), to_millis(at(7200)))
FORBIDDEN = "deletion.forbidden_deletion"
APPROVAL = "deletion.needs_two_approvers"  # fired too; the denial overrode it
WINDOW = "deletion.outside_change_window"


def report(*decisions: dict) -> tuple[dict, str]:
    history = History()
    for n, decision in enumerate(decisions):
        asked = history.request(f"a-{n}", "secrets.delete", n)
        history.decide(asked, "denied", n + 0.5, **decision)
    history.checkpoint(100)
    figures = build_report(history.records, VERIFIER, *PERIOD, generated_at=0)
    return {line.rule: line for line in figures.denial_reasons}, render_html(figures)


def test_only_the_rules_that_denied_are_counted_each_with_its_own_reason():
    lines, page = report(
        {
            "rules": (APPROVAL, FORBIDDEN, WINDOW),
            "reasons": ("a: never through Keyturn", "b: outside the change window"),
            "denials": (
                Denial(FORBIDDEN, "a: never through Keyturn"),
                Denial(WINDOW, "b: outside the change window"),
            ),
        },
        {
            "rules": (APPROVAL, FORBIDDEN),
            "reasons": ("a: never through Keyturn",),
            "denials": (Denial(FORBIDDEN, "a: never through Keyturn"),),
        },
    )
    assert set(lines) == {FORBIDDEN, WINDOW}  # the approval rule denied nothing
    assert (lines[FORBIDDEN].count, lines[FORBIDDEN].example, lines[FORBIDDEN].inferred) == (
        2,
        "a: never through Keyturn",
        0,
    )
    assert (lines[WINDOW].count, lines[WINDOW].example) == (1, "b: outside the change window")
    assert "inferred" not in page


def test_a_decision_recorded_before_denials_were_named_is_counted_as_inferred_without_a_reason():
    lines, page = report(
        {"rules": (APPROVAL, FORBIDDEN), "reasons": ("a: never through Keyturn",)},  # no denials: recorded before
        {"rules": (FORBIDDEN,), "reasons": ("a: never through Keyturn",)},  # a sole rule is the one that denied
    )
    assert (lines[FORBIDDEN].count, lines[FORBIDDEN].inferred) == (2, 1)
    assert lines[FORBIDDEN].example == "a: never through Keyturn"  # from the sole-rule decision only
    assert (lines[APPROVAL].count, lines[APPROVAL].inferred, lines[APPROVAL].example) == (1, 1, "")
    assert 'data-inferred="1"' in page and "rules a denial overrode" in page


def test_a_payload_without_the_field_reads_as_before_and_keyturn_s_own_denial_names_no_rule():
    old = {"outcome": "denied", "rules": [APPROVAL, FORBIDDEN], "reasons": ["x"]}
    assert denied_by(old) == ((APPROVAL, "", True), (FORBIDDEN, "", True))
    own = {"outcome": "denied", "rules": [], "reasons": ["policy_unavailable: OPA did not answer"], "denials": []}
    assert denied_by(own) == (("(no rule named)", "policy_unavailable: OPA did not answer", False),)


def test_the_policy_s_denials_become_the_decision_s():
    answer = {
        "decision": {
            "outcome": "denied",
            "reasons": ["a"],
            "rules": [APPROVAL, FORBIDDEN],
            "denials": [{"rule": FORBIDDEN, "reason": "a"}],
        }
    }
    document = policy_input(request())
    decided = decided_from_answer(request(), answer, provenance_for(document, "rev", None, NOW), NOW)
    assert decided.denials == (Denial(FORBIDDEN, "a"),)
    assert registry().decode_event(registry().encode_event(decided)) == decided
    without = {"decision": {k: v for k, v in answer["decision"].items() if k != "denials"}}
    assert decided_from_answer(request(), without, provenance_for(document, "rev", None, NOW), NOW).denials == ()


def test_a_decision_written_before_the_field_decodes_with_no_denials():
    decided = decided_from_answer(
        request(),
        {"decision": {"outcome": "denied", "reasons": ["a"], "rules": [FORBIDDEN], "denials": []}},
        provenance_for(policy_input(request()), "rev", None, NOW),
        NOW,
    )
    _, today = registry().decode(registry().encode_event(decided))
    frozen = [json.loads(path.read_text()) for path in (SCHEMA_DIR / "history").glob("keyturn.ActionDecided.*.avsc")]
    older = [schema for schema in frozen if {"impact", "denials"} & {f["name"] for f in schema["fields"]} == {"impact"}]
    assert older
    for schema in older:
        buffer = io.BytesIO()
        buffer.write(MAGIC + schema_fingerprint(schema))
        fastavro.schemaless_writer(
            buffer, fastavro.parse_schema(schema), {k: v for k, v in today.items() if k != "denials"}
        )
        event = registry().decode_event(buffer.getvalue())
        assert isinstance(event, ActionDecided) and event.denials == () and event.rules == (FORBIDDEN,)
