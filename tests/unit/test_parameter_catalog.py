"""Parameter schemas: one source (policies.rego/keyturn/parameters/data.json), the intake's 422
naming the field path and nothing of the value, and the files generated from the source."""

from __future__ import annotations

import json
import re

from fastapi.testclient import TestClient

from keyturn.config import REPO_ROOT, Settings
from keyturn.core.parameters import ParameterCatalog
from keyturn.intake.app import create_app
from keyturn.intake.submissions import Intake
from keyturn.masking.protect import parameter_protector
from keyturn.policy import catalog as generated
from tests.fakes.service_ports import FakeActionStore, fake_publisher
from tests.unit.service_events import KEYRING
from tests.unit.test_intake_service import wiring_of

CATALOG = ParameterCatalog.load(REPO_ROOT / generated.SOURCE)
SECRET = "sk_live_51HnotAvalue0123456789abcdef"


def test_the_generated_opa_schema_and_catalog_page_are_up_to_date() -> None:
    assert generated.stale(REPO_ROOT) == [], "run: keyturn catalog generate"


def test_the_settings_read_the_same_source_opa_loads() -> None:
    assert Settings().parameter_catalog_path == str(REPO_ROOT / generated.SOURCE)


def test_the_generated_opa_schema_offers_every_catalog_schema_for_parameters() -> None:
    schema = json.loads((REPO_ROOT / generated.OPA_INPUT_SCHEMA).read_text())
    titles = [branch["title"] for branch in schema["properties"]["parameters"]["anyOf"]]
    assert titles[:-1] == list(CATALOG.entries), "plus one branch for actions outside the catalog"
    grant = next(b for b in schema["properties"]["parameters"]["anyOf"] if b["title"] == "iam.role.grant")
    assert grant["required"] == ["principal", "role"] and grant["additionalProperties"] is False
    assert "break_glass" in grant["properties"], "common parameters are part of every action's schema"


def test_the_readme_walk_through_uses_the_names_the_catalog_reads() -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    bodies = [json.loads(m) for m in re.findall(r"-d '(\{.*?\})'", readme, flags=re.S)]
    assert bodies, "the README shows a submission"
    for body in bodies:
        assert CATALOG.problems(body["action"], body["parameters"]) == []
        assert body["parameters"]["principal"]


def test_a_mismatch_names_each_field_path_and_rule_never_the_value() -> None:
    problems = CATALOG.problems("iam.role.grant", {"user": SECRET, "role": 7, "break_glass": SECRET})
    assert problems == [
        "parameters.break_glass: must be of type boolean",
        "parameters.principal: is required by iam.role.grant",
        "parameters.role: must be of type string",
        "parameters.user: is not a parameter of iam.role.grant",
    ]
    nested = CATALOG.problems("http.request", {"method": "GET", "headers": {"x-api-key": 12}})
    assert nested == [
        "parameters.headers.x-api-key: matches none of the forms http.request allows for it (docs/catalog.md)"
    ]
    # a header may be a secret reference, resolved only inside the executor
    assert CATALOG.problems("http.request", {"method": "GET", "headers": {"x-api-key": {"secret": "partner"}}}) == []
    assert CATALOG.problems("sql.query", {"statement": "", "max_rows": -1}) == [
        "parameters.max_rows: must be at least 0",
        "parameters.statement: must be at least 1 characters long",
    ]


def test_families_apply_by_pattern_and_unknown_actions_are_left_to_the_policy() -> None:
    assert CATALOG.problems("read.table", {"row_count": "many", "columns": ["a"]}) == [
        "parameters.row_count: must be of type integer"
    ]
    assert CATALOG.problems("cache.entry.delete", {"key": "k"}) == []
    assert CATALOG.problems("secrets.delete", {"key": "k"}) == ["parameters.key: is not a parameter of secrets.delete"]
    assert CATALOG.problems("unknown.thing", {"anything": 1}) == []
    assert (
        CATALOG.sql_backed("sql.query")
        and CATALOG.sql_backed("rows.delete")
        and not CATALOG.sql_backed("iam.role.grant")
    )


def test_the_intake_answers_422_and_records_the_refusal_under_the_caller_without_the_value() -> None:
    store = FakeActionStore()
    publisher, send = fake_publisher("intake")
    intake = Intake(store, publisher, parameter_protector(KEYRING), catalog=CATALOG, publish_patience_s=0.05)

    wire = wiring_of(intake, store)

    body = {
        "action": "iam.role.grant",
        "resource": "iam://staging/roles/analyst",
        "parameters": {"user": "human:bob", "role": "analyst", "max_rows": SECRET},
        "reason": "onboarding",
    }
    with TestClient(create_app(Settings(), wire=wire)) as client:
        answer = client.post("/v1/actions", json=body, headers={"Authorization": "Bearer good"})
        assert answer.status_code == 422
        assert answer.json()["problems"] == [
            "parameters.max_rows: is not a parameter of iam.role.grant",
            "parameters.principal: is required by iam.role.grant",
            "parameters.user: is not a parameter of iam.role.grant",
        ]
        assert SECRET not in answer.text
        fixed = {**body, "parameters": {"principal": "human:bob", "role": "analyst"}}
        assert client.post("/v1/actions", json=fixed, headers={"Authorization": "Bearer good"}).status_code == 202
    [letter] = send.events("unit.dlq")
    assert letter.principal == "agent:reporter" and letter.error_type == "invalid_parameters"
    assert "parameters.user: is not a parameter of iam.role.grant" in letter.problems
    assert SECRET not in repr(letter)
    assert len(store.rows) == 1, "only the fixed request was stored"


def test_every_privilege_the_catalog_takes_is_one_the_executor_can_grant() -> None:
    """A privilege the schema lets through but the executor refuses is asked of approvers, then
    fails after they approved (``ALL`` did): the two lists are one."""
    from keyturn.executor.plugins.iam import PRIVILEGES

    data = json.loads((REPO_ROOT / "policies.rego/keyturn/parameters/data.json").read_text())
    found = [
        schema["properties"]["privileges"]["items"]["enum"]
        for schema in _schemas(data)
        if "privileges" in schema.get("properties", {})
    ]
    assert found and all(sorted(enum) == sorted(PRIVILEGES) for enum in found), found


def _schemas(value: object) -> list[dict]:
    """Every JSON object in ``value`` (the catalog's schemas, wherever they sit)."""
    if isinstance(value, dict):
        return [value, *(s for child in value.values() for s in _schemas(child))]
    if isinstance(value, list):
        return [s for child in value for s in _schemas(child)]
    return []
