"""What the requester gets back: results capped in rows and bytes, then masked; failure reasons masked.

Masking uses ``keyturn.masking.ParameterMasker``: fields named like credentials, the
decision's ``mask`` paths (``parameters.password`` masks a ``password`` field or column),
and personal data found in strings. If masking is unavailable the result is withheld, never
sent in clear.
"""

from __future__ import annotations

import logging
from typing import Any

from keyturn.core.canonical import canonical_json
from keyturn.core.execution import capped_result, masked_columns, result_mask_fields
from keyturn.masking.field_names import column_entity
from keyturn.masking.masker import placeholder

#: The key under which a read's result names, for each output column a table column was renamed
#: to (``SELECT ssn AS x``), the table column it holds (``sql.source_columns``); the shaper
#: removes it, and masks a column the policy masks under any alias.
SOURCE_COLUMNS = "_source_columns"

log = logging.getLogger(__name__)

MAX_RESULT_BYTES = 256 * 1024  # well under Kafka's default 1 MiB message limit, with the event around it


class ResultShaper:
    def __init__(self, max_rows: int, *, max_bytes: int = MAX_RESULT_BYTES, masker: Any = None) -> None:
        self.max_rows = max_rows
        self.max_bytes = max_bytes
        self._masker: Any = masker  # a keyturn.masking.ParameterMasker; the process's shared one when None

    def warm(self) -> None:
        """Build the masker now (about two seconds) rather than on the first result."""
        self._get_masker()

    def _get_masker(self) -> Any:
        from keyturn.masking.protect import shared_masker  # the one the log filter and exports use (built once)

        return self._masker or shared_masker()

    def shape(self, result: Any, mask: tuple[str, ...]) -> Any:
        """``result`` capped to ``max_rows`` rows and ``max_bytes``, masked."""
        sources: dict[str, str] = {}
        if isinstance(result, dict) and isinstance(result.get(SOURCE_COLUMNS), dict):
            result = dict(result)
            sources = {str(k): str(v) for k, v in result.pop(SOURCE_COLUMNS).items()}
        capped = capped_result(result, self.max_rows)
        try:
            masked = (
                self._get_masker()
                .mask({"result": capped}, [f"result.{f}" for f in result_mask_fields(mask)])
                .parameters["result"]
            )
            masked = _columns_masked(masked, capped, masked_columns(mask), sources)
            masked = self._keys_masked(masked)
        except Exception as exc:  # fail closed: an unmasked result never leaves the executor
            log.error("result withheld, masking failed: %s: %s", type(exc).__name__, exc)
            return {"withheld": f"the result could not be masked ({type(exc).__name__}); it is not returned"}
        return self._within_bytes(masked)

    def _keys_masked(self, result: Any) -> Any:
        """``result`` with the keys of its objects masked too: a parameter's keys are names the
        agent chose (and checked at the door), but a result's come from the data (a JSON column
        keyed by e-mail address or by account). All keys in one masking pass; a key that masks to
        one already there gets a number, so no value is lost."""
        keys: dict[str, None] = {}
        _collect_keys(result, keys)
        if not keys:
            return result
        masked = self._get_masker().mask({"keys": list(keys)}, ()).parameters["keys"]
        renamed = {key: new for key, new in zip(keys, masked, strict=True) if new != key}
        return _renamed(result, renamed) if renamed else result

    def mask_text(self, text: str) -> str:
        """A failure reason with credentials and personal data masked (it may quote data)."""
        try:
            return self._get_masker().mask_text(text)[0]
        except Exception as exc:
            log.error("reason withheld, masking failed: %s: %s", type(exc).__name__, exc)
            return "the reason could not be masked; it is not returned"

    def _within_bytes(self, result: Any) -> Any:
        if len(canonical_json(result).encode()) <= self.max_bytes:
            return result
        if isinstance(result, dict) and isinstance(result.get("rows"), list):
            rows = result["rows"]
            low, high = 0, len(rows)  # the most rows that still fit
            while low < high:
                middle = (low + high + 1) // 2
                if len(canonical_json({**result, "rows": rows[:middle]}).encode()) <= self.max_bytes:
                    low = middle
                else:
                    high = middle - 1
            fitted = {**result, "rows": rows[:low], "truncated": True}
            if len(canonical_json(fitted).encode()) <= self.max_bytes:
                return fitted
        summary = {"truncated": True, "omitted": f"the result is larger than {self.max_bytes} bytes"}
        if isinstance(result, dict) and isinstance(result.get("row_count"), int):
            summary["row_count"] = result["row_count"]
        return summary


def _columns_masked(masked: Any, clear: Any, columns: frozenset[str], sources: dict[str, str] | None = None) -> Any:
    """``masked`` with the values of the columns the policy masks (``masked_columns``) that masking
    left as they were replaced by a placeholder, in every row, whatever they look like
    (``bob (at) corp dot com``); what masking found keeps the placeholder it got. ``sources``
    names the table column an output column holds under another name: it is masked as that one."""
    held: dict[str, str] = sources or {}
    if not columns or not isinstance(masked, dict) or not isinstance(masked.get("rows"), list):
        return masked
    clear_rows = clear.get("rows") if isinstance(clear, dict) else None
    if not isinstance(clear_rows, list) or len(clear_rows) != len(masked["rows"]):
        return masked

    def shown(name: str, value: Any, clear_value: Any) -> Any:
        source = held.get(name, name)
        if source.lower() in columns and value is not None and value == clear_value:
            return placeholder(column_entity(source), value)
        return value

    rows = []
    for row, before in zip(masked["rows"], clear_rows, strict=True):
        if isinstance(row, dict) and isinstance(before, dict):
            row = {name: shown(name, value, before.get(name)) for name, value in row.items()}
        rows.append(row)
    return {**masked, "rows": rows}


def _collect_keys(value: Any, keys: dict[str, None]) -> None:
    if isinstance(value, dict):
        for key, inner in value.items():
            if isinstance(key, str):
                keys[key] = None
            _collect_keys(inner, keys)
    elif isinstance(value, list):
        for inner in value:
            _collect_keys(inner, keys)


def _renamed(value: Any, renamed: dict[str, str]) -> Any:
    if isinstance(value, list):
        return [_renamed(inner, renamed) for inner in value]
    if not isinstance(value, dict):
        return value
    out: dict[str, Any] = {}
    for key, inner in value.items():
        base = renamed.get(key, key) if isinstance(key, str) else key
        new, number = base, 2
        while new in out:  # two keys masked alike (two addresses): both kept
            new, number = f"{base} ({number})", number + 1
        out[new] = _renamed(inner, renamed)
    return out
