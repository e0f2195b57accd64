"""S3 payload offloading: `s3://` params in, result files out. Needs `interlock[s3]` (aioboto3).

Memory stays small whatever the object size: downloads stream the body to disk one chunk at
a time, uploads send one part at a time (a single PUT up to `part_size`, multipart above).

Downloads: every `s3://bucket/key` string in the params (any depth) is fetched into
`<task dir>/in/<n>/<name>` (`n` counts the URIs, so equal names never collide) and replaced
by that path; `s3://bucket/prefix/` fetches every object below the prefix into a folder.
Uploads: every string of the result that is an existing path inside the task's own folder
is uploaded to `s3://<bucket>/<job id>/<path below the payload directory>` (a folder with all
its files, its URI ending in `/`) and replaced by the URI. Anything resolving outside that
folder (another task's folder, or elsewhere through `..` or a symlink), and any file with
more than one hard link (it may be another file's contents under a name inside the folder),
is left as it is, with a warning.

Trust boundary: params come from the orchestrator's clients, so they are not trusted. A
task can only make the worker read objects of the buckets in `S3_ALLOWED_BUCKETS` (when
set; plus the worker's own `S3_BUCKET`) and upload files of its own folder.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import itertools
import logging
import os
import stat
from pathlib import Path
from typing import Any, BinaryIO

import aioboto3
from aiobotocore.config import AioConfig
from botocore.exceptions import BotoCoreError, ClientError

from worker_sdk.config import S3Config
from worker_sdk.errors import InvalidInputError, PayloadTransferError, PermanentError
from worker_sdk.paths import (
    S3Uri,
    existing_path,
    inside,
    parse_s3_uri,
    relative_parts,
    replace_strings,
    task_folder_name,
    value_file_name,
)

log = logging.getLogger("worker_sdk.s3")

TRANSFER_ERRORS = (BotoCoreError, ClientError, OSError)
VALUES_FOLDER = "_values"  # below a task's folder in the bucket: its offloaded result values


class PayloadStore:
    """One S3 client for the worker's lifetime; `open()` before use, `close()` after."""

    def __init__(self, config: S3Config, payload_dir: Path) -> None:
        self.config = config
        self.root = payload_dir
        self._stack = contextlib.AsyncExitStack()
        self._client: Any = None

    async def open(self) -> None:
        session = aioboto3.Session()
        self._client = await self._stack.enter_async_context(
            session.client(
                "s3",
                endpoint_url=self.config.endpoint_url,
                aws_access_key_id=self.config.access_key,
                aws_secret_access_key=self.config.secret_key,
                region_name=self.config.region,
                config=AioConfig(retries={"max_attempts": 3, "mode": "standard"}),
            )
        )

    async def close(self) -> None:
        await self._stack.aclose()
        self._client = None

    # -- params: download --------------------------------------------------------------------

    async def download_params(self, params: Any, task_dir: Path) -> Any:
        """`params` with every `s3://` string replaced by the path of its local copy."""
        counter = itertools.count()
        done: dict[str, str] = {}  # the same URI twice is fetched once

        async def replace(text: str) -> str:
            uri = parse_s3_uri(text)
            if uri is None:
                return text
            self._check_bucket(uri)
            if text not in done:
                target = task_dir / "in" / str(next(counter))
                try:
                    if uri.is_folder:
                        local = await self._download_folder(uri, target / uri.name)
                    else:
                        local = target / uri.name
                        await self._download_file(uri, local)
                except TRANSFER_ERRORS as exc:
                    if _missing(exc):  # no retry will make it appear: fail for good
                        raise PermanentError(
                            f"cannot download {uri}: {exc}", {"uri": str(uri)}
                        ) from exc
                    raise PayloadTransferError(
                        f"cannot download {uri}: {exc}", {"uri": str(uri)}
                    ) from exc
                done[text] = str(local)
            return done[text]

        return await replace_strings(params, replace)

    def _check_bucket(self, uri: S3Uri) -> None:
        allowed = self.config.allowed_buckets
        if allowed is not None and uri.bucket not in allowed and uri.bucket != self.config.bucket:
            raise InvalidInputError(
                f"{uri} is in bucket {uri.bucket!r}, which this worker may not read "
                f"(S3_ALLOWED_BUCKETS: {', '.join(sorted(allowed)) or 'none'})",
                {"uri": str(uri)},
            )

    async def _download_file(self, uri: S3Uri, dest: Path) -> None:
        response = await self._client.get_object(Bucket=uri.bucket, Key=uri.key)
        body = response["Body"]
        async with body:  # closes the connection; `as` would give the raw aiohttp response
            sink = await asyncio.to_thread(_create, dest)
            try:
                while chunk := await body.read(self.config.chunk_size):
                    await asyncio.to_thread(sink.write, chunk)
            finally:
                await asyncio.to_thread(sink.close)

    async def _download_folder(self, uri: S3Uri, root: Path) -> Path:
        await asyncio.to_thread(root.mkdir, parents=True, exist_ok=True)
        resolved_root = await asyncio.to_thread(root.resolve)
        paginator = self._client.get_paginator("list_objects_v2")
        async for page in paginator.paginate(Bucket=uri.bucket, Prefix=uri.key):
            for item in page.get("Contents", []):
                key = str(item["Key"])
                parts = relative_parts(key, uri.key)
                if parts is None:
                    if not key.endswith("/"):  # "folder/" marker objects are expected
                        log.warning("not downloading s3://%s/%s: unsafe name", uri.bucket, key)
                    continue
                dest = root.joinpath(*parts)
                contained = await asyncio.to_thread(inside, dest, resolved_root)
                if not contained:  # defence in depth: the parts were checked already
                    log.warning("not downloading s3://%s/%s: leaves the folder", uri.bucket, key)
                    continue
                await self._download_file(S3Uri(uri.bucket, key), dest)
        return root

    # -- result: upload ----------------------------------------------------------------------

    async def upload_result(self, data: Any, job_id: str, task_dir: Path | None = None) -> Any:
        """`data` with every existing path inside `task_dir` (the task's own folder; the
        whole payload directory when None) uploaded and replaced by its `s3://` URI."""
        done: dict[Path, str] = {}
        scope = self.root if task_dir is None else await asyncio.to_thread(task_dir.resolve)

        async def replace(text: str) -> str:
            path = await asyncio.to_thread(existing_path, text)
            if path is None:
                return text
            resolved = await asyncio.to_thread(path.resolve)
            if resolved == scope or not resolved.is_relative_to(scope):
                how = " (through a symlink or ..)" if path.is_relative_to(scope) else ""
                log.warning(
                    "result value %r is outside the task's folder %s%s: not uploaded, left as is",
                    text,
                    scope,
                    how,
                )
                return text
            if await asyncio.to_thread(_hard_linked, resolved):
                log.warning(
                    "result value %r is a file with other hard links: not uploaded, left as is",
                    text,
                )
                return text
            if resolved not in done:
                key = f"{task_folder_name(job_id)}/{resolved.relative_to(self.root).as_posix()}"
                try:
                    done[resolved] = await self._upload(resolved, key, scope)
                except TRANSFER_ERRORS as exc:
                    raise PayloadTransferError(
                        f"cannot upload {text}: {exc}", {"path": text}
                    ) from exc
            return done[resolved]

        return await replace_strings(data, replace)

    # -- result values too large to send: see worker_sdk/offload.py --------------------------

    def value_uri(self, job_id: str, task_id: str, name: str) -> str:
        """Where the result value under key `name` goes: beside the task's uploaded files,
        in a folder of its own (`_values`), as JSON."""
        folder = f"{task_folder_name(job_id)}/{task_folder_name(task_id)}/{VALUES_FOLDER}"
        return f"s3://{self.config.bucket}/{folder}/{value_file_name(name)}"

    async def put_bytes(self, uri: str, data: bytes) -> None:
        """Upload `data` to `uri` (one of `value_uri`'s), one part at a time above part_size."""
        parsed = parse_s3_uri(uri)
        if parsed is None or parsed.bucket != self.config.bucket or parsed.is_folder:
            raise ValueError(f"{uri} is not an object of this worker's bucket")
        try:
            if len(data) <= self.config.part_size:
                await self._client.put_object(Bucket=parsed.bucket, Key=parsed.key, Body=data)
            else:
                await self._upload_parts(io.BytesIO(data), parsed.bucket, parsed.key)
        except TRANSFER_ERRORS as exc:
            raise PayloadTransferError(f"cannot upload {uri}: {exc}", {"uri": uri}) from exc

    async def _upload(self, path: Path, key: str, scope: Path) -> str:
        bucket = self.config.bucket
        if await asyncio.to_thread(path.is_dir):
            for file, relative in await asyncio.to_thread(self._files_below, path, scope):
                await self._upload_file(file, f"{key}/{relative}")
            return f"s3://{bucket}/{key}/"
        await self._upload_file(path, key)
        return f"s3://{bucket}/{key}"

    def _files_below(self, folder: Path, scope: Path) -> list[tuple[Path, str]]:
        """(resolved file, posix path below `folder`) for every file to upload; entries that
        resolve outside `scope`, and files with other hard links, are skipped with a
        warning."""
        found: list[tuple[Path, str]] = []
        for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
            here = Path(dirpath)
            for name in dirnames:
                if (here / name).is_symlink():
                    log.warning("not uploading %s: symlinked folders are not followed", here / name)
            for name in sorted(filenames):
                file = here / name
                resolved = file.resolve()
                if not resolved.is_relative_to(scope):
                    log.warning(
                        "not uploading %s: it resolves to %s, outside the task's folder %s",
                        file,
                        resolved,
                        scope,
                    )
                elif _hard_linked(resolved):
                    log.warning("not uploading %s: the file has other hard links", file)
                elif resolved.is_file():
                    found.append((resolved, file.relative_to(folder).as_posix()))
        return found

    async def _upload_file(self, path: Path, key: str) -> None:
        bucket, part_size = self.config.bucket, self.config.part_size
        source = await asyncio.to_thread(_open_regular, path)
        try:
            if os.fstat(source.fileno()).st_size <= part_size:
                body = await asyncio.to_thread(source.read)
                await self._client.put_object(Bucket=bucket, Key=key, Body=body)
            else:
                await self._upload_parts(source, bucket, key)
        finally:
            await asyncio.to_thread(source.close)

    async def _upload_parts(self, source: BinaryIO, bucket: str, key: str) -> None:
        upload = await self._client.create_multipart_upload(Bucket=bucket, Key=key)
        upload_id = upload["UploadId"]
        try:
            parts = []
            for number in itertools.count(1):
                chunk = await asyncio.to_thread(source.read, self.config.part_size)
                if not chunk:
                    break
                answer = await self._client.upload_part(
                    Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=chunk
                )
                parts.append({"ETag": answer["ETag"], "PartNumber": number})
            await self._client.complete_multipart_upload(
                Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
            )
        except BaseException:
            # Do not leave billed, invisible parts behind; the original error matters more.
            with contextlib.suppress(*TRANSFER_ERRORS):
                await asyncio.shield(
                    self._client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
                )
            raise


def _create(dest: Path) -> BinaryIO:
    dest.parent.mkdir(parents=True, exist_ok=True)
    return dest.open("wb")


def _hard_linked(path: Path) -> bool:
    """A regular file with more than one name: one may be outside the task's folder."""
    try:
        info = path.stat()
    except OSError:
        return False
    return stat.S_ISREG(info.st_mode) and info.st_nlink > 1


def _open_regular(path: Path) -> BinaryIO:
    if not stat.S_ISREG(path.stat().st_mode):  # before open(): a FIFO would block it
        raise OSError(f"{path} is neither a regular file nor a folder")
    source = path.open("rb")
    info = os.fstat(source.fileno())
    if not stat.S_ISREG(info.st_mode) or info.st_nlink > 1:  # checked again on what we read
        source.close()
        raise OSError(f"{path} is not a regular file with a single name")
    return source


def _missing(exc: BaseException) -> bool:
    """The object or bucket does not exist (S3's NoSuchKey, NoSuchBucket, a 404)."""
    if not isinstance(exc, ClientError):
        return False
    error = exc.response.get("Error", {})
    return str(error.get("Code")) in ("NoSuchKey", "NoSuchBucket", "404", "NotFound")
