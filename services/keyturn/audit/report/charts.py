"""The report's charts as inline SVG, drawn with matplotlib from a :class:`~.model.Report`.

Each function returns one ``<svg>`` element (no XML prolog, no external reference): text stays
text (``svg.fonttype = none``) so the PDF and the browser can search it, and the ids matplotlib
puts inside each chart are salted by the chart's name so several charts can share one page.
matplotlib is imported here only (the ``report`` extra), on first use.
"""

from __future__ import annotations

import io
import math
import re
from typing import Any

from keyturn.audit.report.model import (
    ALLOWED,
    APPROVED,
    DENIED_BY_PEOPLE,
    DENIED_BY_POLICY,
    EXPIRED,
    FAILED,
    IN_PROGRESS,
    OUTCOME_UNKNOWN,
    Report,
    category_label,
)
from keyturn.core.text import for_terminal

COLOURS = {
    ALLOWED: "#4c9a6a",
    APPROVED: "#2456c7",
    DENIED_BY_POLICY: "#b42318",
    DENIED_BY_PEOPLE: "#e07a5f",
    EXPIRED: "#9a6700",
    FAILED: "#6b2d5c",
    OUTCOME_UNKNOWN: "#5f6b7a",
    IN_PROGRESS: "#c9d1db",
}
_OTHER_COLOURS = ("#17becf", "#bcbd22", "#8c564b", "#e377c2", "#7f7f7f", "#ff7f0e")
_PROLOG = re.compile(r"^.*?(?=<svg)", re.DOTALL)


class ChartsUnavailable(ImportError):
    """matplotlib is not installed."""


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise ChartsUnavailable(
            "the report's charts need matplotlib, which is not installed: pip install 'keyturn[report]'"
        ) from None
    matplotlib.use("Agg", force=True)
    # labels are names people and agents chose (a principal id, a rule): never read as TeX math,
    # where ``$\frac$`` raised and stopped the report and the console's history
    matplotlib.rcParams["text.parse_math"] = False
    import matplotlib.pyplot as plt

    return plt


def check_available() -> None:
    """Raise :class:`ChartsUnavailable` (saying how to install it) when matplotlib is missing."""
    _pyplot()


def colour(category: str, categories: tuple[str, ...]) -> str:
    """A category's colour: fixed for the known ones, a stable palette entry for the others."""
    if category in COLOURS:
        return COLOURS[category]
    others = [c for c in categories if c not in COLOURS]
    return _OTHER_COLOURS[others.index(category) % len(_OTHER_COLOURS)] if category in others else "#7f7f7f"


def _svg(fig: Any, name: str) -> str:
    plt = _pyplot()
    buffer = io.StringIO()
    with plt.rc_context({"svg.fonttype": "none", "svg.hashsalt": name}):
        fig.savefig(buffer, format="svg", bbox_inches="tight", metadata={"Date": None, "Creator": None})
    plt.close(fig)
    text = _PROLOG.sub("", buffer.getvalue(), count=1)
    return text.replace("<svg ", f'<svg role="img" aria-label="{name}" data-chart="{name}" ', 1)


