"""The OPA client on the hot path: real OPA answers, and the failures OPA and networks produce."""

from __future__ import annotations

import asyncio
import time

import pytest

from keyturn.intake.wiring import parameter_masks
from keyturn.policy.opa import OpaClient, PolicyAnswerInvalid, PolicyUnavailable
from tests.conftest import free_port
from tests.peers import JsonPeer

pytestmark = pytest.mark.integration


def run(coro):
    return asyncio.run(coro)


async def query(url: str, path: str, document: dict, **options):
    client = OpaClient(url, **options)
    try:
        return await client.query(path, document)
    finally:
        await client.close()


def test_a_real_decision_comes_with_opa_s_decision_id(endpoints) -> None:
    answer = run(query(endpoints.opa_url, "keyturn/decision", {"action": "secrets.delete"}))
    assert answer.result["decision"]["outcome"] == "denied"
    assert answer.decision_id


def test_the_intake_reads_a_registered_tool_s_mask_from_the_shipped_policies(endpoints) -> None:
    async def masks() -> tuple[tuple[str, ...], tuple[str, ...]]:
        client = OpaClient(endpoints.opa_url)
        try:
            mask_for = parameter_masks(client)
            return await mask_for("mcp.notes.store_token"), await mask_for("read.table")
        finally:
            await client.close()

    tool, table = run(masks())
    assert "parameters.api_key" in tool and {"parameters.password", "parameters.token"} <= set(tool)
    assert "parameters.api_key" not in table and {"parameters.password", "parameters.token"} <= set(table)


def test_an_undefined_document_is_refused_not_treated_as_allow(endpoints) -> None:
    with pytest.raises(PolicyAnswerInvalid, match="undefined"):
        run(query(endpoints.opa_url, "keyturn/no_such_package/decision", {}))


def flaky_opa(status: int, failures: int) -> JsonPeer:
    """A peer that fails the first ``failures`` calls with ``status``, then answers like OPA."""

    def respond(method: str, path: str, body: bytes) -> tuple[int, dict]:
        if len(peer.requests) <= failures:
            return status, {"message": "overloaded"}
        return 200, {"result": {"decision": {"outcome": "allowed"}}, "decision_id": "d-1"}

    peer = JsonPeer(respond)
    return peer


@pytest.mark.parametrize("status", [503, 500, 429])
def test_transient_failures_are_retried_with_backoff(status: int) -> None:
    peer = flaky_opa(status, failures=2)
    try:
        answer = run(query(peer.url, "keyturn/decision", {}, retries=3, backoff_s=0.01))
    finally:
        peer.close()
    assert answer.result["decision"]["outcome"] == "allowed"
    assert peer.calls == 3


def test_retries_are_bounded_and_the_error_keeps_opa_s_message() -> None:
    peer = flaky_opa(503, failures=100)
    try:
        with pytest.raises(PolicyUnavailable, match="overloaded"):
            run(query(peer.url, "keyturn/decision", {}, retries=2, backoff_s=0.01))
    finally:
        peer.close()
    assert peer.calls == 3


def test_a_client_error_is_not_retried() -> None:
    peer = flaky_opa(400, failures=100)
    try:
        with pytest.raises(PolicyAnswerInvalid, match="HTTP 400"):
            run(query(peer.url, "keyturn/decision", {}, retries=3, backoff_s=0.01))
    finally:
        peer.close()
    assert peer.calls == 1


def test_nothing_listening_is_policy_unavailable() -> None:
    with pytest.raises(PolicyUnavailable, match="unavailable after 2 attempts"):
        run(query(f"http://127.0.0.1:{free_port()}", "keyturn/decision", {}, retries=1, backoff_s=0.01))


