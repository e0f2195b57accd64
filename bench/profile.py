"""py-spy around a measurement window, and a summary of its collapsed stacks.

    python -m bench.profile FILE.txt [--top 25]    # summarise a `py-spy record --format raw` file

`py-spy` is not a dependency: install it with `.venv/bin/pip install py-spy` to use
`bench.run --profile DIR`.
"""

from __future__ import annotations

import argparse
import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

_LINE = re.compile(r":\d+\)$")


class PySpy:
    """`py-spy record` of one process until stop() (SIGINT makes it write its output).

    It pauses the process for each sample (without --nonblocking, whose stacks were often
    cut short), which slows it a little: figures from a profiled run are not the bench's.
    Only samples holding the GIL count (--gil): on 2 busy cores a loopback send() often
    wakes its peer and is preempted, and py-spy would charge that waiting to the write
    (38% of samples while stime was 14% of the CPU time)."""

    def __init__(self, pid: int, output: Path, rate: int = 250) -> None:
        binary = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        if not Path(binary).exists():
            raise RuntimeError("py-spy is not installed: .venv/bin/pip install py-spy")
        self.output = output
        self.log = output.with_suffix(".log")
        with self.log.open("wb") as sink:
            self.process = subprocess.Popen(
                [
                    binary,
                    "record",
                    "--pid",
                    str(pid),
                    "--rate",
                    str(rate),
                    "--format",
                    "raw",
                    "--gil",
                    "--output",
                    str(output),
                ],
                stdout=sink,
                stderr=subprocess.STDOUT,
            )

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


def _frame(text: str) -> str:
    """'send (aiohttp/web_protocol.py:123)' -> 'send (aiohttp/web_protocol.py)'."""
    return _LINE.sub(")", text.strip())


def summarise(path: Path, top: int = 25) -> str:
    """Self time (leaf frames) and inclusive time per function, as text."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame(f) for f in stack.split(";") if f.strip()]
        if not frames:
            continue
        total += count
        own[frames[-1]] += count
        for name in set(frames):
            inclusive[name] += count
    if total == 0:
        return f"{path}: no samples\n"
    lines = [f"{path}: {total} samples", "", f"top {top} by own time (leaf frame):"]
    lines += [f"  {100 * c / total:5.1f}%  {name}" for name, c in own.most_common(top)]
    lines += ["", f"top {top} by inclusive time:"]
    lines += [f"  {100 * c / total:5.1f}%  {name}" for name, c in inclusive.most_common(top)]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args(argv)
    for path in args.files:
        print(summarise(path, args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
