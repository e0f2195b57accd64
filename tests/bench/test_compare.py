"""`bench.run --compare metrics` runs its A/B pairs and prints the on/off ratios.

Only the structure is checked (benchmarks never assert a speed); the pairing and the
ratios are checked on made-up runs."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Mapping

import pytest

from bench import ab
from tests.conftest import require_program
from tests.support.processes import ROOT

pytestmark = pytest.mark.timeout(300)

NUMBER = r"[\d.]+"


def test_compare_metrics_prints_interleaved_pairs_and_their_ratios() -> None:
    require_program("redis-server", "apt-get install redis-server")
    command = ["--workload", "linear3", "--compare", "metrics", "--pairs", "1", "-n", "30"]
    done = subprocess.run(
        [sys.executable, "-m", "bench.run", *command, "-w", "1", "--quiet-wait", "0"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    output = done.stdout
    assert done.returncode == 0, output[-3000:] + done.stderr[-3000:]
    assert "linear3 N=30 C=50: A = METRICS=off, B = METRICS=on; 1 pairs" in output
    rows = re.findall(rf"^ +(\d) (A|B) +{NUMBER} +{NUMBER} +{NUMBER} +0 +{NUMBER}$", output, re.M)
    assert rows == [("1", "A"), ("1", "B")], output
    for figure in ("jobs/s", "orchestrator CPU ms/job", "redis cmds/job"):
        ratio = rf"^  {re.escape(figure)} +median {NUMBER}  range {NUMBER}\.\.{NUMBER}  \("
        assert re.search(ratio, output, re.M), output


def test_pairs_alternate_which_side_goes_first_and_ratios_are_b_over_a() -> None:
    calls: list[tuple[str, int, dict[str, str]]] = []

    def measure(env: Mapping[str, str], side: str, pair: int) -> ab.Run:
        calls.append((side, pair, dict(env)))
        rate = {"A": 100.0, "B": 90.0 + pair}[side]
        return ab.Run(side, pair, rate, 1.0, None, 0, 0.0)

    runs = ab.run_pairs("metrics", "linear3", 3, measure)
    assert [(side, pair) for side, pair, _ in calls] == [
        ("A", 1), ("B", 1), ("B", 2), ("A", 2), ("A", 3), ("B", 3),
    ]  # fmt: skip
    assert {side: env for side, _, env in calls} == {
        "A": {"METRICS": "off"},
        "B": {"METRICS": "on"},
    }
    assert ab.ratios(runs, lambda r: r.jobs_per_s) == [0.91, 0.92, 0.93]
    assert ab.ratios(runs, lambda r: r.redis_cmds_per_job) == []
    assert ab.summary([0.91, 0.92, 0.93]).startswith("median 0.920  range 0.910..0.930")
