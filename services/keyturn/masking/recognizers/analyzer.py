"""The analyzer masking runs: every recognizer of this package, and which results count.

:func:`build_analyzer` registers the recognizers of :mod:`.pii`, :mod:`.tokens` and
:mod:`.secrets` on the blank-pipeline engine of :mod:`.engine`. Two result rules apply on
top of Presidio (see :func:`kept_results`): results below :data:`SCORE_THRESHOLD` are
dropped, which removes Presidio's "very weak" SSN patterns (any bare 9-digit number) and the
bare ``::`` IPv6 address; a phone number must pass the phone rule of :mod:`.phone`; and a
phone, card or SSN number is not one inside a hexadecimal id (a UUID, a digest: ``HEX_ID``),
whose digit groups (``…-0668-4779-9682-…``) read as one often enough to refuse an agent's
``sdk-<uuid>`` idempotency key one time in a few thousand.
"""

from __future__ import annotations

import regex
from presidio_analyzer import AnalyzerEngine, RecognizerRegistry, RecognizerResult

from keyturn.masking.recognizers.engine import (
    LANGUAGE,
    BlankPipelineContextEnhancer,
    BlankSpacyNlpEngine,
)
from keyturn.masking.recognizers.phone import Spans, has_phone_core, not_phone_spans
from keyturn.masking.recognizers.pii import pii_recognizers
from keyturn.masking.recognizers.secrets import secret_recognizers
from keyturn.masking.recognizers.tokens import token_recognizers

#: Presidio results scoring below this are dropped (Presidio's own "very weak" tier).
SCORE_THRESHOLD = 0.4

#: A hexadecimal id: 20 or more hex digits and dashes, a letter among them, standing alone.
HEX_ID = regex.compile(r"(?<![0-9A-Za-z])(?=[0-9a-fA-F-]*[a-fA-F])[0-9a-fA-F-]{20,}(?![0-9A-Za-z])")
#: Numbers that a hexadecimal id's digits can imitate.
NUMBER_KINDS = frozenset({"PHONE_NUMBER", "CREDIT_CARD", "US_SSN"})

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


class TextSpans:
    """What the result rules read of a whole text (its hexadecimal ids, its numbers that are no
    phone number), found once, when first asked, however many of its results are judged: masking
    judges the values of a request as one joined text, each value's results apart."""

    def __init__(self, text: str) -> None:
        self.text = text
        self._hex_ids: Spans | None = None
        self._not_phone: Spans | None = None

    @property
    def hex_ids(self) -> Spans:
        if self._hex_ids is None:
            self._hex_ids = Spans(match.span() for match in HEX_ID.finditer(self.text))
        return self._hex_ids

    @property
    def not_phone(self) -> Spans:
        if self._not_phone is None:
            self._not_phone = not_phone_spans(self.text)
        return self._not_phone


def kept_results(text: str, results: list[RecognizerResult], spans: TextSpans | None = None) -> list[RecognizerResult]:
    """Keyturn's rules on top of Presidio's (see the module docstring), in result order;
    ``spans``, of ``text``, when the caller judges more of its results."""
    if spans is None:
        spans = TextSpans(text)
    url_passwords: Spans | None = None
    kept = []
    for result in results:
        if result.score < SCORE_THRESHOLD:
            continue
        if result.entity_type in NUMBER_KINDS and spans.hex_ids.contains(result.start, result.end):
            continue
        if result.entity_type == "PHONE_NUMBER" and not has_phone_core(text, result.start, result.end, spans.not_phone):
            continue
        if result.entity_type == "EMAIL_ADDRESS":
            if url_passwords is None:
                url_passwords = _url_passwords(text, results)
            if url_passwords.overlaps(result.start, result.start + 1):
                continue
        kept.append(result)
    return kept


def _url_passwords(text: str, results: list[RecognizerResult]) -> Spans:
    """The secrets right before an ``@``: what reads as an address starting inside one is a URL's
    password, its ``@`` and its host (``postgres://report:pw@db.corp.internal``), and is not
    kept: the password is masked on its own, and the host, no one's mailbox, stays for the
    approver to read. Found once per text (each address asked of every result made a string of
    6,000 addresses cost 19 s of masking)."""
    return Spans(
        (other.start, other.end)
        for other in results
        if other.entity_type == "SECRET" and other.score >= SCORE_THRESHOLD and text[other.end : other.end + 1] == "@"
    )


def build_analyzer() -> AnalyzerEngine:
    """An analyzer with every recognizer of this package on a blank spaCy pipeline, warmed up.

    The warm-up analyses a sample hitting every recognizer once, so lazily compiled
    patterns exist before the analyzer is shared between threads.
    """
    registry = RecognizerRegistry(supported_languages=[LANGUAGE])
    for recognizer in (
        *pii_recognizers(),
        *token_recognizers(),
        *secret_recognizers(),
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
