"""The detectors behind masking: Presidio's analyzer on a blank spaCy pipeline.

Everything here is pattern based, so no trained spaCy model is needed and none is ever
loaded or downloaded: the NLP engine wraps ``spacy.blank("en")`` (see
:class:`BlankSpacyNlpEngine`), and the e-mail recognizer checks domains against tldextract's
bundled suffix snapshot instead of fetching the public suffix list. Building and using the
analyzer touches neither disk caches nor the network.

Entity types and where they come from:

========================  ===================================================================
``EMAIL_ADDRESS``         Presidio's e-mail pattern, domain checked offline
``PHONE_NUMBER``          Presidio's phone recognizer (python-phonenumbers, 8 regions)
``CREDIT_CARD``           Presidio's card pattern, Luhn-validated by Presidio
``IBAN_CODE``             Presidio's IBAN pattern, checksum-validated by Presidio
``US_SSN``                Presidio's SSN patterns
``IP_ADDRESS``            Presidio's IPv4/IPv6 patterns, validated with ``ipaddress``
``AWS_ACCESS_KEY``        access key ids (``AKIA…``, ``ASIA…`` and the other AWS prefixes)
``AWS_SECRET_KEY``        a 40-character secret key written after an ``aws_secret…key`` name
``GCP_API_KEY``           Google API keys (``AIza…``)
``AZURE_KEY``             storage ``AccountKey=…``, SAS ``sig=…``, Entra client secrets
``SLACK_TOKEN``           ``xox[abeprs]-…`` tokens, ``xapp-…`` tokens, incoming-webhook URLs
``GITHUB_TOKEN``          ``ghp_/gho_/ghu_/ghs_/ghr_`` tokens and fine-grained ``github_pat_``
``JWT``                   three base64url segments, the first starting ``eyJ``
``PRIVATE_KEY``           PEM private keys (RSA, EC, DSA, OpenSSH, PKCS#8, PGP), even cut short
``SECRET``                passwords in URLs, and detect-secrets' keyword and entropy plugins
========================  ===================================================================

Two result rules apply on top of Presidio (see :func:`kept_results`): results below
:data:`SCORE_THRESHOLD` are dropped, which removes Presidio's "very weak" SSN patterns (any
bare 9-digit number) and the bare ``::`` IPv6 address; and a phone number must contain
:data:`PHONE_DIGIT_RUN`, seven digits grouped the way people write phone numbers, not
overlapping a number that cannot be one (an IPv4 address, an SSN, a card-length digit run).
python-phonenumbers accepts 4- to 8-digit strings such as ``1640`` or the ``16847292`` of
``ORD-16847292`` as valid German numbers, and in action parameters those are counts and ids.
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterator

import regex
import spacy
import tldextract
from detect_secrets.filters.heuristic import (
    is_indirect_reference,
    is_likely_id_string,
    is_not_alphanumeric_string,
    is_potential_uuid,
    is_prefixed_with_dollar_sign,
    is_sequential_string,
    is_templated_secret,
)
from detect_secrets.plugins.high_entropy_strings import (
    Base64HighEntropyString,
    HexHighEntropyString,
    HighEntropyStringsPlugin,
)
from detect_secrets.plugins.keyword import CONFIG_DENYLIST_REGEX_TO_GROUP
from presidio_analyzer import (
    AnalyzerEngine,
    LocalRecognizer,
    Pattern,
    PatternRecognizer,
    RecognizerRegistry,
    RecognizerResult,
)
from presidio_analyzer.context_aware_enhancers import LemmaContextAwareEnhancer
from presidio_analyzer.nlp_engine import NlpArtifacts, SpacyNlpEngine
from presidio_analyzer.predefined_recognizers import (
    CreditCardRecognizer,
    EmailRecognizer,
    IbanRecognizer,
    IpRecognizer,
    PhoneRecognizer,
    UsSsnRecognizer,
)
from spacy.tokens import Doc

LANGUAGE = "en"

#: Presidio results scoring below this are dropped (Presidio's own "very weak" tier).
SCORE_THRESHOLD = 0.4

#: Every entity type a detector can report; the placeholder for each is ``<TYPE>``.
ENTITY_TYPES = (
    "EMAIL_ADDRESS",
    "PHONE_NUMBER",
    "CREDIT_CARD",
    "IBAN_CODE",
    "US_SSN",
    "IP_ADDRESS",
    "AWS_ACCESS_KEY",
    "AWS_SECRET_KEY",
    "GCP_API_KEY",
    "AZURE_KEY",
    "SLACK_TOKEN",
    "GITHUB_TOKEN",
    "JWT",
    "PRIVATE_KEY",
    "SECRET",
)

# Token formats are case-sensitive; Presidio's default flags would add IGNORECASE.
_CASE_SENSITIVE = regex.DOTALL | regex.MULTILINE

_PEM_BODY = r"[A-Za-z0-9+/=\s:,.\-]"
_PEM_LABEL = r"-----BEGIN[ A-Z0-9]*PRIVATE KEY(?: BLOCK)?-----"
_PEM_END = r"-----END[ A-Z0-9]*PRIVATE KEY(?: BLOCK)?-----"

#: (entity, pattern name, regex, score) for the token recognizers.
TOKEN_PATTERNS: tuple[tuple[str, str, str, float], ...] = (
    (
        "AWS_ACCESS_KEY",
        "aws access key id",
        r"(?<![A-Za-z0-9])(?:AKIA|ASIA|ABIA|ACCA|AGPA|AIDA|AIPA|ANPA|ANVA|AROA|APKA|ASCA)"
        r"[A-Z0-9]{16}(?![A-Za-z0-9])",
        0.9,
    ),
    (
        "AWS_SECRET_KEY",
        "aws secret access key after its name",
        r"(?i:aws_?secret_?(?:access_?)?key)[\"']?\s{0,3}(?:=>|=|:)\s{0,3}[\"']?\K"
        r"[A-Za-z0-9/+=]{40}(?![A-Za-z0-9/+=])",
        0.9,
    ),
    (
        "GCP_API_KEY",
        "google api key",
        r"(?<![A-Za-z0-9_\-])AIza[0-9A-Za-z_\-]{35}(?![A-Za-z0-9_\-])",
        0.9,
    ),
    (
        "AZURE_KEY",
        "azure storage account key",
        r"(?i:accountkey)\s{0,3}=\s{0,3}\K[A-Za-z0-9+/]{86}==",
        0.9,
    ),
    ("AZURE_KEY", "azure sas signature", r"[?&]sig=\K[A-Za-z0-9%+/=]{43,}", 0.8),
    (
        "AZURE_KEY",
        "azure entra client secret",
        r"(?<![A-Za-z0-9_~.\-])[A-Za-z0-9_~.]{3}\dQ~[A-Za-z0-9_~.\-]{31,34}"
        r"(?![A-Za-z0-9_~.\-])",
        0.8,
    ),
    (
        "SLACK_TOKEN",
        "slack token",
        r"(?<![A-Za-z0-9])xox[abeprs]-[A-Za-z0-9\-]{10,250}",
        0.9,
    ),
    ("SLACK_TOKEN", "slack app token", r"(?<![A-Za-z0-9])xapp-\d-[A-Za-z0-9\-]{10,250}", 0.9),
    (
        "SLACK_TOKEN",
        "slack incoming webhook",
        r"hooks\.slack\.com/(?:services|workflows|triggers)/[A-Za-z0-9_/\-]{10,250}",
        0.9,
    ),
    (
        "GITHUB_TOKEN",
        "github token",
        r"(?<![A-Za-z0-9_])gh[pousr]_[A-Za-z0-9]{36,255}(?![A-Za-z0-9_])",
        0.9,
    ),
    (
        "GITHUB_TOKEN",
        "github fine-grained token",
        r"(?<![A-Za-z0-9_])github_pat_[A-Za-z0-9_]{22,255}(?![A-Za-z0-9_])",
        0.9,
    ),
    (
        "JWT",
        "json web token",
        r"(?<![A-Za-z0-9_\-])eyJ[A-Za-z0-9_\-]{2,}\.[A-Za-z0-9_\-]{2,}\.[A-Za-z0-9_\-]*",
        0.9,
    ),
    (
        "PRIVATE_KEY",
        "pem private key",
        # A complete block, or a block cut short: both are masked to their end.
        rf"{_PEM_LABEL}(?:{_PEM_BODY}*?{_PEM_END}|{_PEM_BODY}*)",
        1.0,
    ),
    (
        "SECRET",
        "password in url",
        r"(?i:\b[a-z][a-z0-9+.\-]{1,20}://)[^\s/?#@:]{1,256}:\K[^\s/?#@]{1,256}(?=@)",
        0.9,
    ),
)

#: Hex tokens of these lengths are identifiers, not secrets: object ids (24), md5 / uuid
#: without dashes / trace ids (32), sha1 / git commits (40), sha256 (64), sha512 (128).
#: They stay clear unless a field name or a keyword says otherwise.
HEX_ID_LENGTHS = frozenset({24, 32, 40, 64, 128})

# Every detect-secrets keyword contains one of these; its config-file regexes all need an
# assignment or comparison character after (or before) the keyword.
_KEYWORD_HINT = "(?i:key|pass|pwd|secret|contrase)"
_KEYWORD_OPERATORS = frozenset(":=;!")
_BASE64_RUN = "[" + re.escape(Base64HighEntropyString().charset) + "]{23,}"
_HEX_RUN = r"(?<![A-Za-z0-9])[0-9A-Fa-f]{20,}(?![A-Za-z0-9])"


# -- the phone rule ------------------------------------------------------------------

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
#: seconds or milliseconds (2017-2033, unseparated), dotted quads (IPv4) and SSN-shaped
#: ``ddd-dd-dddd``; see also :func:`not_phone_spans` for card-length runs.
# Each alternative starts with a digit; the leading (?=\d) lets the engine skip to digits.
_NOT_PHONE = regex.compile(
    r"(?=\d)(?:"
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


def not_phone_spans(text: str) -> list[tuple[int, int]]:
    """Spans of ``text`` holding numbers that cannot be phone numbers.

    The shapes of :data:`_NOT_PHONE`, and card-length runs: a maximal run of digit groups
    of four or more digits each, longer than the 15 digits E.164 allows a phone number
    (``4111 1111 1111 1111``; a phone number followed by a card is one run with short
    groups, so neither is excluded and Presidio sorts them out).
    """
    spans = [match.span() for match in _NOT_PHONE.finditer(text)]
    for match in _DIGIT_RUN.finditer(text):
        groups = _GROUP_SEPARATOR.split(match.group())
        if (
            all(len(group) >= 4 for group in groups)
            and sum(map(len, groups)) > _MAX_PHONE_DIGITS
        ):
            spans.append(match.span())
    return spans


def has_phone_core(
    text: str, start: int, end: int, not_phone: list[tuple[int, int]]
) -> bool:
    """Whether ``text[start:end]`` holds a phone core clear of every ``not_phone`` span.

    Lookarounds see the whole ``text``, so the answer for a span is the same whether it
    is analysed alone or inside a longer text, as long as its neighbours are separated by
    at least five characters that are neither letters nor digits.
    """
    for core in PHONE_DIGIT_RUN.finditer(text, start, overlapped=True):
        if core.start() >= end:
            return False
        if core.end() <= end and not any(
            a < core.end() and core.start() < b for a, b in not_phone
        ):
            return True
    return False


def kept_results(text: str, results: list[RecognizerResult]) -> list[RecognizerResult]:
    """Keyturn's rules on top of Presidio's (see the module docstring), in result order."""
    kept = []
    not_phone = None
    for result in results:
        if result.score < SCORE_THRESHOLD:
            continue
        if result.entity_type == "PHONE_NUMBER":
            if not_phone is None:
                not_phone = not_phone_spans(text)
            if not has_phone_core(text, result.start, result.end, not_phone):
                continue
        kept.append(result)
    return kept


# -- the analyzer's parts -------------------------------------------------------------


class BlankSpacyNlpEngine(SpacyNlpEngine):
    """Presidio's spaCy engine around ``spacy.blank("en")``: no trained model, no tokens.

    Every recognizer here is pattern based, so no named entities are needed, and texts are
    not even tokenized: tokens only feed Presidio's lemma context enhancer, which cannot
    fire without a lemmatizer (words passed as explicit ``context`` still work without
    tokens), while spaCy's vocabulary keeps every new token it sees, about 1 KB each, a
    leak for a service reading random ids. The blank pipeline still answers vocabulary
    questions (stop words, punctuation). Never calls ``spacy.load`` or the downloader.
    """

    def __init__(self) -> None:
        super().__init__(models=[{"lang_code": LANGUAGE, "model_name": "blank:en"}])

    def load(self) -> None:
        """Create the blank pipeline."""
        self.nlp = {LANGUAGE: spacy.blank(LANGUAGE)}

    def get_supported_entities(self) -> list[str]:
        """A blank pipeline recognises no named entities."""
        return []

    def process_text(self, text: str, language: str) -> NlpArtifacts:
        """Artifacts with no tokens, lemmas or entities (see the class docstring)."""
        return NlpArtifacts(
            entities=[],
            tokens=Doc(self.nlp[language].vocab),
            tokens_indices=[],
            lemmas=[],
            nlp_engine=self,
            language=language,
        )

    def process_batch(self, texts, language, batch_size=1, n_process=1, as_tuples=False):
        """:meth:`process_text` for each text, in the shape Presidio's batch engine expects."""
        for item in texts:
            if as_tuples:
                text, context = item
                yield str(text), self.process_text(str(text), language), context
            else:
                yield str(item), self.process_text(str(item), language)


