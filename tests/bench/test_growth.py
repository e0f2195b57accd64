"""`bench.run --workload growth --quick` runs from end to end and prints every section.

Only the structure is checked: the figures depend on the machine (benchmarks never assert a
speed). A section whose point ran past its budget prints "did not finish in N s" instead of
its row, which is accepted; a job that ended otherwise than `finished` is not (exit 1)."""

from __future__ import annotations

import pytest

from tests.bench.support import assert_lines_in_order, run_bench
from tests.conftest import require_program

pytestmark = pytest.mark.timeout(600)

NUMBER = r"[\d.]+"
LATE = r"did not finish in [\d.]+ s"

# (a line that must be printed, as a regular expression) in the order they come
EXPECTED = [
    r"^growth \(quick\): budget 30 s a point",
    r"^== floor: aiohttp hello world vs linear3",
    rf"^  hello world   GET /  N=1000 C=50 +{NUMBER} requests/s  "
    rf"server CPU {NUMBER} us/request  failed 0$",
    rf"^  linear3       N=100 C=50 W=4 +{NUMBER} jobs/s .* {NUMBER} HTTP requests/job$",
    rf"^  floor for linear3 = {NUMBER} requests/s / {NUMBER} requests a job = {NUMBER} jobs/s; "
    rf"linear3 at {NUMBER}% of the floor$",
    r"^== width: one parallel for_each over N items",
    rf"^ +10 +1 +(({NUMBER} +){{4}}count 10|{LATE})$",
    rf"^ +100 +1 +(({NUMBER} +){{4}}count 100|{LATE}|not run: .*)$",
    r"^== states: K sequential echo task states",
    rf"^ +1 +30 +(({NUMBER} +){{4}}{NUMBER}|{LATE})$",
    rf"^ +10 +10 +(({NUMBER} +){{4}}{NUMBER}|{LATE})$",
    r"^== payload: linear3 with initial_data of B bytes",
    rf"^ +1 KB +30 +(({NUMBER} +){{4}}{NUMBER}|{LATE})$",
    rf"^ +100 KB +10 +(({NUMBER} +){{4}}{NUMBER}|{LATE})$",
    rf"^ +100 KB carry +10 +(({NUMBER} +){{4}}{NUMBER}|{LATE}|not run: .*)$",
    r"^  bytes Redis read per job \(INFO stats total_net_input_bytes\): ",
    r"^== backlog: 200 linear3 jobs queued with no worker, then 4 workers$",
    rf"^  submitted 200 in {NUMBER} s \({NUMBER} jobs/s\); Redis \+{NUMBER} MiB, "
    rf"{NUMBER} KiB per queued job$",
    rf"^  (drained 200 \(other ends: none\) in {NUMBER} s from the first job ended: "
    rf"{NUMBER} jobs/s; {NUMBER} Redis cmds and {NUMBER} orchestrator CPU ms per job|"
    rf"draining: {LATE})$",
    r"^every job that ran within its budget finished$",
]


def test_the_quick_growth_bench_prints_every_section_and_exits_0() -> None:
    require_program("redis-server", "apt-get install redis-server")
    # Given a clean checkout's bench, when the quick growth curves run
    output = run_bench(["bench.run", "--workload", "growth", "--quick"], timeout_s=540)
    # Then it exits 0 and prints each expected line, in order
    assert_lines_in_order(output, EXPECTED)
