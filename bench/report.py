"""The benchmark's output: one table (figure, value, baseline, ratio), a JSON file and a PNG chart."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table


@dataclass(frozen=True)
class Figure:
    """One measured figure beside the baseline measured in the same run."""

    name: str
    value: float
    unit: str
    baseline: float | None
    baseline_name: str
    group: str = "throughput"  # throughput | latency | memory
    target: str = ""
    met: bool | None = None

    @property
    def ratio(self) -> float | None:
        if self.baseline in (None, 0) or self.value is None or math.isnan(self.value) or math.isnan(self.baseline):
            return None
        return self.value / self.baseline


def _fmt(value: float | None, unit: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if unit == "ms":
        return f"{value:,.1f} ms"
    if unit == "MiB":
        return f"{value:,.1f} MiB"
    return f"{value:,.0f} {unit}" if abs(value) >= 100 else f"{value:,.1f} {unit}"


def print_table(figures: list[Figure], machine: dict[str, Any], console: Console | None = None) -> None:
    console = console or Console(width=170)
    table = Table(
        title=f"Keyturn benchmark — {machine['cores']} cores, {machine['memory_gib']} GiB, {machine['cpu_model']}, "
        f"load average at start {machine['load_average_at_start']}"
    )
    table.add_column("figure", overflow="fold")
    table.add_column("value", justify="right")
    table.add_column("baseline (same run)", overflow="fold")
    table.add_column("baseline value", justify="right")
    table.add_column("ratio", justify="right")
    table.add_column("target", overflow="fold")
    for f in figures:
        ratio = f.ratio
        met = "" if f.met is None else (" [green]met[/green]" if f.met else " [red]missed[/red]")
        table.add_row(
            f.name,
            _fmt(f.value, f.unit),
            f.baseline_name,
            _fmt(f.baseline, f.unit),
            "–" if ratio is None else f"{ratio:.2f}×",
            f"{f.target}{met}",
        )
    console.print(table)


def write_json(path: Path, figures: list[Figure], details: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {"figures": [{**asdict(f), "ratio": f.ratio} for f in figures], **details}
    path.write_text(json.dumps(document, indent=2, default=str) + "\n")


def write_chart(
    path: Path, figures: list[Figure], memory: list[dict[str, Any]], cpu: dict[str, float], machine: dict[str, Any]
) -> bool:
    """Four panels: rates, latencies, memory over actions, CPU by process. False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, axes = plt.subplots(2, 2, figsize=(18, 13), gridspec_kw={"height_ratios": [1.4, 1]})
    fig.suptitle(
        f"Keyturn benchmark — {machine['cores']} cores, {machine['memory_gib']} GiB "
        f"(each figure beside its baseline from the same run)",
        fontsize=13,
    )

    def bars(ax, chosen: list[Figure], title: str, xlabel: str) -> None:
        y = list(range(len(chosen)))
        ax.barh([i - 0.2 for i in y], [f.value for f in chosen], height=0.4, label="Keyturn", color="#3366aa")
        ax.barh(
            [i + 0.2 for i in y],
            [f.baseline or 0 for f in chosen],
            height=0.4,
            label="baseline (same run)",
            color="#bbbbbb",
        )
        for i, f in enumerate(chosen):
            if f.ratio is not None:
                ax.annotate(f" {f.ratio:.2f}×", (f.value, i - 0.2), va="center", fontsize=7)
        ax.set_yticks(y)
        ax.set_yticklabels([_wrap(f.name, 34) for f in chosen], fontsize=7)
        ax.invert_yaxis()
        ax.set_xscale("log")
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        ax.legend(fontsize=7, loc="lower right")

    rates = [f for f in figures if f.group == "throughput" and f.value and not math.isnan(f.value)]
    latencies = [f for f in figures if f.group == "latency" and f.value and not math.isnan(f.value)]
    bars(axes[0][0], rates, "Rates (higher is better)", "per second (log)")
    bars(axes[0][1], latencies, "Latencies (lower is better)", "ms (log)")

    ax = axes[1][0]
    services = sorted({name for point in memory for name in point["rss_mib"]})
    for name in services:
        points = [(p["actions"], p["rss_mib"][name]) for p in memory if name in p["rss_mib"]]
        ax.plot([a for a, _ in points], [m for _, m in points], marker="o", label=name)
    ax.set_title("Resident memory after N actions")
    ax.set_xlabel("actions submitted so far")
    ax.set_ylabel("RSS (MiB)")
    ax.legend(fontsize=8)

    ax = axes[1][1]
    names = sorted(cpu, key=cpu.get, reverse=True)
    ax.barh(names, [cpu[n] for n in names], color="#aa6633")
    ax.invert_yaxis()
    ax.set_title("CPU seconds per 1,000 actions (flood phase, one worker each)")
    ax.set_xlabel("CPU s / 1k actions")
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def _wrap(text: str, width: int = 22) -> str:
    words, lines, line = text.split(), [], ""
    for word in words:
        if len(line) + len(word) + 1 > width and line:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    lines.append(line)
    return "\n".join(lines)
