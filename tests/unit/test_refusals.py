"""Refusals write nothing secret down: dead letters, log lines and the HTTP bounds, without servers."""

from __future__ import annotations

import io
import json
import logging

import httpx
import pytest
from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from keyturn.bus.codec import registry
from keyturn.bus.http import BoundedRequests
from keyturn.bus.refusals import MAX_KEY_BYTES, MAX_TEXT_CHARS, refusal_letter, validation_problems
from keyturn.intake.submissions import MAX_PARAMETERS_DEPTH, ActionSubmission, json_depth
from keyturn.masking.logs import install_log_masking, mask_record

AWS_KEY = "AKIAIOSFODNN7EXAMPLE"
GITHUB = "ghp_" + "a1B2c3D4e5" * 3 + "f6G7h8"
CARD = "4111 1111 1111 1111"
PASSWORD = "pw-correct-horse-battery"


def letter(payload: bytes, **changes):
    base = dict(
        service="intake",
        source_topic="http:POST /v1/actions",
        partition=-1,
        offset=-1,
        key=None,
        payload=payload,
        error_type="invalid_body",
        reason="refused",
        principal="agent:reporter",
    )
    return refusal_letter(**{**base, **changes})


def test_a_dead_letter_keeps_a_digest_and_a_length_never_the_bytes() -> None:
    body = json.dumps({"parameters": {"key": AWS_KEY, "password": PASSWORD}, "card": CARD}).encode()
    found = letter(body)
    encoded = registry().encode_event(found)
    assert found.payload_length == len(body) and len(found.payload_digest.hex) == 64
    for secret in (AWS_KEY, PASSWORD, "4111"):
        assert secret.encode() not in encoded
    assert found.principal == "agent:reporter" and found.excerpt is None  # no excerpt unless asked for


def test_reason_problems_and_key_are_masked_and_bounded() -> None:
    found = letter(
        b"x",
        reason=f"bad token {GITHUB} " + "y" * 5000,
        problems=[f"{AWS_KEY}: Extra inputs are not permitted"],
        key=f"agent-{CARD}".encode(),
        offset=7,
        partition=1,
        source_topic="kt.submissions",
    )
    assert GITHUB not in found.reason and len(found.reason) <= MAX_TEXT_CHARS
    assert found.problems == ("<AWS_ACCESS_KEY>: Extra inputs are not permitted",)
    assert b"4111 1111" not in found.key
    assert found.event_id == "dlq:kt.submissions:1:7"  # one letter per place: a redelivery writes the same id


def test_an_excerpt_is_masked_as_parameters_are_and_only_for_json_objects() -> None:
    body = json.dumps(
        {"action": "read.table", "parameters": {"password": PASSWORD, "note": f"card {CARD}"}, GITHUB: 1}
    ).encode()
    excerpt = letter(body, excerpt=True).excerpt
    assert excerpt and "read.table" in excerpt
    assert PASSWORD not in excerpt and "4111 1111" not in excerpt and GITHUB not in excerpt
    assert letter(b'{"password": "' + PASSWORD.encode() + b'", ', excerpt=True).excerpt is None  # unparseable: none
    assert letter(b"[1, 2]", excerpt=True).excerpt is None


def test_validation_problems_name_the_field_and_the_rule_but_not_the_value() -> None:
    class Body(BaseModel):
        count: int

    with pytest.raises(Exception) as refused:
        Body.model_validate({"count": GITHUB})
    problems = validation_problems(refused.value.errors())
    assert problems == ["count: Input should be a valid integer, unable to parse string as an integer"]


def test_parameters_nesting_is_bounded_before_anything_walks_them() -> None:
    deep: dict = {"leaf": 1}
    for _ in range(MAX_PARAMETERS_DEPTH):
        deep = {"a": deep}
    assert json_depth(deep) == MAX_PARAMETERS_DEPTH + 1 and json_depth([[]]) == 2 and json_depth("x") == 0
    with pytest.raises(ValueError, match="nest deeper"):
        ActionSubmission(action="read.table", resource="r", reason="why", parameters=deep)
    very_deep: dict = {}
    for _ in range(5000):  # past what recursive walkers survive
        very_deep = {"a": very_deep}
    with pytest.raises(ValueError, match="nest deeper"):
        ActionSubmission(action="read.table", resource="r", reason="why", parameters=very_deep)


# --- logs ---------------------------------------------------------------------------------------


