"""Which values of a result too large to send are moved to S3 (worker_sdk/offload.py)."""

from __future__ import annotations

from typing import Any

import pytest

from worker_sdk.offload import BATCH_WRAPPER_BYTES, encode, offload, plan
from worker_sdk.paths import value_file_name


class FakeStore:
    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}

    def value_uri(self, job_id: str, task_id: str, name: str) -> str:
        return f"s3://b/{job_id}/{task_id}/_values/{value_file_name(name)}"

    async def put_bytes(self, uri: str, data: bytes) -> None:
        self.objects[uri] = data


def body(**data: Any) -> dict[str, Any]:
    return {"job_id": "j", "task_id": "t", "status": "success", "data": data}


def test_the_largest_values_go_first_and_only_until_the_body_fits() -> None:
    result = body(big="x" * 5000, medium="y" * 2000, small="z" * 10, n=3)
    size = len(encode(result)) + BATCH_WRAPPER_BYTES
    assert plan(result, size, FakeStore()) == {}  # it fits already
    assert list(plan(result, size - 1, FakeStore())) == ["big"]
    assert list(plan(result, size - 4000, FakeStore())) == ["big"]
    assert list(plan(result, size - 6000, FakeStore())) == ["big", "medium"]


def test_when_no_choice_fits_nothing_is_moved() -> None:
    many = body(**{f"k{i}": i for i in range(500)})  # every value is shorter than a URI
    assert plan(many, 1000, FakeStore()) == {}
    assert plan(many, None, FakeStore()) == {}


def test_without_a_known_limit_every_value_longer_than_its_uri_moves() -> None:
    result = body(long="x" * 200, short="y" * 5, n=3)
    assert list(plan(result, None, FakeStore())) == ["long"]


@pytest.mark.parametrize(
    ("key", "name"),
    [("text", "text.json"), ("../../etc", None), ("a/b", None), ("ж", None)],
)
async def test_each_value_is_one_json_object_named_after_a_safe_key(
    key: str, name: str | None
) -> None:
    store = FakeStore()
    moved = await offload(body(**{key: ["ж" * 300]}, keep=1), None, store)
    assert moved is not None
    smaller, keys = moved
    assert keys == [key]
    uri = smaller["data"][key]
    assert smaller["data"]["keep"] == 1
    assert store.objects == {uri: encode(["ж" * 300])}
    file_name = uri.rsplit("/", 1)[1]
    if name is not None:
        assert file_name == name
    else:  # any other key: a digest, never a path of its own
        assert file_name.startswith("value-")
        assert file_name.endswith(".json")
