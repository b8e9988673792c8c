"""Which environment a resource is in, and which environments a target serves: one rule for the
policy (what it decides under) and the executor (where it may run what was decided)."""

from __future__ import annotations

from collections.abc import Iterable

ENVIRONMENTS = ("production", "staging", "development")  # strictest first
_MARKERS = (
    ("production", ("prod", "production", "live")),
    ("staging", ("staging", "stage", "stg")),
    ("development", ("dev", "development", "local", "sandbox")),
)


def environment_of(resource: str) -> str:
    """production / staging / development from the resource's path segments, else unknown; when
    segments name several, the strictest."""
    segments = {s for s in resource.lower().replace("://", "/").replace(".", "/").split("/") if s}
    for environment, markers in _MARKERS:
        if segments & set(markers):
            return environment
    return "unknown"


def served_environments(text: str) -> frozenset[str]:
    """A comma list of environments (``KEYTURN_SQL_TARGET_ENVIRONMENTS``), each one of
    ``ENVIRONMENTS``; ValueError naming what is not."""
    named = frozenset(part.strip().lower() for part in text.split(",") if part.strip())
    if not named or not named <= set(ENVIRONMENTS):
        raise ValueError(f"environments must be a comma list of {', '.join(ENVIRONMENTS)}, got {text!r}")
    return named


def unserved(resource: str, serves: Iterable[str], target: str) -> str | None:
    """Why a command on ``resource``, decided under the resource's environment, may not run on a
    target serving ``serves``; None when it may. An environment nobody could name is decided as
    production is (``keyturn.request.in_production``), so only a production target runs it."""
    named = environment_of(resource)
    environment = "production" if named == "unknown" else named
    served = frozenset(serves)
    if environment in served:
        return None
    return (
        f"the resource is in {named if named != 'unknown' else 'no named environment (decided as production)'}, "
        f"and {target} serves {', '.join(e for e in ENVIRONMENTS if e in served)}: the policy decided this action "
        "for another environment than the one it would run in, so nothing was run"
    )
