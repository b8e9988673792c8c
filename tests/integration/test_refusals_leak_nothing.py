"""Secrets in refused input are written down nowhere: not on a topic, not in a log, not in an answer.

A corpus of secrets and PII made for this run (an AWS key pair, a GitHub token, a PEM private
key, a Luhn-valid card number, an email, a US SSN, a password) goes through every way input is
refused: the HTTP intake (unauthenticated, invalid in five ways, unparseable, too deep, too
large), the submissions topic (unsigned, invalid, garbage), the approval API, the console,
Slack (forged and signed-but-malformed) and Teams (unauthenticated and malformed). Then every
topic of the run is read from the beginning as raw bytes, every service log and OPA's log are
read, and each seeded value is searched for in clear, JSON-escaped and in base64.

The submissions topic is the one place the values stay: it is the caller's own channel into
Keyturn, written by the caller, like the body of an HTTP request.
"""

from __future__ import annotations

import base64
import json
import random
import secrets
import string
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from keyturn.bus.codec import registry
from keyturn.bus.topics import Topics
from keyturn.config import REPO_ROOT
from keyturn.core.events import ActionSubmitted, DeadLetter
from tests.integration.approval_stack import chat_stack
from tests.integration.conftest import eventually, mint, namespace_topics, produce, read_topic

pytestmark = pytest.mark.integration


def _luhn_card() -> str:
    digits = [4] + [random.randrange(10) for _ in range(14)]
    total = 0
    for i, d in enumerate(reversed(digits)):  # the check digit will sit to the right
        total += sum(divmod(d * 2, 10)) if i % 2 == 0 else d
    return "".join(map(str, digits)) + str((10 - total % 10) % 10)


def seeded_corpus() -> dict[str, str]:
    """Fresh values each run, so nothing can pass by having been seen before."""
    alnum = string.ascii_letters + string.digits
    pem = (
        ec.generate_private_key(ec.SECP256R1())
        .private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        .decode()
    )
    return {
        "aws_access_key_id": "AKIA" + "".join(random.choices(string.ascii_uppercase + "234567", k=16)),
        "aws_secret_access_key": "".join(random.choices(alnum + "+/", k=40)),
        "github_token": "ghp_" + "".join(random.choices(alnum, k=36)),
        "private_key": pem,
        "card": _luhn_card(),
        "email": f"u{secrets.token_hex(5)}@corp{secrets.token_hex(3)}.com",
        "ssn": f"{random.randint(100, 665):03d}-{random.randint(10, 99):02d}-{random.randint(1000, 9999):04d}",
        "password": "pw-" + secrets.token_urlsafe(18),
    }


def needles(corpus: dict[str, str]) -> dict[bytes, str]:
    """Byte strings whose presence anywhere means a leak: each value as written, JSON-escaped,
    and in base64 at each of the three alignments (the part fixed by the value alone)."""
    found: dict[bytes, str] = {}
    for name, value in corpus.items():
        parts = (
            [line for line in value.splitlines() if "-----" not in line and len(line) >= 16]
            if "PRIVATE KEY" in value
            else [value]
        )
        for part in parts:
            for spelling in {part, json.dumps(part)[1:-1]}:
                found[spelling.encode()] = name
            raw = part.encode()
            for offset in range(3):
                encoded = base64.b64encode(b"\0" * offset + raw)
                found[encoded[4:-4]] = f"{name} (base64)"
    return found


def _signed_slack_raw(slack, body: bytes) -> dict[str, str]:
    import hashlib
    import hmac
    import time

    ts = str(int(time.time()))
    mac = hmac.new(slack.signing_secret.encode(), b"v0:" + ts.encode() + b":" + body, hashlib.sha256).hexdigest()
    return {
        "X-Slack-Request-Timestamp": ts,
        "X-Slack-Signature": f"v0={mac}",
        "Content-Type": "application/x-www-form-urlencoded",
    }