def _figure(width: float, height: float, *, names_on_y: bool = False) -> tuple[Any, Any]:
    """A figure whose count axes tick whole numbers (no 0.2 of an action); a bar per name on the
    y axis keeps every name's tick (``names_on_y``)."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(width, height), dpi=96)
    ax.spines[["top", "right"]].set_visible(False)
    ax.tick_params(labelsize=8)
    if not names_on_y:
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return fig, ax


def _empty(ax: Any, message: str) -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, fontsize=10, color="#5f6b7a")
    ax.set_xticks([])
    ax.set_yticks([])


def outcomes_per_day(report: Report) -> str:
    """Stacked bars: actions requested each day, by outcome."""
    fig, ax = _figure(9.5, 3.6)
    days = report.days
    if not report.actions:
        _empty(ax, "no actions in this period")
        return _svg(fig, "outcomes-per-day")
    positions = list(range(len(days)))
    bottoms = [0] * len(days)
    for category in report.categories:
        values = [day.counts.get(category, 0) for day in days]
        ax.bar(
            positions,
            values,
            bottom=bottoms,
            width=0.85,
            color=colour(category, report.categories),
            label=f"{category_label(category)} ({report.totals[category]})",
        )
        bottoms = [b + v for b, v in zip(bottoms, values, strict=True)]
    step = max(1, math.ceil(len(days) / 16))
    ax.set_xticks(positions[::step], [day.day[5:] for day in days[::step]], rotation=0)
    ax.set_ylabel("actions requested", fontsize=8)
    ax.legend(fontsize=7, frameon=False, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.12))
    return _svg(fig, "outcomes-per-day")


def decision_times(report: Report) -> str:
    """Distribution of time to decision per approver group (log scale), with the rubber-stamp line."""
    fig, ax = _figure(9.5, 3.2)
    groups = [g for g in report.groups if g.seconds]
    if not groups:
        _empty(ax, "no approval was decided in this period")
        return _svg(fig, "decision-times")
    low = max(0.1, min(min(g.seconds) for g in groups))
    high = max(max(g.seconds) for g in groups)
    high = max(high, low * 10)
    edges = [low * (high / low) ** (i / 30) for i in range(31)]
    edges[0], edges[-1] = edges[0] * 0.999, edges[-1] * 1.001
    for group in groups:
        ax.hist([max(s, low) for s in group.seconds], bins=edges, histtype="step", linewidth=1.5, label=group.group)
    ax.set_xscale("log")
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    ticks = [t for t in _DURATION_TICKS if edges[0] <= t <= edges[-1]]
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: _duration(value)))
    ax.axvline(report.rubber_stamp_s, color="#b42318", linestyle="--", linewidth=1)
    ax.text(
        report.rubber_stamp_s,
        ax.get_ylim()[1] * 0.95,
        f" rubber-stamp threshold {report.rubber_stamp_s:g} s",
        color="#b42318",
        fontsize=7,
        va="top",
    )
    ax.set_xlabel("seconds from the approval opening to its decision", fontsize=8)
    ax.set_ylabel("approvals", fontsize=8)
    ax.legend(fontsize=7, frameon=False)
    return _svg(fig, "decision-times")


_DURATION_TICKS = (0.1, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 43200, 86400)


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:g} s"
    if seconds < 3600:
        return f"{seconds / 60:g} min"
    return f"{seconds / 3600:g} h"


def approvers(report: Report, limit: int = 20) -> str:
    """Horizontal stacked bars: each approver's approvals and denials (the busiest first)."""
    lines = list(report.approvers[:limit])
    fig, ax = _figure(9.5, max(1.6, 0.28 * len(lines) + 0.8), names_on_y=True)
    if not lines:
        _empty(ax, "nobody voted in this period")
        return _svg(fig, "approvers")
    names = [for_terminal(line.approver) for line in lines][::-1]  # a control character is shown, not obeyed
    approvals = [line.approvals for line in lines][::-1]
    denials = [line.denials for line in lines][::-1]
    ax.barh(names, approvals, color=COLOURS[APPROVED], label="approved")
    ax.barh(names, denials, left=approvals, color=COLOURS[DENIED_BY_PEOPLE], label="denied")
    ax.set_xlabel("votes", fontsize=8)
    ax.legend(fontsize=7, frameon=False, loc="lower right")
    return _svg(fig, "approvers")


def denial_reasons(report: Report, limit: int = 12) -> str:
    """Horizontal bars: the policy rules behind the most denials."""
    lines = list(report.denial_reasons[:limit])
    fig, ax = _figure(9.5, max(1.6, 0.28 * len(lines) + 0.8), names_on_y=True)
    if not lines:
        _empty(ax, "the policy denied nothing in this period")
        return _svg(fig, "denial-reasons")
    ax.barh(
        [for_terminal(line.rule) for line in lines][::-1],
        [line.count for line in lines][::-1],
        color=COLOURS[DENIED_BY_POLICY],
    )
    ax.set_xlabel("denials", fontsize=8)
    return _svg(fig, "denial-reasons")


def all_charts(report: Report) -> dict[str, str]:
    """Every chart of the report, by name."""
    return {
        "outcomes": outcomes_per_day(report),
        "decision_times": decision_times(report),
        "approvers": approvers(report),
        "denial_reasons": denial_reasons(report),
    }
