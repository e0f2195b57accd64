"""py-spy around a measurement window, and summaries of profiles.

    python -m bench.profile FILE.txt [--top 25]    # a `py-spy record --format raw` file
    python -m bench.profile FILE.prof [--top 25] [--share server/metrics.py,prometheus_client]
                                                  # a cProfile file (bench.run --cprofile DIR)

`py-spy` is not a dependency: install it with `.venv/bin/pip install py-spy` to use
`bench.run --profile DIR`. cProfile needs nothing, but it slows every Python call, so its
shares are of a slowed process: compare shares, not times. `--share` adds up the own time of
the functions whose file path contains one of the given parts.
"""

from __future__ import annotations

import argparse
import pstats
import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
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
    if path.suffix == ".prof":
        return summarise_cprofile(path, top)
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


def _cprofile_rows(path: Path) -> list[tuple[str, float, float]]:
    """(function, own seconds, inclusive seconds) of a cProfile file."""
    stats = pstats.Stats(str(path))
    rows = []
    for (filename, line, name), entry in stats.stats.items():  # type: ignore[attr-defined]
        own, inclusive = entry[2], entry[3]
        where = filename.split("site-packages/")[-1].split(f"{ROOT}/")[-1]
        rows.append((f"{name} ({where}:{line})", own, inclusive))
    return rows


def summarise_cprofile(path: Path, top: int = 25) -> str:
    rows = _cprofile_rows(path)
    total = sum(own for _, own, _ in rows)
    if total <= 0:
        return f"{path}: no calls\n"
    lines = [f"{path}: {total:.2f} s of own time", "", f"top {top} by own time:"]
    for name, own, _ in sorted(rows, key=lambda r: -r[1])[:top]:
        lines.append(f"  {100 * own / total:5.1f}%  {name}")
    return "\n".join(lines) + "\n"


def share(path: Path, parts: list[str]) -> str:
    """The own time of the functions whose file contains one of `parts`, as a share."""
    rows = _cprofile_rows(path)
    total = sum(own for _, own, _ in rows)
    lines = []
    for part in parts:
        own = sum(o for name, o, _ in rows if part in name)
        lines.append(f"  {100 * own / total:5.2f}%  {part}")
    mine = sum(o for name, o, _ in rows if any(part in name for part in parts))
    lines.append(f"  {100 * mine / total:5.2f}%  in all (of {total:.2f} s own time)")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument(
        "--share",
        type=lambda text: text.split(","),
        help="cProfile files: the share of own time in files whose path contains these",
    )
    args = parser.parse_args(argv)
    for path in args.files:
        print(summarise(path, args.top))
        if args.share:
            print(f"share of own time in {path}:")
            print(share(path, args.share))
    return 0


if __name__ == "__main__":
    sys.exit(main())
