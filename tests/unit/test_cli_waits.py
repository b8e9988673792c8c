"""``keyturn approve``/``deny`` wait briefly for an approval that has not opened yet (425)."""

from __future__ import annotations

import httpx
import pytest
import typer

from keyturn import cli


def answers(*statuses: int):
    sent = iter(statuses)

    def request() -> httpx.Response:
        status = next(sent)
        return httpx.Response(status, headers={"Retry-After": "1"} if status == 425 else {}, json={})

    return request


def test_the_cli_asks_again_while_the_approval_is_not_open_yet(monkeypatch) -> None:
    slept: list[float] = []
    monkeypatch.setattr(cli.time, "sleep", slept.append)

    answer = cli._when_open(answers(425, 425, 200), "act-1")

    assert answer.status_code == 200 and slept == [1.0, 1.0]


def test_the_cli_gives_up_with_a_clear_message_after_the_wait(monkeypatch, capsys) -> None:
    clock = iter(range(0, 1000))
    monkeypatch.setattr(cli.time, "monotonic", lambda: float(next(clock)))
    monkeypatch.setattr(cli.time, "sleep", lambda _: None)

    with pytest.raises(typer.Exit):
        cli._when_open(answers(*[425] * 50), "act-1", wait_s=5)

    assert "no approval is open for action act-1 after waiting 5 s" in capsys.readouterr().err


def test_other_answers_pass_through_at_once(monkeypatch) -> None:
    monkeypatch.setattr(cli.time, "sleep", lambda _: pytest.fail("no wait for an answer that is not 425"))
    assert cli._when_open(answers(409), "act-1").status_code == 409
