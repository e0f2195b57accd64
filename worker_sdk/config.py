"""Worker settings, read from the environment and checked before anything starts.

Every problem found is reported at once, one line each, naming the variable (or the entry of
ORCHESTRATORS_CONFIG) at fault and what would be right. Where the published
`avtomatika-worker` SDK uses another name for the same setting, both names are accepted; setting
both to different values is an error rather than a silent choice.
"""

from __future__ import annotations

import importlib.util
import json
import os
import tempfile
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from worker_sdk import conversions as convert
from worker_sdk.conversions import Mode
from worker_sdk.errors import ConfigError

T = TypeVar("T")

ENTRY_KEYS = ("url", "token", "priority", "weight")
DEFAULT_URL = "http://localhost:8080"
DEFAULT_PRIORITY = 10
MIB = 1 << 20

#: (our name, the avtomatika-worker name) for settings known under two names.
ALIASES = {
    "AVTOMATIKA_WORKER_TOKEN": "WORKER_INDIVIDUAL_TOKEN",
    "WORKER_HEARTBEAT_INTERVAL": "HEARTBEAT_INTERVAL",
    "WORKER_POLL_TIMEOUT": "TASK_POLL_TIMEOUT",
    "WORKER_PAYLOAD_DIR": "TASK_FILES_DIR",
    "S3_BUCKET": "S3_DEFAULT_BUCKET",
}
TOKEN_HINT = (
    "set AVTOMATIKA_WORKER_TOKEN (this worker's own token, as in the orchestrator's "
    "workers.toml) or WORKER_TOKEN (the shared one), or a token for each entry of "
    "ORCHESTRATORS_CONFIG"
)


@dataclass(frozen=True, slots=True)
class OrchestratorConfig:
    """One orchestrator the worker talks to."""

    url: str
    token: str = field(repr=False)
    priority: int = DEFAULT_PRIORITY
    weight: int = 1
    token_source: str = "WORKER_TOKEN"  # where the token came from, for log lines


@dataclass(frozen=True, slots=True)
class S3Config:
    bucket: str
    endpoint_url: str | None = None
    access_key: str | None = field(default=None, repr=False)
    secret_key: str | None = field(default=None, repr=False)
    region: str = "us-east-1"
    part_size: int = 8 * MIB  # multipart part size; also the largest single PUT
    chunk_size: int = 1 * MIB  # download buffer
    # S3_ALLOWED_BUCKETS: the buckets `s3://` params may name (plus `bucket`); None: any
    allowed_buckets: frozenset[str] | None = None


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    orchestrators: tuple[OrchestratorConfig, ...]
    worker_id: str
    mode: Mode = "FAILOVER"
    worker_type: str = "interlock-worker"
    max_concurrent_tasks: int = 10
    heartbeat_interval: float = 5.0
    poll_timeout: float = 30.0
    request_timeout: float = 10.0
    backoff_initial: float = 0.5
    backoff_max: float = 30.0
    result_retry_initial: float = 1.0
    result_retry_max: float = 30.0
    shutdown_timeout: float = 30.0
    result_drain_timeout: float = 10.0
    round_robin_turn: float = 1.0
    payload_dir: Path = field(default_factory=lambda: default_payload_dir())
    s3: S3Config | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> WorkerConfig:
        """The configuration from `environ` (default: os.environ).

        Raises ConfigError listing every problem found."""
        return _Reader(os.environ if environ is None else environ).config()


def default_payload_dir() -> Path:
    return Path(tempfile.gettempdir()).resolve() / "interlock-payloads"


