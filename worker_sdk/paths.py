"""Pure helpers for payload offloading: `s3://` URIs, nested values, and path containment.

Containment is decided on fully resolved paths (`Path.resolve()` follows every symlink and
folds every `..`), so neither `payloads/../../etc/passwd` nor a symlink inside the payload
directory pointing out of it counts as inside.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

SAFE_NAME = re.compile(r"^[A-Za-z0-9_-]{1,128}$")


@dataclass(frozen=True, slots=True)
class S3Uri:
    bucket: str
    key: str  # "" or ending in "/" for a folder

    @property
    def is_folder(self) -> bool:
        return self.key == "" or self.key.endswith("/")

    @property
    def name(self) -> str:
        """The last component: what the local copy is called."""
        last = PurePosixPath(self.key.rstrip("/")).name if self.key.strip("/") else self.bucket
        return safe_component(last) or "object"

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


def parse_s3_uri(text: str) -> S3Uri | None:
    """`s3://bucket/key` (a file) or `s3://bucket/prefix/` (a folder); None otherwise."""
    if not text.startswith("s3://"):
        return None
    bucket, slash, key = text[5:].partition("/")
    if not bucket or not slash or any(c.isspace() for c in bucket):
        return None
    return S3Uri(bucket, key)


def safe_component(name: str) -> str | None:
    """`name` when it is usable as one file name on its own, else None."""
    if name in ("", ".", "..") or "/" in name or "\\" in name or "\0" in name:
        return None
    return name


def relative_parts(key: str, prefix: str) -> tuple[str, ...] | None:
    """The path of `key` below `prefix`, as file name components; None when any component
    could climb out of the target folder (`..`, empty, absolute) or the key is a folder."""
    rest = key[len(prefix) :]
    if not rest or rest.endswith("/"):
        return None
    parts = tuple(rest.split("/"))
    if any(safe_component(part) is None for part in parts):
        return None
    return parts


def task_folder_name(task_id: str) -> str:
    """A directory name for a task: its id when safe, else a digest of it."""
    if SAFE_NAME.match(task_id):
        return task_id
    return "task-" + hashlib.sha256(task_id.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def value_file_name(name: str) -> str:
    """An object name for the result value under key `name` (see worker_sdk/offload.py)."""
    if SAFE_NAME.match(name):
        return f"{name}.json"
    return (
        "value-" + hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:32] + ".json"
    )


def inside(path: Path, root: Path) -> bool:
    """Whether `path`, once resolved, is `root` or below it (`root` is already resolved)."""
    try:
        return path.resolve().is_relative_to(root)
    except (OSError, RuntimeError, ValueError):  # a symlink loop, a NUL byte, ...
        return False


def existing_path(text: str) -> Path | None:
    """`text` as a path when it is absolute and names something that exists (or a symlink)."""
    if not text.startswith("/") or "\0" in text or len(text) > 4096:
        return None
    try:
        return Path(text) if os.path.lexists(text) else None
    except (OSError, ValueError):
        return None


async def replace_strings(value: Any, replace: Callable[[str], Awaitable[str]]) -> Any:
    """A copy of a JSON-like value with every string (not keys) passed through `replace`,
    at any depth of dicts and lists, in document order."""
    if isinstance(value, str):
        return await replace(value)
    if isinstance(value, dict):
        return {key: await replace_strings(item, replace) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [await replace_strings(item, replace) for item in value]
    return value
