"""Instructions the orchestrator executes in a window, counted by valgrind's callgrind.

    .venv/bin/python -m bench.run --workload linear3 --compare metrics --count instructions

CPU seconds on a shared machine move with everything else that runs; an instruction count
does not. The orchestrator runs under `valgrind --tool=callgrind --instr-atstart=no`, so its
start-up and the warm-up run uninstrumented (several times faster than instrumented);
`callgrind_control -i on PID` turns counting on when the measured window opens and
`callgrind_control -d PID` dumps the count when it closes. The dump's `totals:` line is the
number of instructions (`Ir`) the process executed in between, on all its threads. Under
valgrind the process runs 20 to 50 times slower, so compare counts, never times.

Part of what a process executes depends on time, not on jobs: idle workers' polls that time
out, heartbeats, the orchestrator's own loops. Slowed down by valgrind, a window lasts long
enough for that to be a tenth of the count, and a side that ran slower pays more of it. So
after the window the count goes on for a few idle seconds (`idle_rate`), and the bench
prints the count net of that rate times the window's length as well.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from pathlib import Path

INSTALL = "apt-get install valgrind"


def missing() -> str | None:
    """Why instructions cannot be counted here, or None."""
    for program in ("valgrind", "callgrind_control"):
        if shutil.which(program) is None:
            return f"{program} is not on the PATH ({INSTALL})"
    return None


class Callgrind:
    """Counts one process's instructions between `start()` and `stop()`."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.pid: int | None = None
        self.dumped_at = 0.0  # time.monotonic() of the last dump

    def prefix(self) -> list[str]:
        """The command line that runs the process under callgrind, counting nothing yet."""
        return [
            "valgrind",
            "--tool=callgrind",
            "--instr-atstart=no",
            f"--callgrind-out-file={self.folder / 'callgrind.%p'}",
        ]

    def start(self, pid: int) -> None:
        self.pid = pid
        self._control("--instr=on")

    def stop(self, timeout_s: float = 120) -> int:
        """Dump and return the instructions executed since `start()` (or the last dump:
        callgrind zeroes its counters at each dump)."""
        before = set(self.folder.glob("callgrind.*"))
        self._control("--dump")
        self.dumped_at = time.monotonic()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for path in set(self.folder.glob("callgrind.*")) - before:
                total = totals(path)
                if total is not None:
                    return total
            time.sleep(0.2)
        raise RuntimeError(f"callgrind wrote no dump of pid {self.pid} in {timeout_s} s")

    async def idle_rate(self, seconds: float) -> float:
        """Instructions a second while nothing is submitted, over `seconds` after `stop()`."""
        since = self.dumped_at
        await asyncio.sleep(seconds)
        count = self.stop()
        return count / (self.dumped_at - since)

    def _control(self, command: str) -> None:
        done = subprocess.run(
            ["callgrind_control", command, str(self.pid)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if done.returncode != 0 or "OK" not in done.stdout:
            answer = done.stdout + done.stderr
            raise RuntimeError(f"callgrind_control {command} {self.pid}: {answer}")


def totals(path: Path) -> int | None:
    """The `totals:` line of a callgrind dump (instructions), or None while it is written."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return None
    for line in reversed(text.splitlines()):
        if line.startswith("totals:"):
            return int(line.split()[1])
    return None
