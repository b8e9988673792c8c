"""Schemathesis against the intake's OpenAPI document: whatever a client sends, the running intake
answers with a documented status and body, and never with a server error.

Every operation is fuzzed with valid (positive) and invalid (negative) requests. Each generated
request is sent twice: as generated (random or missing credentials) and with a valid agent
token, so the body validation behind authentication is fuzzed as well. The operations come from
the intake app's own document; the test first checks that the running intake serves that very
document at /openapi.json.
"""

from __future__ import annotations

import httpx
import hypothesis
import pytest
import schemathesis
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance, status_code_conformance

from keyturn.config import Settings
from keyturn.intake.app import create_app
from tests.integration.conftest import mint

pytestmark = pytest.mark.integration

CHECKS = [not_a_server_error, status_code_conformance, response_schema_conformance]
DOCUMENT = create_app(Settings()).openapi()
OPERATIONS = [result.ok() for result in schemathesis.openapi.from_dict(DOCUMENT).get_all_operations()]
EXAMPLES_PER_OPERATION = 25

# Found by this test, reported to the intake's owner; strict, so the mark must go once fixed.
KNOWN_BUGS: dict[tuple[str, str], str] = {}


def _case_id(operation, mode) -> tuple[str, str]:
    return f"{operation.method.upper()} {operation.path}", mode.value


def _known_bug(operation, mode):
    reason = KNOWN_BUGS.get(_case_id(operation, mode))
    return (
        pytest.param(operation, mode, marks=pytest.mark.xfail(strict=True, reason=reason))
        if reason
        else pytest.param(operation, mode)
    )


@pytest.fixture(scope="module")
def agent_token(settings) -> str:
    return mint(settings, "agent:fuzzer", ("human:alice",))


@pytest.fixture(scope="module")
def served_document(settings, services) -> dict:
    return httpx.get(f"{settings.intake_url}/openapi.json", timeout=30).json()


@pytest.mark.parametrize(
    ("operation", "mode"),
    [_known_bug(op, mode) for op in OPERATIONS for mode in GenerationMode],
    ids=lambda value: value.value if isinstance(value, GenerationMode) else f"{value.method.upper()} {value.path}",
)
def test_the_intake_answers_as_documented_and_never_with_a_server_error(
    operation, mode, settings, served_document, agent_token
) -> None:
    assert served_document == DOCUMENT, "the running intake serves another OpenAPI document than the one fuzzed"
    authorised = {"Authorization": f"Bearer {agent_token}"}

    @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
    @hypothesis.settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(hypothesis.HealthCheck),
    )
    def exchange(case) -> None:
        case.validate_response(case.call(base_url=settings.intake_url, timeout=30), checks=CHECKS)
        case.validate_response(case.call(base_url=settings.intake_url, headers=authorised, timeout=30), checks=CHECKS)

    try:
        exchange()
    except hypothesis.errors.Unsatisfiable:
        if mode is GenerationMode.NEGATIVE:
            pytest.skip("no request to this operation can be made invalid against its schema (nothing to negate)")
        raise
