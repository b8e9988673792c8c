"""The report as one self-contained HTML file (charts inline, no external URL), and as PDF.

The HTML is rendered by Jinja2 (autoescaped) from the model and the charts; the PDF is the same
HTML printed by WeasyPrint (the ``report`` extra), so both show the same figures.

A report never shows parameters. The free text it quotes (a policy reason, a refusal's message)
was masked when it was recorded; it is masked again here as text, so a report stays clean even
over records written by a Keyturn that masked less.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup

from keyturn.audit.report import charts
from keyturn.audit.report.model import Report, category_label
from keyturn.core.text import for_terminal

TEMPLATES = Environment(
    loader=FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=select_autoescape(("html",), default=True),
    # text from records (a principal, a reason) with a control character is shown written out,
    # like every command shows it (``core.text.for_terminal``): a NUL is no HTML, an escape no text
    # text is shown with its control characters written out; markup (a chart, built from text
    # written out the same way) stays markup: a str would be escaped into its source
    finalize=lambda value: for_terminal(value) if isinstance(value, str) and not isinstance(value, Markup) else value,
)
ROWS_LISTED = 200  # rows of a long list (rubber stamps, break-glass uses, refused votes); the counts cover all


class PdfUnavailable(ImportError):
    """WeasyPrint (or the system libraries it needs) is missing."""


def when_text(millis: int | None) -> str:
    """An instant as the report and the console print it."""
    if millis is None:
        return "-"
    return datetime.fromtimestamp(millis / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def duration_text(value: float | None) -> str:
    """Seconds as the report and the console print them (s, min or h)."""
    if value is None:
        return "-"
    if value < 60:
        return f"{value:.1f} s"
    if value < 3600:
        return f"{value / 60:.1f} min"
    return f"{value / 3600:.1f} h"


def _default_mask() -> Callable[[str], str]:
    from keyturn.masking.protect import mask_text

    return mask_text


def render_html(report: Report, *, mask: Callable[[str], str] | None = None, title: str | None = None) -> str:
    """The whole report as one HTML document (``report`` must carry the chain's verification)."""
    if report.integrity is None:
        raise ValueError("a compliance report states the chain's verification: build it with build_report")
    masker = mask or _default_mask()
    masked = lru_cache(maxsize=4096)(lambda text: masker(text) if text else "")
    return TEMPLATES.get_template("report.html").render(
        report=report,
        integrity=report.integrity,
        charts=charts.all_charts(report),
        title=title or "Keyturn compliance report",
        rows=ROWS_LISTED,
        refused_listed=report.refused_votes[:ROWS_LISTED],
        # the uses still waiting for a review first
        break_glass_listed=sorted(report.break_glass, key=lambda use: (use.reviewed, use.at))[:ROWS_LISTED],
        when=when_text,
        seconds=duration_text,
        label=category_label,
        colour=lambda category: charts.colour(category, report.categories),
        masked=masked,
        pct=lambda value: f"{value:.0%}",
    )


def render_pdf(html: str) -> bytes:
    """The same HTML printed to PDF (A4) by WeasyPrint."""
    try:
        import weasyprint
    except (ImportError, OSError) as error:  # OSError: its system libraries (Pango) are missing
        raise PdfUnavailable(
            f"PDF output needs WeasyPrint and Pango ({error}): pip install 'keyturn[report]', "
            "or write HTML and print it from a browser"
        ) from None
    pdf: Any = weasyprint.HTML(string=html).write_pdf()
    return bytes(pdf)
