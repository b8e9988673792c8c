"""Debian's Chromium under Playwright for the browser tests: nothing is downloaded, each run has a
profile of its own that is removed afterwards."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@contextmanager
def chromium_context(*, width: int = 1200, height: int = 1400, **options: Any) -> Iterator[Any]:
    """A persistent Playwright context on the system browser; ``options`` go to the context."""
    if not shutil.which(CHROMIUM):
        pytest.fail(
            f"{CHROMIUM} is missing: install Debian's browser with `apt-get install -y chromium` (make e2e-deps does)"
        )
    from playwright.sync_api import sync_playwright

    profile = tempfile.mkdtemp(prefix="keyturn-chromium-")
    try:
        with sync_playwright() as playwright:
            context = playwright.chromium.launch_persistent_context(
                profile,
                executable_path=CHROMIUM,
                headless=True,
                args=CHROMIUM_FLAGS,
                viewport={"width": width, "height": height},
                **options,
            )
            try:
                yield context
            finally:
                context.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)
