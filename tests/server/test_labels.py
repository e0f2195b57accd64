"""Labels over the client API: what a submission may carry (a 400 names the field at fault),
the job view, and `GET /api/v1/jobs?label=name:value`."""

from __future__ import annotations

from typing import Any

import pytest

from server.labels import MAX_LABELS
from tests.server.helpers import ACME, GLOBEX, Client, error_of, job, ok_json, submit

IMAGE = {"url": "https://example.com/cat.png"}


@pytest.mark.parametrize(
    ("labels", "path", "fragment"),
    [
        ("gold", "$.labels", "must be an object of name: value strings, not a string"),
        ({f"k{i}": "v" for i in range(MAX_LABELS + 1)}, "$.labels", "at most 16 are allowed"),
        ({"customer:id": "42"}, "$.labels", "label name 'customer:id' must be 1 to 63"),
        ({"a=b": "1"}, "$.labels", "label name 'a=b'"),
        ({"": "1"}, "$.labels", "label name ''"),
        ({"x" * 64: "1"}, "$.labels", "must be 1 to 63"),
        ({"customer": 42}, "$.labels.customer", "must be a string, not a number"),
        ({"customer": ""}, "$.labels.customer", "must be 1 to 128 characters, not 0"),
        ({"customer": "x" * 129}, "$.labels.customer", "not 129"),
        ({"customer": "a\nb"}, "$.labels.customer", "must not hold control characters"),
    ],
)
async def test_bad_labels_are_a_400_naming_the_field(
    api: Client, labels: Any, path: str, fragment: str
) -> None:
    response = await api.post(
        "/api/v1/jobs/image_pipeline", json={"initial_data": IMAGE, "labels": labels}, headers=ACME
    )
    error = await error_of(response, 400)
    assert error["code"] == "invalid_request"
    assert [p["path"] for p in error["details"]] == [path]
    assert fragment in error["details"][0]["message"]
    assert path in error["message"]


async def test_labels_show_in_the_job_and_find_it(api: Client) -> None:
    # Given two jobs of customer 42 (one cancelled), one of customer 7, and globex's job
    # labelled customer 42 too
    labels = {"customer": "42", "region/zone": "eu-1.a"}
    first = await submit(api, "jobs/image_pipeline", IMAGE, labels=labels)
    second = await submit(api, "jobs/image_pipeline", IMAGE, labels={"customer": "42"})
    other = await submit(api, "jobs/image_pipeline", IMAGE, labels={"customer": "7"})
    await ok_json(await api.post(f"/api/v1/jobs/{second}/cancel", headers=ACME))
    await submit(api, "jobs/image_pipeline", IMAGE, GLOBEX, labels={"customer": "42"})
    # Then the job shows its labels
    assert (await job(api, first))["labels"] == labels
    assert (await job(api, other))["labels"] == {"customer": "7"}
    assert "labels" not in await job(api, await submit(api, "jobs/image_pipeline", IMAGE))

    async def listed(*query: tuple[str, str]) -> list[str]:
        page = await ok_json(await api.get("/api/v1/jobs", params=list(query), headers=ACME))
        return [item["id"] for item in page["jobs"]]

    # And listing by label finds exactly acme's matching jobs, newest first (the larger id
    # first for jobs made in the same ms), with status and a second label
    made = {job_id: (await job(api, job_id))["created_at"] for job_id in (first, second)}
    newest = sorted((first, second), key=lambda j: (made[j], j), reverse=True)
    assert await listed(("label", "customer:42")) == newest
    assert await listed(("label", "customer:42"), ("status", "cancelled")) == [second]
    assert await listed(("label", "customer:42"), ("label", "region/zone:eu-1.a")) == [first]
    assert await listed(("label", "customer:7"), ("label", "region/zone:eu-1.a")) == []
    page = await ok_json(
        await api.get("/api/v1/jobs", params={"label": "customer:42", "limit": "1"}, headers=ACME)
    )
    assert [item["id"] for item in page["jobs"]] == newest[:1]
    rest = await ok_json(
        await api.get(
            "/api/v1/jobs",
            params={"label": "customer:42", "cursor": page["next_cursor"]},
            headers=ACME,
        )
    )
    assert [item["id"] for item in rest["jobs"]] == newest[1:]
    assert {item["id"]: item["labels"] for item in [*page["jobs"], *rest["jobs"]]} == {
        first: labels,
        second: {"customer": "42"},
    }


@pytest.mark.parametrize(
    ("query", "fragment"),
    [
        ([("label", "customer")], "must be name:value, e.g. customer:42"),
        ([("label", "customer:")], "must be 1 to 128 characters, not 0"),
        ([("label", "cus tomer:1")], "names a label 'cus tomer'"),
        ([("label", f"k:{i}") for i in range(5)], "at most 4 label= parameters"),
    ],
)
async def test_a_bad_label_filter_is_a_400(
    api: Client, query: list[tuple[str, str]], fragment: str
) -> None:
    error = await error_of(await api.get("/api/v1/jobs", params=query, headers=ACME), 400)
    assert error["code"] == "invalid_query"
    assert fragment in error["message"]
