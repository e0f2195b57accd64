"""Run-time messages name what is at fault."""

from __future__ import annotations

from pathlib import Path

from tests.engine.test_flow_control import fanout
from tests.engine.test_orchestrator import finished, orchestrator


async def test_for_each_over_a_missing_key_names_the_expression(tmp_path: Path) -> None:
    async with orchestrator("memory://", tmp_path, fanout()) as orch:
        job_id = await orch.submit(orch.registry.by_name["fanout"], {"itemz": [1]}, client="c")
        doc = await finished(orch, job_id)
    assert doc["status"] == "failed"
    message = doc["error"]["message"]
    assert "for_each 'initial_data.items' gave null (nothing at that path), not a list" in message