class BlankPipelineContextEnhancer(LemmaContextAwareEnhancer):
    """Presidio's lemma context enhancer, minus its work when it cannot change anything.

    It raises scores when a lemma near a match, or a word passed as ``context``, is one of
    the recognizer's context words. A blank pipeline has no lemmatizer (every lemma is
    empty), so without explicit context no score can change; then the results are
    returned as they are instead of deep-copied, which was half the cost of a short call.
    """

    def enhance_using_context(self, text, raw_results, nlp_artifacts, recognizers, context=None):
        """The results unchanged without ``context``; Presidio's enhancement with it."""
        if not context:
            return raw_results
        return super().enhance_using_context(
            text, raw_results, nlp_artifacts, recognizers, context
        )


class OfflineEmailRecognizer(EmailRecognizer):
    """Presidio's e-mail recognizer, checking domains against the bundled suffix list.

    The stock recognizer calls ``tldextract.extract``, which fetches the public suffix list
    over the network on first use and caches it under the home directory.
    """

    _domains = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)

    def validate_result(self, pattern_text: str) -> bool:
        """True when the address ends in a known public suffix."""
        return self._domains(pattern_text).fqdn != ""


class DetectSecretsRecognizer(LocalRecognizer):
    """``SECRET`` from detect-secrets' keyword and high-entropy plugins, line by line.

    Runs the plugins' own regexes and entropy limits (defaults: base64 4.5, hex 3.0) with
    these differences from a file scan, each to suit JSON values rather than source files:

    - the keyword plugin uses the regexes detect-secrets applies to config files
      (``password: x``, ``password=x``, quoted or not), and reports every assignment on a
      line rather than the first per regex;
    - entropy strings need no quotes around them (a parameter value is already a string);
      the run is the maximal stretch of the plugin's alphabet, as in detect-secrets' own
      unquoted mode;
    - a base64-alphabet run counts only if it mixes upper case, lower case and digits, as
      generated secrets do, which keeps paths, snake_case names and prose clear;
    - a hex run counts only if it is a whole token of 20 or more characters, contains a
      letter, and its length is not one of :data:`HEX_ID_LENGTHS` (digests, uuids, trace
      and commit ids); shorter hex tokens are resource ids and pod hashes
      (``sg-0123456789abcdef0``, ``api-7d9f8c6b5-x2x4z``), whose entropy passes 3.0 easily.

    detect-secrets' default heuristic filters then drop uuids, sequential strings, templated
    values (``<x>``, ``{x}``, ``${x}``), ``$VAR`` references, id-named values and indirect
    references (``secret = get_secret()``), as a default scan would.
    """

    ENTITY = "SECRET"

    def __init__(self) -> None:
        self._base64 = Base64HighEntropyString()
        self._hex = HexHighEntropyString()
        self._base64_run = re.compile(_BASE64_RUN)
        self._hex_run = re.compile(_HEX_RUN)
        self._keyword_hint = re.compile(_KEYWORD_HINT)
        super().__init__(
            supported_entities=[self.ENTITY],
            supported_language=LANGUAGE,
            name="DetectSecretsRecognizer",
        )

    def load(self) -> None:  # noqa: D102 - nothing to load
        pass

    def analyze(self, text, entities, nlp_artifacts=None):  # noqa: D102
        results = []
        line_start = 0
        for line in text.split("\n"):
            for start, end in self.secret_spans(line):
                results.append(self._result(line_start + start, line_start + end))
            line_start += len(line) + 1
        return results

    def secret_spans(self, line: str) -> Iterator[tuple[int, int]]:
        """Spans of ``line`` that detect-secrets' plugins flag as secrets."""
        if len(line) >= 23:
            yield from self._entropy_spans(line, self._base64, self._base64_run, _base64_shape)
        if len(line) >= 20:
            yield from self._entropy_spans(line, self._hex, self._hex_run, _hex_shape)
        if not _KEYWORD_OPERATORS.isdisjoint(line) and self._keyword_hint.search(line):
            yield from self._keyword_spans(line)

    def could_flag(self, text: str) -> bool:
        """Whether :meth:`analyze` reports anything in ``text``; cheap enough to pre-check."""
        if len(text) < 20 and _KEYWORD_OPERATORS.isdisjoint(text):
            return False
        for line in text.split("\n"):
            for _ in self.secret_spans(line):
                return True
        return False

    def _entropy_spans(
        self,
        line: str,
        plugin: HighEntropyStringsPlugin,
        runs: re.Pattern[str],
        shape,
    ) -> Iterator[tuple[int, int]]:
        for match in runs.finditer(line):
            value = match.group()
            if (
                shape(value)
                and plugin.calculate_shannon_entropy(value) > plugin.entropy_limit
                and not _filtered_by_default_heuristics(value, line, plugin)
            ):
                yield match.span()

    def _keyword_spans(self, line: str) -> Iterator[tuple[int, int]]:
        if is_indirect_reference(line):
            return
        for keyword_regex, group in CONFIG_DENYLIST_REGEX_TO_GROUP.items():
            for match in keyword_regex.finditer(line):
                value = match.group(group)
                if value and not (
                    is_templated_secret(value) or is_prefixed_with_dollar_sign(value)
                ):
                    yield match.span(group)

    def _result(self, start: int, end: int) -> RecognizerResult:
        return RecognizerResult(
            entity_type=self.ENTITY,
            start=start,
            end=end,
            score=0.6,
            recognition_metadata={
                RecognizerResult.RECOGNIZER_NAME_KEY: self.name,
                RecognizerResult.RECOGNIZER_IDENTIFIER_KEY: self.id,
            },
        )


