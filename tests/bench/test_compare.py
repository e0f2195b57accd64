"""`bench.run --compare metrics|webhook` runs its A/B pairs and prints the B/A ratios.

Only the structure is checked (benchmarks never assert a speed); the pairing and the
ratios are checked on made-up runs."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Mapping

import aiohttp
import pytest

from bench import ab, load
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
