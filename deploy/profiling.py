"""Sample the running stages with py-spy (``bench e2e --profile DIR``): where each process spends its CPU.

py-spy (the ``dev`` extra) attaches to a running process by pid and records stack samples without
changing it. :func:`start_profiles` starts one ``py-spy record`` per stage process for ``seconds``;
each writes ``<stage>.txt`` in py-spy's "raw" format (one line per distinct stack, ``;``-joined frames
then the sample count), which :func:`top_functions` summarises: the share of samples in which each
function is on the stack (inclusive) or at its top (self).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

from soundwatch.errors import MissingDependency


def py_spy() -> str:
    """The py-spy executable: on PATH, or next to this interpreter (a virtual environment not activated)."""
    beside = Path(sys.executable).parent / "py-spy"
    path = shutil.which("py-spy") or (str(beside) if beside.is_file() else None)
    if path is None:
        raise MissingDependency("py-spy is not installed (needed by --profile)", "pip install 'soundwatch[dev]'")
    return path


def start_profiles(
    pids: dict[str, int], seconds: float, out_dir: Path, rate_hz: int = 50
) -> list[subprocess.Popen[bytes]]:
    """One ``py-spy record`` per ``{stage name: pid}`` for ``seconds``; wait on the returned processes."""
    exe = py_spy()
    out_dir.mkdir(parents=True, exist_ok=True)
    procs = []
    for name, pid in pids.items():
        cmd = [exe, "record", "--pid", str(pid), "--duration", str(max(1, int(seconds))), "--rate", str(rate_hz)]
        cmd += ["--format", "raw", "--nonblocking", "--output", str(out_dir / f"{name}.txt")]
        log = open(out_dir / f"{name}.py-spy.log", "wb")  # noqa: SIM115 - owned by the child
        procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL))
    return procs


def top_functions(raw: Path, n: int = 25) -> list[tuple[str, float, float]]:
    """``(function, inclusive share, self share)`` of the ``n`` functions most often on the stack, from a
    py-spy raw file (idle frames included: a process waiting in ``select`` shows as such)."""
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        k = int(count)
        total += k
        frames = [f.split(" (")[0] + " (" + f.split(" (")[-1] if " (" in f else f for f in stack.split(";")]
        for frame in set(frames):
            inclusive[frame] += k
        own[frames[-1]] += k
    if total == 0:
        return []
    return [(f, c / total, own[f] / total) for f, c in inclusive.most_common(n)]
