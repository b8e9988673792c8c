"""Signing out of the console ends the session on the server, on every approval instance: what a
person (or whoever holds a copy of the old cookie) notices, through the HTTP routes on fakes.

Two approval instances share one store, as replicas share PostgreSQL; tokens are real JWTs
verified by the real verifier, so a session's expiry is the token's own.
"""

from __future__ import annotations

import base64
import re
import uuid
from datetime import UTC, datetime, timedelta

import httpx
from fastapi import FastAPI

from keyturn.approval.console import SESSION_COOKIE, SIGN_IN_COOKIE, SIGN_IN_ERRORS, Console, mount_console
from keyturn.approval.console_history import mount_history
from keyturn.approval.http import mount_routes, session_digest
from keyturn.approval.runtime import ApprovalRuntime
from keyturn.bus.codec import registry
from keyturn.config import Settings
from keyturn.core import events
from keyturn.identity import SigningKey, TokenVerifier, issue_token
from tests.fakes.approval_store import Broker, FakePolicyEngine, InMemoryApprovalStore
from tests.fakes.history_store import MemoryHistoryStore
from tests.unit.test_approval_desk import DIGEST, MEMBERS, OPENED, TOPICS, decision

ISSUER, AUDIENCE = "keyturn-dev", "keyturn"
KEY = SigningKey.generate()
VERIFIER = TokenVerifier(KEY.jwks(), issuer=ISSUER, audience=AUDIENCE)


def token(subject: str = "human:carol", ttl: timedelta = timedelta(hours=8)) -> str:
    return issue_token(KEY, subject=subject, audience=AUDIENCE, issuer=ISSUER, ttl=ttl)


class Instance:
    """One approval instance's HTTP app (API, console, history) on the shared store."""

    def __init__(self, store: InMemoryApprovalStore, broker: Broker) -> None:
        self.runtime = ApprovalRuntime(Settings(callback_secret="unit"), TOPICS, broker)
        self.runtime.wire(store, FakePolicyEngine(MEMBERS)).clock = lambda: OPENED + timedelta(seconds=1)
        self.app = FastAPI()
        mount_routes(self.app, self.runtime.desk, lambda: VERIFIER)
        self.console: Console = mount_console(
            self.app, self.runtime.desk, lambda: VERIFIER, None, self.runtime.console_form_key
        )
        history = MemoryHistoryStore()

        async def history_of() -> MemoryHistoryStore:
            return history

        mount_history(self.app, self.console, history_of)

    def browser(self, cookie: str | None = None) -> httpx.AsyncClient:
        """A browser on this instance, holding ``cookie`` as its session cookie."""
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url="http://approval")
        if cookie is not None:
            client.cookies.set(SESSION_COOKIE, cookie, domain="approval.local", path="/console")
        return client


class Replicas:
    def __init__(self) -> None:
        self.store, self.broker = InMemoryApprovalStore(), Broker()
        self.a, self.b = Instance(self.store, self.broker), Instance(self.store, self.broker)

    async def opened(self) -> events.ActionDecided:
        decided = decision()
        desk = await self.a.runtime.desk()
        assert await desk.take_decision(decided, registry().encode_event(decided)) == "opened"
        return decided

    def votes(self) -> list:
        return [
            e
            for e in (registry().decode_event(v) for _, _, v in self.broker.sent)
            if isinstance(e, events.VoteRecorded)
        ]


async def signed_in(browser: httpx.AsyncClient, pasted: str) -> None:
    """Sign in through the form, pasting ``pasted``, as a person does."""
    await browser.get("/console/sign-in")
    nonce = browser.cookies.get(SIGN_IN_COOKIE)
    answer = await browser.post("/console/sign-in", data={"nonce": nonce, "token": pasted})
    assert answer.status_code == 303 and answer.headers["location"] == "/console", answer.text
    assert browser.cookies.get(SESSION_COOKIE) == pasted


def csrf_of(page: httpx.Response) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)


def sent_to_sign_in(answer: httpx.Response) -> bool:
    return answer.status_code == 303 and answer.headers["location"] == "/console/sign-in"