def slow_opa_with_policies(delay_s: float, source: list[str]) -> JsonPeer:
    """A peer that answers OPA's policy and data reads after ``delay_s``; ``source[0]`` is the
    module's text, so a test can change the loaded policy."""

    def respond(method: str, path: str, body: bytes) -> tuple[int, dict]:
        time.sleep(delay_s)
        if path == "/v1/policies":
            package = {
                "path": [
                    {"type": "var", "value": "data"},
                    {"type": "string", "value": "keyturn"},
                    {"type": "string", "value": "decision"},
                ]
            }
            return 200, {"result": [{"id": "decision.rego", "raw": source[0], "ast": {"package": package}}]}
        if path == "/v1/data/keyturn":
            return 200, {"result": {"decision": {"outcome": "allowed"}, "groups": {"security": ["human:carol"]}}}
        return 404, {"code": "not_found", "message": path}

    return JsonPeer(respond)


def reads_of_policies(peer: JsonPeer) -> int:
    return sum(1 for method, path, _ in peer.requests if path == "/v1/policies")


def test_callers_waiting_for_the_policy_revision_share_one_read_of_opa() -> None:
    peer = slow_opa_with_policies(0.2, ["package keyturn.decision\n"])

    async def sixteen_at_once() -> set[str]:
        client = OpaClient(peer.url)
        try:
            return set(await asyncio.gather(*(client.policy_revision() for _ in range(16))))
        finally:
            await client.close()

    try:
        revisions = run(sixteen_at_once())
    finally:
        peer.close()
    assert len(revisions) == 1 and next(iter(revisions)).startswith("sha256:")
    assert reads_of_policies(peer) == 1


def test_the_policy_revision_is_read_again_only_when_it_is_older_than_its_max_age() -> None:
    source = ["package keyturn.decision\n"]
    peer = slow_opa_with_policies(0.0, source)

    async def scenario() -> tuple[str, str, str, list[int]]:
        client = OpaClient(peer.url, revision_max_age_s=0.5)
        try:
            first = await client.policy_revision()
            source[0] = "package keyturn.decision\n\ndefault allow := false\n"  # a hot reload
            cached = await client.policy_revision()
            reads = [reads_of_policies(peer)]
            await asyncio.sleep(0.6)
            later = await client.policy_revision()
            reads.append(reads_of_policies(peer))
            await client.policy_revision(max_age_s=0)  # "now", as `keyturn policy explain` asks
            reads.append(reads_of_policies(peer))
            return first, cached, later, reads
        finally:
            await client.close()

    try:
        first, cached, later, reads = run(scenario())
    finally:
        peer.close()
    assert cached == first  # within the max age: no read of OPA
    assert later != first  # after it: the reloaded policy shows
    assert reads == [1, 2, 3]


def test_a_call_opa_does_not_answer_in_time_is_retried_then_policy_unavailable() -> None:
    peer = JsonPeer(lambda method, path, body: (time.sleep(1.0), (200, {"result": {}}))[1])
    started = time.monotonic()
    try:
        with pytest.raises(PolicyUnavailable, match="unavailable after 2 attempts"):
            run(query(peer.url, "keyturn/decision", {}, timeout_s=0.2, retries=1, backoff_s=0.01))
    finally:
        peer.close()
    assert time.monotonic() - started < 0.9  # two timed-out calls, not two full answers
    assert peer.calls == 2


def test_the_real_opa_s_revision_is_stable_while_its_policy_is(endpoints) -> None:
    async def twice() -> tuple[str, str]:
        client = OpaClient(endpoints.opa_url)
        try:
            return await client.policy_revision(max_age_s=0), await client.policy_revision(max_age_s=0)
        finally:
            await client.close()

    first, second = run(twice())
    assert first == second and first.startswith("sha256:")


