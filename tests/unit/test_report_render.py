"""The report as HTML: self-contained, charts inline, the chain's state first, no secret in it."""

from __future__ import annotations

import dataclasses
import html as html_lib
import json
import re

import pytest
from markupsafe import escape

from keyturn.audit.report.model import build_report, category_label
from keyturn.audit.report.render import render_html
from keyturn.core.audit.checkpoint import CheckpointVerifier
from tests.unit.audit_history import SIGNER
from tests.unit.report_story import SECRETS, period, seeded

VERIFIER = CheckpointVerifier.from_keys([SIGNER.public_key])
HISTORY, PLAN = seeded()


def tampered_records() -> list:
    """The seeded stream with one denial rewritten as an allowance, its hash left as it was."""
    records = list(HISTORY.records)
    index = next(
        i for i, r in enumerate(records) if r.event_type == "ActionDecided" and '"outcome":"denied"' in r.payload_json
    )
    payload = json.loads(records[index].payload_json)
    payload["outcome"] = "allowed"
    records[index] = dataclasses.replace(records[index], payload_json=json.dumps(payload))
    return records


@pytest.fixture(scope="module")
def report():
    return build_report(HISTORY.records, VERIFIER, *period())


@pytest.fixture(scope="module")
def page(report) -> str:
    return render_html(report)  # with the real masker


@pytest.fixture(scope="module")
def tampered_page() -> str:
    return render_html(build_report(tampered_records(), VERIFIER, *period()))


def test_one_self_contained_file_nothing_is_fetched(page):
    references = re.findall(r'\b(?:src|href|xlink:href)\s*=\s*"([^"]*)"', page)
    assert all(ref.startswith("#") for ref in references), references
    assert not re.search(r"url\((?!#)", page), "CSS or SVG must not load anything"
    assert "<script" not in page and "<link" not in page and "@import" not in page


def test_every_chart_is_inline_svg(page):
    charts = re.findall(r'<svg [^>]*data-chart="([a-z-]+)"', page)
    assert charts == ["outcomes-per-day", "decision-times", "approvers", "denial-reasons"]
    outcomes = page[page.index('data-chart="outcomes-per-day"') :]
    outcomes = outcomes[: outcomes.index("</svg>")]
    assert outcomes.count("<path") > 20  # bars, not an empty frame


def test_the_intact_chain_is_stated_first(page, report):
    assert page.index('id="integrity-banner"') < page.index('id="summary"')
    assert 'data-intact="true"' in page
    assert f"{len(HISTORY.records)} records checked" in page


def test_the_figures_shown_are_the_model_s(page, report):
    assert f'<span id="actions-total">{report.actions}</span>' in page
    for category, count in report.totals.items():
        assert f'data-category="{category}"><b>{count}</b>{html_lib.escape(category_label(category))}</div>' in page
    for stamp in report.rubber_stamps:
        assert f'<td class="flag">{stamp.approver}</td>' in page
    assert "within <strong>10 seconds</strong>" in page
    for rule in report.denial_reasons:
        assert f'data-rule="{rule.rule}"><td><code>{rule.rule}</code></td><td class="n">{rule.count}</td>' in page
    assert page.count("MISSING") == report.break_glass_unreviewed > 0


def test_a_tampered_stream_says_so_on_page_one(tampered_page):
    banner_at = tampered_page.index('id="integrity-banner"')
    assert banner_at < tampered_page.index('id="summary"')
    banner = tampered_page[banner_at : tampered_page.index("</div>", banner_at)]
    assert 'data-intact="false"' in banner
    assert "the audit chain is NOT intact" in banner
    assert "<code>edited</code>" in banner and "was edited" in banner


def test_no_seeded_secret_appears_while_the_masked_reasons_do(page, tampered_page):
    for secret in SECRETS:
        for shown in (page, tampered_page):
            assert secret not in shown
            assert secret not in html_lib.unescape(shown)
    # the free text is there, masked: the reasons and refusal messages were not just left out
    assert "denied: the parameters carry &lt;" in page
    assert "refused; the form quoted &lt;" in page


def _export(path, records) -> None:
    from keyturn.audit.export import write_jsonl

    with path.open("w", encoding="utf-8") as fp:
        write_jsonl(records, fp)


def _public_key(path) -> None:
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    path.write_bytes(SIGNER.public_key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))


def test_keyturn_report_writes_the_file_from_an_export_and_exits_1_over_a_broken_chain(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from keyturn.cli import app

    monkeypatch.setenv("KEYTURN_RUN_DIR", str(tmp_path / "run"))
    _public_key(tmp_path / "audit.pub.pem")
    runner = CliRunner()
    for name, records, code, intact in (
        ("good", HISTORY.records, 0, "true"),
        ("tampered", tampered_records(), 1, "false"),
    ):
        _export(tmp_path / f"{name}.jsonl", records)
        out = tmp_path / f"{name}.html"
        result = runner.invoke(
            app,
            [
                "report",
                "--export",
                str(tmp_path / f"{name}.jsonl"),
                "--public-key",
                str(tmp_path / "audit.pub.pem"),
                "--since",
                "2026-03-02",
                "--until",
                "2026-03-09T00:00:00Z",
                "--out",
                str(out),
            ],
        )
        assert result.exit_code == code, result.output
        assert f'data-intact="{intact}"' in out.read_text(encoding="utf-8")
    bad = runner.invoke(app, ["report", "--since", "2026-03-09", "--until", "2026-03-02", "--export", str(out)])
    assert bad.exit_code == 2 and "--since must be before --until" in bad.output


def test_text_with_control_characters_is_shown_written_out() -> None:
    """A record from an older build may name an approver with a NUL or an escape sequence in it."""

    def odd(record):
        payload = json.loads(record.payload_json)
        payload["vote"]["approver"]["id"] += "\x00\x1b[2J"
        return dataclasses.replace(record, payload_json=json.dumps(payload))

    records = [odd(r) if r.event_type == "VoteRecorded" else r for r in HISTORY.records]
    page = render_html(build_report(records, VERIFIER, *period()))
    assert "\x00" not in page and "\x1b" not in page
    assert "\\x00\\x1b[2J" in page, "shown, written out"
    assert "&lt;svg" not in page and page.count('data-chart="approvers"') == 1, "the chart stays a chart"


@pytest.mark.parametrize("name", ["agent:p5m$x^2$", "human:p5 $\\frac$", "human:a$b"])
def test_a_name_that_reads_as_tex_is_drawn_as_written(name: str) -> None:
    """Principal ids are whatever a token says: ``$…$`` is text, never math (an invalid formula
    raised and stopped the report, and the console's history with it)."""

    def renamed(record):
        payload = json.loads(record.payload_json)
        payload["vote"]["approver"]["id"] = name
        return dataclasses.replace(record, payload_json=json.dumps(payload))

    records = [renamed(r) if r.event_type == "VoteRecorded" else r for r in HISTORY.records]
    page = render_html(build_report(records, VERIFIER, *period()))
    assert escape(name) in page


def test_every_bar_of_the_approvers_chart_is_named() -> None:
    from types import SimpleNamespace

    from keyturn.audit.report import charts

    lines = [SimpleNamespace(approver=f"human:approver-{n:02d}", approvals=40 - n, denials=n % 3) for n in range(20)]
    svg = charts.approvers(SimpleNamespace(approvers=lines))
    assert all(line.approver in svg for line in lines), "a bar without its name"