class _Reader:
    """Reads one variable at a time, collecting problems instead of stopping at the first."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self.environ = environ
        self.problems: list[str] = []
        self.individual = self.raw("AVTOMATIKA_WORKER_TOKEN")  # (variable, token)

    def config(self) -> WorkerConfig:
        seconds, whole = convert.seconds, convert.int_between
        config = WorkerConfig(
            orchestrators=self.orchestrators(),
            worker_id=self.value("WORKER_ID", f"worker-{uuid.uuid4().hex[:12]}", convert.worker_id),
            mode=self.value("MULTI_ORCHESTRATOR_MODE", "FAILOVER", convert.mode),
            worker_type=self.value("WORKER_TYPE", "interlock-worker", convert.non_empty),
            max_concurrent_tasks=self.value("MAX_CONCURRENT_TASKS", 10, whole(1, 10_000)),
            heartbeat_interval=self.value("WORKER_HEARTBEAT_INTERVAL", 5.0, seconds(0.05, 600)),
            poll_timeout=self.value("WORKER_POLL_TIMEOUT", 30.0, seconds(0, 300)),
            request_timeout=self.value("WORKER_REQUEST_TIMEOUT", 10.0, seconds(0.1, 600)),
            backoff_initial=self.value("POLL_BACKOFF_INITIAL", 0.5, seconds(0.01, 600)),
            backoff_max=self.value("POLL_BACKOFF_MAX", 30.0, seconds(0.01, 3600)),
            result_retry_initial=self.value("RESULT_RETRY_INITIAL_DELAY", 1.0, seconds(0.01, 600)),
            result_retry_max=self.value("RESULT_RETRY_MAX_DELAY", 30.0, seconds(0.01, 3600)),
            shutdown_timeout=self.value("WORKER_SHUTDOWN_TIMEOUT", 30.0, seconds(0, 86_400)),
            payload_dir=self.value("WORKER_PAYLOAD_DIR", default_payload_dir(), convert.directory),
            s3=self.s3(),
        )
        if self.individual is not None and self.raw("WORKER_ID") is None:
            self.problems.append(
                f"WORKER_ID: required with an individual token ({self.individual[0]}): the "
                "orchestrator checks that token against the worker id it is configured for"
            )
        if self.problems:
            raise ConfigError("\n".join(self.problems))
        return config

    # -- plain variables ---------------------------------------------------------------------

    def raw(self, name: str) -> tuple[str, str] | None:
        """(variable, text) for `name` or its avtomatika alias; None when neither is set."""
        alias = ALIASES.get(name)
        ours = self.environ.get(name, "").strip()
        theirs = self.environ.get(alias, "").strip() if alias else ""
        if ours and theirs and ours != theirs:
            self.problems.append(
                f"{name} and {alias} are both set, to different values; they are two names "
                "for one setting, so set only one"
            )
        if ours:
            return name, ours
        if theirs and alias:
            return alias, theirs
        return None

    def value(self, name: str, default: T, convert: Callable[[str], T]) -> T:
        found = self.raw(name)
        if found is None:
            return default
        where, text = found
        try:
            return convert(text)
        except ValueError as exc:
            self.problems.append(f"{where}: {exc}")
            return default

    # -- orchestrators and tokens ------------------------------------------------------------

    def default_token(self) -> tuple[str, str] | None:
        """(token, variable) for orchestrators without a token of their own."""
        if self.individual is not None:
            return self.individual[1], self.individual[0]
        shared = self.environ.get("WORKER_TOKEN", "").strip()
        return (shared, "WORKER_TOKEN") if shared else None

    def orchestrators(self) -> tuple[OrchestratorConfig, ...]:
        token = self.default_token()
        text = self.environ.get("ORCHESTRATORS_CONFIG", "").strip()
        if not text:
            url = self.value("ORCHESTRATOR_URL", DEFAULT_URL, convert.url)
            if token is None:
                self.problems.append(f"no worker token: {TOKEN_HINT}")
                return ()
            return (OrchestratorConfig(url, token[0], token_source=token[1]),)
        entries = self.entries(text)
        found: list[OrchestratorConfig] = []
        seen: dict[str, int] = {}
        for index, entry in enumerate(entries):
            orchestrator = self.entry(index, entry, token)
            if orchestrator is None:
                continue
            if orchestrator.url in seen:
                self.problems.append(
                    f"ORCHESTRATORS_CONFIG[{index}].url: {orchestrator.url} is already "
                    f"entry [{seen[orchestrator.url]}]; list each orchestrator once"
                )
                continue
            seen[orchestrator.url] = index
            found.append(orchestrator)
        # A stable sort: lower priority numbers first, list order among equals.
        return tuple(sorted(found, key=lambda o: o.priority))

    def entries(self, text: str) -> list[Any]:
        example = '[{"url": "http://orchestrator-1:8080"}, {"url": "http://orchestrator-2:8080"}]'
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            self.problems.append(
                f"ORCHESTRATORS_CONFIG: not valid JSON ({exc.msg} at line {exc.lineno} column "
                f"{exc.colno}); expected a list such as {example}"
            )
            return []
        if not isinstance(data, list):
            self.problems.append(
                f"ORCHESTRATORS_CONFIG: must be a JSON list, not {convert.json_type(data)}; "
                f"for example {example}"
            )
            return []
        if not data:
            self.problems.append(
                f"ORCHESTRATORS_CONFIG: the list is empty; give at least one orchestrator, "
                f"for example {example}"
            )
        return data

    def entry(
        self, index: int, entry: Any, default_token: tuple[str, str] | None
    ) -> OrchestratorConfig | None:
        where = f"ORCHESTRATORS_CONFIG[{index}]"
        if not isinstance(entry, dict):
            self.problems.append(
                f'{where}: must be an object such as {{"url": "http://host:8080"}}, '
                f"not {convert.json_type(entry)}"
            )
            return None
        problems = len(self.problems)
        unknown = sorted(set(entry) - set(ENTRY_KEYS))
        if unknown:
            self.problems.append(
                f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; "
                f"use {', '.join(ENTRY_KEYS)}"
            )
        url = ""
        if "url" not in entry:
            self.problems.append(f'{where}.url: missing; each entry needs "url"')
        elif not isinstance(entry["url"], str):
            self.problems.append(
                f"{where}.url: must be a string, not {convert.json_type(entry['url'])}"
            )
        else:
            try:
                url = convert.url(entry["url"])
            except ValueError as exc:
                self.problems.append(f"{where}.url: {exc}")
        token = entry.get("token")
        source = f"{where}.token"
        if token is not None and (not isinstance(token, str) or not token.strip()):
            self.problems.append(f"{source}: must be a non-empty string")
        elif token is None and default_token is not None:
            token, source = default_token
        elif token is None:
            self.problems.append(f"{where}: no worker token: {TOKEN_HINT}")
        priority = self.number(entry, "priority", where, DEFAULT_PRIORITY, -1_000_000)
        weight = self.number(entry, "weight", where, 1, 1)
        if len(self.problems) > problems:
            return None
        return OrchestratorConfig(url, str(token), priority, weight, source)

    def number(self, entry: dict[str, Any], key: str, where: str, default: int, low: int) -> int:
        value = entry.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= 1_000_000:
            self.problems.append(
                f"{where}.{key}: must be a whole number from {low} to 1000000, not {value!r}"
            )
            return default
        return value

    # -- S3 ----------------------------------------------------------------------------------

    def s3(self) -> S3Config | None:
        endpoint = self.value("S3_ENDPOINT_URL", None, convert.url)
        bucket = self.value("S3_BUCKET", None, convert.bucket)
        access = self.environ.get("S3_ACCESS_KEY", "").strip() or None
        secret = self.environ.get("S3_SECRET_KEY", "").strip() or None
        if self.raw("S3_ENDPOINT_URL") is None and self.raw("S3_BUCKET") is None:
            if access or secret:
                self.problems.append(
                    "S3_ACCESS_KEY/S3_SECRET_KEY are set but S3 offloading is off; set S3_BUCKET "
                    "(and S3_ENDPOINT_URL for a server other than AWS) to turn it on"
                )
            return None
        if bucket is None:
            if self.raw("S3_BUCKET") is None:
                self.problems.append(
                    "S3_BUCKET: required when S3_ENDPOINT_URL is set: the bucket results are "
                    "uploaded to (S3_DEFAULT_BUCKET is accepted too)"
                )
            return None
        if bool(access) != bool(secret):
            missing = "S3_SECRET_KEY" if access else "S3_ACCESS_KEY"
            self.problems.append(
                f"{missing}: missing; set both S3_ACCESS_KEY and S3_SECRET_KEY, or neither "
                "(to use the default AWS credential chain)"
            )
        if importlib.util.find_spec("aioboto3") is None:
            self.problems.append(
                "S3_BUCKET: S3 offloading needs the aioboto3 package; "
                "install it with pip install 'interlock[s3]'"
            )
        region = self.environ.get("S3_REGION", "").strip() or "us-east-1"
        allowed = self.value("S3_ALLOWED_BUCKETS", None, _buckets)
        return S3Config(bucket, endpoint, access, secret, region, allowed_buckets=allowed)


def _buckets(text: str) -> frozenset[str]:
    """A comma-separated list of bucket names (ValueError names the bad one)."""
    return frozenset(convert.bucket(name.strip()) for name in text.split(",") if name.strip())
