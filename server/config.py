"""Server settings from environment variables and `interlock serve` flags (flags win).

Every value is checked before anything starts. All problems found are reported together in
one `ConfigError`, each naming the variable, flag or `file:line` at fault and what would be
right. Tokens are never part of a message or a repr.
"""

from __future__ import annotations

import math
import os
import re
import secrets
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from engine.durations import parse_duration
from engine.runtime.ratelimit import RateLimit, parse_rate_limits
from engine.store.cluster import ClusterUrl
from engine.store.errors import StoreConfigError
from server.errors import ConfigError
from server.webhook_policy import WebhookPolicy

T = TypeVar("T")

#: The flag of `interlock serve` that overrides each variable.
FLAGS = {
    "API_HOST": "--host",
    "API_PORT": "--port",
    "REDIS_URL": "--redis-url",
    "BLUEPRINTS_DIR": "--blueprints",
    "CLIENTS_CONFIG_PATH": "--clients-config",
    "WORKERS_CONFIG_PATH": "--workers-config",
    "SCHEDULES_CONFIG_PATH": "--schedules-config",
}
STORE_SCHEMES = ("memory", "redis", "rediss", "unix", "redis+cluster", "rediss+cluster")
WORKER_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
GLOB_CHARS = frozenset("*?[")
PATTERN_PREFIX = "pattern:"
DEFAULT_CLIENT = "default"


@dataclass(frozen=True, slots=True)
class WorkerTokenRule:
    """One section of workers.toml: a worker id, or an fnmatch pattern for a fleet."""

    selector: str
    token: str = field(repr=False)
    pattern: bool
    origin: str  # "workers.toml:3", for messages
    task_types: tuple[str, ...] | None = None  # the task types it may poll (globs); None: any


@dataclass(frozen=True, slots=True)
class Settings:
    redis_url: str = "memory://"
    redis_partitions: int | None = None  # None: what the store holds (or 8, 64 on a cluster)
    redis_wait_replicas: int = 0  # WAIT for this many replicas after each commit and lease
    redis_wait_timeout_ms: int = 1000
    blueprints_dir: Path = Path("blueprints")
    host: str = "127.0.0.1"
    port: int = 8080
    client_tokens: tuple[tuple[str, str], ...] = field(default=(), repr=False)  # (name, token)
    worker_token: str | None = field(default=None, repr=False)
    worker_rules: tuple[WorkerTokenRule, ...] = ()
    max_body_bytes: int = 1 << 20
    header_timeout_s: float = 10.0  # each request's headers (from connect, or their first byte)
    body_timeout_s: float = 30.0  # a request body, from the handler's first read
    check_off_loop_bytes: int = 64 << 10  # larger bodies are parsed and checked on threads
    max_connections: int = 0  # open at once; 0: the descriptor limit less a reserve
    worker_poll_max_s: float = 60.0
    default_run_timeout_ms: int = 3_600_000
    heartbeat_timeout_ms: int = 60_000
    max_transitions: int = 1000
    job_retention_ms: int = 7 * 86_400_000
    worker_ttl_ms: int = 86_400_000
    webhook_secret: str = field(default="", repr=False)
    webhook_policy: WebhookPolicy = field(default_factory=WebhookPolicy)  # WEBHOOK_ALLOW
    public_url: str = ""  # the base of approval links; empty: the origin of each request
    schedules_path: Path | None = None
    metrics: bool = True  # METRICS=off: no /metrics and no counting (server/metrics.py)
    log_format: str = "text"  # LOG_FORMAT: text (for people) or json (one object a line)
    # TASK_RATE_LIMITS: leases per second per task type (engine/runtime/ratelimit.py)
    task_rate_limits: tuple[RateLimit, ...] = ()
    client_token_generated: bool = False
    worker_token_generated: bool = False
    webhook_secret_generated: bool = False

    @classmethod
    def from_sources(
        cls, environ: Mapping[str, str] | None = None, flags: Mapping[str, Any] | None = None
    ) -> Settings:
        """Settings from `environ` (default: os.environ) and flags keyed by variable name.

        Raises ConfigError listing every problem found."""
        reader = _Reader(os.environ if environ is None else environ, flags or {})
        return reader.settings()

    @property
    def store_label(self) -> str:
        """The store as the listening line shows it (passwords redacted)."""
        if self.redis_url.startswith("memory://"):
            return "memory:// embedded"
        return redact_url(self.redis_url)


