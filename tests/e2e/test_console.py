"""The web console end to end: a person signs in, finds the action in the inbox, reads it, approves it.

Driven in headless Chromium (Debian's ``chromium``) through Playwright with the system browser,
against the five services over the real Kafka, OPA and PostgreSQL. Saves
tests/artifacts/console.png of the action page after the approval.
"""

from __future__ import annotations

import re
import uuid

import httpx
import pytest

from keyturn.config import REPO_ROOT
from tests.e2e.chromium import chromium_context
from tests.integration.conftest import Agent

pytestmark = pytest.mark.integration

SCREENSHOT = REPO_ROOT / "tests" / "artifacts" / "console.png"


@pytest.fixture(scope="module")
def browser():
    with chromium_context(width=1200) as context:
        yield context


@pytest.fixture(scope="module")
def agent(settings, services) -> Agent:
    return Agent(settings, "agent:reporter", ("human:alice",))


def sign_in(page, settings, name: str) -> None:
    page.context.clear_cookies()
    page.goto(f"{settings.approval_url}/console")
    assert page.url.endswith("/console/sign-in"), "unsigned visitors are sent to sign in"
    page.fill("#name", name)
    page.click("#dev-sign-in")
    page.wait_for_url(re.compile(r"/console$"))
    assert page.inner_text("#signed-in-as") == f"human:{name}"


def test_an_approver_signs_in_finds_the_action_reads_it_and_approves(browser, settings, agent) -> None:
    action_id = agent.submit_ok(
        "iam.role.grant",
        "iam://staging/roles/analyst",
        {"principal": "bob", "role": "analyst", "password": "hunter2-never-shown"},
        reason="onboarding bob (console)",
    )
    assert agent.wait_for_state(action_id, "needs_approval")["state"] == "needs_approval"
    page = browser.new_page()

    # the human the agent acts for sees nothing to decide, and no buttons on the action itself
    sign_in(page, settings, "alice")
    assert action_id not in page.content()
    page.goto(f"{settings.approval_url}/console/actions/{action_id}")
    assert "You are in the chain that asked for this action" in page.inner_text("#why-not")
    assert page.query_selector("#approve") is None

    # an approver from security finds it in the inbox
    sign_in(page, settings, "carol")
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOT.with_name("console-inbox.png")), full_page=True)
    page.click(f"a[href='/console/actions/{action_id}']")
    page.wait_for_url(re.compile(action_id))
    assert "agent:reporter for human:alice" in page.content()
    assert "hunter2" not in page.inner_text("#parameters") and '"role": "analyst"' in page.inner_text("#parameters")
    assert page.inner_text("#status") == "pending"

    # a denial needs a reason: refused in the page, nothing recorded
    page.click("#deny")
    assert "A denial needs a reason" in page.inner_text("#error")
    assert agent.status(action_id)["state"] == "needs_approval"

    page.fill("#reason", "ticket OPS-1234")
    page.click("#approve")
    page.wait_for_url(re.compile(r"done=approve"))
    assert "Your approval was recorded." in page.content()
    assert page.inner_text("#status") == "approved"
    assert "human:carol approved via console: ticket OPS-1234" in page.inner_text("#timeline")
    assert agent.wait(action_id)["state"] == "succeeded"

    page.screenshot(path=str(SCREENSHOT), full_page=True)
    page.close()


def test_a_vote_without_the_forms_csrf_token_is_refused(settings, agent) -> None:
    action_id = agent.submit_ok("iam.role.grant", "iam://staging/roles/viewer", {"principal": "bob", "role": "viewer"})
    assert agent.wait_for_state(action_id, "needs_approval")["state"] == "needs_approval"
    with httpx.Client(base_url=settings.approval_url, follow_redirects=False) as client:
        form = client.get("/console/sign-in")
        nonce = re.search(r'name="nonce" value="([^"]+)"', form.text).group(1)
        assert client.post("/console/sign-in", data={"nonce": nonce, "name": "dave"}).status_code == 303
        page = client.get(f"/console/actions/{action_id}")
        digest = re.search(r'name="payload_digest" value="([^"]+)"', page.text).group(1)
        forged = client.post(
            f"/console/actions/{action_id}/vote", data={"choice": "approve", "payload_digest": digest, "csrf": "guess"}
        )
    assert forged.status_code == 403 and "nothing was recorded" in forged.text
    assert agent.status(action_id)["state"] == "needs_approval"


def test_sign_in_without_the_forms_nonce_is_refused(settings) -> None:
    answer = httpx.post(f"{settings.approval_url}/console/sign-in", data={"name": "carol"})
    assert answer.status_code == 403 and "expired" in answer.text
    assert "keyturn_session" not in answer.cookies


def test_a_page_for_an_approval_not_open_yet_reloads_itself_then_says_none_is_on_record(browser, settings) -> None:
    missing = "00000000-0000-4000-8000-000000000425"
    page = browser.new_page()
    sign_in(page, settings, "carol")

    answer = page.goto(f"{settings.approval_url}/console/actions/{missing}")
    assert answer.status == 425 and "not open yet" in page.inner_text("#not-open")
    page.wait_for_url(re.compile(r"waited=\d+$"), timeout=5_000)  # it reloads itself, as Retry-After says
    page.wait_for_selector("text=No approval for", timeout=20_000)  # bounded: then it says so
    assert "waited 10 s" in page.content()
    page.close()


def test_a_break_glass_use_is_reviewed_from_the_inbox_after_the_fact(browser, settings) -> None:
    incident = f"INC-{uuid.uuid4().hex[:6]}"
    responder = Agent(settings, "agent:incident-bot", ("human:erin",))
    action_id = responder.submit_ok(
        "iam.role.grant",
        "iam://prod/roles/incident-responder",
        {"principal": "bob", "role": "incident-responder", "break_glass": True, "incident_id": incident},
        reason="checkout is down; on call needs the role",
    )
    assert responder.wait(action_id)["state"] == "succeeded"  # it ran without approval
    page = browser.new_page()

    # the person the agent acted for cannot review it, and is not asked to
    sign_in(page, settings, "erin")
    assert action_id not in page.content()
    page.goto(f"{settings.approval_url}/console/actions/{action_id}")
    assert "cannot review it" in page.inner_text("#why-not") and page.query_selector("#deny") is None

    # a security member finds it in the inbox, among the uses awaiting review
    sign_in(page, settings, "carol")
    page.click(f"#reviews a[href='/console/actions/{action_id}']")
    page.wait_for_url(re.compile(action_id))
    assert page.inner_text("#status") == "break_glass" and incident in page.inner_text("#break-glass")
    assert "allowed without approval under break-glass" in page.inner_text("#timeline")
    page.click("#deny")  # an objection needs a reason: refused in the page, nothing recorded
    assert "An objection needs a reason" in page.inner_text("#error")
    assert page.inner_text("#reviews-on-record") == "none yet"
    page.fill("#reason", "the role outlived the incident")
    page.click("#deny")
    page.wait_for_url(re.compile(r"done=review-deny"))
    assert "Your review was recorded: you objected." in page.content()
    assert "human:carol objected via console: the role outlived the incident" in page.inner_text("#timeline")
    assert page.inner_text("#reviews-on-record") == "human:carol objected: the role outlived the incident"
    assert "You have already reviewed this action." in page.inner_text("#why-not")

    page.goto(f"{settings.approval_url}/console")  # reviewed: it leaves every inbox
    assert action_id not in page.content()
    page.close()
