"""`bench.run --compare metrics|webhook` runs its A/B pairs and prints the B/A ratios.

Only the structure is checked (benchmarks never assert a speed); the pairing and the
ratios are checked on made-up runs."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import aiohttp
import pytest

from bench import ab, instructions, load
from bench.harness import WEBHOOK_SECRET
from engine.runtime import webhooks
from tests.conftest import require_program
from tests.support.processes import ROOT

pytestmark = pytest.mark.timeout(300)

NUMBER = r"[\d.]+"


def compare_one_pair(comparison: str) -> str:
    """The output of one pair of `--compare` (30 linear3 jobs, 1 worker), which must pass."""
    require_program("redis-server", "apt-get install redis-server")
    command = ["--workload", "linear3", "--compare", comparison, "--pairs", "1", "-n", "30"]
    done = subprocess.run(
        [sys.executable, "-m", "bench.run", *command, "-w", "1", "--quiet-wait", "0"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def test_compare_metrics_prints_interleaved_pairs_and_their_ratios() -> None:
    output = compare_one_pair("metrics")
    assert "linear3 N=30 C=50: A = METRICS=off, B = METRICS=on; 1 pairs" in output
    rows = re.findall(rf"^ +(\d) (A|B) +{NUMBER} +{NUMBER} +{NUMBER} +0 +{NUMBER}$", output, re.M)
    assert rows == [("1", "A"), ("1", "B")], output
    for figure in ("jobs/s", "orchestrator CPU ms/job", "redis cmds/job"):
        ratio = rf"^  {re.escape(figure)} +median {NUMBER}  range {NUMBER}\.\.{NUMBER}  \("
        assert re.search(ratio, output, re.M), output


def test_compare_webhook_waits_for_each_job_by_wait_then_by_its_signed_webhook() -> None:
    """Side B submits each job with the bench receiver's `webhook_url` and counts it done
    only when its webhook arrives, correctly signed (a missing or forged one fails the run)."""
    output = compare_one_pair("webhook")
    sides = "A = BENCH_COMPLETE=wait, B = BENCH_COMPLETE=webhook; 1 pairs"
    assert f"linear3 N=30 C=50: {sides}" in output, output
    rows = re.findall(rf"^ +(\d) (A|B) +{NUMBER} +{NUMBER} +{NUMBER} +0 +{NUMBER}$", output, re.M)
    assert rows == [("1", "A"), ("1", "B")], output
    assert re.search(rf"^  orchestrator CPU ms/job +median {NUMBER}", output, re.M), output


async def test_the_webhook_load_counts_a_job_done_only_by_its_signed_webhook() -> None:
    async with load.receiving() as (url, receiver):
        body = b'{"job_id": "j1", "status": "finished"}'
        good = webhooks.signature(WEBHOOK_SECRET, int(time.time()), body)
        forged = webhooks.signature("another-secret", int(time.time()), body)
        async with aiohttp.ClientSession() as http:
            for signature, status in ((forged, 401), (good, 204), (good, 204)):
                headers = {"X-Interlock-Signature": signature}
                async with http.post(url, data=body, headers=headers) as response:
                    assert response.status == status
        assert receiver.forged == 1
        assert receiver.first("j1").result() == {"job_id": "j1", "status": "finished"}
        assert not receiver.first("j2").done()


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


def test_counted_runs_print_instructions_and_their_ratios(
    capsys: pytest.CaptureFixture[str],
) -> None:
    def measure(env: Mapping[str, str], side: str, pair: int) -> ab.Run:
        instructions = {"A": 3_000_000.0, "B": 3_060_000.0}[side]
        return ab.Run(side, pair, 20.0, 40.0, 8.0, 0, 0.0, instructions, instructions - 1e6)

    runs = ab.run_pairs("metrics", "linear3", 2, measure)
    ab.report("metrics", runs)
    output = capsys.readouterr().out
    assert "instr/job 3,060,000 (net of idle 2,060,000)" in output
    assert re.search(r"^  orchestrator instr/job +median 1\.020 ", output, re.M), output
    assert re.search(r"^    net of idle +median 1\.030 ", output, re.M), output


def test_uncounted_runs_print_no_instructions(capsys: pytest.CaptureFixture[str]) -> None:
    runs = ab.run_pairs(
        "metrics", "linear3", 1, lambda env, side, pair: ab.Run(side, pair, 1, 1, 1, 0, 0)
    )
    ab.report("metrics", runs)
    assert "instr" not in capsys.readouterr().out


def test_callgrind_counts_the_instructions_of_a_window(tmp_path: Path) -> None:
    # Given a Python process under callgrind that sums 10^6 or 10^7 numbers when asked
    require_program("valgrind", instructions.INSTALL)
    require_program("callgrind_control", instructions.INSTALL)
    script = (
        "import pathlib, sys, time\n"
        "folder = pathlib.Path(sys.argv[1])\n"
        "(folder / 'ready').touch()\n"
        "for n in (10**6, 10**7):\n"
        "    while not (folder / f'go{n}').exists(): time.sleep(0.01)\n"
        "    sum(range(n))\n"
        "    (folder / f'done{n}').touch()\n"
        "time.sleep(60)\n"
    )
    counter = instructions.Callgrind(tmp_path)
    process = subprocess.Popen(
        [*counter.prefix(), sys.executable, "-c", script, str(tmp_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(tmp_path / "ready")
        counts = []
        for n in (10**6, 10**7):
            # When counting is on from the request to the answer
            counter.start(process.pid)
            (tmp_path / f"go{n}").touch()
            wait_for(tmp_path / f"done{n}")
            counts.append(counter.stop())
    finally:
        process.kill()
        process.wait(timeout=30)

    # Then ten times the work counts about ten times the instructions (the waiting loop
    # around it adds a little), and each number summed costs some instructions
    assert counts[0] > 10**6, counts
    assert 5 < counts[1] / counts[0] < 12, counts


def wait_for(path: Path, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} did not appear in {timeout_s} s"
        time.sleep(0.05)


def test_totals_reads_a_callgrind_dump(tmp_path: Path) -> None:
    dump = tmp_path / "callgrind.1.1"
    dump.write_text("version: 1\nevents: Ir\nfn=main\n1 5\nsummary: 1234\ntotals: 1234\n")
    assert instructions.totals(dump) == 1234
    dump.write_text("version: 1\nevents: Ir\n")  # being written: no totals yet
    assert instructions.totals(dump) is None
