"""Personal data: e-mail addresses, phone numbers, cards, IBANs, SSNs and IP addresses.

These are Presidio's own recognizers, with one change: the e-mail recognizer checks domains
offline. They validate what they match (a Luhn check for cards, the IBAN checksum,
``ipaddress`` for IPs, python-phonenumbers for phones), so a number that merely looks like
one of these is mostly left alone. Phone numbers still need Keyturn's extra rule, in
:mod:`.phone`. Entity types:

========================  ===================================================================
``EMAIL_ADDRESS``         Presidio's e-mail pattern, domain checked offline
``PHONE_NUMBER``          Presidio's phone recognizer (python-phonenumbers, 8 regions)
``CREDIT_CARD``           Presidio's card pattern, Luhn-validated by Presidio; bounded by
                          digits, not words (``acct4977…``), groups joined by ``CARD_GAP``
``IBAN_CODE``             Presidio's IBAN pattern, checksum-validated by Presidio
``US_SSN``                Presidio's SSN patterns, and nine digits right after ``SSN``
``IP_ADDRESS``            Presidio's IPv4/IPv6 patterns, validated with ``ipaddress``
========================  ===================================================================
"""

from __future__ import annotations

import re

import regex
import tldextract
from presidio_analyzer import EntityRecognizer, Pattern
from presidio_analyzer.predefined_recognizers import (
    CreditCardRecognizer,
    EmailRecognizer,
    IbanRecognizer,
    IpRecognizer,
    PhoneRecognizer,
    UsSsnRecognizer,
)


class OfflineEmailRecognizer(EmailRecognizer):
    """Presidio's e-mail recognizer, checking domains against the bundled suffix list.

    The stock recognizer calls ``tldextract.extract``, which fetches the public suffix list
    over the network on first use and caches it under the home directory.
    """

    _domains = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)

    def validate_result(self, pattern_text: str) -> bool:
        """True when the address's domain ends in a known public suffix, or in a name of letters
        alone as private networks use (``ops@example.internal``, ``x@corp.local``, ``.lan``,
        ``.corp``): an organisation's own mail is as personal as anyone's. A last label with a
        digit (``lodash@4.17.21``, ``image@sha256``) is no mail domain. Only the domain is
        checked: the local part may hold ``/`` (``users/alice@example.com``), and the whole text
        read as a URL named the host ``users``, so the address went through in clear."""
        domain = pattern_text.rpartition("@")[2]
        return _PRIVATE_MAIL_DOMAIN.fullmatch(domain) is not None or self._domains(domain).fqdn != ""


#: A domain of dot-separated labels whose last is two or more letters (any suffix, listed or not).
_PRIVATE_MAIL_DOMAIN = re.compile(r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.)+[A-Za-z]{2,63}")


#: Between a card's digit groups: up to three spaces or separators (``4539 - 0001 - …``,
#: ``4539_0001_…``, ``4539 – 0001`` with an en dash, ``4539|0001``, a tab).
CARD_GAP = r"[\s\-._:/|\u2010-\u2015\u2212]{0,3}"
#: Presidio's card pattern with its ``\b`` ends made digit bounds: a card glued to a word
#: (``acct4977…``, ``x_4977…``) is still a card, where ``\b`` sees no edge between a letter or
#: ``_`` and a digit; and its groups may be joined by any ``CARD_GAP``.
CARD_PATTERN = Pattern(
    "card number, digit-bounded",
    r"(?<!\d)(?!1\d{12}(?!\d))(?:4\d{3}|5[0-5]\d{2}|6\d{3}|1\d{3}|3\d{3})"
    rf"{CARD_GAP}\d{{3,4}}{CARD_GAP}\d{{3,4}}{CARD_GAP}\d{{3,5}}(?!\d)",
    0.3,
)
#: Nine digits named an SSN just before them (``ssn:219099999``, ``SSN #219099999``): Presidio
#: scores an unlabelled nine-digit run "very weak" (most are other numbers), and its context
#: words need a language model Keyturn does not load.
LABELLED_SSN = Pattern(
    "ssn after its name",
    r"(?i:\b(?:ssn|social[ _-]?security(?:[ _-]?(?:number|no))?))[\s\"':=#.-]{0,4}\K[0-9]{9}(?![0-9])",
    0.6,
)


class SeparatedCardRecognizer(CreditCardRecognizer):
    """Presidio's card recognizer, its Luhn check run on the digits alone: its own removes only
    ``-`` and spaces, and a digit group joined by anything else (``CARD_GAP``) would not parse."""

    def validate_result(self, pattern_text: str) -> bool:
        return bool(super().validate_result("".join(c for c in pattern_text if c.isdigit())))


def pii_recognizers() -> list[EntityRecognizer]:
    """One recognizer per personal-data entity type, in the order of the table above."""
    return [
        OfflineEmailRecognizer(),
        PhoneRecognizer(),
        SeparatedCardRecognizer(patterns=[CARD_PATTERN]),
        IbanRecognizer(),
        UsSsnRecognizer(patterns=[*UsSsnRecognizer.PATTERNS, LABELLED_SSN]),
        IpRecognizer(),
    ]


#: Nine digits an SSN could be (``078051122``, ``078-05-1122``) glued to a letter on either side,
#: where Presidio's patterns, which need a word's edge, and the phone rule, whose core starts a
#: word, see nothing. In a value such a run is as often an invoice or order number
#: (``INV204518733``), which approvers need, so only names use it (:func:`glued_ssns`).
_GLUED_SSN = regex.compile(
    r"(?<=[^\W\d_])(?<!\d)\d{3}(?P<a>[- .]?)\d{2}(?P=a)\d{4}(?!\d)"
    r"|(?<!\d)\d{3}(?P<b>[- .]?)\d{2}(?P=b)\d{4}(?=[^\W\d_])"
)
#: A run of 12 or more hex digits: an instance id, a digest (``i-0a123456789bcdef0``) or a UUID's
#: last group (``…-d358070397c0``), whose digits glued to its letters read as an SSN often enough
#: to refuse one random idempotency key in seventy (the SDK's own are UUIDs). Nine digits an SSN
#: could be inside such a run go unflagged: names holding hex ids are far the likelier case.
_LONG_HEX = regex.compile(r"(?<![0-9a-fA-F])[0-9a-fA-F]{12,}(?![0-9a-fA-F])")
_SSNS = UsSsnRecognizer()


def glued_ssns(text: str) -> list[tuple[int, int]]:
    """Spans of ``text`` holding nine digits glued to a letter (``read.x078051122``) that pass
    Presidio's SSN checks (no 000, 666 or 9xx area, no zero group, no sample number), outside a
    long hex id. For names, which travel in clear: a name holding one is refused, as one holding
    a card glued to a letter is, and the refused request's excerpt masks it."""
    if not any(map(str.isdigit, text)):  # map: no Python frame per character (most names hold no digit)
        return []
    hex_ids = [match.span() for match in _LONG_HEX.finditer(text)]
    return [
        match.span()
        for match in _GLUED_SSN.finditer(text)
        if not _SSNS.invalidate_result(match.group())
        and not any(start <= match.start() and match.end() <= end for start, end in hex_ids)
    ]
