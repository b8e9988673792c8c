"""Sampling profiles of running services with py-spy, summarised as the functions that hold the CPU."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path


def py_spy() -> str | None:
    """The py-spy binary (installed by the ``bench`` extra), or None."""
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


def start(pid: int, seconds: float, output: Path, *, idle: bool = False) -> subprocess.Popen | None:
    """Begin sampling ``pid`` for ``seconds`` into ``output`` (collapsed stacks); None without py-spy."""
    binary = py_spy()
    if binary is None:
        return None
    output.parent.mkdir(parents=True, exist_ok=True)
    command = [
        binary,
        "record",
        "--pid",
        str(pid),
        "--duration",
        str(int(seconds)),
        "--rate",
        "100",
        "--format",
        "raw",
        "--output",
        str(output),
        "--nonblocking",
    ]
    if idle:
        command.append("--idle")
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


IDLE = {"EpollSelector.select", "select", "poll", "_worker", "wait", "Condition.wait", "_wait_for_tstate_lock"}


def summarise(collapsed: Path, top: int = 12) -> dict[str, list[tuple[str, float]]]:
    """The top functions by own samples (where the CPU is) and by inclusive samples among
    Keyturn's and its libraries' frames (which call leads there), as shares of the busy samples
    (samples waiting in the event loop's select are left out)."""
    own: Counter = Counter()
    inclusive: Counter = Counter()
    total = 0
    if not collapsed.exists():
        return {"own": [], "inclusive": [], "samples": 0}
    for line in collapsed.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        frames = [_short(f) for f in stack.split(";") if f]
        if frames and frames[-1].split(" (")[0] in IDLE:
            continue  # waiting, not computing: py-spy's non-blocking sampling can count these
        total += n
        if frames:
            own[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
    if not total:
        return {"own": [], "inclusive": [], "samples": 0}
    interesting = [
        (f, n)
        for f, n in inclusive.most_common()
        if "keyturn/" in f
        or "faust/" in f
        or "aiokafka/" in f
        or "psycopg" in f
        or "httpx/" in f
        or "fastapi/" in f
        or "fastavro" in f
    ]
    return {
        "own": [(f, round(n / total, 3)) for f, n in own.most_common(top)],
        "inclusive": [(f, round(n / total, 3)) for f, n in interesting[:top]],
        "samples": total,
    }


def _short(frame: str) -> str:
    """``function (path/to/site-packages/lib/module.py:12)`` → ``function (lib/module.py)``."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    path = where.rsplit(":", 1)[0]
    for marker in ("site-packages/", "services/", "lib/python3.11/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{name} ({path})"