@pytest.fixture(scope="module")
def chat(settings):
    with chat_stack(settings) as stack:
        yield stack


def test_every_refusal_path_leaves_the_seeded_secrets_nowhere(chat) -> None:
    stack, slack, teams, procs = chat
    topics = Topics(stack.namespace, stack.partitions)
    corpus = seeded_corpus()
    agent = mint(stack, "agent:reporter", ("human:alice",))
    carol = mint(stack, "human:carol")
    answers: list[tuple[str, int, bytes]] = []  # (path, status, body) of every answer

    def send(path: str, response: httpx.Response, *expected: int) -> None:
        answers.append((path, response.status_code, response.content))
        assert response.status_code in expected, f"{path}: {response.status_code} {response.text[:300]}"

    valid = {
        "action": "read.table",
        "resource": "postgres://staging/a/b",
        "parameters": dict(corpus),
        "reason": "refusal corpus",
    }
    with httpx.Client(base_url=stack.intake_url, timeout=60) as intake:
        bearer = {"Authorization": f"Bearer {agent}"}
        # unauthenticated: 401, and nothing written
        send("intake unauthenticated", intake.post("/v1/actions", json={**valid, "surprise": corpus["password"]}), 401)
        send(
            "intake forged token",
            intake.post(
                "/v1/actions",
                content=b"{" + corpus["github_token"].encode(),
                headers={"Authorization": "Bearer x.y.z", "Content-Type": "application/json"},
            ),
            401,
        )
        # authenticated, each refused a different way
        send("intake unknown field", intake.post("/v1/actions", json={**valid, "notes": corpus}, headers=bearer), 422)
        send(
            "intake secret as a field name",
            intake.post("/v1/actions", json={**valid, corpus["github_token"]: 1}, headers=bearer),
            422,
        )
        send(
            "intake action not a string",
            intake.post("/v1/actions", json={**valid, "action": [corpus["card"]]}, headers=bearer),
            422,
        )
        send(
            "intake parameters too large",
            intake.post("/v1/actions", json={**valid, "parameters": {**corpus, "pad": "x" * 70_000}}, headers=bearer),
            422,
        )
        send(
            "intake reason missing",
            intake.post("/v1/actions", json={k: v for k, v in valid.items() if k != "reason"}, headers=bearer),
            422,
        )
        send(
            "intake malformed JSON",
            intake.post(
                "/v1/actions",
                content=json.dumps(valid).encode()[:-3],
                headers={**bearer, "Content-Type": "application/json"},
            ),
            422,
        )
        send(
            "intake not UTF-8",
            intake.post(
                "/v1/actions",
                content=json.dumps(valid).encode() + b"\xff\xfe",
                headers={**bearer, "Content-Type": "application/json"},
            ),
            400,
            422,
        )
        deep = {"a": corpus["ssn"]}
        for _ in range(40):
            deep = {"a": deep}
        send(
            "intake nested too deep",
            intake.post("/v1/actions", json={**valid, "parameters": deep}, headers=bearer),
            422,
        )
        send(
            "intake nested past the parser",
            intake.post(
                "/v1/actions",
                content=b'{"parameters":' + b"[" * 100_000 + json.dumps(corpus).encode(),
                headers={**bearer, "Content-Type": "application/json"},
            ),
            400,
            422,
        )
        huge = json.dumps({**valid, "reason": (json.dumps(corpus) + " ") * 3000}).encode()
        assert len(huge) > stack.max_body_bytes
        send(
            "intake 4 MB body",
            intake.post("/v1/actions", content=huge, headers={**bearer, "Content-Type": "application/json"}),
            413,
        )
        send(
            "intake chunked body",
            intake.post(
                "/v1/actions",
                content=(huge[i : i + 65536] for i in range(0, len(huge), 65536)),
                headers={**bearer, "Content-Type": "application/json"},
            ),
            413,
        )
        assert answers[-1][2] and json.loads(answers[-1][2])["error"] == "body_too_large"
        send("intake unknown action id", intake.get(f"/v1/actions/{corpus['github_token']}", headers=bearer), 404)
        send(
            "intake headers too large",
            intake.get("/healthz", headers={f"x-{i}": corpus["password"] * 20 for i in range(40)}),
            431,
        )
        metrics = intake.get("/metrics").text

    # the submissions topic: unsigned, invalid and garbage
    submitted = ActionSubmitted("read.table", "postgres://staging/a/b", json.dumps(corpus), "corpus", "refusal-1")
    produce(
        stack,
        topics.submissions,
        registry().encode_event(submitted),
        key=b"refusal-unsigned",
        headers=[("authorization", b"Bearer forged.token.value")],
    )
    broken = ActionSubmitted(
        "Not An Action " + corpus["github_token"],
        "postgres://staging/a/b",
        json.dumps(corpus),
        corpus["email"],
        "refusal-2",
    )
    produce(
        stack,
        topics.submissions,
        registry().encode_event(broken),
        key=b"refusal-invalid",
        headers=[("authorization", f"Bearer {agent}".encode())],
    )
    produce(
        stack,
        topics.submissions,
        b"\x00" + json.dumps(corpus).encode(),
        key=corpus["card"].encode(),
        headers=[("authorization", f"Bearer {agent}".encode())],
    )

    with httpx.Client(base_url=stack.approval_url, timeout=60) as approval:
        # the approval API
        send("votes unauthenticated", approval.post("/v1/approvals/x/votes", json={"choice": corpus["ssn"]}), 401)
        send(
            "votes invalid",
            approval.post(
                "/v1/approvals/x/votes",
                json={
                    "choice": corpus["ssn"],
                    "reason": corpus["private_key"],
                    "payload_digest": corpus["aws_secret_access_key"],
                    "x": corpus,
                },
                headers={"Authorization": f"Bearer {carol}"},
            ),
            422,
        )
        send(
            "votes too large",
            approval.post("/v1/approvals/x/votes", content=huge, headers={"Authorization": f"Bearer {carol}"}),
            413,
        )
        send(
            "approval unknown action id",
            approval.get(f"/v1/approvals/{corpus['github_token']}", headers={"Authorization": f"Bearer {carol}"}),
            404,
            425,
        )
        # the console, signed in, with a form that cannot count
        form = {
            "choice": corpus["card"],
            "reason": corpus["password"] + " " + corpus["github_token"],
            "payload_digest": corpus["ssn"],
            "csrf": "forged",
        }
        send(
            "console forged form",
            approval.post("/console/actions/x/vote", data=form, cookies={"keyturn_session": carol}),
            403,
            404,
            425,
        )
        # the console, signed in, with forms too large to read: over the console's form bound, and
        # over every request's body bound (refused before the route is known); both held to carol
        large = {**form, "reason": corpus["password"] * (70_000 // len(corpus["password"]) + 1)}
        send(
            "console form too large",
            approval.post("/console/actions/x/vote", data=large, cookies={"keyturn_session": carol}),
            413,
        )
        send(
            "console body too large",
            approval.post(
                "/console/actions/x/vote",
                content=huge,
                headers={"Content-Type": "application/x-www-form-urlencoded"},
                cookies={"keyturn_session": carol},
            ),
            413,
        )
        # Slack: forged, then signed but malformed
        body, headers = slack.signed(
            {"type": "block_actions", "user": {"id": corpus["email"]}, "token": corpus["github_token"]}
        )
        send(
            "slack forged",
            approval.post("/slack/interactions", content=body, headers={**headers, "X-Slack-Signature": "v0=00"}),
            401,
        )
        malformed = body + b"&" + corpus["password"].encode()
        send(
            "slack malformed",
            approval.post("/slack/interactions", content=malformed, headers=_signed_slack_raw(slack, malformed)),
            200,
            400,
        )
        raw = b"payload=" + json.dumps({"user": corpus, "actions": "x"}).encode()
        send(
            "slack bad payload",
            approval.post("/slack/interactions", content=raw, headers=_signed_slack_raw(slack, raw)),
            200,
            400,
        )
        # Teams: without a token, then with one and a malformed activity
        activity = {"type": "invoke", "name": "adaptiveCard/action", "from": {"id": corpus["email"]}, "value": corpus}
        send("teams unauthenticated", approval.post("/api/messages", json=activity), 401)
        send(
            "teams malformed",
            approval.post("/api/messages", json=activity, headers={"Authorization": f"Bearer {teams.inbound_token()}"}),
            200,
            400,
        )

    # every authenticated refusal is on the DLQ, named after its caller; unauthenticated ones are not
    def letters() -> list[DeadLetter]:
        return [e for e, _ in read_topic(stack, topics.dlq) if isinstance(e, DeadLetter)]

    assert eventually(lambda: len(letters()) >= 19, timeout=60), [(d.source_topic, d.error_type) for d in letters()]
    found = letters()
    http_letters = [d for d in found if d.source_topic == "http:POST /v1/actions"]
    assert {d.principal for d in http_letters} == {"agent:reporter"}, "unauthenticated bodies must leave no dead letter"
    assert {d.error_type for d in http_letters} >= {"invalid_body", "body_too_large"}
    assert all(
        d.payload_length > 0 and len(d.payload_digest.hex) == 64
        for d in http_letters
        if d.error_type != "body_too_large"
    )
    assert any("notes" in p for d in http_letters for p in d.problems), "a refusal names the field that was wrong"
    assert {d.principal for d in found if d.source_topic.startswith("http:POST /v1/approvals")} == {"human:carol"}
    assert any(d.source_topic == "console" and d.principal == "human:carol" for d in found)
    too_large = {d.source_topic for d in found if d.error_type == "body_too_large" and d.principal == "human:carol"}
    assert {"console", "http:POST /console/actions/x/vote"} <= too_large, too_large
    from_topic = {d.key: d for d in found if d.source_topic == topics.submissions}
    assert from_topic[b"refusal-invalid"].principal == "agent:reporter" and from_topic[b"refusal-invalid"].problems
    assert from_topic[b"refusal-unsigned"].principal is None
    assert 'keyturn_intake_rejected_total{channel="http",reason="token_' in metrics, "401s are counted"

    # now search everything
    every_needle = needles(corpus)

    def submissions_holding_seeds() -> list[str]:
        raw = b"\n".join(m.value or b"" for _, m in read_topic(stack, topics.submissions))
        return sorted({what for needle, what in every_needle.items() if needle in raw})

    # the agent's own channel in holds them until the intake has taken each message, no longer
    assert eventually(lambda: not submissions_holding_seeds(), timeout=30), submissions_holding_seeds()
    haystacks: dict[str, bytes] = {}
    for topic in namespace_topics(stack):
        haystacks[f"topic {topic}"] = b"\n".join(
            (m.key or b"") + b"\t" + (m.value or b"") for _, m in read_topic(stack, topic)
        )
    for log in Path(procs.log_dir).glob("*.log"):
        haystacks[f"log {log.name}"] = log.read_bytes()
    opa_log = REPO_ROOT / ".run" / "opa" / "opa.log"
    if opa_log.exists():
        haystacks["OPA log"] = opa_log.read_bytes()
    for path, status, body in answers:
        haystacks[f"answer to {path} ({status})"] = body
    assert haystacks[f"topic {topics.dlq}"] and any(name.startswith("log ") for name in haystacks)
    leaks = sorted(
        {(what, where) for needle, what in every_needle.items() for where, hay in haystacks.items() if needle in hay}
    )
    assert not leaks, f"seeded values in clear: {leaks[:20]}"
    assert not procs.exited(), f"services died: {procs.exited()}"
