"""Secret references resolve only in the executor, and the value is redacted from whatever comes back."""

from __future__ import annotations

import asyncio

import pytest

from keyturn.secret_store import SecretNotFound, redact, references_in, resolve_references
from tests.fakes.service_ports import MemorySecrets as Store


def test_references_resolve_anywhere_in_the_parameters_and_only_exact_ones() -> None:
    parameters = {
        "headers": {"X-Api-Key": {"secret": "partner"}},
        "list": [{"secret": "partner"}],
        "not_a_reference": {"secret": "partner", "other": 1},
    }
    assert references_in(parameters) == ["partner", "partner"]
    resolved, used = asyncio.run(resolve_references(parameters, Store({"partner": "s3cr3t-value"})))
    assert resolved["headers"]["X-Api-Key"] == "s3cr3t-value" and resolved["list"] == ["s3cr3t-value"]
    assert resolved["not_a_reference"] == {"secret": "partner", "other": 1}
    assert used == {"partner": "s3cr3t-value"}
    assert parameters["headers"]["X-Api-Key"] == {"secret": "partner"}  # what was approved is unchanged


def test_a_missing_secret_is_named_and_a_used_one_never_comes_back() -> None:
    with pytest.raises(SecretNotFound, match="no secret named 'gone'"):
        asyncio.run(resolve_references({"h": {"secret": "gone"}}, Store({})))
    echoed = {"body": {"got": "key=s3cr3t-value;"}, "rows": ["s3cr3t-value"]}
    assert redact(echoed, {"partner": "s3cr3t-value"}) == {
        "body": {"got": "key=<SECRET:partner>;"},
        "rows": ["<SECRET:partner>"],
    }


def test_the_sql_target_is_the_referenced_one_named_by_its_secret_and_never_a_clear_string() -> None:
    from keyturn.executor.plugins.base import Command, ExecutionFailed
    from keyturn.executor.plugins.sql import SqlPlugin

    plugin = SqlPlugin("postgresql://keyturn:pw@db.internal:5432/app")
    dsn = "postgresql://ledger_owner:kt-ledger-pw@ledger.internal:6432/ledger"

    def command(parameters: dict, secret_fields: dict | None = None) -> Command:
        return Command("a-1", "sql.query", "postgres://staging/app", parameters, 60, secret_fields=secret_fields or {})

    assert plugin.target_of(command({"statement": "SELECT 1"})) == plugin.target
    referenced = plugin.target_of(command({"connection_string": dsn}, {"connection_string": "ledger-db"}))
    assert referenced.url == dsn and referenced.name == "the target in secret 'ledger-db'" and referenced.from_secret
    assert "ledger.internal" not in referenced.refused(OSError("connection to ledger.internal failed for ledger_owner"))
    with pytest.raises(ExecutionFailed, match="must be a secret reference") as clear:
        plugin.target_of(command({"connection_string": dsn}))  # resolved from no reference: refused, not used
    assert "kt-ledger-pw" not in str(clear.value)
    with pytest.raises(ExecutionFailed, match="secret 'junk' does not hold a PostgreSQL connection string") as junk:
        plugin.target_of(command({"connection_string": "kt-ledger-pw = = ="}, {"connection_string": "junk"}))
    assert "kt-ledger-pw" not in str(junk.value)


def test_the_families_built_on_the_sql_plugin_run_and_clean_up_on_its_own_target_only(tmp_path) -> None:
    """A deletion, export or grant carrying a connection string runs on the plugin's own target
    (the parameter is not theirs), so a crash's cleanup must look there too, not where it points."""
    from keyturn.executor.plugins.base import Command
    from keyturn.executor.plugins.deletion import DeletionPlugin
    from keyturn.executor.plugins.export import ExportPlugin
    from keyturn.executor.plugins.iam import IamPlugin
    from keyturn.exports import DirectoryExportStore

    url = "postgresql://keyturn:pw@db.internal:5432/app"
    dsn = "postgresql://ledger_owner:kt-ledger-pw@ledger.internal:6432/ledger"
    for plugin in (DeletionPlugin(url), IamPlugin(url), ExportPlugin(url, store=DirectoryExportStore(tmp_path))):
        command = Command(
            "a-1",
            "db.rows.delete",
            "postgres://staging/app",
            {"connection_string": dsn},
            60,
            secret_fields={"connection_string": "ledger-db"},
        )
        assert plugin.target_of(command) is plugin.target, plugin.name


async def test_commands_take_turns_where_they_run_shared_by_the_sql_plugins_of_a_process() -> None:
    """A command holds connections to the database it runs on: that database's turns it waits for."""
    from dataclasses import replace

    from keyturn.executor.plugins.base import Command
    from keyturn.executor.plugins.iam import IamPlugin
    from keyturn.executor.plugins.sql import SqlPlugin

    own = "postgresql://keyturn:pw@db.internal:5432/app"
    sql_plugin, iam = SqlPlugin(own), IamPlugin(own)
    on_own = Command("a-1", "sql.query", "postgres://staging/app", {"statement": "SELECT 1"}, 60)
    elsewhere = Command(
        "a-2",
        "sql.query",
        "postgres://staging/app",
        {"statement": "SELECT 1", "connection_string": "postgresql://u:pw@ledger.internal:6432/ledger"},
        60,
        secret_fields={"connection_string": "ledger-db"},
    )
    assert sql_plugin.turns_for(on_own) is iam.turns_for(on_own)  # one process, one target: one queue
    assert sql_plugin.turns_for(elsewhere) is not sql_plugin.turns_for(on_own)
    assert sql_plugin.turns_for(elsewhere) is sql_plugin.turns_for(replace(elsewhere, action_id="a-3"))
