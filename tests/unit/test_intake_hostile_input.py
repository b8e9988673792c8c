"""Input the intake cannot keep is refused at the door, one item at a time, and a used
idempotency key never hands a different request the earlier action (no server: fake store and
broker, the real HTTP app)."""

from __future__ import annotations

import json
import uuid

import pytest
from fastapi.testclient import TestClient

from keyturn.bus.http import route_of
from keyturn.config import Settings
from keyturn.core.events import SubmissionChannel
from keyturn.core.principal import Principal, PrincipalKind
from keyturn.core.text import problem_in, storable, text_problem
from keyturn.intake.app import create_app
from keyturn.intake.submissions import IdempotencyConflict
from tests.fakes.service_ports import FakeActionStore
from tests.unit.service_events import REPORTER
from tests.unit.test_intake_service import SECRET, intake_with, submission, wiring_of

AUTH = {"Authorization": "Bearer good", "Content-Type": "application/json"}
GOOD = {
    "action": "read.table",
    "resource": "postgres://staging/analytics/orders",
    "parameters": {"limit": 10},
    "reason": "churn analysis",
}


def client_and_store() -> tuple[TestClient, FakeActionStore, object]:
    intake, store, send = intake_with()
    return TestClient(create_app(Settings(), wire=wiring_of(intake, store))), store, send


def raw(body: str) -> bytes:
    """A body as a client may spell it: JSON escapes Python's encoder would not write."""
    return body.encode()


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({**GOOD, "parameters": {"principal": "bob\u0000"}}, "parameters.principal"),
        ({**GOOD, "parameters": {"k\u0000": 1}}, "parameters"),
        ({**GOOD, "reason": "no\u0000pe"}, "reason"),
        ({**GOOD, "resource": "postgres://a\u0000"}, "resource"),
        ({**GOOD, "idempotency_key": "key\u0000"}, "idempotency_key"),
        ({**GOOD, "parameters": {"n": 18446744073709551616999}}, "parameters.n"),
        ({**GOOD, "parameters": {"n": [1, -(2**63) - 1]}}, "parameters.n.1"),
        # names travel in clear: a secret or a person's data in one is refused, by kind
        ({**GOOD, "resource": "postgres://staging/users/canary-q1@example.com"}, "resource: Value error, it holds "),
        ({**GOOD, "parameters": {"AKIA6CYI2KVFDEKCVYOT": 1}}, "parameters: Value error, a key of the parameters"),
        ({**GOOD, "idempotency_key": "k-AKIA6CYI2KVFDEKCVYOT"}, "idempotency_key: Value error, it holds what looks"),
        ({**GOOD, "callback_url": "https://h.example.com/cb?to=canary-q1@example.com"}, "callback_url: Value error"),
        ({**GOOD, "action": "read.538-34-9455.x"}, "action: Value error, it holds what looks like US_SSN"),
    ],
)
def test_text_no_database_can_keep_and_integers_past_64_bits_are_refused_with_the_field(body, field) -> None:
    client, store, send = client_and_store()
    with client:
        answer = client.post("/v1/actions", content=json.dumps(body), headers=AUTH)
    assert answer.status_code == 422, answer.text
    assert any(field in problem for problem in answer.json()["problems"]), answer.json()
    for value in ("AKIA6CYI2KVFDEKCVYOT", "canary-q1@example.com", "538-34-9455"):
        assert value not in answer.text and value not in repr(send.events("unit.dlq"))
    assert store.rows == {}, "nothing refused is stored"
    [letter] = send.events("unit.dlq")
    assert letter.principal == "agent:reporter"  # recorded under the caller


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({**GOOD, "action": "read.x078051122"}, "action"),
        ({**GOOD, "action": "read.078051122x"}, "action"),
        ({**GOOD, "action": "read.x078-05-1122"}, "action"),
        ({**GOOD, "resource": "postgres://staging/users/u078051122"}, "resource"),
        ({**GOOD, "idempotency_key": "k078051122"}, "idempotency_key"),
        ({**GOOD, "parameters": {"row078051122": 1}}, "parameters"),
    ],
)
def test_an_ssn_glued_to_a_letter_in_a_name_is_refused_as_a_card_there_is(body, field) -> None:
    client, store, send = client_and_store()
    with client:
        answer = client.post("/v1/actions", content=json.dumps(body), headers=AUTH)
        card = client.post(
            "/v1/actions", content=json.dumps({**GOOD, "action": "read.c4111111111111111"}), headers=AUTH
        )
    assert (answer.status_code, card.status_code) == (422, 422), answer.text
    [problem] = answer.json()["problems"]
    assert problem.startswith(field) and "US_SSN" in problem and "078" not in problem
    assert "078051122" not in repr(send.events("unit.dlq")) and "078-05-1122" not in repr(send.events("unit.dlq"))
    assert store.rows == {}


