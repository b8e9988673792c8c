"""Data protection for action parameters: masking what people see, sealing what executes.

``ParameterMasker`` turns parameters into a copy safe for topics, chat messages, logs and
audit; ``seal_parameters`` encrypts the clear copy for the executor alone.

The masking names load on first use, so a process that only seals or opens (the executor)
does not pay for importing the analyzer.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from keyturn.masking.sealing import (
    InvalidKeyring,
    Keyring,
    SealedParameters,
    SealError,
    SealTampered,
    UnknownSealKey,
    open_sealed,
    seal_parameters,
)

if TYPE_CHECKING:
    from keyturn.masking.masker import (
        Finding,
        MaskedParameters,
        ParameterMasker,
        UnmaskableParameters,
        placeholder,
    )
    from keyturn.masking.recognizers import ENTITY_TYPES, build_analyzer

_LAZY = {
    "Finding": "keyturn.masking.masker",
    "MaskedParameters": "keyturn.masking.masker",
    "ParameterMasker": "keyturn.masking.masker",
    "UnmaskableParameters": "keyturn.masking.masker",
    "placeholder": "keyturn.masking.masker",
    "ENTITY_TYPES": "keyturn.masking.recognizers",
    "build_analyzer": "keyturn.masking.recognizers",
}

__all__ = [
    "ENTITY_TYPES",
    "Finding",
    "InvalidKeyring",
    "Keyring",
    "MaskedParameters",
    "ParameterMasker",
    "SealError",
    "SealTampered",
    "SealedParameters",
    "UnknownSealKey",
    "UnmaskableParameters",
    "build_analyzer",
    "open_sealed",
    "placeholder",
    "seal_parameters",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
