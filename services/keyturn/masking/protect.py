"""Where the services meet data protection: intake masks and seals, the executor opens.

Clear parameters exist in exactly two places: the intake's request handler, and the executor
after ``open_parameters`` (which refuses a seal that does not belong to this action and digest).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from keyturn.core.canonical import canonical_json
from keyturn.core.events import ActionRequested, Digest, SealedParameters
from keyturn.core.text import PLACEHOLDER, storable, whole_runs
from keyturn.masking.sealing import Keyring, SealError, open_sealed, seal_parameters
from keyturn.secret_store import is_reference

if TYPE_CHECKING:  # the masker's imports cost ~1.5 s: only where masking happens
    from keyturn.masking.masker import PhoneCoreBudget


class ParametersUnavailable(SealError):
    """The executor cannot get clear parameters it may trust; the action must not run."""


def keyring_for(seal_keys: str, keys_dir: Path) -> Keyring:
    """The configured keys (KEYTURN_SEAL_KEYS, production) when given, else a local key file
    in ``keys_dir`` created on first run."""
    if seal_keys:
        return Keyring.parse(seal_keys)
    return Keyring.load_or_create(keys_dir / "seal.keys")


@cache
def shared_masker() -> Any:
    """The process's one ``ParameterMasker`` (thread-safe; an analyser costs ~2 s and memory to build)."""
    from keyturn.masking.masker import ParameterMasker  # ~1.5 s of imports: only where masking happens

    return ParameterMasker()


def mask_parameters(
    parameters: dict[str, Any], extra_fields: tuple[str, ...] = (), phone_cores: PhoneCoreBudget | None = None
) -> dict[str, Any]:
    """A copy safe for topics, chat, logs and audit (PII and secrets replaced by placeholders);
    ``phone_cores``: checks shared with other calls (``masker.PhoneCoreBudget``)."""
    return shared_masker().mask(parameters, extra_fields, phone_cores).parameters


def hidden_in(values: dict[str, Any]) -> list[tuple[str, str]]:
    """(path, entity type) of each secret or personal datum masking finds in ``values`` (one
    masking pass for them all; paths as ``$.field[0]``), never the value."""
    return [(finding.path, finding.entity_type) for finding in shared_masker().mask(values).findings]


def hidden_in_name(name: str) -> set[str]:
    """The kinds of secret or personal datum in a name (an action's, a resource's, keys): what
    masking finds in it as a value, and nine digits an SSN could be glued to a letter
    (``recognizers.pii.glued_ssns``), which a value may hold but a name, shown in clear, may not."""
    from keyturn.masking.recognizers.pii import glued_ssns

    clean = shared_masker().clean_names  # answered again at once, as masking found nothing in them
    if name in clean:
        return set()
    kinds = {kind for _, kind in hidden_in({"name": name})}
    if glued_ssns(name):
        kinds.add("US_SSN")
    if not kinds:
        clean.add(name)
    return kinds


def _names_masked(text: str) -> str:
    """``text`` with what :func:`hidden_in_name` finds in names alone masked too: where a refused
    request's names are shown (its excerpt), so a name refused for holding one does not keep it."""
    from keyturn.masking.masker import placeholder
    from keyturn.masking.recognizers.pii import glued_ssns

    for start, end in reversed(glued_ssns(text)):
        text = text[:start] + placeholder("US_SSN") + text[end:]
    return text


def mask_text(text: str) -> str:
    """Free text (a log line, a refusal's reason) with PII and secrets replaced by placeholders."""
    return shared_masker().mask_text(text)[0]


def masked_within(text: str, chars: int) -> str:
    """``text`` masked, then cut to ``chars`` (``…`` marking a cut). Masked first: a cut can leave
    half a secret that masking no longer recognises. Cut far beyond the limit before masking
    (masking costs grow with length), together with the run of text that cut went through: a
    secret split there could be half left, and masking shortens what comes before it (a long key
    becomes one placeholder), which could pull that half under the limit."""
    masked = mask_text(whole_runs(text, chars * 8))
    return masked if len(masked) <= chars else masked[: chars - 1] + "…"


