"""The complete worker of the README (worker_sdk/examples/example_worker.py), run as
written, serves every example blueprint in blueprints/ through a real server on Redis."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.support.processes import ROOT
from tests.worker_sdk.support import (
    client,
    fast_env,
    history,
    job,
    orchestrator,
    submit,
    wait_terminal,
    worker_process,
)

pytestmark = pytest.mark.timeout(90)

README = ROOT / "README.md"
EXAMPLE_WORKER = ROOT / "worker_sdk" / "examples" / "example_worker.py"

#: endpoint -> (initial data, what the job's result must include)
EXAMPLES: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "jobs/image_pipeline": ({"url": "https://example.test/cat.png", "width": 64}, {}),
    "jobs/process_order": ({"items": [1, 2], "priority": "express"}, {"speed": "express"}),
    "jobs/charge": ({"card_token": "tok_ok", "amount": 5}, {}),
    "jobs/reminder": ({"user": "ada"}, {"sent": "Hello ada, this is your reminder."}),
    "jobs/onboarding": ({"user": "ada", "avatar_url": "https://example.test/ada.png"}, {}),
    "jobs/document_intake": ({"document": "contract.pdf"}, {}),
    "jobs/batch_thumbnails": ({"images": ["a.png", "b.png", "c.png"]}, {"count": 3}),
}


def example_worker(tmp_path: Path) -> Path:
    """The shipped example worker, copied where a reader would save it."""
    script = tmp_path / "example_worker.py"
    script.write_text(EXAMPLE_WORKER.read_text())
    return script


def test_the_readme_lists_the_shipped_example_worker() -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.DOTALL)
    listed = [b for b in blocks if b.startswith("# example_worker.py")]
    assert listed == [EXAMPLE_WORKER.read_text()]


async def approve(http: aiohttp.ClientSession, job_id: str) -> None:
    """Wait for the job to ask a person, then answer as its owner: approve."""
    doc = await job(http, job_id)
    for _ in range(100):
        if doc["status"] == "waiting_for_human":
            break
        await asyncio.sleep(0.05)
        doc = await job(http, job_id)
    assert doc["status"] == "waiting_for_human", doc
    async with http.post(f"/api/v1/jobs/{job_id}/approval", json={"decision": "approve"}) as r:
        assert r.status == 200, await r.text()


async def test_the_documented_worker_runs_every_example_blueprint(
    tmp_path: Path, redis_url: str
) -> None:
    """Given the example blueprints and the documented worker, when a client submits one
    job per example (and the out-of-stock and declined-card variants), then each ends as
    its blueprint says."""
    with orchestrator(tmp_path, redis_url, blueprints=ROOT / "blueprints") as server:
        env = fast_env(ORCHESTRATOR_URL=server.url, LOG_LEVEL="INFO")
        with worker_process(tmp_path, "examples-1", env, example_worker(tmp_path)) as proc:
            async with client(server) as http:
                jobs = {e: await submit(http, e, data) for e, (data, _) in EXAMPLES.items()}
                no_stock = await submit(http, "jobs/process_order", {"items": ["sku-0"]})
                declined = await submit(
                    http, "jobs/charge", {"card_token": "tok_declined", "amount": 5}
                )
                expense = await submit(
                    http, "jobs/expense_approval", {"amount": 12.5, "employee": "ada"}
                )
                await approve(http, expense)
                done = {e: await wait_terminal(http, j) for e, j in jobs.items()}
                paid = await wait_terminal(http, expense)
                failed = [await wait_terminal(http, j) for j in (no_stock, declined)]
                intake = await history(http, jobs["jobs/document_intake"])
                pipeline = await history(http, jobs["jobs/image_pipeline"])
            output = proc.output()

    for endpoint, (_, expected) in EXAMPLES.items():
        assert done[endpoint]["status"] == "finished", (endpoint, done[endpoint], output)
        assert expected.items() <= done[endpoint]["result"].items(), done[endpoint]
    assert paid["status"] == "finished", paid
    assert {"paid": 12.5, "to": "ada"}.items() <= paid["result"].items()
    image_job = jobs["jobs/image_pipeline"]
    assert done["jobs/image_pipeline"]["result"] == {
        "thumbnail": f"https://cdn.example.com/thumb-{image_job}.png"
    }
    assert done["jobs/charge"]["result"]["charge_id"].startswith("ch_")
    assert [(f["status"], f["error"]["code"]) for f in failed] == [
        ("failed", "OUT_OF_STOCK"),
        ("failed", "CARD_DECLINED"),
    ]
    progress = [e["message"] for e in intake if e["event"] == "task_progress"]
    assert progress == ["page 1 of 3", "page 2 of 3", "page 3 of 3"]
    assert any(e["event"] == "task_progress" for e in pipeline)
    assert "ERROR" not in output
    assert "Traceback" not in output
