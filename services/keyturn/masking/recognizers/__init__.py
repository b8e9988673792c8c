"""The detectors behind masking: Presidio's analyzer on a blank spaCy pipeline.

Everything here is pattern based, so no trained spaCy model is needed and none is ever
loaded or downloaded, and the e-mail recognizer checks domains against tldextract's bundled
suffix snapshot instead of fetching the public suffix list. Building and using the analyzer
touches neither disk caches nor the network. One module per kind:

========================  ===================================================================
:mod:`.pii`               personal data: e-mail, phone, card, IBAN, SSN, IP (Presidio's own)
:mod:`.phone`             the extra rule a phone number must pass to be kept
:mod:`.tokens`            cloud and API tokens, JWTs, private keys: formats with a fixed shape
:mod:`.secrets`           ``SECRET``: passwords in URLs, detect-secrets' keyword and entropy
:mod:`.patterns`          how the token and secret regex tables become Presidio recognizers
:mod:`.engine`            the NLP engine on ``spacy.blank("en")``, and the language
:mod:`.analyzer`          :func:`build_analyzer`, :data:`ENTITY_TYPES`, the result rules
========================  ===================================================================

This package re-exports what the rest of masking uses.
"""

from keyturn.masking.recognizers.analyzer import (
    ENTITY_TYPES,
    SCORE_THRESHOLD,
    TextSpans,
    build_analyzer,
    kept_results,
)
from keyturn.masking.recognizers.engine import LANGUAGE
from keyturn.masking.recognizers.phone import (
    PHONE_DIGIT_RUN,
    has_phone_core,
    not_phone_spans,
)
from keyturn.masking.recognizers.secrets import DetectSecretsRecognizer

__all__ = [
    "ENTITY_TYPES",
    "LANGUAGE",
    "PHONE_DIGIT_RUN",
    "SCORE_THRESHOLD",
    "DetectSecretsRecognizer",
    "TextSpans",
    "build_analyzer",
    "has_phone_core",
    "kept_results",
    "not_phone_spans",
]
