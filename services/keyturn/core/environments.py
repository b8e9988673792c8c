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


def unserved(environment: str, serves: Iterable[str], target: str) -> str | None:
    """Why a command decided under ``environment`` (the policy's, ``ENVIRONMENT_PATH``) may not run
    on a target serving ``serves``; None when it may. An environment nobody could name is decided
    as production is (``keyturn.request.in_production``), so only a production target runs it."""
    effective = "production" if environment == "unknown" else environment
    served = frozenset(serves)
    if effective in served:
        return None
    named = environment if environment != "unknown" else "no named environment (decided as production)"
    return (
        f"the policy decided this action for {named}, and {target} serves "
        f"{', '.join(e for e in ENVIRONMENTS if e in served)}: it would run in another environment "
        "than the one whose rules allowed it, so nothing was run"
    )


#: The policy's answer to "which environment is this resource in" (``keyturn.request.environment``):
#: the strictest of the service's reading (``environment_of``) and the resource patterns of
#: ``data.keyturn.environments``. The executor asks the same question with the same input, so
#: what runs where is judged by exactly the rule that decided it.
ENVIRONMENT_PATH = "keyturn/request/environment"


def environment_input(resource: str) -> dict[str, str]:
    """The input the policy's environment rule reads, as the policy service sends it."""
    return {"resource": resource, "environment": environment_of(resource)}
