"""Credentials with a format of their own: cloud and API tokens, JWTs and private keys.

These are issued by a service in a documented shape (a fixed prefix, a length, an
alphabet), so a case-sensitive regex finds them with next to no false positives, wherever
they appear in a value and whatever the field is called. Entity types:

========================  ===================================================================
``AWS_ACCESS_KEY``        access key ids (``AKIA…``, ``ASIA…`` and the other AWS prefixes)
``AWS_SECRET_KEY``        a 40-character secret key written after an ``aws_secret…key`` name
``GCP_API_KEY``           Google API keys (``AIza…``)
``AZURE_KEY``             storage ``AccountKey=…``, SAS ``sig=…``, Entra client secrets
``SLACK_TOKEN``           ``xox[abeprs]-…`` tokens, ``xapp-…`` tokens, incoming-webhook URLs
``GITHUB_TOKEN``          ``ghp_/gho_/ghu_/ghs_/ghr_`` tokens and fine-grained ``github_pat_``
``JWT``                   three base64url segments, the first starting ``eyJ``
``PRIVATE_KEY``           PEM private keys (RSA, EC, DSA, OpenSSH, PKCS#8, PGP), even cut short
========================  ===================================================================
"""

from __future__ import annotations

from presidio_analyzer import PatternRecognizer

from keyturn.masking.recognizers.patterns import PatternRow, pattern_recognizers

_PEM_BODY = r"[A-Za-z0-9+/=\s:,.\-]"
_PEM_LABEL = r"-----BEGIN[ A-Z0-9]*PRIVATE KEY(?: BLOCK)?-----"
_PEM_END = r"-----END[ A-Z0-9]*PRIVATE KEY(?: BLOCK)?-----"

#: (entity, pattern name, regex, score) for the token recognizers.
TOKEN_PATTERNS: tuple[PatternRow, ...] = (
    (
        "AWS_ACCESS_KEY",
        "aws access key id",
        # no word boundary on either side: a key glued to other text (``U0AKIA…``, ``AKIA…547``)
        # is still a key, and the prefix and 16 upper-case characters are specific enough
        r"(?:AKIA|ASIA|ABIA|ACCA|AGPA|AIDA|AIPA|ANPA|ANVA|AROA|APKA|ASCA)[A-Z0-9]{16}",
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
        r"gh[pousr]_[A-Za-z0-9]{36,255}",  # glued to other text too, as AWS keys
        0.9,
    ),
    (
        "GITHUB_TOKEN",
        "github fine-grained token",
        r"github_pat_[A-Za-z0-9_]{22,255}",
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
)


def token_recognizers() -> list[PatternRecognizer]:
    """One Presidio pattern recognizer per entity for the token formats."""
    return pattern_recognizers(TOKEN_PATTERNS)