@pytest.mark.parametrize(
    "body",
    [
        {**GOOD, "resource": "ec2://eu-west-1/i-0a123456789bcdef0"},  # an instance id's digits are no SSN
        {**GOOD, "idempotency_key": "order-204518733"},  # nine digits not glued to a letter: an order number
        {**GOOD, "action": "read.x123456789"},  # no SSN is ever 123456789
        {**GOOD, "action": "oauth2.token.exchange"},
        {**GOOD, "parameters": {"build20240501": 1}},
        {**GOOD, "resource": "https://api.example.internal/v1/files/a%20b?page=2"},  # an escaped space, a query
        {**GOOD, "resource": "postgres://staging/caf\u00e9_orders"},  # a name in another script, as written
    ],
)
def test_ordinary_names_with_digits_are_accepted(body) -> None:
    client, store, _ = client_and_store()
    with client:
        answer = client.post("/v1/actions", content=json.dumps(body), headers=AUTH)
    assert answer.status_code == 202, answer.text
    assert len(store.rows) == 1


def test_a_server_address_may_name_a_resource_or_a_webhook() -> None:
    client, store, _ = client_and_store()
    body = {**GOOD, "resource": "postgres://10.0.0.5:5432/analytics", "callback_url": "http://10.1.2.3:9000/hook"}
    with client:
        assert client.post("/v1/actions", content=json.dumps(body), headers=AUTH).status_code == 202
    assert len(store.rows) == 1


def test_a_lone_surrogate_in_a_batch_item_refuses_that_item_alone() -> None:
    client, store, send = client_and_store()
    good = json.dumps(GOOD)
    body = '{"items":[' + good + ',{"action":"read.table","resource":"r","reason":"x\\ud800"}]}'
    with client:
        answer = client.post("/v1/actions:batch", content=raw(body), headers=AUTH)
        single = client.post(
            "/v1/actions", content=raw('{"action":"read.table","resource":"r","reason":"x\\ud800"}'), headers=AUTH
        )
    assert answer.status_code == 200, answer.text
    results = answer.json()["results"]
    assert [r["status"] for r in results] == [202, 422]
    assert results[1]["problem"]["problems"] == [
        "items.1.reason: Input should be a valid string, unable to parse raw data as a unicode string"
    ]
    assert single.status_code == 422
    assert len(store.rows) == 1
    letters = send.events("unit.dlq")
    assert [letter.principal for letter in letters] == ["agent:reporter"] * 2  # both recorded, neither lost


def test_an_item_that_is_not_an_object_is_refused_alone_and_the_others_are_accepted() -> None:
    client, store, _ = client_and_store()
    with client:
        answer = client.post("/v1/actions:batch", content=json.dumps({"items": [1, GOOD, "x"]}), headers=AUTH)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert [r["status"] for r in body["results"]] == [422, 202, 422]
    assert body["results"][0]["problem"]["problems"] == ["items.0: must be an object (the body of a POST /v1/actions)"]
    assert (body["accepted"], body["refused"]) == (1, 2)
    assert len(store.rows) == 1


@pytest.mark.parametrize(
    "path", ["/v1/actions/a%00b", "/v1/actions/a%00b/wait", "/v1/exports/a%00b", "/v1/actions/" + "x" * 300]
)
def test_an_id_that_names_nothing_is_unknown_without_a_database_error(path) -> None:
    client, _, _ = client_and_store()
    with client:
        answer = client.get(path, headers=AUTH)
    assert answer.status_code == 404, answer.text


def test_an_id_holding_what_masking_hides_is_unknown_and_not_repeated() -> None:
    client, _, _ = client_and_store()
    with client:
        answers = [
            client.get(f"/v1/actions/{canary}", headers=AUTH) for canary in ("AKIA6CYI2KVFDEKCVYOT", "538-34-9455")
        ]
    assert [a.status_code for a in answers] == [404, 404]
    assert "AKIA6CYI2KVFDEKCVYOT" not in answers[0].text and "538-34-9455" not in answers[1].text


async def test_a_used_key_acting_for_someone_else_is_a_conflict_not_the_earlier_action() -> None:
    intake, store, _ = intake_with()
    first, created = await intake.submit(REPORTER, submission(), SubmissionChannel.HTTP)
    assert created
    for_carol = Principal("agent:reporter", PrincipalKind.AGENT, ("human:carol",))
    with pytest.raises(IdempotencyConflict):
        await intake.submit(for_carol, submission(), SubmissionChannel.HTTP)
    assert list(store.rows) == [first.action_id]
    assert store.rows[first.action_id].principals == ["agent:reporter", "human:alice"]


