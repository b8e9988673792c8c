"""The CLI: `keyturn approve`/`deny` wait briefly for an approval that has not opened yet (425), and a
bad token, id or unreachable server is one line that repeats nothing pasted with it."""

from __future__ import annotations

import io

import httpx
import pytest
import typer
from typer.testing import CliRunner

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


def test_a_token_read_with_its_line_break_is_trimmed_and_one_holding_other_text_is_never_repeated(
    monkeypatch, capsys
) -> None:
    assert cli._token("eyJh.eyJi.c2ln\r\n") == "eyJh.eyJi.c2ln"
    with pytest.raises(typer.Exit):
        cli._token("eyJh.secret-part\r\nX-Other: header")
    err = capsys.readouterr().err
    assert "characters no token has" in err and "secret-part" not in err


def test_a_token_is_read_from_stdin_so_it_never_stands_in_the_process_list(monkeypatch, capsys) -> None:
    monkeypatch.setenv("KEYTURN_TOKEN", "eyJh.from-the-environment.c2ln")
    monkeypatch.setattr(cli.sys, "stdin", io.StringIO("eyJh.eyJi.c2ln\nsecond line\n"))
    assert cli._token("-") == "eyJh.eyJi.c2ln"
    monkeypatch.setattr(cli.sys, "stdin", io.StringIO(""))
    with pytest.raises(typer.Exit):  # asked for stdin: an empty one is no token, not the environment's
        cli._token("-")
    assert "no token on stdin" in capsys.readouterr().err


def test_every_command_that_sends_a_token_offers_stdin_for_it() -> None:
    runner = CliRunner()
    for command in (["approve"], ["deny"], ["status"], ["approvals", "list"], ["approvals", "show"]):
        shown = runner.invoke(cli.app, [*command, "--help"], env={"COLUMNS": "200"}).output
        assert "--token" in shown and "stdin" in shown, command


@pytest.mark.parametrize("action_id", ["", "abc\ndef", "abc\x01def", "x/../y", ".."])
def test_an_id_no_action_can_have_is_one_line_not_a_traceback(capsys, action_id: str) -> None:
    with pytest.raises(typer.Exit):
        cli._segment(action_id)
    assert "not an action id" in capsys.readouterr().err


def test_an_id_is_sent_as_one_path_segment() -> None:
    assert cli._segment("abc?x=1#y") == "abc%3Fx%3D1%23y"
    assert cli._segment("0b6c2a3e-1f00-4a7e-9d1c-2f0e8a9b7c11") == "0b6c2a3e-1f00-4a7e-9d1c-2f0e8a9b7c11"


def test_a_server_that_does_not_answer_is_one_line_naming_it(capsys) -> None:
    with pytest.raises(typer.Exit), cli._asking("http://127.0.0.1:1"):
        raise httpx.LocalProtocolError("Illegal header value b'Bearer eyJsecret'")
    err = capsys.readouterr().err
    assert "no answer from http://127.0.0.1:1: LocalProtocolError" in err and "eyJsecret" not in err


def test_no_token_is_minted_for_a_principal_every_service_would_refuse(monkeypatch, capsys, tmp_path) -> None:
    monkeypatch.setenv("KEYTURN_RUN_DIR", str(tmp_path))  # a key of its own
    with pytest.raises(typer.Exit):
        cli.token_issue(sub="agent:bot4977308558031926", act=[], ttl=60)
    out = capsys.readouterr()
    assert out.out == "" and "no token minted" in out.err and "4977308558031926" not in out.err
    cli.token_issue(sub="agent:reporter", act=["human:alice"], ttl=60)
    assert capsys.readouterr().out.count(".") == 2  # a compact JWT


@pytest.mark.parametrize("ttl", ["-5", "0", "99999999999999"])
def test_a_token_lifetime_out_of_range_is_one_line_not_a_traceback(monkeypatch, tmp_path, ttl: str) -> None:
    from typer.testing import CliRunner

    monkeypatch.setenv("KEYTURN_RUN_DIR", str(tmp_path))
    ran = CliRunner().invoke(cli.app, ["token", "issue", "--sub", "agent:x", "--ttl", ttl])
    assert ran.exit_code == 2 and "Traceback" not in ran.output and "--ttl" in ran.output


ACTION = "11111111-1111-4111-8111-111111111111"
APPROVAL = {
    "action_id": ACTION,
    "action": "db.export",
    "resource": "postgres://prod/orders",
    "requester": "agent:reporter",
    "acting_for": [],
    "reason": "report",
    "summary": "0/1",
    "payload_digest": "sha256:" + "0" * 64,
    "parameters": {},
}
HOSTILE = {
    "an HTML page": (200, {"content-type": "text/html"}, b"<html>proxy sign-in</html>", "is not JSON"),
    "an approval missing its fields": (200, {}, b'{"action_id": "x"}', "lacks the field 'action'"),
    "a list where an object belongs": (200, {}, b"[1, 2]", "is a JSON list where a JSON object was expected"),
    "an error body that is a list": (403, {}, b'["no"]', "HTTP 403: ['no']"),
}


def run_against(monkeypatch, answer: httpx.Response | None = None, *args: str, route=None):
    """``keyturn ARGS`` against an approval service answering ``answer`` (or ``route(request)``)."""
    transport = httpx.MockTransport(route or (lambda _: answer))
    real = httpx.Client
    monkeypatch.setattr(cli.httpx, "Client", lambda **kw: real(transport=transport, **kw))
    monkeypatch.setattr(cli.time, "sleep", lambda s: pytest.fail(f"slept {s}"))
    monkeypatch.setenv("KEYTURN_APPROVAL_URL", "http://approval.test")
    return CliRunner().invoke(cli.app, [*args, "--token", "a.b.c"])


@pytest.mark.parametrize("name", HOSTILE)
@pytest.mark.parametrize("command", [["approvals", "show", ACTION], ["approve", ACTION]])
def test_an_unexpected_answer_is_one_line_naming_what_was_wrong_never_a_traceback(monkeypatch, name, command) -> None:
    status, headers, content, said = HOSTILE[name]
    result = run_against(monkeypatch, httpx.Response(status, headers=headers, content=content), *command)
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    assert said in result.output and "Traceback" not in result.output, result.output


@pytest.mark.parametrize("content", [b'{"detail": "x"}', b"<html></html>", b'[{"action_id": "x"}]'])
def test_approvals_list_given_anything_but_a_list_of_approvals_is_one_line(monkeypatch, content) -> None:
    result = run_against(monkeypatch, httpx.Response(200, content=content), "approvals", "list")
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    assert "error:" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("retry_after", ["nan", "inf", "-inf", "soon"])
def test_a_retry_after_of_no_number_of_seconds_is_taken_as_absent(retry_after) -> None:
    assert cli._retry_after(httpx.Response(425, headers={"Retry-After": retry_after})) == 1.0