async def test_after_sign_out_the_old_cookie_opens_no_page_and_casts_no_vote_on_any_instance() -> None:
    replicas = Replicas()
    decided = await replicas.opened()
    carol = token()
    async with replicas.a.browser() as browser:
        await signed_in(browser, carol)
        page = await browser.get(f"/console/actions/{decided.action_id}")
        assert page.status_code == 200 and 'id="vote"' in page.text
        csrf = csrf_of(page)
        out = await browser.post("/console/sign-out", data={"csrf": csrf})
        assert sent_to_sign_in(out)
    vote_form = {"choice": "approve", "reason": "", "payload_digest": str(DIGEST), "csrf": csrf}
    for instance in (replicas.a, replicas.b):  # whoever kept a copy of the cookie, on either instance
        async with instance.browser(carol) as replay:
            inbox = await replay.get("/console")
            page = await replay.get(f"/console/actions/{decided.action_id}")
            history = await replay.get("/console/history")
            voted = await replay.post(f"/console/actions/{decided.action_id}/vote", data=vote_form)
        assert all(sent_to_sign_in(answer) for answer in (inbox, page, history, voted))
        assert "onboarding" not in page.text
    assert replicas.votes() == [] and replicas.store.tables.approvals[decided.action_id].status == "pending"


async def test_signing_out_keeps_a_digest_of_the_token_until_its_expiry_never_the_token() -> None:
    replicas = Replicas()
    carol = token(ttl=timedelta(hours=2))
    async with replicas.a.browser(carol) as browser:
        csrf = csrf_of(await browser.get("/console"))
        await browser.post("/console/sign-out", data={"csrf": csrf})
    assert list(replicas.store.signed_out) == [session_digest(carol)]
    [until] = replicas.store.signed_out.values()
    # the token's exp, and a few minutes past it: a verifier's leeway takes a token that long after
    assert abs(until - (datetime.now(UTC) + timedelta(hours=2, minutes=5))) < timedelta(minutes=1)
    assert carol.encode() not in repr(replicas.store.signed_out).encode()


#: The order of P-256: an ES256 signature (r, s) verifies as (r, n - s) as well.
P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


def rewritten_signature(jwt_text: str) -> str:
    """Another text of the same signed token that verifies as well: its ES256 signature's s as n - s."""
    signed, _, signature = jwt_text.rpartition(".")
    raw = base64.urlsafe_b64decode(signature + "==")
    r, s = raw[:32], int.from_bytes(raw[32:], "big")
    return f"{signed}." + base64.urlsafe_b64encode(r + (P256_ORDER - s).to_bytes(32, "big")).decode().rstrip("=")


async def test_a_signed_out_token_with_its_signature_rewritten_is_still_signed_out() -> None:
    replicas = Replicas()
    decided = await replicas.opened()
    carol = token()
    copy = rewritten_signature(carol)
    assert copy != carol and VERIFIER.verify(copy).id == "human:carol"  # what a holder of the old cookie could send
    async with replicas.a.browser() as browser:
        await signed_in(browser, carol)
        await browser.post("/console/sign-out", data={"csrf": csrf_of(await browser.get("/console"))})
    vote = {"choice": "approve", "payload_digest": str(DIGEST)}
    for instance in (replicas.a, replicas.b):
        async with instance.browser(copy) as replay:
            page = await replay.get(f"/console/actions/{decided.action_id}")
            assert sent_to_sign_in(await replay.get("/console")) and sent_to_sign_in(page)
            assert sent_to_sign_in(await replay.get("/console/history"))
            bearer = {"Authorization": f"Bearer {copy}"}
            answers = [
                await replay.get("/v1/approvals", headers=bearer),
                await replay.post(f"/v1/approvals/{decided.action_id}/votes", json=vote, headers=bearer),
            ]
        for answer in answers:
            assert answer.status_code == 401 and "signed_out" in answer.text, answer.text
    assert replicas.votes() == [] and replicas.store.tables.approvals[decided.action_id].status == "pending"


async def test_signing_out_ends_that_session_only() -> None:
    replicas = Replicas()
    laptop, phone = token(), token(ttl=timedelta(hours=7))  # the same person, signed in twice
    async with replicas.a.browser(laptop) as browser:
        await browser.post("/console/sign-out", data={"csrf": csrf_of(await browser.get("/console"))})
    async with replicas.b.browser(phone) as other:
        assert (await other.get("/console")).status_code == 200
    async with replicas.b.browser(laptop) as replay:
        assert sent_to_sign_in(await replay.get("/console"))