_UPPER = frozenset(string.ascii_uppercase)
_LOWER = frozenset(string.ascii_lowercase)
_DIGITS = frozenset(string.digits)


def _base64_shape(value: str) -> bool:
    return not (
        _UPPER.isdisjoint(value) or _LOWER.isdisjoint(value) or _DIGITS.isdisjoint(value)
    )


def _hex_shape(value: str) -> bool:
    return len(value) not in HEX_ID_LENGTHS and not value.isdigit()


def _filtered_by_default_heuristics(value: str, line: str, plugin) -> bool:
    return (
        is_sequential_string(value)
        or is_potential_uuid(value)
        or is_templated_secret(value)
        or is_prefixed_with_dollar_sign(value)
        or is_not_alphanumeric_string(value)
        or is_likely_id_string(value, line, plugin)
    )


def token_recognizers() -> list[PatternRecognizer]:
    """One Presidio pattern recognizer per entity for the token formats."""
    by_entity: dict[str, list[Pattern]] = {}
    for entity, name, pattern, score in TOKEN_PATTERNS:
        by_entity.setdefault(entity, []).append(Pattern(name, pattern, score))
    return [
        PatternRecognizer(
            supported_entity=entity,
            name=f"{entity.title().replace('_', '')}Recognizer",
            patterns=patterns,
            supported_language=LANGUAGE,
            global_regex_flags=_CASE_SENSITIVE,
        )
        for entity, patterns in by_entity.items()
    ]