@pytest.mark.parametrize(
    "changes", [{"reason": "another reason"}, {"callback_url": "https://agent.example.internal/elsewhere"}]
)
async def test_a_used_key_with_another_reason_or_webhook_is_a_conflict(changes) -> None:
    intake, store, _ = intake_with()
    await intake.submit(REPORTER, submission(), SubmissionChannel.HTTP)
    with pytest.raises(IdempotencyConflict):
        await intake.submit(REPORTER, submission(**changes), SubmissionChannel.HTTP)
    again, created = await intake.submit(REPORTER, submission(), SubmissionChannel.HTTP)
    assert not created and again.action_id in store.rows  # the exact retry still finds its action


async def test_a_row_stored_before_requests_were_digested_is_compared_by_payload_and_principals() -> None:
    intake, store, _ = intake_with()
    first, _ = await intake.submit(REPORTER, submission(), SubmissionChannel.HTTP)
    store.rows[first.action_id] = __import__("dataclasses").replace(store.rows[first.action_id], request_digest=None)
    again, created = await intake.submit(REPORTER, submission(reason="reworded"), SubmissionChannel.HTTP)
    assert (again.action_id, created) == (first.action_id, False)
    for_carol = Principal("agent:reporter", PrincipalKind.AGENT, ("human:carol",))
    with pytest.raises(IdempotencyConflict):
        await intake.submit(for_carol, submission(), SubmissionChannel.HTTP)


def test_the_rules_name_where_never_what() -> None:
    assert text_problem("plain é text") is None
    why = problem_in({"ok": "x", "nested": [{"password": SECRET + "\u0000"}]}, "parameters")
    assert why == "parameters.nested.0.password: holds a NUL character (U+0000), which no stored text may hold"
    assert SECRET not in why
    assert problem_in({SECRET + " key": {"v": "\u0000"}}, "parameters") == (
        "parameters.*.v: holds a NUL character (U+0000), which no stored text may hold"
    )
    assert problem_in({"flag": True, "n": 2**63 - 1, "m": -(2**63)}, "parameters") is None


def test_storable_replaces_what_postgresql_refuses_and_keeps_the_rest() -> None:
    entry = {"votes": [{"reason": "no\u0000pe", "approver": "human:dave"}], "odd\ud800": 1}
    assert storable(entry) == {"votes": [{"reason": "no\ufffdpe", "approver": "human:dave"}], "odd\ufffd": 1}
    clean = {"votes": [{"reason": "fine"}]}
    assert storable(clean) is clean


def test_a_refusal_names_the_route_never_the_path_the_caller_sent() -> None:
    client, _, send = client_and_store()
    canary = "canary-zz28114@example.com"
    with client:
        answer = client.get(f"/v1/actions/{canary}/wait?timeout=abc", headers=AUTH)
    assert answer.status_code == 422
    [letter] = send.events("unit.dlq")
    assert letter.source_topic == "http:GET /v1/actions/{action_id}/wait"
    assert canary not in repr(letter) and "canary" not in letter.event_id


def test_a_path_refused_before_routing_is_named_masked() -> None:
    scope = {"method": "POST", "path": "/v1/actions/AKIA6CYI2KVFDEKCVYOT/x"}
    assert route_of(scope) == "POST /v1/actions/<AWS_ACCESS_KEY>/x"


@pytest.mark.parametrize(
    ("field", "value", "says"),
    [
        # words that would steer a reader's terminal
        ("reason", "weekly report\x1b[2J\x1b[Hread.table in staging", "steers what a reader sees"),  # clears a screen
        ("reason", "approve \u202eevil\u202c please", "steers what a reader sees"),  # shown right to left
        ("resource", "postgres://staging/analytics/orders\x1b[8m", "steers what a reader sees"),  # hides the rest
        ("idempotency_key", "key\x07", "steers what a reader sees"),
        # a reason that says nothing
        ("reason", "   ", "only spaces"),
        ("reason", "\n\t", "only spaces"),
        ("reason", "\u3000", "only spaces"),
        # a resource that is blank, or padded to pass for another
        ("resource", "   ", "without spaces"),
        ("resource", " postgres://prod/db", "without spaces"),
        ("resource", "postgres://prod/db\t", "without spaces"),
        # a resource spelled so that its host reads as staging to the policy and as production to
        # whoever connects: escaped letters, look-alikes, a user before the host, libpq's ?host=
        ("resource", "postgres://staging.%70rod/analytics/customers", "percent-escapes"),
        ("resource", "postgres://staging/%2e%2e/%70rod/customers", "percent-escapes"),
        ("resource", "postgres://staging.\uff50\uff52\uff4f\uff44/analytics/customers", "look-alike"),
        ("resource", "postgres://staging.pr\u043ed/analytics/customers", "ASCII"),
        ("resource", "postgres://staging:@prod/customers", "no user before it"),
        ("resource", "postgres://stg-ro@prod-db/customers", "no user before it"),
        ("resource", "postgres://staging/customers?host=prod", "no query string"),
        ("resource", "postgresql+psycopg://staging/analytics?host=prod", "no query string"),
        ("resource", "jdbc:postgresql://staging/analytics?host=prod", "no query string"),
        ("resource", "postgresql://staging:5432,prod:5432/analytics", "one host"),
        ("resource", "postgresql://staging.internal,prod.internal/analytics", "one host"),
    ],
)
def test_text_approvers_cannot_read_as_sent_is_refused_naming_the_field(field: str, value: str, says: str) -> None:
    client, store, _ = client_and_store()
    with client:
        answer = client.post("/v1/actions", json={**GOOD, field: value}, headers=AUTH)
    assert answer.status_code == 422, answer.text
    assert answer.json()["problems"][0].startswith(f"{field}: ") and says in answer.text
    assert not store.rows, "nothing was stored"


