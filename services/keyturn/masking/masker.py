"""Masking of action parameters: what approvers, topics, logs and audit get to see.

Rules, in the order they apply to each value of the parameters:

1. A field named like a credential (see :mod:`keyturn.masking.field_names`) or listed in
   the policy's extra fields is masked whole, whatever its type: strings, numbers, lists and
   objects become one placeholder. ``null`` stays ``null``; it hides nothing.
2. Strings are scanned (see :mod:`keyturn.masking.recognizers`) and each finding is replaced
   in place by a type-revealing placeholder: ``<EMAIL_ADDRESS>``, ``<AWS_ACCESS_KEY>``, …;
   a card number keeps its last four digits (``****1234``). Overlapping findings merge into
   one placeholder, named after the most specific type (order of :data:`PLACEHOLDER_ORDER`).
3. A string that is, as a whole, a UUID or an ISO-8601 date or timestamp is an identifier
   or a time and is kept without scanning.
4. Numbers, booleans and ``null`` are kept, but for a whole number of ten digits or more that
   rule 2 would mask if it were sent as text (``4111111111111111``, ``14155550199``; see
   :data:`_MIN_MASKABLE` for why not fewer): it becomes one placeholder, a
   string, like its text would (``****1111``, ``<PHONE_NUMBER>``). Dict keys are never masked,
   only values (keys are the shape approvers need to read, and name rules already look at
   them).
5. A string written in a disguise a reader or a program undoes at once (percent-encoding,
   once or more; HTML character references; ``\\u0040``-style escapes; full-width or other
   compatibility forms; characters that show nothing, such as a zero-width space or a soft
   hyphen inside the value; base64 of printable text: ``alice%40example.com``,
   ``alice%2540…``, ``alice&#64;…``, ``alice＠example.com``, ``NDExMSAxMTEx…``) is scanned
   as it reads; when something is found there, the masked copy shows that plain form, masked.

Masking is idempotent: each string is masked to a fixpoint (re-scanned while scans find
something, see :data:`MAX_ROUNDS`) and placeholders contain nothing any rule detects, so
masking a masked payload returns it unchanged. Findings carry the JSON path and the type,
never the value.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import html
import os
import re
import threading
import unicodedata
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple
from urllib.parse import unquote

import regex
from presidio_analyzer import AnalyzerEngine

from keyturn.core.parameters import is_secret_reference
from keyturn.core.text import PLACEHOLDER
from keyturn.masking.field_names import FieldPathTrie, sensitive_field_entity
from keyturn.masking.prefilter import Prefilter
from keyturn.masking.recognizers import (
    LANGUAGE,
    PHONE_DIGIT_RUN,
    SCORE_THRESHOLD,
    TextSpans,
    build_analyzer,
    kept_results,
)

#: When findings overlap, the earliest type in this order names the merged placeholder.
PLACEHOLDER_ORDER = (
    "PRIVATE_KEY",
    "JWT",
    "AWS_ACCESS_KEY",
    "AWS_SECRET_KEY",
    "GITHUB_TOKEN",
    "SLACK_TOKEN",
    "GCP_API_KEY",
    "AZURE_KEY",
    "SECRET",
    "CREDIT_CARD",
    "IBAN_CODE",
    "US_SSN",
    "EMAIL_ADDRESS",
    "PHONE_NUMBER",
    "IP_ADDRESS",
)
_RANK = {entity: rank for rank, entity in enumerate(PLACEHOLDER_ORDER)}

#: Deepest nesting accepted; deeper input is refused rather than half masked.
MAX_DEPTH = 64

#: A masked string is scanned again until nothing new is found, at most this many times:
#: a detector may miss a value next to another one (a phone number followed by a card) and
#: find it once the neighbour is a placeholder. This is what makes masking idempotent.
MAX_ROUNDS = 4
#: Phone-number cores (``recognizers.PHONE_DIGIT_RUN``) one string may hold before its digit
#: groups are masked wholesale instead of checked one by one: python-phonenumbers costs about a
#: millisecond per candidate in each of its regions, so a crafted string of digit groups cost
#: seconds, while no parameter value carries dozens of phone numbers that approvers must read.
PHONE_CORES_CHECKED = 32
#: The same, over all the strings of one ``mask`` call (one submission's parameters, one result),
#: or of the calls sharing a :class:`PhoneCoreBudget` (one caller's submissions stored together):
#: past it, every further string's digit groups are masked wholesale. A list of 60,000 short phone
#: numbers, each string under the limit above, cost 54 CPU-s of masking for a body of 1 MB; at this
#: limit the checks cost about 2 CPU-s at most, and a thousand ids whose digits look like phone
#: numbers (a UUID's often do) are still shown as they are.
PHONE_CORES_CHECKED_PER_CALL = 1024
#: A run of digit groups (and the punctuation people write numbers with) holding a phone core.
_DIGIT_GROUPS = regex.compile(r"\+?\d(?:[\s\-.()/+]{0,4}\d)*")

_IDENTIFIER_OR_TIME = regex.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
    r"|[0-9]{4}-[0-9]{2}-[0-9]{2}"
    r"(?:[T ][0-9]{2}:[0-9]{2}(?::[0-9]{2}(?:\.[0-9]{1,9})?)?(?:Z|[+-][0-9]{2}:?[0-9]{2})?)?"
)
_SIMPLE_KEY = regex.compile(r"[A-Za-z_][A-Za-z0-9_]*")

# Joins values analysed in one Presidio call. No recognizer matches across a line break or
# a NUL, both look like the edge of a text to every boundary check, and six of them are
# more than any gap a pattern bridges (phone digit groups allow four), so each value gets
# the results it would get alone. Values containing NUL are analysed alone.
_SEPARATOR = "\n\x00\x00\x00\x00\n"
_BATCH_CHARS = 16_000
_CLEAN_MEMO_CHARS = 200


class CleanTexts:
    """Texts found to hold nothing, so that the same text is answered again at once: at most
    ``size`` of them, each of at most ``chars`` characters, then all forgotten together. Only clean
    texts are kept (shown in clear anyway), never one that holds something: a bounded dict rather
    than ``functools.lru_cache``, which would keep every answer, the findings' texts with them."""

    def __init__(self, size: int, chars: int) -> None:
        self.size, self.chars = size, chars
        self._texts: dict[str, None] = {}

    def __contains__(self, text: str) -> bool:
        return text in self._texts

    def __len__(self) -> int:
        return len(self._texts)

    def add(self, text: str) -> None:
        if len(text) <= self.chars:
            if len(self._texts) >= self.size:
                self._texts.clear()
            self._texts[text] = None


