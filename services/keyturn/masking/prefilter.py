"""Which recognizers could possibly report something in a string, decided cheaply.

Presidio costs about 0.1 ms per call before it does any work, and its phone recognizer
about 0.3 ms per digit group, while most parameter values are plain words. For each entity
type this module holds a *necessary condition* for that type's recognizer to report a result
that :func:`keyturn.masking.recognizers.kept_results` keeps: something every such result
must contain. A value whose candidate set is empty skips Presidio; otherwise Presidio runs
with only the candidate entity types. Patterns use the recognizers' regex engine (``regex``)
and character classes, so Unicode digits count the same way on both sides.

Why each condition is necessary:

- ``EMAIL_ADDRESS``: the pattern has a literal ``@``.
- ``PHONE_NUMBER``: kept phone numbers contain a phone core by rule (7 digits, not inside
  an IP address, SSN or card-length run; see :func:`has_phone_core`).
- ``CREDIT_CARD``: 13 to 19 digits in groups joined by up to three spaces or separators
  (``recognizers.pii.CARD_GAP``).
- ``US_SSN``: only ``ddd[- .]dd[- .]dddd``, or nine digits just after ``ssn`` or ``social
  security [number|no]``, score above the threshold (9 digits).
- ``IBAN_CODE``: the pattern starts with two capitals, two digits and two 4-groups.
- ``IP_ADDRESS``: IPv4 needs ``d.d{1,3}.d{1,3}.d``; every IPv6 form has ``::`` or six colons.
- token types: each pattern contains a fixed marker (``AKIA``, ``eyJ``, ``-----BEGIN``…);
  the two case-insensitive ones (``aws_secret…key``, ``AccountKey``) also need ``=`` or ``:``.
- ``SECRET``: a URL password needs ``://`` and ``@``; detect-secrets' plugins are cheap, so
  :meth:`DetectSecretsRecognizer.could_flag` simply runs them.

Guards in front of the patterns (a digit count, ``in`` tests) only skip a pattern whose own
requirement they prove unmet. ``tests/unit/test_masking_prefilter.py`` checks with generated
payloads that masking with and without this module agree.
"""

from __future__ import annotations

import re

import regex

from keyturn.masking.recognizers import (
    PHONE_DIGIT_RUN,
    DetectSecretsRecognizer,
    has_phone_core,
    not_phone_spans,
)

_DIGIT = regex.compile(r"\d")
_CARD = regex.compile(r"\d(?:[\s\-._:/|\u2010-\u2015\u2212]{0,3}\d){12}")  # CARD_GAP, no lookarounds
_SSN = regex.compile(r"[0-9]{3}[- .][0-9]{2}[- .][0-9]{4}")
_NINE_DIGITS = regex.compile(r"(?<![0-9])[0-9]{9}(?![0-9])")
_IBAN = regex.compile(r"[A-Z]{2}[0-9]{2}[ -]?[A-Z0-9]{4}[ -]?[A-Z0-9]{4}")
_IPV4 = regex.compile(r"[0-9]\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]")

#: Case-sensitive markers, tested with ``in``: entity → markers, any one suffices.
_MARKERS: dict[str, tuple[str, ...]] = {
    "AWS_ACCESS_KEY": (
        "AKIA", "ASIA", "ABIA", "ACCA", "AGPA", "AIDA",
        "AIPA", "ANPA", "ANVA", "AROA", "APKA", "ASCA",
    ),
    "GCP_API_KEY": ("AIza",),
    "AZURE_KEY": ("sig=", "Q~"),
    "SLACK_TOKEN": ("xox", "xapp-", "hooks.slack.com/"),
    "GITHUB_TOKEN": ("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"),
    "JWT": ("eyJ",),
    "PRIVATE_KEY": ("-----BEGIN",),
}  # fmt: skip
_ANY_MARKER = re.compile("|".join(re.escape(m) for ms in _MARKERS.values() for m in ms))
_AWS_SECRET_NAME = regex.compile(r"(?i:aws_?secret)")
_AZURE_ACCOUNT_KEY = regex.compile(r"(?i:accountkey)")


class Prefilter:
    """Candidate entity types for a string; an empty set means no recognizer can match."""

    def __init__(self) -> None:
        self._secrets = DetectSecretsRecognizer()

    def candidates(self, text: str) -> frozenset[str]:
        """Entity types whose recognizer could report a kept result in ``text``."""
        found: set[str] = set()
        if "@" in text:
            found.add("EMAIL_ADDRESS")
            if "://" in text:
                found.add("SECRET")
        if _DIGIT.search(text) is not None:
            self._numbers(text, found)
        if ":" in text and ("::" in text or text.count(":") >= 6):
            found.add("IP_ADDRESS")
        if _ANY_MARKER.search(text) is not None:
            for entity, markers in _MARKERS.items():
                if any(marker in text for marker in markers):
                    found.add(entity)
        if "=" in text or ":" in text:
            if _AWS_SECRET_NAME.search(text):
                found.add("AWS_SECRET_KEY")
            if "=" in text and _AZURE_ACCOUNT_KEY.search(text):
                found.add("AZURE_KEY")
        if "SECRET" not in found and self._secrets.could_flag(text):
            found.add("SECRET")
        return frozenset(found)

    @staticmethod
    def _numbers(text: str, found: set[str]) -> None:
        digits = len(_DIGIT.findall(text))
        if (
            digits >= 7
            and PHONE_DIGIT_RUN.search(text) is not None
            and has_phone_core(text, 0, len(text), not_phone_spans(text))
        ):
            found.add("PHONE_NUMBER")
        if digits >= 13 and _CARD.search(text):
            found.add("CREDIT_CARD")
        if digits >= 9 and (_SSN.search(text) or _named_ssn(text)):
            found.add("US_SSN")
        if digits >= 4 and "." in text and _IPV4.search(text):
            found.add("IP_ADDRESS")
        if _IBAN.search(text):
            found.add("IBAN_CODE")


def _named_ssn(text: str) -> bool:
    """What ``recognizers.pii.LABELLED_SSN`` needs: its name, and nine digits on their own."""
    lowered = text.lower()
    return ("ssn" in lowered or "security" in lowered) and _NINE_DIGITS.search(text) is not None
