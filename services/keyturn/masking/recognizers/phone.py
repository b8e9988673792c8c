"""The phone rule: which of Presidio's phone numbers Keyturn keeps.

python-phonenumbers accepts 4- to 8-digit strings such as ``1640`` or the ``16847292`` of
``ORD-16847292`` as valid German numbers, and in action parameters those are counts and ids.
So a phone number is kept only if it contains :data:`PHONE_DIGIT_RUN`, seven digits grouped
the way people write phone numbers, not overlapping a number that cannot be one (a date, a
Unix time, an IPv4 address, an SSN, a card-length digit run; see :func:`not_phone_spans`).
:func:`keyturn.masking.recognizers.analyzer.kept_results` applies the rule to results, and
the pre-filter uses the same functions to skip Presidio when no phone core is present.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from itertools import accumulate

import regex

#: The core every kept phone number contains: seven digits in groups separated by at most
#: four characters that are neither letters nor digits, the first group starting a word
#: and not following a hyphenated prefix (``ORD-16847292`` is an order id).
PHONE_DIGIT_RUN = regex.compile(r"(?=\d)(?<!\w)(?<![^\W\d_]-)\d(?:\W{0,4}\d){6}")

_DAY = r"(?:0?[1-9]|[12]\d|3[01])"
_MONTH = r"(?:0?[1-9]|1[0-2])"
_YEAR = r"(?:19|20)\d\d"
_TIME = r"(?:[T ](?:[01]?\d|2[0-3]):[0-5]\d(?::[0-5]\d(?:[.,]\d+)?)?(?:Z|[+-]\d\d:?\d\d)?)?"

#: Numbers that are no phone number, so a core overlapping one does not count: dates with
#: an optional time (``2024-05-01 10:00``, ``05.10.2024``, ``10/05/2024``), Unix times in
#: seconds or milliseconds (2017-2033, unseparated), dotted quads (IPv4), SSN-shaped
#: ``ddd-dd-dddd`` and UUIDs (an action id such as ``12345678-ba24-…`` in a download path);
#: see also :func:`not_phone_spans` for card-length runs.
# Each alternative but the UUID starts with a digit; the leading (?=\d) lets the engine skip to digits.
_NOT_PHONE = regex.compile(
    r"(?<![\w-])[0-9a-fA-F]{8}(?:-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}(?![\w-])"
    r"|(?=\d)(?:"
    rf"(?<!\d){_YEAR}(?P<s1>[-/.]){_MONTH}(?P=s1){_DAY}{_TIME}(?!\d)"
    rf"|(?<!\d){_DAY}(?P<s2>[-/.]){_DAY}(?P=s2){_YEAR}{_TIME}(?!\d)"
    r"|(?<![\d.+])1[5-9]\d{8}(?:\d{3})?(?![\d.])"
    r"|(?<![\d.])\d{1,3}(?:\.\d{1,3}){3}(?![\d.])"
    r"|(?<![\d-])\d{3}-\d{2}-\d{4}(?![\d-])"
    r")"
)
#: A maximal run of digit groups joined by single separators.
_DIGIT_RUN = regex.compile(r"\d+(?:[-. ]\d+)*")
_GROUP_SEPARATOR = regex.compile(r"[-. ]")
_MAX_PHONE_DIGITS = 15


class Spans:
    """Spans of a text, asked whether any overlaps or contains a given one in O(log n).

    Masking asks this for every result in a text that joins many values: asked by walking
    every span, 1,000 distinct phone numbers in one request took 7 s and 2,000 took 26 s.
    Sorted by start with the running maximum of their ends, the spans starting before a point
    are a prefix, and one of them reaches past another point exactly when that prefix's
    largest end does."""

    def __init__(self, spans: Iterable[tuple[int, int]]) -> None:
        ordered = sorted(spans)
        self._starts = [start for start, _ in ordered]
        self._reach = list(accumulate((end for _, end in ordered), max))

    def _furthest_end(self, starting_before: int) -> int:
        count = bisect.bisect_left(self._starts, starting_before)
        return self._reach[count - 1] if count else -1

    def overlaps(self, start: int, end: int) -> bool:
        """Whether a span shares a character with ``[start, end)``."""
        return self._furthest_end(end) > start

    def contains(self, start: int, end: int) -> bool:
        """Whether a span holds the whole of ``[start, end)``."""
        return self._furthest_end(start + 1) >= end


def not_phone_spans(text: str) -> Spans:
    """Spans of ``text`` holding numbers that cannot be phone numbers.

    The shapes of :data:`_NOT_PHONE`, and card-length runs: a maximal run of digit groups
    of four or more digits each, longer than the 15 digits E.164 allows a phone number
    (``4111 1111 1111 1111``; a phone number followed by a card is one run with short
    groups, so neither is excluded and Presidio sorts them out).
    """
    spans = [match.span() for match in _NOT_PHONE.finditer(text)]
    for match in _DIGIT_RUN.finditer(text):
        groups = _GROUP_SEPARATOR.split(match.group())
        if all(len(group) >= 4 for group in groups) and sum(map(len, groups)) > _MAX_PHONE_DIGITS:
            spans.append(match.span())
    return Spans(spans)


def has_phone_core(text: str, start: int, end: int, not_phone: Spans) -> bool:
    """Whether ``text[start:end]`` holds a phone core clear of every ``not_phone`` span.

    Lookarounds see the whole ``text``, so the answer for a span is the same whether it
    is analysed alone or inside a longer text, as long as its neighbours are separated by
    at least five characters that are neither letters nor digits.
    """
    for core in PHONE_DIGIT_RUN.finditer(text, start, overlapped=True):
        if core.start() >= end:
            return False
        if core.end() <= end and not not_phone.overlaps(core.start(), core.end()):
            return True
    return False