class Finding(NamedTuple):
    """One masked span: where it was and what it was, never the value."""

    path: str
    entity_type: str


@dataclass(frozen=True)
class MaskedParameters:
    """Parameters safe to show and store, and what was masked in them."""

    parameters: dict[str, Any]
    findings: list[Finding]

    @property
    def entity_types(self) -> frozenset[str]:
        """The distinct types masked, e.g. for the approval message."""
        return frozenset(finding.entity_type for finding in self.findings)


class UnmaskableParameters(ValueError):
    """The parameters are not a JSON object Keyturn can mask; nothing was masked."""


def placeholder(entity_type: str, value: Any = None) -> str:
    """The text shown instead of a value of ``entity_type``.

    Cards keep their last four digits when ``value`` has at least four; every other type
    is ``<TYPE>``.
    """
    if entity_type == "CREDIT_CARD" and isinstance(value, (str, int)):
        digits = [ch for ch in str(value) if ch.isdigit()]
        if len(digits) >= 4:
            return "****" + "".join(digits[-4:])
    return f"<{entity_type}>"


def format_path(path: tuple[str | int, ...]) -> str:
    """``("customer", "emails", 0)`` → ``$.customer.emails[0]``; odd keys are quoted."""
    parts = ["$"]
    for segment in path:
        if isinstance(segment, int):
            parts.append(f"[{segment}]")
        elif _SIMPLE_KEY.fullmatch(segment):
            parts.append(f".{segment}")
        else:
            escaped = segment.replace("\\", "\\\\").replace('"', '\\"')
            parts.append(f'["{escaped}"]')
    return "".join(parts)


