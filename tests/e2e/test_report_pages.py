"""The compliance report as people see it: the HTML in headless Chromium, the PDF as PNG pages.

No servers: the report is built from the seeded stream of tests/unit/report_story.py. Chromium
(Debian's ``chromium``, driven by Playwright, never downloaded) opens the HTML with every network
request refused, so a chart that needed one would be missing. The PDF is rasterised with
pdfium. Saves tests/artifacts/report.png (the HTML) and report-page-N.png (the PDF).
"""

from __future__ import annotations

import pytest

from keyturn.audit.report.model import build_report
from keyturn.audit.report.render import render_html, render_pdf
from keyturn.core.audit.checkpoint import CheckpointVerifier
from tests.e2e.chromium import chromium_context
from tests.processes import ARTIFACTS
from tests.unit.audit_history import SIGNER
from tests.unit.report_story import SECRETS, period, seeded
from tests.unit.test_report_render import tampered_records

VERIFIER = CheckpointVerifier.from_keys([SIGNER.public_key])
CHART_COLOURS = {"allowed": (0x4C, 0x9A, 0x6A), "denied_by_policy": (0xB4, 0x23, 0x18), "approved": (0x24, 0x56, 0xC7)}


@pytest.fixture(scope="module")
def pages() -> dict[str, str]:
    history, _ = seeded()
    return {
        "intact": render_html(build_report(history.records, VERIFIER, *period())),
        "tampered": render_html(build_report(tampered_records(), VERIFIER, *period())),
    }


@pytest.fixture(scope="module")
def browser():
    with chromium_context(width=1100) as context:
        yield context


def _ink(image) -> float:
    """Share of pixels that are not (near) white."""
    grey = image.convert("L")
    histogram = grey.histogram()
    return 1 - sum(histogram[245:]) / (grey.width * grey.height)


def _pixels_near(image, rgb: tuple[int, int, int], tolerance: int = 12) -> int:
    import numpy

    pixels = numpy.asarray(image.convert("RGB"), dtype=numpy.int16)
    return int((numpy.abs(pixels - numpy.array(rgb, dtype=numpy.int16)) <= tolerance).all(axis=2).sum())


def test_the_html_renders_in_chromium_with_every_chart_and_nothing_fetched(browser, pages, tmp_path):
    from PIL import Image

    path = tmp_path / "report.html"
    path.write_text(pages["intact"], encoding="utf-8")
    page = browser.new_page()
    fetched: list[str] = []

    def refuse(route) -> None:
        if route.request.url.startswith("file://"):
            route.continue_()
        else:
            fetched.append(route.request.url)
            route.abort()

    page.route("**/*", refuse)
    page.goto(path.as_uri())
    assert fetched == []
    assert "The audit chain is intact." in page.inner_text("#integrity-banner")
    for name in ("outcomes-per-day", "decision-times", "approvers", "denial-reasons"):
        box = page.locator(f'svg[data-chart="{name}"]').bounding_box()
        assert box is not None and box["width"] > 400 and box["height"] > 100, name
    assert page.locator('svg[data-chart="outcomes-per-day"] path').count() > 20
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "report.png"
    page.screenshot(path=str(shot), full_page=True)
    image = Image.open(shot)
    assert image.height > 2000 and _ink(image) > 0.05
    assert _pixels_near(image, CHART_COLOURS["allowed"]) > 500  # the stacked bars were drawn
    tampered = tmp_path / "tampered.html"
    tampered.write_text(pages["tampered"], encoding="utf-8")
    page.goto(tampered.as_uri())
    banner = page.locator("#integrity-banner")
    assert "the audit chain is NOT intact" in banner.inner_text()
    box = banner.bounding_box()
    assert box is not None and box["y"] < 400, "the warning is at the top of the first screen"
    page.close()


def test_the_pdf_pages_are_not_blank_the_charts_are_there_and_page_one_states_the_chain(pages):
    import pypdfium2

    for name, html in pages.items():
        document = pypdfium2.PdfDocument(render_pdf(html))
        assert len(document) >= 3
        texts = []
        for number in range(len(document)):
            page = document[number]
            texts.append(page.get_textpage().get_text_range())
            image = page.render(scale=1).to_pil()
            if name == "intact":
                ARTIFACTS.mkdir(parents=True, exist_ok=True)
                image.save(ARTIFACTS / f"report-page-{number + 1}.png")
            assert _ink(image) > 0.02, f"{name} page {number + 1} is blank"
            if number == 0:
                first = image
        if name == "intact":
            assert "The audit chain is intact." in texts[0]
        else:
            assert "the audit chain is NOT intact" in texts[0]
            assert "edited" in texts[0]
        # the stacked outcomes chart is drawn on page one (its colours, its axis text)
        for category in ("allowed", "denied_by_policy", "approved"):
            assert _pixels_near(first, CHART_COLOURS[category]) > 150, category
        whole = "\n".join(texts)
        assert "actions requested" in whole and "seconds from the approval opening" in whole
        assert "rubber-stamp threshold 10 s" in whole
        for secret in SECRETS:
            assert secret not in whole
        document.close()