def redact_url(url: str) -> str:
    """`url` with any password replaced by `***`."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return "<unparseable URL>"
    if not password:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


class _Reader:
    """Reads one setting at a time, collecting problems instead of stopping at the first."""

    def __init__(self, environ: Mapping[str, str], flags: Mapping[str, Any]) -> None:
        self.environ = environ
        self.flags = flags
        self.problems: list[str] = []

    def settings(self) -> Settings:
        d = Settings()
        redis_url = self.value("REDIS_URL", d.redis_url, _store_url)
        client_tokens, client_generated = self.client_tokens()
        worker_token, worker_rules, worker_generated = self.worker_tokens()
        given_secret = self.raw("WEBHOOK_SECRET")
        webhook_generated = given_secret is None
        webhook_secret = secrets.token_urlsafe(24) if given_secret is None else given_secret[1]
        settings = Settings(
            redis_url=redis_url,
            redis_partitions=self.value("REDIS_PARTITIONS", None, _int_between(1, 1024)),
            redis_wait_replicas=self.value("REDIS_WAIT_REPLICAS", 0, _int_between(0, 16)),
            redis_wait_timeout_ms=self.value("REDIS_WAIT_TIMEOUT", 1000, _ms),
            blueprints_dir=Path(self.value("BLUEPRINTS_DIR", "blueprints/", _non_empty)),
            host=self.value("API_HOST", d.host, _host),
            port=self.value("API_PORT", d.port, _int_between(0, 65535)),
            client_tokens=client_tokens,
            worker_token=worker_token,
            worker_rules=worker_rules,
            max_body_bytes=self.value("MAX_BODY_BYTES", d.max_body_bytes, _int_between(1, 1 << 40)),
            worker_poll_max_s=self.value("WORKER_POLL_MAX_SECONDS", 60.0, _seconds),
            header_timeout_s=self.value("HEADER_TIMEOUT", d.header_timeout_s, _seconds),
            body_timeout_s=self.value("BODY_TIMEOUT", d.body_timeout_s, _seconds),
            check_off_loop_bytes=self.value(
                "CHECK_OFF_LOOP_BYTES", d.check_off_loop_bytes, _int_between(0, 1 << 40)
            ),
            max_connections=self.value("MAX_CONNECTIONS", 0, _int_between(0, 10_000_000)),
            default_run_timeout_ms=self.value("DEFAULT_RUN_TIMEOUT", d.default_run_timeout_ms, _ms),
            heartbeat_timeout_ms=self.value("HEARTBEAT_TIMEOUT", d.heartbeat_timeout_ms, _ms),
            max_transitions=self.value("MAX_TRANSITIONS", 1000, _int_between(1, 1_000_000)),
            job_retention_ms=self.value("JOB_RETENTION", d.job_retention_ms, _ms),
            worker_ttl_ms=self.value("WORKER_TTL", d.worker_ttl_ms, _ms),
            webhook_secret=webhook_secret,
            webhook_policy=self.value("WEBHOOK_ALLOW", d.webhook_policy, WebhookPolicy.from_text),
            public_url=self.value("PUBLIC_URL", d.public_url, _public_url),
            schedules_path=self.value("SCHEDULES_CONFIG_PATH", None, _path),
            metrics=self.value("METRICS", d.metrics, _on_off),
            log_format=self.value("LOG_FORMAT", d.log_format, _one_of("text", "json")),
            task_rate_limits=self.value("TASK_RATE_LIMITS", (), parse_rate_limits),
            client_token_generated=client_generated,
            worker_token_generated=worker_generated,
            webhook_secret_generated=webhook_generated,
        )
        if self.problems:
            raise ConfigError("\n".join(self.problems))
        return settings

    def raw(self, name: str) -> tuple[str, str] | None:
        """(where it came from, text) for a variable, the flag winning; None when unset."""
        flag = self.flags.get(name)
        if flag is not None:
            return FLAGS.get(name, name), str(flag)
        value = self.environ.get(name, "")
        return (name, value) if value != "" else None

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

    def client_tokens(self) -> tuple[tuple[tuple[str, str], ...], bool]:
        tokens: list[tuple[str, str]] = []
        owners: dict[str, str] = {}
        single = self.raw("CLIENT_TOKEN")
        if single is not None:
            tokens.append((DEFAULT_CLIENT, single[1]))
            owners[single[1]] = "CLIENT_TOKEN"
        path = self.raw("CLIENTS_CONFIG_PATH")
        if path is not None:
            config = self.toml(path, "client")
            for name, token, origin, _ in config:
                if token in owners:
                    self.problems.append(
                        f"{origin}: [{name}] has the same token as {owners[token]}; "
                        "every client needs a token of its own"
                    )
                    continue
                owners[token] = f"[{name}]"
                tokens.append((name, token))
        if tokens:
            return tuple(tokens), False
        return ((DEFAULT_CLIENT, secrets.token_urlsafe(24)),), True

    def worker_tokens(self) -> tuple[str | None, tuple[WorkerTokenRule, ...], bool]:
        single = self.raw("WORKER_TOKEN")
        rules: list[WorkerTokenRule] = []
        path = self.raw("WORKERS_CONFIG_PATH")
        if path is not None:
            for name, token, origin, section in self.toml(path, "worker"):
                rule = self.worker_rule(name, token, origin, section.get("task_types"))
                if rule is not None:
                    rules.append(rule)
        if single is not None:
            return single[1], tuple(rules), False
        if rules or path is not None:
            return None, tuple(rules), False
        return secrets.token_urlsafe(24), (), True

    def worker_rule(
        self, name: str, token: str, origin: str, task_types: Any = None
    ) -> WorkerTokenRule | None:
        selector = name.removeprefix(PATTERN_PREFIX)
        pattern = name.startswith(PATTERN_PREFIX) or bool(GLOB_CHARS & set(selector))
        if not selector or (not pattern and not WORKER_ID.match(selector)):
            self.problems.append(
                f"{origin}: [{name}] is neither a worker id (letters, digits, _ and -, up to "
                '128) nor a glob pattern such as ["gpu-*"]'
            )
            return None
        if task_types is not None and (
            not isinstance(task_types, list)
            or not all(isinstance(t, str) and t.strip() for t in task_types)
        ):
            self.problems.append(
                f"{origin}: [{name}] task_types must be a list of task type names (globs "
                'allowed), e.g. task_types = ["resize_image", "ocr_*"]'
            )
            return None
        types = tuple(task_types) if task_types is not None else None
        return WorkerTokenRule(selector, token, pattern, origin, types)

    def toml(
        self, where_path: tuple[str, str], kind: str
    ) -> list[tuple[str, str, str, dict[str, Any]]]:
        """(section name, token, "file:line", section) for each section of a tokens file."""
        where, path = where_path
        example = f'[{kind}-name]\\ntoken = "..."'
        try:
            text = Path(path).read_text(encoding="utf-8")
        except FileNotFoundError:
            self.problems.append(f"{where}: {path}: no such file")
            return []
        except (OSError, UnicodeDecodeError) as exc:
            self.problems.append(f"{where}: {path}: cannot read the file: {exc}")
            return []
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            line, column, message = _toml_position(str(exc))
            self.problems.append(f"{path}:{line}:{column}: {message} (TOML syntax; {where})")
            return []
        found: list[tuple[str, str, str, dict[str, Any]]] = []
        for name, section in data.items():
            origin = f"{path}:{_section_line(text, name)}"
            if not isinstance(section, dict):
                self.problems.append(
                    f"{origin}: {name!r} is a plain key, not a section; write one section "
                    f"per {kind}: {example}"
                )
                continue
            token = section.get("token")
            if token is None:
                self.problems.append(f'{origin}: [{name}] has no token; add token = "..."')
                continue
            origin = f"{path}:{_key_line(text, name, 'token')}"
            if not isinstance(token, str):
                self.problems.append(
                    f"{origin}: [{name}] token must be a string in quotes, not {_toml_type(token)}"
                )
                continue
            if not token.strip():
                self.problems.append(f"{origin}: [{name}] token is empty")
                continue
            found.append((name, token, origin, section))
        return found


# -- converters: each raises ValueError with what would be right ---------------------------


def _non_empty(text: str) -> str:
    if not text.strip():
        raise ValueError("must not be empty")
    return text


def _on_off(text: str) -> bool:
    value = text.strip().lower()
    if value in ("on", "true", "1", "yes"):
        return True
    if value in ("off", "false", "0", "no"):
        return False
    raise ValueError(f"{text!r} is not on or off; use on or off")


def _one_of(*choices: str) -> Callable[[str], str]:
    def convert(text: str) -> str:
        value = text.strip().lower()
        if value not in choices:
            raise ValueError(f"{text!r} is not allowed; use {' or '.join(choices)}")
        return value

    return convert


def _host(text: str) -> str:
    if not text.strip() or any(c.isspace() for c in text):
        raise ValueError(f"{text!r} is not a host name or address; use e.g. 127.0.0.1 or 0.0.0.0")
    return text


def _int_between(low: int, high: int) -> Callable[[str], int]:
    def convert(text: str) -> int:
        try:
            number = int(text.strip())
        except ValueError:
            raise ValueError(f"{text!r} is not a whole number; use {low} to {high}") from None
        if not low <= number <= high:
            raise ValueError(f"{number} is out of range; use {low} to {high}")
        return number

    return convert


def _seconds(text: str) -> float:
    """A positive duration: a number of seconds or `500ms`, `30s`, `5m`, `2h`, `1d`."""
    try:
        seconds = float(text)
    except ValueError:
        seconds = parse_duration(text.strip())  # its ValueError says what is accepted
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"{text!r} is not a positive duration; use e.g. 30s, 5m or 60")
    return seconds


def _ms(text: str) -> int:
    return max(1, round(_seconds(text) * 1000))


def _path(text: str) -> Path | None:
    return Path(_non_empty(text))


def _public_url(text: str) -> str:
    """The URL people reach this server at: http(s), a host, perhaps a path; no query."""
    url = text.strip().rstrip("/")
    try:
        parts = urlsplit(url)
        valid = parts.scheme in ("http", "https") and bool(parts.hostname)
        _ = parts.port  # raises ValueError for a port that is not a number in range
    except ValueError:
        valid = False
    if not valid:
        raise ValueError(
            f"{text!r} is not an http:// or https:// URL; use e.g. https://interlock.example.com"
        )
    if parts.query or parts.fragment or "?" in url or "#" in url:
        raise ValueError(f"{text!r} must not have a ?query or #fragment")
    return url


def _store_url(text: str) -> str:
    scheme = text.partition("://")[0].lower() if "://" in text else ""
    if scheme not in STORE_SCHEMES:
        raise ValueError(
            f"{redact_url(text)!r} is not a store URL; use memory:// (embedded), "
            "redis://[:password@]host:6379/0, rediss://... (TLS), unix:///path/redis.sock "
            "or redis+cluster://host:port[,host:port...] (Redis Cluster)"
        )
    if scheme in ("redis+cluster", "rediss+cluster"):
        try:
            ClusterUrl.parse(text)
        except StoreConfigError as exc:
            raise ValueError(str(exc)) from exc
    if scheme in ("redis", "rediss") and not urlsplit(text).hostname:
        raise ValueError(f"{redact_url(text)!r} names no host; use e.g. redis://localhost:6379/0")
    return text


# -- TOML positions: tomllib knows none beyond syntax errors, so find them in the text -------

_TOML_POSITION = re.compile(r"^(.*) \(at line (\d+), column (\d+)\)$", re.DOTALL)
_TOML_EOF = re.compile(r"^(.*) \(at end of document\)$", re.DOTALL)


def _toml_position(message: str) -> tuple[int, int, str]:
    match = _TOML_POSITION.match(message)
    if match:
        return int(match.group(2)), int(match.group(3)), match.group(1)
    match = _TOML_EOF.match(message)
    if match:
        return 0, 0, f"{match.group(1)} at the end of the file"
    return 1, 1, message


def _names(name: str) -> str:
    """A regex matching a TOML key as written: bare, "quoted" or 'literal'."""
    quoted = re.escape(name)
    return rf"""(?:{quoted}|"{quoted}"|'{quoted}')"""


def _section_line(text: str, name: str) -> int:
    header = re.compile(rf"^\s*\[\s*{_names(name)}\s*[\].]")
    key = re.compile(rf"^\s*{_names(name)}\s*[=.]")
    lines = text.splitlines()
    for pattern in (header, key):
        for number, line in enumerate(lines, 1):
            if pattern.match(line):
                return number
    return 1


def _key_line(text: str, section: str, key: str) -> int:
    start = _section_line(text, section)
    wanted = re.compile(rf"^\s*{_names(key)}\s*=")
    lines = text.splitlines()
    for number in range(start, len(lines) + 1):
        if wanted.match(lines[number - 1]):
            return number
        if number > start and lines[number - 1].lstrip().startswith("["):
            break
    return start


def _toml_type(value: object) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a number", list: "an array"}
    for kind, label in names.items():
        if isinstance(value, kind):
            return label
    return "a table" if isinstance(value, dict) else f"a {type(value).__name__}"
