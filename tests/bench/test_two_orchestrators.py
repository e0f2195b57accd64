"""`python -m bench.two_orchestrators` runs one pair from end to end and prints its rows and
ratios. Only the structure is checked: benchmarks never assert a speed."""

from __future__ import annotations

import pytest

from tests.bench.support import assert_lines_in_order, run_bench
from tests.conftest import require_program

pytestmark = pytest.mark.timeout(300)

NUMBER = r"[\d.]+"
EXPECTED = [
    r"^linear3 N=40 C=10 W=2: A = one orchestrator, B = two on one Redis; 1 pairs",
    rf"^   1 A +{NUMBER} +{NUMBER} +{NUMBER} +0 +-?{NUMBER}$",
    rf"^   1 B +{NUMBER} +{NUMBER} +{NUMBER} +0 +-?{NUMBER}$",
    r"^ratios B/A \(two orchestrators / one\), one per pair:$",
    rf"^  orchestrator CPU ms/job +median {NUMBER}",
    rf"^  redis cmds/job +median {NUMBER}",
    rf"^  A: .*hget={NUMBER}",
    rf"^  B: .*hget={NUMBER}",
]


def test_one_pair_of_one_and_two_orchestrators_runs_and_exits_0() -> None:
    require_program("redis-server", "apt-get install redis-server")
    command = ["bench.two_orchestrators", "--pairs", "1", "-n", "40", "-c", "10", "-w", "2"]
    assert_lines_in_order(run_bench(command, timeout_s=240), EXPECTED)