def _written(logger: logging.Logger, emit) -> str:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger.addHandler(handler)
    try:
        emit()
    finally:
        logger.removeHandler(handler)
    return stream.getvalue()


@pytest.fixture
def masked_logging():
    previous = logging.getLogRecordFactory()
    install_log_masking()
    yield logging.getLogger("keyturn.test.refusals")
    logging.setLogRecordFactory(previous)


def test_every_log_line_is_masked_arguments_and_tracebacks_included(masked_logging) -> None:
    class Body(BaseModel):
        count: int

    def emit() -> None:
        masked_logging.warning("refused %s for %d requests", f"key {AWS_KEY}", 3)
        try:
            Body.model_validate({"count": f"{GITHUB} {CARD}"})
        except Exception:
            masked_logging.exception("validation failed")

    written = _written(masked_logging, emit)
    assert "<AWS_ACCESS_KEY> for 3 requests" in written
    assert "Traceback" in written and "input_value=<withheld>" in written
    for secret in (AWS_KEY, GITHUB, "4111 1111"):
        assert secret not in written


def test_web_framework_validation_lists_lose_their_input(masked_logging) -> None:
    line = (
        "1 validation error:\n  {'type': 'missing', 'loc': ('body', 'reason'), 'msg': 'Field required', "
        f"'input': {{'password': '{PASSWORD}'}}}}"
    )
    written = _written(masked_logging, lambda: masked_logging.error(line))
    assert PASSWORD not in written and "'input': <withheld>}" in written


def test_a_formatter_that_reads_arguments_still_works(masked_logging) -> None:
    record = mask_record(
        logging.LogRecord(
            "uvicorn.access",
            logging.INFO,
            __file__,
            1,
            '%s - "%s %s HTTP/%s" %d',
            ("10.0.0.1:5000", "GET", f"/v1/actions?token={GITHUB}", "1.1", 200),
            None,
        )
    )
    _client, method, path, version, status = record.args
    assert (method, version, status) == ("GET", "1.1", 200) and GITHUB not in path


# --- HTTP bounds --------------------------------------------------------------------------------


async def _echo(request: Request) -> JSONResponse:
    return JSONResponse({"received": len(await request.body())})


@pytest.fixture
def bounded():
    refused: list[tuple[int, list[str], bytes]] = []

    async def on_refused(scope, status, problems, received) -> None:
        refused.append((status, problems, received))

    app = BoundedRequests(
        Starlette(routes=[Route("/", _echo, methods=["GET", "POST"])]),
        max_body_bytes=1000,
        max_header_bytes=2000,
        on_refused=on_refused,
    )
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bounded"), refused


async def test_a_body_declared_too_large_is_refused_unread(bounded) -> None:
    client, refused = bounded
    answer = await client.post("/", content=b"x" * 1001)
    assert answer.status_code == 413 and answer.json()["error"] == "body_too_large"
    assert "1001 bytes declared" in answer.json()["detail"]
    assert refused == [(413, answer.json()["problems"], b"")]
    assert (await client.post("/", content=b"x" * 1000)).json() == {"received": 1000}


async def test_a_streamed_body_is_cut_off_at_the_limit(bounded) -> None:
    client, refused = bounded

    async def chunks():
        for _ in range(10):
            yield b"y" * 300

    answer = await client.post("/", content=chunks())
    assert answer.status_code == 413
    assert refused[0][0] == 413 and len(refused[0][2]) <= 1000

    async def small():
        yield b"z" * 10
        yield b"z" * 10

    assert (await client.post("/", content=small())).json() == {"received": 20}


async def test_headers_are_bounded(bounded) -> None:
    client, _refused = bounded
    answer = await client.get("/", headers={f"x-h{i}": "v" * 100 for i in range(30)})
    assert answer.status_code == 431 and answer.json()["error"] == "headers_too_large"
    assert (await client.get("/")).status_code == 200


async def test_a_header_block_that_never_ends_is_refused_while_it_is_read() -> None:
    """The servers' own parser bounds the header block as it arrives (``bus.http.server_options``):
    a client that keeps sending header lines is answered and cut off once it is past the bound,
    instead of its lines being kept until a block end that never comes."""
    import asyncio

    import uvicorn

    from keyturn.bus.http import server_options

    server = uvicorn.Server(
        uvicorn.Config(
            Starlette(routes=[Route("/", _echo)]), host="127.0.0.1", port=0, lifespan="off", **server_options("uvloop")
        )
    )
    serving = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110 - uvicorn offers no event for it
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n" + (b"x-filler: " + b"v" * 1000 + b"\r\n") * 64)  # 64 KiB, no end
    try:
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 5)  # an unbounded parser would wait for more
    except ConnectionError:
        answer = b""  # cut off without an answer
    writer.close()
    server.should_exit = True
    await serving
    assert answer == b"" or answer.startswith(b"HTTP/1.1 400")