def test_a_reason_keeps_its_lines_and_tabs() -> None:
    client, store, _ = client_and_store()
    with client:
        answer = client.post("/v1/actions", json={**GOOD, "reason": "two lines:\n\tsecond"}, headers=AUTH)
    assert answer.status_code == 202, answer.text
    assert len(store.rows) == 1


@pytest.mark.parametrize(
    ("body", "says"),
    [
        # one reader keeps the first "role", another the last: which one would the approver see?
        (
            raw(
                '{"action":"iam.role.grant","resource":"iam://staging/roles/analyst","reason":"onboarding",'
                '"parameters":{"principal":"bob","role":"analyst","role":"admin"}}'
            ),
            "the same key twice",
        ),
        (
            raw('{"action":"read.table","action":"secrets.delete","resource":"postgres://a","reason":"r"}'),
            "the same key twice",
        ),
        (b"\xef\xbb\xbf" + json.dumps(GOOD).encode(), "BOM"),
        (json.dumps(GOOD).encode("utf-16"), None),  # not UTF-8 at all: 400
        (json.dumps(GOOD).encode("utf-32-le"), "not JSON"),  # NULs are UTF-8: then not JSON
        (raw('{"action": "read.table",'), "at character"),
        (b"[" * 5000 + b"]" * 5000, "nested deeper than a body may be"),  # past the parser, named so
    ],
)
def test_json_that_readers_could_read_two_ways_is_refused_and_recorded(body: bytes, says: str | None) -> None:
    client, store, send = client_and_store()
    with client:
        answer = client.post("/v1/actions", content=body, headers=AUTH)
        batch = client.post("/v1/actions:batch", content=b'{"items":[' + body + b"]}", headers=AUTH)
    assert answer.status_code == (422 if says else 400), answer.text
    if says:
        assert any(says in problem for problem in answer.json()["problems"]), answer.json()
    assert batch.status_code in (400, 422), batch.text
    assert "admin" not in answer.text and store.rows == {}, "nothing refused is stored"
    letters = send.events("unit.dlq")
    assert len(letters) == 2 and {letter.principal for letter in letters} == {"agent:reporter"}


def test_a_repeated_key_is_refused_in_an_approval_vote_too() -> None:
    from keyturn.bus.http import RepeatedKey, strict_json

    with pytest.raises(RepeatedKey):
        strict_json(b'{"choice":"deny","choice":"approve"}')
    assert strict_json(b'{"a":{"b":1},"c":[{"b":2},{"b":3}]}') == {"a": {"b": 1}, "c": [{"b": 2}, {"b": 3}]}


@pytest.mark.parametrize("timeout", ["nan", "inf"])
def test_a_wait_for_no_number_of_seconds_is_refused_saying_so(timeout: str) -> None:
    client, _, _ = client_and_store()
    with client:
        answer = client.get(f"/v1/actions/{uuid.uuid4()}/wait?timeout={timeout}", headers=AUTH)
    assert answer.status_code == 422 and "finite number" in answer.text, answer.text


def test_a_request_naming_two_callers_is_refused_before_either_is_believed() -> None:
    """A proxy reading the last ``Authorization`` and the intake the first would disagree on who
    submitted: two are refused, as on the submissions topic."""
    client, store, _ = client_and_store()
    token = AUTH["Authorization"]
    with client:
        answer = client.post("/v1/actions", json=GOOD, headers=[("Authorization", token), ("Authorization", token)])
        assert answer.status_code == 400 and "Authorization given more than once" in answer.text
        assert client.post("/v1/actions", json=GOOD, headers=AUTH).status_code == 202, "one is taken"
    assert len(store.rows) == 1