def varied_inputs(n: int, seed: int = 14) -> list[dict]:
    """Seeded decision inputs across the catalog: actions, environments, parameters, hours, malformed ones."""
    import random
    import uuid

    rng = random.Random(seed)
    actions = [
        ("read.table", "postgres://{env}/analytics/customers", {"row_count": 25}),
        ("db.export", "postgres://{env}/analytics/orders", {"format": "csv", "row_limit": 5000}),
        ("secrets.read", "secret://{env}/payments/db", {}),
        ("secrets.delete", "secret://{env}/payments/db", {}),
        ("iam.role.grant", "iam://{env}/roles", {"role": "analyst"}),
        ("iam.role.grant", "iam://{env}/roles", {"role": "admin"}),
        ("sql.query", "postgres://{env}/analytics", {"statement": "select 1"}),
        ("sql.query", "postgres://{env}/analytics", {"statement": "drop table orders"}),
        ("http.request", "https://api.example.internal/v1/{env}", {"method": "POST"}),
        ("unknown.thing", "x://{env}", {}),
    ]
    inputs: list[dict] = []
    for _ in range(n):
        action, resource, parameters = rng.choice(actions)
        env = rng.choice(["prod", "staging", "dev"])
        hour, weekday = rng.randrange(24), rng.randrange(1, 8)
        document = {
            "action_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            "action": action,
            "resource": resource.format(env=env),
            "parameters": parameters,
            "reason": "seeded",
            "requester": rng.choice(
                [
                    {"id": "agent:reporter", "kind": "agent", "chain": ["human:alice"]},
                    {"id": "agent:nightly", "kind": "agent", "chain": []},
                    {"id": "human:alice", "kind": "human", "chain": []},
                ]
            ),
            "environment": {"prod": "production", "staging": "staging", "dev": "development"}[env],
            "submitted_at": f"2025-03-0{weekday}T{hour:02d}:15:00Z",
            "context": {"hour_utc": hour, "weekday": weekday},
        }
        if rng.random() < 0.1:
            document.pop(rng.choice(["action_id", "requester", "parameters"]))  # malformed: its own denial
        inputs.append(document)
    return inputs


def test_one_batch_query_decides_every_item_as_its_own_query_would(endpoints) -> None:
    inputs = varied_inputs(60)

    async def both() -> tuple[list, list]:
        client = OpaClient(endpoints.opa_url)
        try:
            batch = await client.query("keyturn/batch", {"batch": inputs})
            singles = await asyncio.gather(*(client.query("keyturn/decision", d) for d in inputs))
            return batch.result["decisions"], [single.result["decision"] for single in singles]
        finally:
            await client.close()

    batch, singles = run(both())
    assert batch == singles
    assert {d["outcome"] for d in batch} == {"allowed", "denied", "needs_approval"}  # the mix is varied


def test_the_revision_comes_from_the_bundle_opa_names_in_its_provenance(tmp_path) -> None:
    import json
    import shutil
    import subprocess

    from tests.stack import POLICIES, REPO

    opa = shutil.which("opa") or str(REPO / ".cache" / "bin" / "opa")
    bundle = tmp_path / "bundle"
    shutil.copytree(POLICIES / "keyturn", bundle / "keyturn", ignore=shutil.ignore_patterns("*_test.rego"))
    shutil.copy(POLICIES / "data.json", bundle / "data.json")
    (bundle / ".manifest").write_text(json.dumps({"revision": "release-2025.03.04", "roots": ["keyturn"]}))
    port = free_port()
    server = subprocess.Popen(
        [opa, "run", "--server", "--bundle", "--addr", f"127.0.0.1:{port}", "--skip-version-check", str(bundle)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    async def ask() -> tuple[str | None, str]:
        client = OpaClient(f"http://127.0.0.1:{port}", retries=20, backoff_s=0.05)
        try:
            answer = await client.query("keyturn/batch", {"batch": varied_inputs(3)})
            return answer.revision, await client.policy_revision(max_age_s=0)
        finally:
            await client.close()

    try:
        revision, asked = run(ask())
    finally:
        server.terminate()
        server.wait(timeout=10)
    assert revision == asked == "release-2025.03.04"
