"""Where the services meet data protection: intake masks and seals, the executor opens.

Clear parameters exist in exactly two places: the intake's request handler, and the executor
after ``open_parameters`` (which refuses a seal that does not belong to this action and digest).
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from keyturn.core.canonical import canonical_json
from keyturn.core.events import ActionRequested, Digest, SealedParameters
from keyturn.masking.sealing import Keyring, SealError, open_sealed, seal_parameters


class ParametersUnavailable(SealError):
    """The executor cannot get clear parameters it may trust; the action must not run."""


def keyring_for(seal_keys: str, keys_dir: Path) -> Keyring:
    """The configured keys (KEYTURN_SEAL_KEYS, production) when given, else a local key file
    in ``keys_dir`` created on first run."""
    if seal_keys:
        return Keyring.parse(seal_keys)
    return Keyring.load_or_create(keys_dir / "seal.keys")


@cache
def _masker() -> Any:
    from keyturn.masking.masker import ParameterMasker  # ~1.5 s of imports: only where masking happens

    return ParameterMasker()


def mask_parameters(parameters: dict[str, Any], extra_fields: tuple[str, ...] = ()) -> dict[str, Any]:
    """A copy safe for topics, chat, logs and audit (PII and secrets replaced by placeholders)."""
    return _masker().mask(parameters, extra_fields).parameters


def mask_text(text: str) -> str:
    """Free text (a log line, a refusal's reason) with PII and secrets replaced by placeholders."""
    return _masker().mask_text(text)[0]


def masked_excerpt(body: bytes, *, chars: int, read_at_most: int) -> str | None:
    """The start of a JSON object body after the masking accepted parameters get, or None.

    Only a body that parses as a JSON object gets one: field-name rules (``password``,
    ``api_key``…) need the structure, and free text cut mid-value could show half a secret.
    The whole body is masked before it is cut, and the result is masked once more as text so
    that keys, which parameter masking leaves alone, cannot carry a secret out either.
    """
    if len(body) > read_at_most:
        return None
    try:
        parsed = json.loads(body)
        if not isinstance(parsed, dict):
            return None
        masked = canonical_json(mask_parameters(parsed))
    except (ValueError, RecursionError):  # unparseable, or unmaskable (too deep): no excerpt
        return None
    text = mask_text(masked)
    return text if len(text) <= chars else text[: chars - 1] + "…"


def parameter_protector(keyring: Keyring):
    """(parameters, action_id, payload_digest) → (masked canonical JSON, sealed clear copy)."""
    _masker()  # build at start-up, not on the first request

    def protect(parameters: dict[str, Any], *, action_id: str, payload_digest: Digest) -> tuple[str, SealedParameters]:
        masked = canonical_json(mask_parameters(parameters))
        sealed = seal_parameters(parameters, action_id=action_id, payload_digest=str(payload_digest), keyring=keyring)
        return masked, sealed

    return protect


def parameter_opener(keyring: Keyring):
    """(request) → the clear parameters, opened from the sealed copy (a seal made for another
    action or digest does not open); that they hash to the approved digest is the executor's
    rule (``core.execution.refusal_reason``), checked before anything runs."""

    def open_parameters(request: ActionRequested) -> dict[str, Any]:
        if request.sealed_parameters is None:
            raise ParametersUnavailable(
                f"action {request.action_id} carries no sealed parameters; refusing to run masked ones"
            )
        return open_sealed(
            request.sealed_parameters,
            action_id=request.action_id,
            payload_digest=str(request.payload_digest),
            keyring=keyring,
        )

    return open_parameters


def masked_view(parameters_json: str, extra_fields: tuple[str, ...]) -> str:
    """Already-masked parameters with the policy's extra fields masked too."""
    return canonical_json(mask_parameters(json.loads(parameters_json), extra_fields))