class _MaskedTextCache:
    """LRU of masked strings, keyed by a keyed digest so no clear value is retained."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._entries: OrderedDict[bytes, tuple[str, tuple[str, ...]]] = OrderedDict()
        self._lock = threading.Lock()
        self._key = os.urandom(32)
        self.hits = 0
        self.misses = 0

    def digest(self, text: str) -> bytes:
        return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), key=self._key, digest_size=16).digest()

    def get(self, digest: bytes) -> tuple[str, tuple[str, ...]] | None:
        with self._lock:
            entry = self._entries.get(digest)
            if entry is None:
                self.misses += 1
                return None
            self._entries.move_to_end(digest)
            self.hits += 1
            return entry

    def put(self, digest: bytes, entry: tuple[str, tuple[str, ...]]) -> None:
        with self._lock:
            self._entries[digest] = entry
            self._entries.move_to_end(digest)
            while len(self._entries) > self._size:
                self._entries.popitem(last=False)


@dataclass
class _PendingText:
    """A string waiting for batched analysis, and where its result goes."""

    container: Any  # a dict (slot: its key) or a list (slot: an index)
    slot: str | int
    text: str
    path: tuple[str | int, ...]
    entities: frozenset[str]
    findings: list[Finding]
    current: str = ""
    found: list[str] = field(default_factory=list)
    digest: bytes | None = None
    number: int | float | None = None  # rule 4: the number ``text`` spells, put back if nothing is found

    def __post_init__(self) -> None:
        self.current = self.text


class ParameterMasker:
    """Masks action parameters. Build once and share: ``mask`` is safe from many threads.

    ``fast_path=False`` sends every string to Presidio with every recognizer, one call per
    string, without pre-filter, batching or cache: the reference the fast path must equal,
    and the baseline of ``bench/masking.py``.
    """

    def __init__(
        self,
        analyzer: AnalyzerEngine | None = None,
        *,
        fast_path: bool = True,
        cache_size: int = 8192,
    ) -> None:
        self._analyzer = analyzer or build_analyzer()
        self._fast_path = fast_path
        self._prefilter = Prefilter() if fast_path else None
        self._cache = _MaskedTextCache(cache_size) if fast_path and cache_size > 0 else None
        # Strings the pre-filter found nothing in; they are shown in clear anyway.
        self._clean = CleanTexts(cache_size, _CLEAN_MEMO_CHARS)
        # Names masking found nothing in (``protect.hidden_in_name``): an agent sends the same
        # action, resource and parameter keys request after request, and their checks were half
        # of a submission's validation.
        self.clean_names = CleanTexts(8192, 2048)

    @property
    def _fast_prefilter(self) -> Prefilter:
        """The pre-filter, which only the fast path has."""
        if self._prefilter is None:
            raise RuntimeError("the reference masker (fast_path=False) has no pre-filter")
        return self._prefilter

    @property
    def cache_stats(self) -> tuple[int, int]:
        """(hits, misses) of the masked-string cache since start."""
        return (self._cache.hits, self._cache.misses) if self._cache else (0, 0)

    def mask(
        self,
        parameters: Mapping[str, Any],
        extra_fields: Iterable[str] = (),
        phone_cores: PhoneCoreBudget | None = None,
    ) -> MaskedParameters:
        """Mask ``parameters``; ``extra_fields`` are dotted paths the policy marks sensitive;
        ``phone_cores``, the phone-number checks this call may spend, when shared with others
        (else a budget of its own: :data:`PHONE_CORES_CHECKED_PER_CALL`).

        Raises :class:`UnmaskableParameters` when ``parameters`` is not a JSON object
        (a mapping of JSON values), or nests deeper than :data:`MAX_DEPTH`.
        """
        if not isinstance(parameters, Mapping):
            raise UnmaskableParameters(f"parameters must be a JSON object, got {type(parameters).__name__}")
        walk = self._walk(FieldPathTrie.from_paths(extra_fields))
        masked = walk.root(parameters)
        phone_cores = phone_cores if phone_cores is not None else PhoneCoreBudget()
        if walk.pending:
            self._resolve(walk.pending, phone_cores)
        for container, slot, text, path in walk.disguised:
            container[slot], entity_types = self._undisguised(text, phone_cores)
            walk.found(path, entity_types)
        return MaskedParameters(parameters=masked, findings=walk.flatten_findings())

    def _walk(self, extra_fields: FieldPathTrie | None, *, as_is: bool = False) -> _Walk:
        return _Walk(extra_fields, self._scan_fast if self._fast_path else self._scan_reference, as_is=as_is)

    def _as_is(self, text: str, phone_cores: PhoneCoreBudget) -> tuple[str, list[str]]:
        """``text`` masked as it stands, no disguise looked through; and the types found."""
        walk = self._walk(None, as_is=True)
        masked = walk.root({"v": text})
        if walk.pending:
            self._resolve(walk.pending, phone_cores)
        return masked["v"], [finding.entity_type for finding in walk.flatten_findings()]

    def _undisguised(self, text: str, phone_cores: PhoneCoreBudget) -> tuple[str, list[str]]:
        """Rule 5: ``text`` masked two ways, and the one leaving less in clear shown (over, never
        under): as sent, then what a reader reads of what is left; and read first. Each misses
        what the other finds: decoding first hands the recognizers a text they may no longer match
        (a URL password holding ``%40`` decodes to one holding ``@``, and the pattern stopped
        there, leaving the rest in clear); masking as sent first may break a disguised value's
        shape (a full-width token's digits taken for a phone number, its secret tail left). The
        plain form is shown only when it holds something."""
        sent, sent_types = self._as_is(text, phone_cores)
        plain = plain_form(sent)
        read, read_types = self._as_is(plain, phone_cores) if plain != sent else (sent, [])
        if read_types:
            first, first_types = read, [*sent_types, *read_types]
        elif sent_types:
            first, first_types = sent, sent_types
        else:
            first, first_types = text, []
        direct, direct_types = self._as_is(plain_form(text), phone_cores)
        if direct_types and _left_in_clear(direct) < _left_in_clear(first):
            return direct, direct_types
        return first, first_types

    def mask_text(self, text: str) -> tuple[str, list[str]]:
        """Mask one free-text string (a log line, a result message): text and types found."""
        masked = self.mask({"text": text})
        return masked.parameters["text"], [f.entity_type for f in masked.findings]

    # -- string analysis -------------------------------------------------------------------

    def _scan_reference(self, text: str) -> tuple[str, tuple[str, ...]]:
        current, found = text, list[str]()
        for _ in range(MAX_ROUNDS):
            results = self._analyzer.analyze(current, language=LANGUAGE, score_threshold=SCORE_THRESHOLD)
            masked, types = _render(current, _spans(current, results, 0, len(current)))
            if not types:
                break
            found.extend(types)
            if masked == current:
                break
            current = masked
        return current, tuple(found)

    def _scan_fast(self, text: str) -> tuple[str, tuple[str, ...]] | frozenset[str]:
        """The masked text when known now, else the entity types to analyse for."""
        if text in self._clean:
            return text, ()
        entities = self._fast_prefilter.candidates(text)
        if entities:
            return entities
        self._clean.add(text)
        return text, ()

    def _resolve(self, pending: list[_PendingText], phone_cores: PhoneCoreBudget) -> None:
        """Analyse pending strings in batches, round after round, as the reference would;
        phone numbers one by one only while ``phone_cores`` lasts, then wholesale."""
        active: list[_PendingText] = []
        for item in pending:
            if self._cache is not None:
                item.digest = self._cache.digest(item.text)
                cached = self._cache.get(item.digest)
                if cached is not None:
                    _deliver(item, cached)
                    continue
            if "PHONE_NUMBER" in item.entities and _many_phone_cores(item.current, phone_cores):
                if phone_cores.left < 0:
                    item.digest = None  # masked so for what else the call held: not this text's outcome
                item.current, masked = _DIGIT_GROUPS.subn(placeholder("PHONE_NUMBER"), item.current)
                item.found.extend(["PHONE_NUMBER"] * masked)
                item.entities = self._fast_prefilter.candidates(item.current)
                if not item.entities:
                    self._finish(item)
                    continue
            active.append(item)
        for round_number in range(1, MAX_ROUNDS + 1):
            again: list[_PendingText] = []
            for batch in _batches(active):
                for item, (masked, types) in zip(batch, self._analyze_batch(batch), strict=False):
                    if types:
                        item.found.extend(types)
                        if masked != item.current:
                            item.current = masked
                            if round_number < MAX_ROUNDS:
                                item.entities = self._fast_prefilter.candidates(masked)
                                if item.entities:
                                    again.append(item)
                                    continue
                    self._finish(item)
            active = again

    def _finish(self, item: _PendingText) -> None:
        outcome = (item.current, tuple(item.found))
        if self._cache is not None and item.digest is not None:
            self._cache.put(item.digest, outcome)
        _deliver(item, outcome)

    def _analyze_batch(self, batch: list[_PendingText]) -> list[tuple[str, tuple[str, ...]]]:
        texts = [item.current for item in batch]
        joined = _SEPARATOR.join(texts)
        entities = sorted(frozenset().union(*(item.entities for item in batch)))
        results = self._analyzer.analyze(joined, language=LANGUAGE, entities=entities, score_threshold=SCORE_THRESHOLD)
        # each text's results are taken in one walk, and what the rules read of the joined text
        # is found once (``TextSpans``): both per text made a request of 2,000 phone numbers
        # cost 26 s of masking, growing with the square of the values
        results = sorted(results, key=lambda r: r.start)
        spans = TextSpans(joined)
        outcomes = []
        start = taken = 0
        for text in texts:
            end = start + len(text)
            first = taken
            while taken < len(results) and results[taken].start < end + len(_SEPARATOR):
                taken += 1
            mine = results[first:taken]  # the walk starts past the texts before this one
            if any(r.end > end for r in mine):
                # A result ran into the separator: never expected, so be exact, not fast.
                return [self._scan_single(item) for item in batch]
            outcomes.append(_render(text, _spans(joined, mine, start, end, spans)))
            start = end + len(_SEPARATOR)
        return outcomes

    def _scan_single(self, item: _PendingText) -> tuple[str, tuple[str, ...]]:
        results = self._analyzer.analyze(
            item.current,
            language=LANGUAGE,
            entities=sorted(item.entities),
            score_threshold=SCORE_THRESHOLD,
        )
        return _render(item.current, _spans(item.current, results, 0, len(item.current)))


class _Walk:
    """One pass over a parameters tree, building the masked copy."""

    def __init__(self, extra_fields: FieldPathTrie | None, scan_text, *, as_is: bool = False) -> None:
        self.extra_fields = extra_fields
        self.scan_text = scan_text
        self.as_is = as_is  # scan strings as they are: no disguise is looked through (rule 5 does)
        self.pending: list[_PendingText] = []
        self.disguised: list[tuple[Any, Any, str, tuple[str | int, ...]]] = []
        self._findings: list[Finding | list[Finding]] = []

    def flatten_findings(self) -> list[Finding]:
        flat: list[Finding] = []
        for entry in self._findings:
            if isinstance(entry, list):
                flat.extend(entry)
            else:
                flat.append(entry)
        return flat

    def root(self, parameters: Mapping) -> dict:
        masked: dict = {}
        self._mapping(parameters, masked, (), self.extra_fields, 0)
        return masked

    def _mapping(self, value: Mapping, masked: dict, path, extra, depth: int) -> None:
        for key, item in value.items():
            name = key if isinstance(key, str) else str(key)
            child = extra.child(name) if extra is not None else None
            entity = sensitive_field_entity(name)
            if entity is None and child is not None and child.terminal:
                entity = "SECRET"
            if is_secret_reference(item):  # ``{"secret": NAME}``: a name approvers need to read, masked as text
                reference: dict = {}
                masked[key] = reference
                self._slot(reference, "secret", item["secret"], (*path, name, "secret"), None, depth + 1)
                continue
            if entity is not None and item is not None:
                masked[key] = placeholder(entity, item)
                self._findings.append(Finding(format_path((*path, name)), entity))
            else:
                self._slot(masked, key, item, (*path, name), child, depth + 1)

    def _slot(self, container, slot, value: Any, path, extra, depth: int) -> None:
        """Put the masked ``value`` at ``container[slot]`` (now, or once analysed)."""
        kind = type(value)
        if kind is str:
            container[slot] = value
            self._text(container, slot, value, path)
        elif kind is int or kind is float:
            container[slot] = value
            if _MIN_MASKABLE <= abs(value) < _MAX_MASKABLE and (kind is int or value.is_integer()):
                self._number(container, slot, value, path)
        elif kind is bool or value is None:
            container[slot] = value
        elif isinstance(value, str):
            container[slot] = value
            self._text(container, slot, value, path)
        elif isinstance(value, Mapping):
            self._check_depth(path, depth)
            masked: dict = {}
            container[slot] = masked
            self._mapping(value, masked, path, extra, depth)
        elif isinstance(value, (list, tuple)):
            self._check_depth(path, depth)
            masked_list: list = [None] * len(value)
            container[slot] = masked_list
            for index, item in enumerate(value):
                self._slot(masked_list, index, item, (*path, index), extra, depth + 1)
        elif value is None or isinstance(value, (bool, int, float)):
            container[slot] = value
        else:
            raise UnmaskableParameters(f"{format_path(path)} holds a {type(value).__name__}, which is not a JSON value")

    @staticmethod
    def _check_depth(path, depth: int) -> None:
        if depth > MAX_DEPTH:
            raise UnmaskableParameters(f"{format_path(path)} nests deeper than {MAX_DEPTH} levels")

    def _text(self, container, slot, text: str, path) -> None:
        if not text or _IDENTIFIER_OR_TIME.fullmatch(text):
            return
        if not self.as_is and plain_form(text) != text:
            self.disguised.append((container, slot, text, path))  # rule 5, once the rest is analysed
            return
        outcome = self.scan_text(text)
        if isinstance(outcome, frozenset):
            findings: list[Finding] = []
            self._findings.append(findings)
            self.pending.append(_PendingText(container, slot, text, path, outcome, findings))
            return
        masked, entity_types = outcome
        container[slot] = masked
        for entity in entity_types:
            self._findings.append(Finding(format_path(path), entity))

    def _number(self, container, slot, number: int | float, path) -> None:
        """Rule 4: ``number`` is masked whole when its digits, as text, would be masked."""
        text = str(int(number))
        outcome = self.scan_text(text)
        if isinstance(outcome, frozenset):
            findings: list[Finding] = []
            self._findings.append(findings)
            self.pending.append(_PendingText(container, slot, text, path, outcome, findings, number=number))
            return
        container[slot], entity_types = _number_outcome(number, outcome[1])
        for entity in entity_types:
            self._findings.append(Finding(format_path(path), entity))

    def found(self, path, entity_types: Iterable[str]) -> None:
        self._findings.append([Finding(format_path(path), entity) for entity in entity_types])


def plain_form(text: str) -> str:
    """``text`` as a reader (or the program it is meant for) takes it in: percent-escapes decoded
    (again while they decode to more, ``%2540``), HTML character references and ``\\uXXXX`` /
    ``\\xXX`` escapes resolved, compatibility characters (full-width letters and ``＠``,
    ligatures) folded (NFKC), characters that show nothing dropped (``INVISIBLE_RANGES``), runs
    of base64 that decode to printable text decoded. Recognizers see through none of these, so a
    disguised address, card or key would otherwise pass in clear. ``text`` itself when there is
    nothing to undo (the common case: a few ``in`` tests and one search)."""
    plain = text
    for _ in range(3):
        if "%" not in plain or (decoded := unquote(plain, errors="replace")) == plain:
            break
        plain = decoded
    if ("&" in plain and "#" in plain) or ("&" in plain and ";" in plain):
        plain = html.unescape(plain)
    if "\\u" in plain or "\\x" in plain:
        plain = _ESCAPE.sub(_escaped, plain)
    if not plain.isascii():
        plain = unicodedata.normalize("NFKC", plain).translate(_READ_AS)
    if len(plain) >= _BASE64_MIN_CHARS:
        plain = _BASE64_RUN.sub(_base64_text, plain)
    return plain


#: Dashes NFKC leaves as they are (hyphen, non-breaking hyphen, figure dash, en and em dash,
#: horizontal bar, minus): read as ``-``, as a reader reads them.
_DASHES = "\u2010\u2011\u2012\u2013\u2014\u2015\u2212"
#: Code points that show nothing, which NFKC keeps: Unicode's format characters (category
#: ``Cf``: zero-width space and joiners, word joiner, BOM, soft hyphen, bidi controls, tags) and
#: its other default-ignorable ones (combining grapheme joiner, variation selectors, Hangul
#: fillers). A reader sees ``dana.seed@example.org`` in ``dana.seed\u200b@…`` and a program
#: that drops them gets the value; a recognizer sees two words. As (first, last) ranges of
#: Unicode 15; ``tests/unit/test_masking.py`` checks them against the character database.
INVISIBLE_RANGES = (
    (0x00AD, 0x00AD), (0x034F, 0x034F), (0x0600, 0x0605), (0x061C, 0x061C), (0x06DD, 0x06DD),
    (0x070F, 0x070F), (0x0890, 0x0891), (0x08E2, 0x08E2), (0x115F, 0x1160), (0x17B4, 0x17B5),
    (0x180B, 0x180F), (0x200B, 0x200F), (0x202A, 0x202E), (0x2060, 0x206F), (0x3164, 0x3164),
    (0xFE00, 0xFE0F), (0xFEFF, 0xFEFF), (0xFFA0, 0xFFA0), (0xFFF0, 0xFFFB), (0x110BD, 0x110BD),
    (0x110CD, 0x110CD), (0x13430, 0x1343F), (0x1BCA0, 0x1BCA3), (0x1D173, 0x1D17A), (0xE0000, 0xE0FFF),
)  # fmt: skip
#: What NFKC leaves for a reader to undo, in one ``str.translate`` (the dashes cost it already):
#: dashes read as ``-``, invisible code points dropped.
_READ_AS = str.maketrans(
    {
        **dict.fromkeys(_DASHES, "-"),
        **dict.fromkeys((chr(c) for first, last in INVISIBLE_RANGES for c in range(first, last + 1)), None),
    }
)
_ESCAPE = re.compile(r"\\(?:u([0-9A-Fa-f]{4})|x([0-9A-Fa-f]{2}))")
_BASE64_MIN_CHARS = 12
#: A run of standard base64 of at least 12 characters (9 bytes: an SSN, a phone number), padded to
#: a multiple of four, after anything but a letter, digit or ``+`` (so after a URL's ``/`` or a
#: ``name=``), and not a segment of a dotted token (a JWT's parts have a recognizer of their own).
_BASE64_RUN = re.compile(
    r"(?<![A-Za-z0-9+.])(?:[A-Za-z0-9+/]{4}){2,}(?:[A-Za-z0-9+/]{4}|[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)"
    r"(?![A-Za-z0-9+/=.])"
)


def _left_in_clear(masked: str) -> int:
    """How many characters of a masked text are not placeholders."""
    return len(PLACEHOLDER.sub("", masked))


def _escaped(match: re.Match[str]) -> str:
    return chr(int(match.group(1) or match.group(2), 16))


def _base64_text(match: re.Match[str]) -> str:
    """The printable ASCII text a base64 run encodes, else the run as it stands (an id, a key,
    binary data: nothing a reader would read, and the entropy rule judges it as sent)."""
    try:
        decoded = base64.b64decode(match.group(), validate=True).decode("ascii")
    except (binascii.Error, UnicodeDecodeError):
        return match.group()
    return decoded if decoded.isprintable() and not decoded.isspace() else match.group()


#: Whole numbers rule 4 reads as text: ten digits or more (a phone number written as a number has
#: its area code, or its country code too; a card has 13 to 19 digits), and none has more than
#: 19. A smaller number, which counts and most ids are, is kept at one comparison: checking one
#: for a phone number costs python-phonenumbers about a millisecond, and as text one of 150
#: eight- or nine-digit numbers is taken for a phone number in one of its regions.
_MIN_MASKABLE = 10**9
_MAX_MASKABLE = 10**19


def _number_outcome(number: int | float, entity_types: tuple[str, ...]) -> tuple[Any, tuple[str, ...]]:
    """A number and what masking found in its digits: the number when nothing, else one placeholder
    for it whole (a part of a number in clear is no number), named after the most specific type."""
    if not entity_types:
        return number, ()
    entity = min(entity_types, key=_RANK.__getitem__)
    return placeholder(entity, int(number)), (entity,)


class PhoneCoreBudget:
    """Phone-number cores that may still be checked one by one (``PHONE_CORES_CHECKED_PER_CALL``),
    shared by the strings of one ``mask`` call, or by the calls given the same budget."""

    def __init__(self) -> None:
        self.left = PHONE_CORES_CHECKED_PER_CALL  # negative once spent


def _many_phone_cores(text: str, phone_cores: PhoneCoreBudget) -> bool:
    """Whether ``text`` holds more than ``PHONE_CORES_CHECKED`` phone cores, or more than the call
    has left of ``PHONE_CORES_CHECKED_PER_CALL`` (the budget is charged with them): then its digit
    groups are masked as phone numbers all together (over, never under), not checked one by one."""
    limit = min(PHONE_CORES_CHECKED, max(phone_cores.left, 0))
    count = 0
    for count, _ in enumerate(PHONE_DIGIT_RUN.finditer(text), start=1):
        if count > limit:
            break
    phone_cores.left -= count
    return count > limit


def _deliver(item: _PendingText, outcome: tuple[str, tuple[str, ...]]) -> None:
    masked, entity_types = outcome
    if item.number is not None:
        masked, entity_types = _number_outcome(item.number, entity_types)
    item.container[item.slot] = masked
    item.findings.extend(Finding(format_path(item.path), entity) for entity in entity_types)


def _batches(items: list[_PendingText]) -> Iterable[list[_PendingText]]:
    """Texts with the same candidate types, so no recognizer reads text it cannot match."""
    groups: dict[frozenset[str], list[_PendingText]] = {}
    for item in items:
        if "\x00" in item.current or len(item.current) >= _BATCH_CHARS:
            yield [item]
        else:
            groups.setdefault(item.entities, []).append(item)
    for group in groups.values():
        batch: list[_PendingText] = []
        size = 0
        for item in group:
            if batch and size + len(item.current) > _BATCH_CHARS:
                yield batch
                batch, size = [], 0
            batch.append(item)
            size += len(item.current) + len(_SEPARATOR)
        yield batch


def _spans(text: str, results, start: int, end: int, spans: TextSpans | None = None) -> list[tuple[int, int, str]]:
    """Kept results inside ``text[start:end]``, relative to ``start``, overlaps merged
    (``spans``: the rules' reading of ``text``, when the caller has it)."""
    kept = sorted(
        (r.start - start, r.end - start, r.entity_type)
        for r in kept_results(text, [r for r in results if start <= r.start and r.end <= end], spans)
    )
    merged: list[tuple[int, int, str]] = []
    for span_start, span_end, entity in kept:
        if merged and span_start < merged[-1][1]:
            last_start, last_end, last_entity = merged[-1]
            if _RANK[entity] < _RANK[last_entity]:
                last_entity = entity
            merged[-1] = (last_start, max(last_end, span_end), last_entity)
        else:
            merged.append((span_start, span_end, entity))
    return merged


def _render(text: str, spans: list[tuple[int, int, str]]) -> tuple[str, tuple[str, ...]]:
    if not spans:
        return text, ()
    parts = []
    position = 0
    for start, end, entity in spans:
        parts.append(text[position:start])
        parts.append(placeholder(entity, text[start:end]))
        position = end
    parts.append(text[position:])
    return "".join(parts), tuple(entity for _, _, entity in spans)
