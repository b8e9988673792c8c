"""Every catalog action is performed, handed over with a receipt, or refused — never a silent success."""

from __future__ import annotations

import asyncio
import json

import pytest

from keyturn.config import REPO_ROOT
from keyturn.core.catalog import Execution, ExecutionModes
from keyturn.core.lifecycle import TERMINAL_STATES, ActionState
from keyturn.executor.plugins import Command, ExecutionFailed, PluginRegistry

SHIPPED = ExecutionModes.from_data(
    json.loads((REPO_ROOT / "policies.rego" / "data.json").read_text())["keyturn"]["execution"]
)


class Named:
    def __init__(self, name: str) -> None:
        self.name = name

    async def execute(self, command: Command):
        return {"ran": self.name}


@pytest.mark.parametrize(
    ("action", "execution"),
    [
        ("sql.query", Execution.KEYTURN),
        ("http.request", Execution.KEYTURN),
        ("iam.role.grant", Execution.KEYTURN),
        ("iam.role.revoke", Execution.KEYTURN),
        ("iam.permission.change", Execution.KEYTURN),
        ("db.rows.delete", Execution.KEYTURN),  # the exact entry wins over *.delete
        ("cache.entry.delete", Execution.EXTERNAL),
        ("db.export", Execution.KEYTURN),
        ("read.table", Execution.EXTERNAL),
        ("secrets.read", Execution.REFUSED),
        ("unknown.thing", Execution.NONE),
        ("read", Execution.NONE),  # a family pattern needs something after the dot
    ],
)
def test_the_shipped_catalog_says_how_each_action_is_carried_out(action: str, execution: Execution) -> None:
    assert SHIPPED.mode_for(action).execution is execution


def test_malformed_modes_are_refused_not_guessed() -> None:
    with pytest.raises(ValueError, match="must be"):
        ExecutionModes.from_data({"read.*": "maybe"})
    refused = ExecutionModes.from_data({"secrets.read": {"refused": "use a reference"}}).mode_for("secrets.read")
    assert (refused.execution, refused.why) == (Execution.REFUSED, "use a reference")


def test_approved_external_is_its_own_terminal_state() -> None:
    assert ActionState.APPROVED_EXTERNAL in TERMINAL_STATES
    assert ActionState.APPROVED_EXTERNAL is not ActionState.SUCCEEDED


def command(action: str) -> Command:
    return Command("6c0a1f9e-8a3f-4a7e-9a55-2b8f0d6e7a10", action, "x://y", {}, 60)


def test_an_action_no_plugin_covers_fails_saying_so_and_the_external_one_gets_the_receipt_plugin() -> None:
    external = Named("external")
    registry = PluginRegistry({"sql.query": Named("sql")}, external=external, modes=SHIPPED)
    assert registry.plugin_for("read.table") is external
    assert registry.plugin_for("sql.query").name == "sql"
    for action in ("iam.role.grant", "unknown.thing"):  # marked keyturn without a plugin here; not in the catalog
        plugin = registry.plugin_for(action)
        assert plugin.name == "none"
        with pytest.raises(ExecutionFailed, match=f"no executor performs {action}"):
            asyncio.run(plugin.execute(command(action)))


def test_every_approver_channel_says_an_approved_external_action_is_not_run_by_keyturn() -> None:
    from keyturn.approval.views import outcome_sentence

    external = outcome_sentence({"summary": "approved by human:judy", "status": "approved", "execution": "external"})
    assert "Keyturn does not perform it" in external and "approved_external" in external
    performed = outcome_sentence({"summary": "approved by human:carol", "status": "approved", "execution": "keyturn"})
    assert performed == "approved by human:carol — it will run now."
