"""Running a bench script as a user would, and checking what it prints."""

from __future__ import annotations

import re
import subprocess
import sys

from tests.support.processes import ROOT


def run_bench(args: list[str], timeout_s: float) -> str:
    """`python -m <args>` from the checkout: its output, once it has exited 0."""
    done = subprocess.run(
        [sys.executable, "-m", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def assert_lines_in_order(output: str, patterns: list[str]) -> None:
    """Each pattern (a regular expression) matches a line, after the previous one's line."""
    lines = output.splitlines()
    position = 0
    for pattern in patterns:
        found = next((i for i in range(position, len(lines)) if re.search(pattern, lines[i])), None)
        assert found is not None, f"no line matches {pattern!r} after line {position}:\n{output}"
        position = found + 1