@pytest.mark.parametrize(
    "sent",
    [
        b"",  # connects and says nothing
        b"POST / HTTP/1.1\r\nHost: x\r\n",  # half a header block
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{",  # a byte of a declared body
    ],
)
async def test_a_request_that_does_not_arrive_in_time_loses_its_connection(monkeypatch, sent: bytes) -> None:
    """Every request must arrive whole within ``REQUEST_READ_S`` (``bus.http.TimelyH11Protocol``):
    a client that trickles or stalls cannot hold a connection, while one that is on time is
    answered on the same kept connection, again and again."""
    import asyncio

    import uvicorn

    from keyturn.bus.http import TimelyH11Protocol, server_options

    monkeypatch.setattr(TimelyH11Protocol, "read_limit_s", 0.5)
    server = uvicorn.Server(
        uvicorn.Config(
            Starlette(routes=[Route("/", _echo, methods=["GET", "POST"])]),
            host="127.0.0.1",
            port=0,
            lifespan="off",
            **server_options("uvloop"),
        )
    )
    serving = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110 - uvicorn offers no event for it
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(sent)
        await writer.drain()
        assert await asyncio.wait_for(reader.read(), 3) == b"", "closed without an answer, within the limit"
        writer.close()
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            for _ in range(3):  # a kept connection: each request is timed from its own first byte
                assert (await client.post("/", json={"ok": 1})).status_code == 200
                await asyncio.sleep(0.3)
    finally:
        server.should_exit = True
        await serving


PASSWORD_IN_URL = "postgres://admin:Kkrkm0ZkLkRr3X5kZZ"


@pytest.mark.parametrize("limit", [MAX_KEY_BYTES, MAX_TEXT_CHARS, MAX_KEY_BYTES * 8, MAX_TEXT_CHARS * 8])
def test_a_secret_a_length_limit_cuts_is_masked_whole_not_left_half_in_clear(limit: int) -> None:
    # a URL password ending right at a limit: cut first, its "@host" was gone and no pattern saw it
    text = "k" * (limit - len(PASSWORD_IN_URL)) + PASSWORD_IN_URL + "@db.example.com/x"
    # and one a long key before it: masked, the key is one placeholder, pulling the rest forward
    pem = "-----BEGIN PRIVATE KEY-----\n" + "A" * 1400 + "\n-----END PRIVATE KEY----- "
    for sent in (text, pem + text[len(pem) :]):
        found = letter(b"x", key=sent.encode(), reason=sent)
        for kept in (found.key.decode(), found.reason):
            assert "Kkrkm0" not in kept, kept


def test_a_token_header_field_repeated_in_a_refusal_is_masked_before_it_is_cut() -> None:
    from keyturn.identity.verifier import _told

    password = "Kkrkm0ZkLkRr3X5kZZ"
    sent = (("x" * 40 + f"https://svc:{password}@idp.example.com", 64), (f"https://u:{password}@h.x.com", 32))
    for value, chars in sent:
        assert password[:6] not in _told(value, chars)
    assert _told("ghp_1234567890abcdefghijklmnopqrstuvwxyz12", 32) == "'<GITHUB_TOKEN>'"
    assert _told("RS256", 32) == "'RS256'"


def test_a_problem_naming_a_key_too_long_to_repeat_still_says_what_is_wrong() -> None:
    from keyturn.bus.refusals import TOO_LONG, masked_line

    assert masked_line("k" * 2400 + ": Extra inputs are not permitted") == f"{TOO_LONG} Extra inputs are not permitted"


async def test_a_refused_body_whose_client_went_away_is_recorded_as_what_arrived() -> None:
    from keyturn.bus.http import received_body

    async def receive() -> dict:
        return {"type": "http.disconnect"}

    request = Request({"type": "http", "method": "POST", "path": "/v1/actions", "headers": []}, receive)
    assert await received_body(request) == b""  # not a traceback in the log
