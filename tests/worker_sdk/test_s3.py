"""PayloadStore against a real S3-compatible server: downloads, uploads, and what is refused."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from worker_sdk import PermanentError, S3Config
from worker_sdk.s3 import PayloadStore


@pytest.fixture
async def store(s3_config: S3Config, tmp_path: Path) -> AsyncIterator[PayloadStore]:
    root = (tmp_path / "payloads").resolve()
    root.mkdir()
    payloads = PayloadStore(s3_config, root)
    await payloads.open()
    yield payloads
    await payloads.close()


def read(s3: Any, uri: str) -> bytes:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    body: bytes = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    return body


async def test_every_uri_in_nested_params_is_downloaded(
    store: PayloadStore, s3: Any, bucket: str
) -> None:
    s3.put_object(Bucket=bucket, Key="in/a/photo.png", Body=b"first")
    s3.put_object(Bucket=bucket, Key="in/b/photo.png", Body=b"second")
    s3.put_object(Bucket=bucket, Key="docs/x/1.txt", Body=b"one")
    s3.put_object(Bucket=bucket, Key="docs/x/sub/2.txt", Body=b"two")
    s3.put_object(Bucket=bucket, Key="docs/x/sub/", Body=b"")  # a console "folder" marker
    params = {
        "photo": f"s3://{bucket}/in/a/photo.png",
        "more": [{"again": f"s3://{bucket}/in/b/photo.png"}, 3, "plain text"],
        "same": f"s3://{bucket}/in/a/photo.png",
        "folder": f"s3://{bucket}/docs/x/",
    }
    task_dir = store.root / "t1"
    local = await store.download_params(params, task_dir)
    await asyncio.to_thread(check_downloads, local, task_dir)


def check_downloads(local: dict[str, Any], task_dir: Path) -> None:
    first, second = Path(local["photo"]), Path(local["more"][0]["again"])
    assert first != second
    assert first.name == second.name == "photo.png"
    assert (first.read_bytes(), second.read_bytes()) == (b"first", b"second")
    assert local["same"] == local["photo"]
    assert local["more"][1:] == [3, "plain text"]
    folder = Path(local["folder"])
    assert folder.is_dir()
    assert folder.is_relative_to(task_dir)
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) == [
        "1.txt",
        "sub/2.txt",
    ]
    assert (folder / "sub" / "2.txt").read_bytes() == b"two"


async def test_a_missing_object_is_a_permanent_error(store: PayloadStore, bucket: str) -> None:
    # no retry makes a missing object appear: not TRANSIENT_ERROR
    with pytest.raises(PermanentError) as caught:
        await store.download_params({"x": f"s3://{bucket}/nope.bin"}, store.root / "t2")
    assert caught.value.code == "PERMANENT_ERROR"
    assert f"s3://{bucket}/nope.bin" in caught.value.message
    assert "NoSuchKey" in caught.value.message


async def test_a_hard_link_to_an_outside_file_is_never_uploaded(
    store: PayloadStore, s3: Any, bucket: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # given a handler that hard-links a file from outside into its payload folder
    secret = tmp_path / "secret.txt"
    secret.write_text("secret")
    task_dir = store.root / "t5"
    (task_dir / "out").mkdir(parents=True)
    (task_dir / "out" / "ok.txt").write_text("ok")
    os.link(secret, task_dir / "out" / "leak.txt")
    os.link(secret, task_dir / "leak.txt")
    data = {"file": str(task_dir / "leak.txt"), "folder": str(task_dir / "out")}
    # when its result is uploaded
    with caplog.at_level(logging.WARNING, logger="worker_sdk.s3"):
        result = await store.upload_result(data, "job-h")
    # then neither link is, and the warnings say why
    assert result["file"] == str(task_dir / "leak.txt")
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", []))
    assert keys == ["job-h/t5/out/ok.txt"]
    assert caplog.text.count("other hard links") == 2


async def test_result_paths_inside_the_payload_dir_are_uploaded(
    store: PayloadStore, s3: Any, bucket: str
) -> None:
    task_dir = store.root / "t3"
    (task_dir / "out" / "deep").mkdir(parents=True)
    (task_dir / "report.txt").write_text("report")
    (task_dir / "out" / "a.txt").write_text("a")
    (task_dir / "out" / "deep" / "b.txt").write_text("b")
    big = task_dir / "big.bin"
    big.write_bytes(bytes(range(256)) * (store.config.part_size // 256 * 2 + 7))  # multipart
    data = {
        "report": str(task_dir / "report.txt"),
        "nested": {"files": [str(task_dir / "out"), str(big)]},
        "count": 3,
        "not_a_path": "/no/such/file",
    }
    result = await store.upload_result(data, "job-9")
    assert result["report"] == f"s3://{bucket}/job-9/t3/report.txt"
    folder, big_uri = result["nested"]["files"]
    assert folder == f"s3://{bucket}/job-9/t3/out/"
    assert read(s3, result["report"]) == b"report"
    assert read(s3, folder + "a.txt") == b"a"
    assert read(s3, folder + "deep/b.txt") == b"b"
    assert read(s3, big_uri) == big.read_bytes()
    assert (result["count"], result["not_a_path"]) == (3, "/no/such/file")


async def test_paths_escaping_the_payload_dir_are_never_uploaded(
    store: PayloadStore, s3: Any, bucket: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("secret")
    task_dir = store.root / "t4"
    (task_dir / "out").mkdir(parents=True)
    (task_dir / "out" / "ok.txt").write_text("ok")
    (task_dir / "link").symlink_to(secret)
    (task_dir / "out" / "leak").symlink_to(secret)
    (task_dir / "out" / "leakdir").symlink_to(tmp_path)
    traversal = str(task_dir / ".." / ".." / "secret.txt")
    data = {
        "traversal": traversal,
        "symlink": str(task_dir / "link"),
        "outside": str(secret),
        "root": str(store.root),
        "folder": str(task_dir / "out"),
    }
    with caplog.at_level(logging.WARNING, logger="worker_sdk.s3"):
        result = await store.upload_result(data, "job-x")
    assert result["traversal"] == traversal
    assert result["symlink"] == str(task_dir / "link")
    assert result["outside"] == str(secret)
    assert result["root"] == str(store.root)
    assert result["folder"] == f"s3://{bucket}/job-x/t4/out/"
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", []))
    assert keys == ["job-x/t4/out/ok.txt"]
    warnings = caplog.text
    assert f"result value {traversal!r} is outside the task's folder" in warnings
    assert "(through a symlink or ..)" in warnings
    assert "not uploading" in warnings
    assert "leak" in warnings
    assert "symlinked folders are not followed" in warnings
