"""What a requester gets back from the executor: capped, masked, never larger than a message may be."""

from __future__ import annotations

from typing import Any

import pytest

from keyturn.core.canonical import canonical_json
from keyturn.executor.results import ResultShaper
from keyturn.executor.values import jsonable


@pytest.fixture(scope="module")
def shaper() -> ResultShaper:
    shaper = ResultShaper(3)
    shaper.warm()
    return shaper


def test_rows_are_capped_and_masked_by_name_by_content_and_by_the_decisions_mask(shaper: ResultShaper) -> None:
    rows = [
        {"id": n, "email": f"user{n}@example.com", "api_key": f"k{n}", "connection_string": f"db{n}", "city": "Lyon"}
        for n in range(10)
    ]
    shaped = shaper.shape({"row_count": 10, "rows": rows}, ("parameters.connection_string",))
    assert shaped["row_count"] == 10 and shaped["truncated"] is True and len(shaped["rows"]) == 3
    assert shaped["rows"][0] == {
        "id": 0,
        "email": "<EMAIL_ADDRESS>",
        "api_key": "<SECRET>",
        "connection_string": "<SECRET>",
        "city": "Lyon",
    }


def test_a_column_the_policy_masks_is_masked_whole_whatever_its_values_look_like(shaper: ResultShaper) -> None:
    # disguised so no pattern finds them: the column's name, which the policy lists, is what masks them
    rows = [{"Email": "bob (at) corp dot com", "ssn": "123/45/6789", "city": "Lyon"}]
    shaped = shaper.shape({"row_count": 1, "rows": rows}, ("columns.email", "columns.ssn"))
    assert shaped["rows"][0]["city"] == "Lyon"
    assert "bob" not in str(shaped) and "6789" not in str(shaped), shaped


def test_a_failure_reason_quoting_data_is_masked(shaper: ResultShaper) -> None:
    reason = (
        'PostgreSQL: duplicate key value violates unique constraint "users_email_key": Key '
        "(email)=(bob@example.com) already exists."
    )
    assert "bob@example.com" not in shaper.mask_text(reason)


def test_a_result_too_large_for_a_message_keeps_only_the_rows_that_fit() -> None:
    shaper = ResultShaper(1000, max_bytes=2000, masker=_PassThrough())
    rows = [{"id": n, "note": "x" * 100} for n in range(100)]
    shaped = shaper.shape({"row_count": 100, "rows": rows}, ())
    assert len(canonical_json(shaped).encode()) <= 2000
    assert shaped["row_count"] == 100 and shaped["truncated"] is True and 0 < len(shaped["rows"]) < 100


def test_a_huge_text_result_is_replaced_by_a_note() -> None:
    shaped = ResultShaper(10, max_bytes=100, masker=_PassThrough()).shape({"body": "y" * 1000}, ())
    assert shaped == {"truncated": True, "omitted": "the result is larger than 100 bytes"}


def test_when_masking_fails_the_result_is_withheld_never_sent_in_clear() -> None:
    shaped = ResultShaper(10, masker=_Broken()).shape({"rows": [{"password": "hunter2"}]}, ())
    assert "hunter2" not in canonical_json(shaped)
    assert shaped == {"withheld": "the result could not be masked (RuntimeError); it is not returned"}


def test_database_values_become_readable_json() -> None:
    import datetime as dt
    import decimal
    import uuid

    value = {
        "at": dt.datetime(2025, 1, 2, 3, 4, 5, tzinfo=dt.UTC),
        "amount": decimal.Decimal("10.50"),
        "blob": b"\x00\x01",
        "id": uuid.UUID(int=1),
        "tags": ("a", "b"),
    }
    assert jsonable(value) == {
        "at": "2025-01-02T03:04:05+00:00",
        "amount": "10.50",
        "blob": {"base64": "AAE="},
        "id": "00000000-0000-0000-0000-000000000001",
        "tags": ["a", "b"],
    }


class _PassThrough:
    """A masker that finds nothing (for the size rules alone)."""

    def mask(self, parameters: dict[str, Any], extra_fields: Any = ()) -> Any:
        return type("Masked", (), {"parameters": parameters})()


class _Broken:
    def mask(self, parameters: dict[str, Any], extra_fields: Any = ()) -> Any:
        raise RuntimeError("analyzer unavailable")