def build_analyzer() -> AnalyzerEngine:
    """An analyzer with every recognizer above on a blank spaCy pipeline, warmed up.

    The warm-up analyses a sample hitting every recognizer once, so lazily compiled
    patterns exist before the analyzer is shared between threads.
    """
    registry = RecognizerRegistry(supported_languages=[LANGUAGE])
    for recognizer in (
        OfflineEmailRecognizer(),
        PhoneRecognizer(),
        CreditCardRecognizer(),
        IbanRecognizer(),
        UsSsnRecognizer(),
        IpRecognizer(),
        *token_recognizers(),
        DetectSecretsRecognizer(),
    ):
        registry.add_recognizer(recognizer)
    analyzer = AnalyzerEngine(
        registry=registry,
        nlp_engine=BlankSpacyNlpEngine(),
        supported_languages=[LANGUAGE],
        context_aware_enhancer=BlankPipelineContextEnhancer(),
    )
    analyzer.analyze(_WARM_UP_TEXT, language=LANGUAGE, score_threshold=SCORE_THRESHOLD)
    return analyzer


_WARM_UP_TEXT = (
    "mail ops@example.com or call +1 212 555 0100; card 4111 1111 1111 1111; "
    "iban DE89 3704 0044 0532 0130 00; ssn 078-05-1120; ip 10.0.0.1 and ::1; "
    "AKIAIOSFODNN7EXAMPLE xoxb-1234567890-abcdefghij ghp_" + "a" * 36 + " "
    "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig password=hunter2 "
    "https://u:p@db.example.com AIza" + "B" * 35 + " "
    "-----BEGIN RSA PRIVATE KEY-----\nMIIB\n-----END RSA PRIVATE KEY-----"
)
