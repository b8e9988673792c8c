"""Records deleted from the front of the audit topic (kept forever) fail the verification, also when
none is left; an empty chain is said to be empty, never "intact from sequence 0 to None"."""

from __future__ import annotations

from keyturn.audit.report.model import build_report
from keyturn.audit.report.render import render_html
from keyturn.core.audit.checkpoint import CheckpointVerifier
from keyturn.core.audit.verify import DeletedMessages, ProblemKind, verify
from keyturn.core.canonical import to_millis
from tests.unit.audit_history import SIGNER, at, story

VERIFIER = CheckpointVerifier.from_keys([SIGNER.public_key])
PERIOD = (to_millis(at(-60)), to_millis(at(7200)))


def test_a_topic_whose_records_were_all_deleted_is_not_intact_and_says_which_offsets():
    report = verify([DeletedMessages("kt.audit", 0, 68)], VERIFIER)
    assert not report.ok
    [problem] = report.problems
    assert problem.kind is ProblemKind.DELETED and problem.index == 0
    assert "offsets 0 to 67 of partition 0 of kt.audit" in problem.message


def test_records_deleted_before_the_first_readable_one_are_named_with_the_sequences_missing():
    records = story().records
    report = verify([DeletedMessages("kt.audit", 0, 5), *records[5:]], VERIFIER)
    kinds = [(p.kind, p.sequence) for p in report.problems]
    assert kinds == [(ProblemKind.DELETED, None), (ProblemKind.DROPPED, 0)]
    assert report.records_checked == len(records) - 5
    assert report.unverified_tail == 0  # the story ends with a checkpoint


def test_the_report_of_a_wiped_topic_says_it_is_not_intact():
    figures = build_report([DeletedMessages("kt.audit", 0, 68)], VERIFIER, *PERIOD, generated_at=0)
    assert figures.integrity is not None and not figures.integrity.intact
    page = render_html(figures)
    assert 'data-intact="false"' in page and "offsets 0 to 67" in page


def test_an_empty_chain_is_reported_as_empty_not_as_intact_up_to_none():
    figures = build_report([], VERIFIER, *PERIOD, generated_at=0)
    page = render_html(figures)
    assert 'data-intact="empty"' in page and "holds no records" in page
    assert "None" not in page
