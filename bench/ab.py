"""A/B pairs: one workload with a setting off and on, interleaved, in one sitting.

    .venv/bin/python -m bench.run --workload linear3 --compare metrics [--pairs 5] [-n N]
    .venv/bin/python -m bench.run --workload linear3 --compare webhook [--pairs 5] [-n N]

Each pair starts fresh processes for both sides (a new redis-server, `interlock serve` and
workers each time), one side after the other, and the side that goes first alternates from
pair to pair, so drift in the machine's load falls on both sides alike. It prints one row
per run, then for each figure the ratio B/A of every pair with its median and range. On a
shared machine a ratio from adjacent runs is what holds; the absolute figures do not.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from bench.harness import machine_summary

# The bench's own setting in a side's environment (not passed to the server): how the load
# generator learns that a job ended, `wait` or `webhook` (bench/load.py).
COMPLETE = "BENCH_COMPLETE"

# What --compare can switch: the server's environment for side A (off) and side B (on).
COMPARISONS: dict[str, tuple[dict[str, str], dict[str, str]]] = {
    "metrics": ({"METRICS": "off"}, {"METRICS": "on"}),
    # Each job waited for with GET ?wait= (A) or by its webhook (B).
    "webhook": ({COMPLETE: "wait"}, {COMPLETE: "webhook"}),
}


@dataclass(frozen=True)
class Run:
    """One measured run of one side."""

    side: str  # "A" or "B"
    pair: int
    jobs_per_s: float
    cpu_ms_per_job: float  # the orchestrator's
    redis_cmds_per_job: float | None
    not_finished: int
    foreign_cpu_s: float  # other processes' CPU seconds in the window
    instructions_per_job: float | None = None  # the orchestrator's (--count instructions)
    net_instructions_per_job: float | None = None  # less its idle rate times the window


# (side's extra environment, pair number) -> the run
Measure = Callable[[Mapping[str, str], str, int], Run]


def ratios(runs: list[Run], figure: Callable[[Run], float | None]) -> list[float]:
    """B/A of `figure` for each complete pair, in pair order."""
    by_pair: dict[int, dict[str, Run]] = {}
    for run in runs:
        by_pair.setdefault(run.pair, {})[run.side] = run
    out: list[float] = []
    for pair in sorted(by_pair):
        sides = by_pair[pair]
        if "A" not in sides or "B" not in sides:
            continue
        a, b = figure(sides["A"]), figure(sides["B"])
        if a is not None and b is not None and a > 0:
            out.append(b / a)
    return out


def summary(values: list[float]) -> str:
    if not values:
        return "n/a"
    return (
        f"median {statistics.median(values):.3f}  range {min(values):.3f}..{max(values):.3f}  "
        f"({' '.join(f'{v:.3f}' for v in values)})"
    )


FIGURES: dict[str, Callable[[Run], float | None]] = {
    "jobs/s": lambda r: r.jobs_per_s,
    "orchestrator CPU ms/job": lambda r: r.cpu_ms_per_job,
    "redis cmds/job": lambda r: r.redis_cmds_per_job,
}
# Figures only runs counted with callgrind have (--count instructions).
COUNTED: dict[str, Callable[[Run], float | None]] = {
    "orchestrator instr/job": lambda r: r.instructions_per_job,
    "  net of idle": lambda r: r.net_instructions_per_job,
}


def run_pairs(comparison: str, workload: str, pairs: int, measure: Measure) -> list[Run]:
    """`pairs` interleaved A/B pairs; prints each run as it ends."""
    off, on = COMPARISONS[comparison]
    sides = {"A": off, "B": on}
    print(f"machine: {machine_summary()}")
    print(f"{workload}: A = {_env(off)}, B = {_env(on)}; {pairs} pairs, first side alternating")
    print(f"{'pair':>4} {'side':<4} {'jobs/s':>7} {'CPU ms/job':>10} {'cmds/job':>8} "
          f"{'!done':>5} {'foreign CPU s':>13}")  # fmt: skip
    runs: list[Run] = []
    for pair in range(1, pairs + 1):
        order = ["A", "B"] if pair % 2 else ["B", "A"]
        for side in order:
            run = measure(sides[side], side, pair)
            runs.append(run)
            cmds = "n/a" if run.redis_cmds_per_job is None else f"{run.redis_cmds_per_job:.1f}"
            counted = ""
            if run.instructions_per_job is not None:
                counted = f"  instr/job {run.instructions_per_job:,.0f}"
            if run.net_instructions_per_job is not None:
                counted += f" (net of idle {run.net_instructions_per_job:,.0f})"
            print(
                f"{pair:>4} {side:<4} {run.jobs_per_s:>7.0f} {run.cpu_ms_per_job:>10.3f} "
                f"{cmds:>8} {run.not_finished:>5} {run.foreign_cpu_s:>13.2f}{counted}",
                flush=True,
            )
    return runs


def report(comparison: str, runs: list[Run]) -> None:
    off, on = COMPARISONS[comparison]
    print()
    print(f"ratios B/A ({_env(on)} / {_env(off)}), one per pair:")
    for name, figure in FIGURES.items():
        print(f"  {name:<24} {summary(ratios(runs, figure))}")
    for name, figure in COUNTED.items():
        counted = ratios(runs, figure)
        if counted:
            print(f"  {name:<24} {summary(counted)}")


def _env(settings: Mapping[str, str]) -> str:
    return " ".join(f"{k}={v}" for k, v in settings.items())
