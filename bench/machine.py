"""What the machine is, and where its CPU went: per-process CPU seconds from /proc."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def describe() -> dict[str, object]:
    """Cores, memory, CPU model and load average: printed beside every result."""
    meminfo = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines() if ":" in line)
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "unknown",
    )
    return {
        "cores": os.cpu_count(),
        "memory_gib": round(int(meminfo["MemTotal"].split()[0]) / 1024 / 1024, 1),
        "cpu_model": model,
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "kernel": platform.release(),
    }


_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int, *, with_children: bool = False) -> float:
    """User + system CPU of ``pid`` (and, with ``with_children``, of its live and reaped children)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    # after the command: state is field 3, utime 14, stime 15, cutime 16, cstime 17 (1-based)
    total = (int(fields[11]) + int(fields[12])) / _TICKS
    if with_children:
        total += (int(fields[13]) + int(fields[14])) / _TICKS
        for child in children(pid):
            total += cpu_seconds(child)
    return total


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid:
            found.append(int(entry.name))
    return found


class CpuMeter:
    """CPU seconds per named process between ``snapshot`` calls."""

    def __init__(self, pids: dict[str, tuple[int, bool]]) -> None:
        self.pids = pids  # name -> (pid, count its children too)

    def snapshot(self) -> dict[str, float]:
        reading = {name: cpu_seconds(pid, with_children=children) for name, (pid, children) in self.pids.items()}
        times = os.times()
        reading["load generator"] = times.user + times.system
        return reading

    @staticmethod
    def spent(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
        return {name: round(after.get(name, 0.0) - before.get(name, 0.0), 2) for name in after}
