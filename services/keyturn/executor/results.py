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
from keyturn.core.execution import capped_result, result_mask_fields

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
        capped = capped_result(result, self.max_rows)
        try:
            masked = (
                self._get_masker()
                .mask({"result": capped}, [f"result.{f}" for f in result_mask_fields(mask)])
                .parameters["result"]
            )
        except Exception as exc:  # fail closed: an unmasked result never leaves the executor
            log.error("result withheld, masking failed: %s: %s", type(exc).__name__, exc)
            return {"withheld": f"the result could not be masked ({type(exc).__name__}); it is not returned"}
        return self._within_bytes(masked)

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
