"""Catching failures by error code through real processes: `interlock serve` on a real Redis
(and on a Redis Cluster), a worker that declines cards, a client speaking HTTP only."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.test_flow_over_http import client, events, submit, terminal
from tests.support.processes import serve, worker

pytestmark = pytest.mark.timeout(120)

CHECKOUT = """
blueprint: checkout
api_endpoint: jobs/checkout
start: pay
states:
  pay:
    subflow: {blueprint: payment, input: {amount: "${ initial_data.amount }"}}
    on: {success: done, "error:CARD_DECLINED": declined, failure: broken}
  declined:
    end: failed
    error:
      code: "${ steps.pay.error.code }"
      message: "checkout: ${ steps.pay.error.message }"
      details:
        payment_job: "${ steps.pay.error.child_job_id }"
        bank: "${ steps.pay.error.details }"
  broken: {end: failed, error: {code: CHECKOUT_BROKEN}}
  done: {end: finished}
"""

PAYMENT = """
blueprint: payment
start: charge
states:
  charge:
    task: charge_card
    params: {amount: "${ initial_data.amount }"}
    retry: {max_attempts: 1}
    on: {success: done, "error:CARD_DECLINED": declined}
  declined:
    end: failed
    error:
      code: "${ steps.charge.error.code }"
      message: "${ steps.charge.error.message }"
      details: {attempts: "${ steps.charge.error.attempt }"}
  done: {end: finished}
"""


async def test_an_error_raised_in_a_child_is_caught_by_code_and_raised_again(
    tmp_path: Path, any_redis_url: str
) -> None:
    """Given a checkout that pays in a subflow, and a worker that declines the first card of
    each job, when a client checks out, then the child catches CARD_DECLINED from its task
    and raises it from its end state, and the parent catches it by code and raises it again
    with the child's details; the history and the graph show the edge taken."""
    folder = tmp_path / "blueprints"
    folder.mkdir()
    (folder / "checkout.yaml").write_text(CHECKOUT)
    (folder / "payment.yaml").write_text(PAYMENT)
    with (
        serve(tmp_path, any_redis_url, blueprints=folder) as server,
        worker(
            tmp_path,
            server.url,
            "w-bank",
            "charge_card",
            "--fail-first",
            "1",
            "--fail-code",
            "CARD_DECLINED",
        ),
    ):
        async with client(server) as http:
            job_id = await submit(http, "jobs/checkout", {"amount": 12})
            job = await terminal(http, job_id)
            history = await events(http, job_id)
            async with http.get(f"/api/v1/jobs/{job_id}/graph") as resp:
                graph = await resp.text()
    assert job["status"] == "failed", job
    error = job["error"]
    assert (error["code"], error["message"]) == ("CARD_DECLINED", "checkout: simulated failure")
    assert error["details"]["bank"] == {"attempts": 1}
    assert len(error["details"]["payment_job"]) == 32
    left = [e for e in history if e["event"] == "state_left"]
    assert [(e["state"], e["via"], e["to"]) for e in left] == [
        ("pay", "error:CARD_DECLINED", "declined")
    ]
    assert 'label="error CARD_DECLINED"' in graph
