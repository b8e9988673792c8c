"""Personal data: e-mail addresses, phone numbers, cards, IBANs, SSNs and IP addresses.

These are Presidio's own recognizers, with one change: the e-mail recognizer checks domains
offline. They validate what they match (a Luhn check for cards, the IBAN checksum,
``ipaddress`` for IPs, python-phonenumbers for phones), so a number that merely looks like
one of these is mostly left alone. Phone numbers still need Keyturn's extra rule, in
:mod:`.phone`. Entity types:

========================  ===================================================================
``EMAIL_ADDRESS``         Presidio's e-mail pattern, domain checked offline
``PHONE_NUMBER``          Presidio's phone recognizer (python-phonenumbers, 8 regions)
``CREDIT_CARD``           Presidio's card pattern, Luhn-validated by Presidio
``IBAN_CODE``             Presidio's IBAN pattern, checksum-validated by Presidio
``US_SSN``                Presidio's SSN patterns
``IP_ADDRESS``            Presidio's IPv4/IPv6 patterns, validated with ``ipaddress``
========================  ===================================================================
"""

from __future__ import annotations

import tldextract
from presidio_analyzer import EntityRecognizer
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
        """True when the address's domain ends in a known public suffix. Only the domain is
        checked: the local part may hold ``/`` (``users/alice@example.com``), and the whole text
        read as a URL named the host ``users``, so the address went through in clear."""
        return self._domains(pattern_text.rpartition("@")[2]).fqdn != ""


def pii_recognizers() -> list[EntityRecognizer]:
    """One recognizer per personal-data entity type, in the order of the table above."""
    return [
        OfflineEmailRecognizer(),
        PhoneRecognizer(),
        CreditCardRecognizer(),
        IbanRecognizer(),
        UsSsnRecognizer(),
        IpRecognizer(),
    ]


_CARDS = CreditCardRecognizer()


def card_number(value: int | float) -> bool:
    """Whether a JSON number is a card number: an integer (or a float with no fraction) of 13 to
    19 digits that Presidio's card recognizer takes (its pattern and the Luhn check). A card
    sent as a number is as much a card as one sent as text."""
    if not 10**12 <= abs(value) < 10**19 or (isinstance(value, float) and not value.is_integer()):
        return False  # fewer than 13 digits or more than 19 (most numbers: one comparison), or a fraction
    try:
        digits = str(abs(int(value)))
    except (OverflowError, ValueError):  # inf, nan
        return False
    if not 13 <= len(digits) <= 19:
        return False
    return any(result.score > 0 for result in _CARDS.analyze(digits, ["CREDIT_CARD"]))
