"""Settings: environment, flags, token files, and a precise message for every mistake."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.config import Settings, redact_url
from server.errors import ConfigError


def config_error(env: dict[str, str], flags: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as caught:
        Settings.from_sources(env, flags or {})
    return str(caught.value)


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_defaults_and_generated_tokens() -> None:
    settings = Settings.from_sources({}, {})
    assert settings.redis_url == "memory://"
    assert settings.redis_partitions is None  # the store's own count (8, 64 on a cluster, when new)
    assert settings.blueprints_dir == Path("blueprints")
    assert (settings.host, settings.port) == ("127.0.0.1", 8080)
    assert settings.max_body_bytes == 1 << 20
    assert settings.worker_poll_max_s == 60
    assert settings.default_run_timeout_ms == 3_600_000
    assert settings.heartbeat_timeout_ms == 60_000
    assert settings.max_transitions == 1000
    assert settings.job_retention_ms == 7 * 86_400_000
    assert settings.worker_ttl_ms == 86_400_000
    assert settings.client_token_generated
    assert settings.worker_token_generated
    [(name, token)] = settings.client_tokens
    assert name == "default"
    assert len(token) >= 24
    assert settings.worker_token
    assert settings.worker_token != token
    assert Settings.from_sources({}, {}).client_tokens != settings.client_tokens
    assert settings.webhook_secret_generated
    assert len(settings.webhook_secret) >= 24


def test_environment_values_and_durations() -> None:
    settings = Settings.from_sources(
        {
            "REDIS_URL": "redis://:pw@redis.internal:6380/2",
            "REDIS_PARTITIONS": "16",
            "API_HOST": "0.0.0.0",
            "API_PORT": "9000",
            "CLIENT_TOKEN": "c-token",
            "WORKER_TOKEN": "w-token",
            "MAX_BODY_BYTES": "4096",
            "WORKER_POLL_MAX_SECONDS": "45",
            "DEFAULT_RUN_TIMEOUT": "2h",
            "HEARTBEAT_TIMEOUT": "500ms",
            "MAX_TRANSITIONS": "50",
            "JOB_RETENTION": "1d",
            "WORKER_TTL": "90",
            "WEBHOOK_SECRET": "hook",
        },
        {},
    )
    assert settings.redis_partitions == 16
    assert (settings.host, settings.port) == ("0.0.0.0", 9000)
    assert settings.client_tokens == (("default", "c-token"),)
    assert settings.worker_token == "w-token"
    assert not settings.client_token_generated
    assert not settings.worker_token_generated
    assert settings.max_body_bytes == 4096
    assert settings.worker_poll_max_s == 45
    assert settings.default_run_timeout_ms == 7_200_000
    assert settings.heartbeat_timeout_ms == 500
    assert settings.max_transitions == 50
    assert settings.job_retention_ms == 86_400_000
    assert settings.worker_ttl_ms == 90_000
    assert settings.webhook_secret == "hook"
    assert not settings.webhook_secret_generated
    assert settings.store_label == "redis://:***@redis.internal:6380/2"


def test_flags_win_over_the_environment(tmp_path: Path) -> None:
    settings = Settings.from_sources(
        {"API_HOST": "10.0.0.1", "API_PORT": "9000", "REDIS_URL": "redis://a:6379/0"},
        {"API_HOST": "127.0.0.2", "API_PORT": "9100", "REDIS_URL": "memory://", "API_X": None},
    )
    assert (settings.host, settings.port, settings.redis_url) == ("127.0.0.2", 9100, "memory://")
    assert settings.store_label == "memory:// embedded"


def test_a_flag_mistake_names_the_flag() -> None:
    message = config_error({"API_PORT": "9000"}, {"API_PORT": "http"})
    assert message == "--port: 'http' is not a whole number; use 0 to 65535"


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("API_PORT", "70000", "API_PORT: 70000 is out of range; use 0 to 65535"),
        ("REDIS_PARTITIONS", "0", "REDIS_PARTITIONS: 0 is out of range; use 1 to 1024"),
        ("MAX_TRANSITIONS", "many", "MAX_TRANSITIONS: 'many' is not a whole number"),
        ("HEARTBEAT_TIMEOUT", "5 minutes", "HEARTBEAT_TIMEOUT: '5 minutes' is not a duration"),
        ("JOB_RETENTION", "0", "JOB_RETENTION: '0' is not a positive duration"),
        ("WORKER_POLL_MAX_SECONDS", "nan", "WORKER_POLL_MAX_SECONDS: 'nan' is not a positive"),
        ("REDIS_URL", "http://redis:6379", "REDIS_URL: 'http://redis:6379' is not a store URL"),
        ("REDIS_URL", "redis://", "REDIS_URL: 'redis://' names no host"),
        ("API_HOST", "local host", "API_HOST: 'local host' is not a host name or address"),
        ("MAX_BODY_BYTES", "-1", "MAX_BODY_BYTES: -1 is out of range"),
    ],
)
def test_each_bad_value_is_named(name: str, value: str, expected: str) -> None:
    assert config_error({name: value}).startswith(expected)


def test_every_problem_is_reported_at_once() -> None:
    message = config_error({"API_PORT": "x", "REDIS_PARTITIONS": "y", "WORKER_TTL": "1 day"})
    lines = message.splitlines()
    assert [line.split(":")[0] for line in lines] == ["REDIS_PARTITIONS", "API_PORT", "WORKER_TTL"]


def test_a_password_in_a_bad_url_is_not_shown() -> None:
    message = config_error({"REDIS_URL": "http://user:hunter2@host/0"})
    assert "hunter2" not in message
    assert "***" in message


def test_clients_file_maps_tokens_to_names(tmp_path: Path) -> None:
    path = write(
        tmp_path, "clients.toml", '[acme]\ntoken = "a1"\nplan = "gold"\n\n[b]\ntoken="b1"\n'
    )
    settings = Settings.from_sources({"CLIENTS_CONFIG_PATH": path, "CLIENT_TOKEN": "d1"}, {})
    assert settings.client_tokens == (("default", "d1"), ("acme", "a1"), ("b", "b1"))
    assert not settings.client_token_generated


def test_missing_clients_file(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.toml")
    assert config_error({"CLIENTS_CONFIG_PATH": missing}) == (
        f"CLIENTS_CONFIG_PATH: {missing}: no such file"
    )
    assert config_error({}, {"CLIENTS_CONFIG_PATH": missing}).startswith("--clients-config: ")


def test_malformed_toml_names_file_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, "clients.toml", '[acme]\ntoken = "a1"\n\n[b]\ntoken = b1\n')
    assert config_error({"CLIENTS_CONFIG_PATH": path}) == (
        f"{path}:5:9: Invalid value (TOML syntax; CLIENTS_CONFIG_PATH)"
    )


@pytest.mark.parametrize(
    ("text", "line", "expected"),
    [
        ('[acme]\nplan = "gold"\n', 1, '[acme] has no token; add token = "..."'),
        (
            '[acme]\nplan = "x"\ntoken = 42\n',
            3,
            "[acme] token must be a string in quotes, not an integer",
        ),
        ('[acme]\ntoken = "  "\n', 2, "[acme] token is empty"),
        ('token = "abc"\n', 1, "'token' is a plain key, not a section"),
        (
            '[a]\ntoken = "same"\n\n["b c"]\ntoken = "same"\n',
            5,
            "[b c] has the same token as [a]; every client needs a token of its own",
        ),
    ],
)
def test_wrong_shapes_name_file_and_line(
    tmp_path: Path, text: str, line: int, expected: str
) -> None:
    path = write(tmp_path, "clients.toml", text)
    message = config_error({"CLIENTS_CONFIG_PATH": path})
    assert message.startswith(f"{path}:{line}: {expected}")


def test_a_file_token_equal_to_client_token_is_a_duplicate(tmp_path: Path) -> None:
    path = write(tmp_path, "clients.toml", '[acme]\ntoken = "shared-secret"\n')
    message = config_error({"CLIENTS_CONFIG_PATH": path, "CLIENT_TOKEN": "shared-secret"})
    assert message == (
        f"{path}:2: [acme] has the same token as CLIENT_TOKEN; every client needs a token of "
        "its own"
    )
    assert "shared-secret" not in message


def test_workers_file_exact_ids_and_patterns(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "workers.toml",
        '[w1]\ntoken = "t1"\n["gpu-*"]\ntoken = "t2"\n["pattern:cpu-worker-*"]\ntoken = "t3"\n',
    )
    settings = Settings.from_sources({"WORKERS_CONFIG_PATH": path}, {})
    rules = [(r.selector, r.pattern, r.token) for r in settings.worker_rules]
    assert rules == [("w1", False, "t1"), ("gpu-*", True, "t2"), ("cpu-worker-*", True, "t3")]
    assert settings.worker_token is None  # a workers file and no WORKER_TOKEN: no global token
    assert not settings.worker_token_generated


def test_a_worker_section_that_is_neither_id_nor_pattern(tmp_path: Path) -> None:
    path = write(tmp_path, "workers.toml", '["my worker"]\ntoken = "t"\n')
    assert config_error({"WORKERS_CONFIG_PATH": path}).startswith(
        f"{path}:2: [my worker] is neither a worker id"
    )


def test_tokens_never_appear_in_repr(tmp_path: Path) -> None:
    path = write(tmp_path, "workers.toml", '[w1]\ntoken = "worker-secret"\n')
    settings = Settings.from_sources(
        {
            "CLIENT_TOKEN": "client-secret",
            "WORKER_TOKEN": "global-secret",
            "WEBHOOK_SECRET": "hook-secret",
            "WORKERS_CONFIG_PATH": path,
        },
        {},
    )
    text = repr(settings)
    assert "w1" in text
    for secret in ("client-secret", "global-secret", "worker-secret", "hook-secret"):
        assert secret not in text


def test_redact_url() -> None:
    assert redact_url("redis://:pw@h:1/0") == "redis://:***@h:1/0"
    assert redact_url("rediss://user:pw@h/0") == "rediss://user:***@h/0"
    assert redact_url("redis://h:1/0") == "redis://h:1/0"
    assert redact_url("memory://") == "memory://"