async def test_a_sign_out_without_the_session_s_form_token_ends_nothing() -> None:
    replicas = Replicas()
    carol = token()
    async with replicas.a.browser(carol) as browser:
        refused = await browser.post("/console/sign-out", data={"csrf": "forged"})
        assert refused.status_code == 403
        assert (await browser.get("/console")).status_code == 200
    assert replicas.store.signed_out == {}


async def test_signed_out_tokens_past_their_expiry_are_forgotten() -> None:
    replicas = Replicas()
    short, later = token(ttl=timedelta(minutes=5)), token("human:dave")
    async with replicas.a.browser(short) as browser:
        await browser.post("/console/sign-out", data={"csrf": csrf_of(await browser.get("/console"))})
    assert len(replicas.store.signed_out) == 1
    # just expired, the verifier's leeway would still take it: it stays signed out a while longer
    replicas.a.console.clock = lambda: datetime.now(UTC) + timedelta(minutes=6)
    async with replicas.a.browser(later) as browser:
        await browser.post("/console/sign-out", data={"csrf": csrf_of(await browser.get("/console"))})
    assert session_digest(short) in replicas.store.signed_out
    replicas.a.console.clock = lambda: datetime.now(UTC) + timedelta(minutes=11)  # well past any leeway
    async with replicas.a.browser(token("human:erin")) as browser:
        await browser.post("/console/sign-out", data={"csrf": csrf_of(await browser.get("/console"))})
    assert session_digest(short) not in replicas.store.signed_out


async def test_a_page_view_costs_one_lookup_and_a_known_signed_out_token_none() -> None:
    replicas = Replicas()
    carol = token()
    async with replicas.a.browser(carol) as browser:
        before = replicas.store.session_lookups
        assert (await browser.get("/console")).status_code == 200
        assert replicas.store.session_lookups == before + 1
        await browser.post("/console/sign-out", data={"csrf": csrf_of(await browser.get("/console"))})
    async with replicas.a.browser(carol) as replay:
        before = replicas.store.session_lookups
        for _ in range(3):
            assert sent_to_sign_in(await replay.get("/console"))
    assert replicas.store.session_lookups == before  # this instance remembers what it signed out
    async with replicas.a.browser("not a token") as stranger:
        before = replicas.store.session_lookups
        assert sent_to_sign_in(await stranger.get("/console"))
    assert replicas.store.session_lookups == before  # a token that does not verify is not looked up


async def test_a_token_signed_out_of_the_console_is_refused_by_the_approval_api_on_every_instance() -> None:
    replicas = Replicas()
    decided = await replicas.opened()
    carol, dave = token(), token("human:dave")
    async with replicas.a.browser(carol) as browser:
        await browser.post("/console/sign-out", data={"csrf": csrf_of(await browser.get("/console"))})
    vote = {"choice": "approve", "payload_digest": str(DIGEST)}
    for instance in (replicas.a, replicas.b):
        async with instance.browser() as api:
            bearer = {"Authorization": f"Bearer {carol}"}
            answers = [
                await api.get("/v1/approvals", headers=bearer),
                await api.get(f"/v1/approvals/{decided.action_id}", headers=bearer),
                await api.post(f"/v1/approvals/{decided.action_id}/votes", json=vote, headers=bearer),
            ]
            assert (await api.get("/v1/approvals", headers={"Authorization": f"Bearer {dave}"})).status_code == 200
        for answer in answers:
            assert answer.status_code == 401 and "signed_out" in answer.text, answer.text
            assert carol not in answer.text
    assert replicas.votes() == [] and replicas.store.tables.approvals[decided.action_id].status == "pending"


async def test_every_console_page_forbids_framing_caching_and_anything_but_itself() -> None:
    replicas = Replicas()
    decided = await replicas.opened()
    async with replicas.a.browser(token()) as browser:
        pages = [
            await browser.get("/console"),
            await browser.get(f"/console/actions/{decided.action_id}"),
            await browser.get("/console/history"),
        ]
    async with replicas.a.browser() as stranger:
        pages.append(await stranger.get("/console/sign-in"))
    for page in pages:
        assert page.status_code == 200, page.text
        policy = page.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in policy and "default-src 'none'" in policy and "script-src" not in policy
        assert page.headers["x-frame-options"] == "DENY" and page.headers["cache-control"] == "no-store"
        assert page.headers["x-content-type-options"] == "nosniff" and page.headers["referrer-policy"] == "no-referrer"
        assert "<script" not in page.text


