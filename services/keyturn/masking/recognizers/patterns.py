"""How a table of regexes becomes Presidio recognizers, for the token and secret formats.

Keyturn's own formats are written as rows of (entity, pattern name, regex, score); this
module turns such rows into one Presidio pattern recognizer per entity, matching case
sensitively, so :mod:`.tokens` and :mod:`.secrets` build theirs the same way.
"""

from __future__ import annotations

import regex
from presidio_analyzer import Pattern, PatternRecognizer

from keyturn.masking.recognizers.engine import LANGUAGE

#: (entity, pattern name, regex, score): one row of a pattern table.
PatternRow = tuple[str, str, str, float]

# Token formats are case-sensitive; Presidio's default flags would add IGNORECASE.
_CASE_SENSITIVE = regex.DOTALL | regex.MULTILINE


def pattern_recognizers(rows: tuple[PatternRow, ...]) -> list[PatternRecognizer]:
    """One Presidio pattern recognizer per entity of ``rows``, in order of first appearance.

    Each is named after its entity (``AWS_ACCESS_KEY`` → ``AwsAccessKeyRecognizer``).
    """
    by_entity: dict[str, list[Pattern]] = {}
    for entity, name, pattern, score in rows:
        by_entity.setdefault(entity, []).append(Pattern(name, pattern, score))
    return [
        PatternRecognizer(
            supported_entity=entity,
            name=f"{entity.title().replace('_', '')}Recognizer",
            patterns=patterns,
            supported_language=LANGUAGE,
            global_regex_flags=_CASE_SENSITIVE,
        )
        for entity, patterns in by_entity.items()
    ]
