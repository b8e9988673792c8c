"""The fast path (pre-filter, batching, cache) never changes what masking produces.

The reference masker sends every string to Presidio with every recognizer, one call per
string, no cache. Generated payloads mix the corpus' seeded values, its decoys, digit soup
(where phone, card, SSN, IP and date rules meet) and arbitrary Unicode, nested in dicts and
lists, so that batches join values of every kind.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from detect_secrets.plugins.keyword import DENYLIST
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keyturn.masking import ParameterMasker, build_analyzer
from keyturn.masking.masker import _SEPARATOR, plain_form
from keyturn.masking.prefilter import Prefilter
from keyturn.masking.recognizers.secrets import _KEYWORD_HINT

CORPUS = json.loads((Path(__file__).parent / "corpus" / "masking_corpus.json").read_text())
SEEDED = sorted(v for values in CORPUS["sensitive"].values() for v in values)
DECOYS = CORPUS["decoys"]
KEYS = ["note", "value", "items", "contact", "context", "password", "max_tokens", "token_type",
        "odd key", "card_number", "destination", "x-api-key"]  # fmt: skip
EXTRA_FIELDS = ["parameters.destination", "context.note", "items", "nowhere.at.all"]

SETTINGS = settings(
    max_examples=120,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.fixture(scope="module")
def maskers() -> tuple[ParameterMasker, ParameterMasker]:
    analyzer = build_analyzer()
    return ParameterMasker(analyzer), ParameterMasker(analyzer, fast_path=False)


fragment = st.one_of(
    st.sampled_from(SEEDED),
    st.sampled_from(DECOYS),
    st.text(alphabet="0123456789 -.+()/:,", min_size=1, max_size=24),
    st.text(max_size=16),
)
joiner = st.sampled_from(["", " ", ", ", "\n", "-", "=", ": ", " see ", "\x00"])
leaf_text = st.one_of(
    fragment,
    st.builds(str.join, joiner, st.lists(fragment, min_size=2, max_size=4)),
)
scalar = st.one_of(leaf_text, leaf_text, st.integers(), st.booleans(), st.none(), st.floats(allow_nan=False))
json_value = st.recursive(
    scalar,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.sampled_from(KEYS), children, max_size=4),
    max_leaves=14,
)
payload = st.dictionaries(st.sampled_from(KEYS), json_value, min_size=1, max_size=5)
extra_fields = st.lists(st.sampled_from(EXTRA_FIELDS), max_size=2)


@SETTINGS
@given(parameters=payload, extra=extra_fields)
def test_fast_path_masks_exactly_like_always_presidio(maskers, parameters, extra):
    fast, reference = maskers
    assert fast.mask(parameters, extra) == reference.mask(parameters, extra)


@SETTINGS
@given(parameters=payload, extra=extra_fields)
def test_masking_twice_is_masking_once(maskers, parameters, extra):
    fast, _ = maskers
    once = fast.mask(parameters, extra).parameters
    assert fast.mask(once, extra).parameters == once


@SETTINGS
@given(text=leaf_text)
def test_a_string_without_candidates_has_no_findings(maskers, text):
    _, reference = maskers
    # the masker also reads a disguised string as a reader would (``plain_form``): both forms count
    if not Prefilter().candidates(text) and not Prefilter().candidates(plain_form(text)):
        assert reference.mask_text(text) == (text, [])


def test_values_next_to_each_other_in_a_batch_do_not_interact(maskers):
    fast, reference = maskers
    # Each value ends or starts where a pattern could continue into its neighbour.
    values = ["2024-05-01", "10:00 415 555", "0142", "4111", "1111 1111 1111", "1.2.3",
              "4.5", "AKIA", "IOSFODNN7EXAMPLE", "user@", "example.com", "-----BEGIN RSA",
              "PRIVATE KEY-----\nMIIB", "password", "=hunter2", "+1 415 555 0142"]  # fmt: skip
    parameters = {"values": values, "twice": values[::-1]}
    assert fast.mask(parameters) == reference.mask(parameters)


def test_a_phone_number_next_to_a_card_is_masked_in_one_pass(maskers):
    fast, reference = maskers
    parameters = {"note": "call +1 415 555 0142 4111 1111 1111 1111"}
    masked = fast.mask(parameters)
    assert masked == reference.mask(parameters)
    assert masked.parameters == {"note": "call <PHONE_NUMBER> ****1111"}


def test_the_batch_separator_is_wider_than_any_gap_a_pattern_bridges():
    assert len(_SEPARATOR) > 4 and not re.search(r"\w", _SEPARATOR)


def test_every_detect_secrets_keyword_contains_a_hint_stem():
    stems = re.compile(_KEYWORD_HINT)
    for keyword in DENYLIST:
        for spelling in {keyword.replace("_?", "_"), keyword.replace("_?", "")}:
            assert stems.search(spelling), keyword


def test_the_clean_string_memo_and_cache_agree_with_a_fresh_masker(maskers):
    fast, reference = maskers
    parameters = {"a": SEEDED[:10], "b": DECOYS[:10]}
    first = fast.mask(parameters)
    assert fast.mask(parameters) == first == reference.mask(parameters)


def test_a_request_of_many_numbers_is_read_for_non_phone_numbers_a_bounded_number_of_times(monkeypatch):
    """Each value's results are judged apart, but on the text that joins a batch of them: the
    joined text was read for dates, addresses and card runs once per value, so a request of
    2,000 distinct phone numbers cost 26 s of masking, growing with the square of the count."""
    from keyturn.masking.recognizers import analyzer

    read: list[int] = []
    real = analyzer.not_phone_spans
    monkeypatch.setattr(analyzer, "not_phone_spans", lambda text: read.append(len(text)) or real(text))
    values = [f"+1 415 555 {number:04d}" for number in range(600)]

    masked = ParameterMasker(build_analyzer()).mask({"numbers": values})

    assert masked.parameters == {"numbers": ["<PHONE_NUMBER>"] * 600}
    assert read, "the phone rule was never asked"
    assert sum(read) <= 2 * len(_SEPARATOR.join(values)), f"{sum(read)} characters read for {len(values)} numbers"


spans = st.lists(st.tuples(st.integers(0, 60), st.integers(1, 12)).map(lambda s: (s[0], s[0] + s[1])), max_size=12)
probe = st.tuples(st.integers(0, 70), st.integers(1, 12)).map(lambda s: (s[0], s[0] + s[1]))


@settings(max_examples=400, deadline=None, database=None)
@given(found=spans, asked=probe)
def test_span_lookups_answer_as_a_walk_over_every_span(found, asked):
    from keyturn.masking.recognizers.phone import Spans

    start, end = asked
    index = Spans(found)
    assert index.overlaps(start, end) == any(a < end and start < b for a, b in found)
    assert index.contains(start, end) == any(a <= start and end <= b for a, b in found)
