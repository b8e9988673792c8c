"""What an export writes: every value masked as a ``sql.query`` result is, whatever the SELECT calls
its columns (the rows come from a cursor; no database needed)."""

from __future__ import annotations

import csv
import io
from typing import Any

import pytest

from keyturn.executor.plugins import export
from keyturn.executor.plugins.base import ExecutionFailed

EMAIL = "ada.lovelace@example.com"
KEY = "AKIAIOSFODNN7EXAMPLE"


class Cursor:
    """Server-side-cursor batches, as psycopg's ``fetchmany`` returns them."""

    def __init__(self, rows: list[tuple[Any, ...]], batch: int = 2) -> None:
        self.rows, self.batch = rows, batch

    async def fetchmany(self, size: int) -> list[tuple[Any, ...]]:
        taken, self.rows = self.rows[: self.batch], self.rows[self.batch :]
        return taken


async def written(columns: list[str], rows: list[tuple[Any, ...]], masked: frozenset[str] = frozenset()):
    found = export._Findings()
    file = io.BytesIO()
    count = await export._csv_writer(file, columns, export._masking(Cursor(rows), columns, masked, found))
    return count, list(csv.reader(io.StringIO(file.getvalue().decode()))), found.count


async def test_an_alias_or_a_column_the_policy_does_not_name_cannot_carry_personal_data_out() -> None:
    columns = ["id", "contact", "user_email", "note", "city"]
    rows = [(n, EMAIL, EMAIL, f"write to {EMAIL} about key {KEY}", "Lyon") for n in range(5)]
    count, table, masked = await written(columns, rows)
    text = "\n".join(",".join(line) for line in table)
    assert count == 5 and table[0] == columns
    assert EMAIL not in text and KEY not in text
    assert all(line[0] == str(n) and line[4] == "Lyon" for n, line in enumerate(table[1:]))  # the rest as it was
    assert table[1][1] == "<EMAIL_ADDRESS>" and table[1][3].startswith("write to <EMAIL_ADDRESS>")
    assert masked >= 15  # each row: the alias, user_email and the note's address at least


async def test_the_policys_columns_are_masked_whole_and_two_columns_of_one_name_both_stay() -> None:
    columns = ["id", "email", "id", "password"]
    rows = [(1, EMAIL, 7, "hunter2"), (2, None, 8, None)]
    count, table, masked = await written(columns, rows, frozenset({"email"}))
    assert count == 2
    assert table[1] == ["1", "<MASKED>", "7", "<SECRET>"]  # the password by its name
    assert table[2] == ["2", "", "8", ""]  # nothing to mask in a NULL
    assert masked == 2


async def test_rows_that_cannot_be_masked_are_not_exported(monkeypatch: pytest.MonkeyPatch) -> None:
    class Broken:
        def mask(self, *_: Any) -> Any:
            raise RuntimeError("analyser gone")

    monkeypatch.setattr(export, "shared_masker", lambda: Broken())
    with pytest.raises(ExecutionFailed, match=r"could not be masked.*nothing was exported"):
        await written(["note"], [(EMAIL,)])


async def test_a_number_column_with_a_masked_phone_number_is_refused_as_parquet_not_written_in_clear() -> None:
    pytest.importorskip("pyarrow")
    columns = ["id", "contact"]
    rows = [(1, 100), (2, 200), (3, 14155550199)]  # the third batch's number is a phone number
    found = export._Findings()
    file = io.BytesIO()
    with pytest.raises(ExecutionFailed, match="export it as csv") as refused:
        await export._parquet_writer(file, columns, export._masking(Cursor(rows), columns, frozenset(), found))
    assert "14155550199" not in str(refused.value)
    count, table, _ = await written(columns, rows)  # as csv the column keeps both
    assert count == 3 and table[3] == ["3", "<PHONE_NUMBER>"]