async def test_a_link_cannot_write_the_heading_of_a_console_page() -> None:
    replicas = Replicas()
    words = "0 IS APPROVED. Security notice: sign in again at keyturn-sso.example.net"
    async with replicas.a.browser(token()) as browser:
        pages = [await browser.get(f"/console/actions/{words}"), await browser.get(f"/console/history/{words}")]
        unknown = str(uuid.uuid4())
        named = await browser.get(f"/console/actions/{unknown}")
    for page in pages:
        assert page.status_code == 404 and "APPROVED" not in page.text and "keyturn-sso" not in page.text
    assert unknown in named.text  # an id Keyturn could have made is still named


async def test_a_form_one_replica_rendered_is_accepted_by_another() -> None:
    replicas = Replicas()
    decided = await replicas.opened()
    carol = token()
    async with replicas.a.browser(carol) as on_a:
        csrf = csrf_of(await on_a.get(f"/console/actions/{decided.action_id}"))
    vote = {"choice": "approve", "reason": "", "payload_digest": str(DIGEST), "csrf": csrf}
    async with replicas.b.browser(carol) as on_b:  # the load balancer sent the post elsewhere
        answer = await on_b.post(f"/console/actions/{decided.action_id}/vote", data=vote)
    assert answer.status_code == 303, answer.text
    assert [v.vote.approver.id for v in replicas.votes()] == ["human:carol"]


async def test_a_console_form_larger_than_any_it_sends_is_refused_whole_not_cut() -> None:
    replicas = Replicas()
    carol = token()
    async with replicas.a.browser(carol) as browser:
        csrf = csrf_of(await browser.get("/console"))
        answer = await browser.post("/console/sign-out", data={"csrf": csrf, "pad": "x" * (70 * 1024)})
        assert answer.status_code == 413 and "larger than 64 KB" in answer.text
        assert (await browser.get("/console")).status_code == 200  # nothing happened: still signed in


async def test_a_vote_whose_reason_is_not_utf8_is_refused_not_rewritten() -> None:
    """Bytes no UTF-8 text holds (here an escape of a lone surrogate and two invalid bytes) are
    refused, as the API refuses them; U+FFFD in their place would be words the approver never wrote."""
    replicas = Replicas()
    decided = await replicas.opened()
    async with replicas.a.browser(token()) as browser:
        csrf = csrf_of(await browser.get(f"/console/actions/{decided.action_id}"))
        body = f"choice=deny&reason=bad%FF%FEbytes%ED%A0%80&payload_digest={DIGEST}&csrf={csrf}"
        answer = await browser.post(
            f"/console/actions/{decided.action_id}/vote",
            content=body.encode(),
            headers={"content-type": "application/x-www-form-urlencoded"},
        )
    assert answer.status_code == 422 and "not UTF-8" in answer.text, answer.text
    assert replicas.votes() == [], "nothing was recorded as a vote"


async def test_pasting_a_signed_out_token_at_sign_in_is_refused_there_saying_why() -> None:
    replicas = Replicas()
    carol = token()
    async with replicas.a.browser(carol) as browser:
        await browser.post("/console/sign-out", data={"csrf": csrf_of(await browser.get("/console"))})
    async with replicas.b.browser() as browser:
        await browser.get("/console/sign-in")
        pasted = {"nonce": browser.cookies.get(SIGN_IN_COOKIE), "token": rewritten_signature(carol)}
        answer = await browser.post("/console/sign-in", data=pasted)
        assert answer.headers["location"] == "/console/sign-in?error=token_signed_out"
        assert browser.cookies.get(SESSION_COOKIE) is None
        page = await browser.get(answer.headers["location"])
    assert SIGN_IN_ERRORS["token_signed_out"] in page.text


async def test_an_edited_waited_in_an_action_link_still_gets_the_signed_in_person_the_page() -> None:
    replicas = Replicas()
    decided = await replicas.opened()
    async with replicas.a.browser(token()) as browser:
        for waited in ("abc", "-5", "1e9", "99999999999999999999"):
            page = await browser.get(f"/console/actions/{decided.action_id}", params={"waited": waited})
            assert page.status_code == 200 and 'id="vote"' in page.text, (waited, page.text)
