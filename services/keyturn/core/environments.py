"""Which environment a resource is in, and which environments a target serves: one rule for the
policy (what it decides under) and the executor (where it may run what was decided)."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from urllib.parse import unquote

ENVIRONMENTS = ("production", "staging", "development")  # strictest first
_MARKERS = (
    ("production", ("prod", "production", "live")),
    ("staging", ("staging", "stage", "stg")),
    ("development", ("dev", "development", "local", "sandbox")),
)


def environment_of(resource: str) -> str:
    """production / staging / development from the resource's path segments, else unknown; when
    segments name several, the strictest."""
    # escapes decoded first (``x%2Fprod`` holds the segment ``prod`` to a reader that decodes it)
    segments = {s for s in unquote(resource).lower().replace("://", "/").replace(".", "/").split("/") if s}
    for environment, markers in _MARKERS:
        if segments & set(markers):
            return environment
    return "unknown"


#: A percent-escape of a letter, a digit or ``-._~``, which RFC 3986 says mean the same written
#: plainly: ``staging.%70rod`` is ``staging.prod`` to any URL reader, not to a pattern.
_UNRESERVED_ESCAPE = re.compile(r"%(?:3[0-9]|4[1-9A-Fa-f]|5[0-9Aa]|6[1-9A-Fa-f]|7[0-9Aa]|2[DdEe]|5[Ff]|7[Ee])")


def spelling_problem(resource: str) -> str | None:
    """Why ``resource`` is refused as spelled: a form in which the place it names to whoever
    connects is not the place the policy's patterns and ``environment_of`` read (a probe passed
    production hosts as staging by each of these); None when it names its place one way.

    Look-alike letters (``ｐｒｏｄ``, NFKC) and non-ASCII hosts (a Cyrillic ``о``), escaped
    letters (``%70rod``), a user before the host (``staging:@prod``: the host is ``prod``), a list
    of hosts (``staging,prod``: libpq tries each) and, for a PostgreSQL resource of any scheme
    spelling, a query string (libpq's ``?host=prod`` names another server)."""
    if unicodedata.normalize("NFKC", resource) != resource:
        return "write the resource in plain characters: look-alike forms (full-width letters, ligatures) are not taken"
    scheme, separator, rest = resource.partition("://")
    if separator:
        authority = re.split(r"[/?#]", rest, maxsplit=1)[0]
        if not authority.isascii():
            return "a resource's host is written in ASCII: give an international name in its xn-- form"
        if "@" in authority:
            return "name the resource's host alone, with no user before it ('user@host'): credentials belong in secrets"
        if "%" in authority:
            return "a resource's host holds no percent-escapes"
        if "," in authority:  # libpq reads "staging,prod" as two hosts, tried in turn
            return "a resource names one host: a list of hosts would let a client connect to any of them"
        if "postgres" in scheme.lower() and "?" in rest:  # postgres, postgresql+psycopg, jdbc:postgresql
            return "a database resource takes no query string: options such as ?host= would name another server"
    if _UNRESERVED_ESCAPE.search(resource):
        return "write letters, digits and -._~ in the resource plainly, not as percent-escapes (such as %70 for p)"
    return None


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
