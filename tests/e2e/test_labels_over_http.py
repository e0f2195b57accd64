"""Labels and search through real processes: two `interlock serve` on a real Redis (and on a
Redis Cluster), a client speaking HTTP only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.e2e.test_flow_over_http import cancel, client, submit, view
from tests.support.processes import serve

pytestmark = pytest.mark.timeout(120)


async def test_jobs_submitted_to_one_server_are_found_by_label_on_another(
    tmp_path: Path, any_redis_url: str
) -> None:
    """Given two servers on one store, when a client submits labelled jobs to the first and
    cancels one, then the second finds them by label and status, page by page, and a bad
    label is a 400 naming the field."""
    with serve(tmp_path, any_redis_url) as first, serve(tmp_path, any_redis_url) as second:
        async with client(first) as http:
            data = {"amount": 5, "employee": "ada"}
            ids = [
                await submit(http, "jobs/expense_approval", data, labels={"customer": str(i % 2)})
                for i in range(6)
            ]
            status, _ = await cancel(http, ids[2])
            assert status == 200
            async with http.post(
                "/api/v1/jobs/expense_approval",
                json={"initial_data": data, "labels": {"customer": 42}},
            ) as resp:
                refused: dict[str, Any] = await resp.json()
                assert resp.status == 400
        async with client(second) as http:
            assert (await view(http, ids[0]))["labels"] == {"customer": "0"}
            pages: list[list[str]] = []
            made: dict[str, str] = {}
            cursor: str | None = None
            while True:
                params = {
                    "label": "customer:0",
                    "limit": "2",
                    **({"cursor": cursor} if cursor else {}),
                }
                async with http.get("/api/v1/jobs", params=params) as resp:
                    page = await resp.json()
                    assert resp.status == 200, page
                pages.append([item["id"] for item in page["jobs"]])
                made.update((item["id"], item["created_at"]) for item in page["jobs"])
                cursor = page["next_cursor"]
                if cursor is None:
                    break
            query = {"label": "customer:0", "status": "cancelled"}
            async with http.get("/api/v1/jobs", params=query) as resp:
                cancelled = [item["id"] for item in (await resp.json())["jobs"]]
    # newest first; jobs made in the same ms: the larger id first
    expected = sorted((ids[4], ids[2], ids[0]), key=lambda j: (made[j], j), reverse=True)
    assert [job_id for page in pages for job_id in page] == expected
    assert len(pages[0]) == 2
    assert cancelled == [ids[2]]
    assert refused["error"]["details"] == [
        {"path": "$.labels.customer", "message": "must be a string, not a number"}
    ]
