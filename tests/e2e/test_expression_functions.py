"""Expression functions through real processes: `interlock serve` on a real Redis (and on a
Redis Cluster), a real worker, and a client speaking HTTP only."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from tests.e2e.test_flow_over_http import client, events, submit, terminal
from tests.support.processes import serve, worker

pytestmark = pytest.mark.timeout(120)

INVOICE = """
blueprint: invoice
api_endpoint: jobs/invoice
start: key
states:
  key:
    set: {key: "${ uuid() }", started: "${ now_ms() }"}
    next: bill
  bill:
    task: bill
    params:
      key: "${ steps.key.key }"
      total: "${ add(multiply(initial_data.price, initial_data.quantity), initial_data.shipping) }"
      each: "${ round(divide(initial_data.price, initial_data.parts), `2`) }"
      line: "${ format('{} x {}', initial_data.quantity, upper(initial_data.item)) }"
      count: "${ to_number(initial_data.count, `1`) }"
    on: {success: done}
  done:
    end: finished
    output:
      key: "${ steps.bill.key }"
      total: "${ steps.bill.total }"
      each: "${ steps.bill.each }"
      line: "${ steps.bill.line }"
      count: "${ steps.bill.count }"
      took_ms: "${ subtract(now_ms(), steps.key.started) }"
"""


async def test_a_job_computes_with_functions_and_a_bad_division_fails_it(
    tmp_path: Path, any_redis_url: str
) -> None:
    """Given a blueprint that prices an invoice with functions, when a client submits one,
    then the worker gets the computed params and the job ends with them; and when the
    data makes it divide by zero, the job fails with EXPRESSION_ERROR naming the state
    and the expression."""
    folder = tmp_path / "blueprints"
    folder.mkdir()
    (folder / "invoice.yaml").write_text(INVOICE)
    with (
        serve(tmp_path, any_redis_url, blueprints=folder) as server,
        worker(tmp_path, server.url, "w-fn", "bill"),
    ):
        async with client(server) as http:
            data = {"price": 7, "quantity": 3, "shipping": 1.5, "parts": 3, "item": "pen"}
            good = await submit(http, "jobs/invoice", {**data, "count": " 4 "})
            bad = await submit(http, "jobs/invoice", {**data, "parts": 0, "count": "n/a"})
            finished = await terminal(http, good)
            failed = await terminal(http, bad)
            bad_history = await events(http, bad)
    assert finished["status"] == "finished", finished
    result = finished["result"]
    assert uuid.UUID(result["key"]).version == 4
    assert (result["total"], result["each"], result["line"], result["count"]) == (
        22.5,
        2.33,
        "3 x PEN",
        4,
    )
    assert 0 <= result["took_ms"] < 60_000
    assert failed["status"] == "failed"
    assert failed["error"]["code"] == "EXPRESSION_ERROR"
    assert "state 'bill'" in failed["error"]["message"]
    assert "divide(initial_data.price, initial_data.parts)" in failed["error"]["message"]
    assert "division by zero" in failed["error"]["message"]
    assert not any(e["event"] == "task_queued" for e in bad_history)  # nothing was dispatched
