"""The console's history over the five services: an approved action appears with its charts, its
timeline, its votes and masked parameters, for approvers only. Saves tests/artifacts/console-history.png.
"""

from __future__ import annotations

import html
import re

import httpx
import pytest

from tests.e2e.chromium import chromium_context
from tests.integration.conftest import Agent, eventually, keyturn_cli, mint
from tests.processes import ARTIFACTS

pytestmark = pytest.mark.integration

SECRET = "hunter2-history-never-shown"


@pytest.fixture(scope="module")
def approved(settings, services) -> str:
    agent = Agent(settings, "agent:reporter", ("human:alice",))
    action_id = agent.submit_ok(
        "iam.role.grant",
        "iam://staging/roles/analyst",
        {"principal": "bob", "role": "analyst", "password": SECRET},
        reason="history check",
    )
    assert agent.wait_for_state(action_id, "needs_approval")["state"] == "needs_approval"
    carol = mint(settings, "human:carol")
    voted = keyturn_cli(settings, "approve", action_id, "--reason", "history check ok", token=carol)
    assert voted.returncode == 0, voted.stdout + voted.stderr
    assert agent.wait(action_id)["state"] == "succeeded"
    return action_id


def test_an_approver_finds_the_action_its_timeline_and_the_charts(settings, approved) -> None:
    carol = {"Authorization": f"Bearer {mint(settings, 'human:carol')}"}
    with httpx.Client(base_url=settings.approval_url, headers=carol, timeout=60) as client:

        def listed() -> httpx.Response | None:
            # the history follows the audit topic and may lag it a moment: wait for the finished line
            page = client.get("/console/history", params={"q": approved})
            row = re.search(rf'<tr data-action-id="{approved}">.*?</tr>', page.text, re.DOTALL)
            return page if row is not None and "approved by people" in row.group(0) else None

        page = eventually(listed, timeout=30)
        assert page is not None, "the history never showed the approved action"
        assert page.status_code == 200
        assert re.findall(r'data-chart="([a-z-]+)"', page.text) == ["outcomes-per-day", "decision-times", "approvers"]
        row = re.search(rf'<tr data-action-id="{approved}">.*?</tr>', page.text, re.DOTALL)
        assert row is not None and "approved by people" in row.group(0)
        assert "agent:reporter for human:alice" in row.group(0)
        other = client.get("/console/history", params={"q": "no-such-action-anywhere"})
        listed_there = other.text[other.text.index('id="history-actions"') :]
        assert approved not in listed_there and 'id="history-empty"' in listed_there

        story = client.get(f"/console/history/{approved}")
        assert story.status_code == 200
        text = html.unescape(story.text)
        assert 'id="history-outcome">approved by people<' in text
        assert "human:carol</td><td>approve</td><td>cli</td><td>history check ok" in text
        timeline = text[text.index('id="history-timeline"') :]
        for step in ("requested iam.role.grant", "policy decided: needs_approval", "approval resolved: approved"):
            assert step in timeline
        assert "executed by" in timeline
        assert '"role": "analyst"' in text and SECRET not in text
        assert SECRET not in page.text


def test_only_approvers_read_the_history(settings, approved) -> None:
    with httpx.Client(base_url=settings.approval_url, follow_redirects=False, timeout=60) as client:
        anonymous = client.get("/console/history")
        assert anonymous.status_code == 303 and anonymous.headers["location"] == "/console/sign-in"
        outsider = {"Authorization": f"Bearer {mint(settings, 'human:zed')}"}
        for path in ("/console/history", f"/console/history/{approved}"):
            refused = client.get(path, headers=outsider)
            assert refused.status_code == 403 and approved not in refused.text
            assert "only members of an approver group" in refused.text


def test_the_history_page_in_chromium(settings, approved) -> None:
    """One screenshot of the page as a person sees it (Debian's chromium, nothing downloaded)."""
    with chromium_context(extra_http_headers={"Authorization": f"Bearer {mint(settings, 'human:dave')}"}) as context:
        page = context.new_page()
        page.goto(f"{settings.approval_url}/console/history")
        box = page.locator('svg[data-chart="outcomes-per-day"]').bounding_box()
        assert box is not None and box["width"] > 400 and box["height"] > 100
        assert page.locator(f'#history-actions tr[data-action-id="{approved}"]').count() == 1
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "console-history.png"), full_page=True)
        page.click(f"a[href='/console/history/{approved}']")
        assert "approval resolved: approved" in page.inner_text("#history-timeline")