def masked_excerpt(body: bytes, *, chars: int, read_at_most: int) -> str | None:
    """The start of a JSON object body after the masking accepted parameters get, or None.

    Only a body that parses as a JSON object gets one: field-name rules (``password``,
    ``api_key``…) need the structure, and free text cut mid-value could show half a secret.
    The whole body is masked before it is cut, and the result is masked once more as text so
    that keys, which parameter masking leaves alone, cannot carry a secret out either, and with
    what names alone are refused for (:func:`hidden_in_name`), since a refused body's names are in it.
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
    # text a record can carry: a lone surrogate (JSON spells one, UTF-8 cannot) fails its encoding
    text = storable(_names_masked(mask_text(masked)))
    return text if len(text) <= chars else text[: chars - 1] + "…"


def parameter_protector(keyring: Keyring):
    """(parameters, action_id, payload_digest, the policy's mask paths, phone checks shared with
    other submissions) → (masked canonical JSON, sealed clear copy)."""
    shared_masker()  # build at start-up, not on the first request

    def protect(
        parameters: dict[str, Any],
        *,
        action_id: str,
        payload_digest: Digest,
        mask: tuple[str, ...] = (),
        phone_cores: PhoneCoreBudget | None = None,
    ) -> tuple[str, SealedParameters]:
        masked = canonical_json(mask_parameters(parameters, mask, phone_cores))
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


MIN_HIDDEN_CHARS = 4  # shorter values ("1", "id") would blank out ordinary words: replaced only when quoted


def hidden_values(clear: Any, masked: Any, mask: tuple[str, ...] | list[str] = ()) -> dict[str, str]:
    """The clear values the masked copy hides, each with what it shows instead: where it shows a
    placeholder for a text or a number, and everything under the decision's ``mask`` paths
    (``parameters.password``; ``<MASKED>``).

    A failure text is stripped of them (``without``) before it travels: a database error can quote
    a literal (``invalid input syntax for type integer: "…"``) that no recogniser would find in the
    message alone, because it was masked for its field's name or the policy's word.
    """
    found: dict[str, str] = {}

    def leaves(value: Any, shown: str) -> None:
        if is_reference(value):
            return  # a secret's name, which errors name (the executor redacts the value it resolves to)
        if isinstance(value, Mapping):
            for item in value.values():
                leaves(item, shown)
        elif isinstance(value, (list, tuple)):
            for item in value:
                leaves(item, shown)
        elif _scalar(value) and len(text := str(value)) >= MIN_HIDDEN_CHARS:
            found.setdefault(text, shown)
        elif _scalar(value) and text:  # a short one (a PIN, "123") only where a message quotes it
            for quote in ('"', "'"):
                found.setdefault(f"{quote}{text}{quote}", f"{quote}{shown}{quote}")

    def compare(plain: Any, shown: Any) -> None:
        if is_reference(plain):
            return  # as in leaves
        if isinstance(plain, Mapping) and isinstance(shown, Mapping):
            for key, item in plain.items():
                compare(item, shown.get(key))
        elif isinstance(plain, (list, tuple)) and isinstance(shown, (list, tuple)) and len(plain) == len(shown):
            for item, other in zip(plain, shown, strict=True):
                compare(item, other)
        elif isinstance(shown, str) and PLACEHOLDER.fullmatch(shown):
            leaves(plain, shown)
        elif isinstance(plain, (Mapping, list, tuple)):
            leaves(plain, "<MASKED>")  # shaped differently from the masked copy: hidden, all of it

    compare(clear, masked)
    for path in mask:
        if path.startswith("parameters."):
            node: Any = clear
            for segment in path.split(".")[1:]:
                node = node.get(segment) if isinstance(node, Mapping) else None
            leaves(node, "<MASKED>")
    return found


def without(text: str, hidden: Mapping[str, str]) -> str:
    """``text`` with every hidden value replaced by what the masked copy shows (longest first, so a
    value inside another goes with it)."""
    for value in sorted(hidden, key=len, reverse=True):
        text = text.replace(value, hidden[value])
    return text


def without_anywhere(value: Any, hidden: Mapping[str, str]) -> Any:
    """``value`` (a result: JSON types) with ``without`` applied to every text in it, keys included."""
    if not hidden:
        return value
    if isinstance(value, str):
        return without(value, hidden)
    if isinstance(value, Mapping):
        return {without_anywhere(key, hidden): without_anywhere(item, hidden) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [without_anywhere(item, hidden) for item in value]
    return value


def without_hidden(text: str, clear: Any, masked: Any, mask: tuple[str, ...] | list[str] = ()) -> str:
    """``text`` (a failure's message) without any value the masked copy hides (``hidden_values``)."""
    return without(text, hidden_values(clear, masked, mask))


def _scalar(value: Any) -> bool:
    return isinstance(value, (str, int, float)) and not isinstance(value, bool)
