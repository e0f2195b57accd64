"""WorkerConfig.from_env: every setting, both names, and a message naming the variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from worker_sdk import ConfigError, WorkerConfig
from worker_sdk.config import default_payload_dir

BASE = {"WORKER_TOKEN": "shared"}


def load(**env: str) -> WorkerConfig:
    return WorkerConfig.from_env({**BASE, **env})


def problems(env: dict[str, str]) -> str:
    with pytest.raises(ConfigError) as caught:
        WorkerConfig.from_env(env)
    return str(caught.value)


def test_defaults() -> None:
    config = load()
    assert [o.url for o in config.orchestrators] == ["http://localhost:8080"]
    assert config.orchestrators[0].token == "shared"
    assert config.orchestrators[0].token_source == "WORKER_TOKEN"
    assert config.mode == "FAILOVER"
    assert config.max_concurrent_tasks == 10
    assert config.worker_id.startswith("worker-")
    assert config.payload_dir == default_payload_dir()
    assert config.s3 is None


def test_a_single_orchestrator_url() -> None:
    config = load(ORCHESTRATOR_URL="http://orch:9000/", WORKER_ID="w-1")
    assert [o.url for o in config.orchestrators] == ["http://orch:9000"]
    assert config.worker_id == "w-1"


def test_orchestrators_config_replaces_the_url_and_is_sorted_by_priority() -> None:
    config = load(
        ORCHESTRATOR_URL="http://ignored:1",
        ORCHESTRATORS_CONFIG='[{"url": "http://b:1", "priority": 20, "weight": 3},'
        ' {"url": "ws://a:1", "token": "own"}, {"url": "http://c:1", "priority": 20}]',
        MULTI_ORCHESTRATOR_MODE="round_robin",
    )
    assert [(o.url, o.priority, o.weight) for o in config.orchestrators] == [
        ("http://a:1", 10, 1),
        ("http://b:1", 20, 3),
        ("http://c:1", 20, 1),
    ]
    assert [o.token for o in config.orchestrators] == ["own", "shared", "shared"]
    assert config.orchestrators[0].token_source == "ORCHESTRATORS_CONFIG[1].token"
    assert config.mode == "ROUND_ROBIN"


def test_tokens_individual_beats_shared_and_entry_beats_both() -> None:
    config = load(AVTOMATIKA_WORKER_TOKEN="mine", WORKER_ID="gpu-1")
    assert config.orchestrators[0].token == "mine"
    assert config.orchestrators[0].token_source == "AVTOMATIKA_WORKER_TOKEN"
    config = WorkerConfig.from_env({"WORKER_INDIVIDUAL_TOKEN": "theirs", "WORKER_ID": "gpu-2"})
    assert config.orchestrators[0].token == "theirs"
    assert config.orchestrators[0].token_source == "WORKER_INDIVIDUAL_TOKEN"
    config = WorkerConfig.from_env(
        {"ORCHESTRATORS_CONFIG": '[{"url": "http://a:1", "token": "t"}]'}
    )
    assert config.orchestrators[0].token == "t"


def test_tokens_never_appear_in_repr() -> None:
    config = load(
        AVTOMATIKA_WORKER_TOKEN="s3cr3t-token",
        WORKER_ID="w-1",
        S3_BUCKET="bucket",
        S3_ACCESS_KEY="ak",
        S3_SECRET_KEY="very-secret",
    )
    assert "s3cr3t-token" not in repr(config)
    assert "very-secret" not in repr(config)


def test_avtomatika_names_are_accepted() -> None:
    config = load(
        MULTI_ORCHESTRATOR_MODE="WATERFALL",
        HEARTBEAT_INTERVAL="2.5",
        TASK_POLL_TIMEOUT="7",
        TASK_FILES_DIR="/tmp/worker-files",
        S3_DEFAULT_BUCKET="payloads",
        S3_ENDPOINT_URL="http://minio:9000",
        S3_ACCESS_KEY="a",
        S3_SECRET_KEY="b",
        S3_REGION="eu-west-1",
    )
    assert config.mode == "WATERFALL"
    assert config.heartbeat_interval == 2.5
    assert config.poll_timeout == 7
    assert config.payload_dir == Path("/tmp/worker-files").resolve()
    assert config.s3 is not None
    assert (config.s3.bucket, config.s3.endpoint_url, config.s3.region) == (
        "payloads",
        "http://minio:9000",
        "eu-west-1",
    )


def test_our_names_for_the_same_settings() -> None:
    config = load(
        WORKER_HEARTBEAT_INTERVAL="1",
        WORKER_POLL_TIMEOUT="3",
        WORKER_PAYLOAD_DIR="/tmp/p",
        S3_BUCKET="b-1",
        MAX_CONCURRENT_TASKS="3",
        WORKER_SHUTDOWN_TIMEOUT="4",
    )
    assert (config.heartbeat_interval, config.poll_timeout) == (1, 3)
    assert config.max_concurrent_tasks == 3
    assert config.shutdown_timeout == 4
    assert config.s3 is not None
    assert config.s3.endpoint_url is None


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"ORCHESTRATORS_CONFIG": "[{'url': 'http://a'}]"}, "ORCHESTRATORS_CONFIG: not valid JSON"),
        (
            {"ORCHESTRATORS_CONFIG": '{"url": "http://a"}'},
            "ORCHESTRATORS_CONFIG: must be a JSON list",
        ),
        ({"ORCHESTRATORS_CONFIG": "[]"}, "ORCHESTRATORS_CONFIG: the list is empty"),
        ({"ORCHESTRATORS_CONFIG": '["http://a"]'}, "ORCHESTRATORS_CONFIG[0]: must be an object"),
        ({"ORCHESTRATORS_CONFIG": '[{"token": "t"}]'}, "ORCHESTRATORS_CONFIG[0].url: missing"),
        (
            {"ORCHESTRATORS_CONFIG": '[{"url": "ftp://a"}]'},
            "ORCHESTRATORS_CONFIG[0].url: 'ftp://a'",
        ),
        ({"ORCHESTRATORS_CONFIG": '[{"url": "http://a", "tokn": "t"}]'}, "unknown key(s) 'tokn'"),
        ({"ORCHESTRATORS_CONFIG": '[{"url": "http://a", "weight": 0}]'}, "[0].weight: must be"),
        ({"ORCHESTRATORS_CONFIG": '[{"url": "http://a", "priority": "1"}]'}, "[0].priority: must"),
        (
            {"ORCHESTRATORS_CONFIG": '[{"url": "http://a", "token": ""}]'},
            "[0].token: must be a non",
        ),
        (
            {"ORCHESTRATORS_CONFIG": '[{"url": "http://a"}, {"url": "http://a/"}]'},
            "[1].url: http://a is",
        ),
        (
            {"ORCHESTRATOR_URL": "localhost:8080"},
            "ORCHESTRATOR_URL: 'localhost:8080' is not an http(s)",
        ),
        ({"ORCHESTRATOR_URL": "http://a:port"}, "ORCHESTRATOR_URL: 'http://a:port' is not a URL"),
        ({"MULTI_ORCHESTRATOR_MODE": "RANDOM"}, "MULTI_ORCHESTRATOR_MODE: 'RANDOM' is not a mode"),
        ({"WORKER_ID": "w 1"}, "WORKER_ID: 'w 1' is not a worker id"),
        ({"AVTOMATIKA_WORKER_TOKEN": "t"}, "WORKER_ID: required with an individual token"),
        (
            {"WORKER_INDIVIDUAL_TOKEN": "t", "AVTOMATIKA_WORKER_TOKEN": "u", "WORKER_ID": "w"},
            "AVTOMATIKA_WORKER_TOKEN and WORKER_INDIVIDUAL_TOKEN are both set",
        ),
        ({"MAX_CONCURRENT_TASKS": "0"}, "MAX_CONCURRENT_TASKS: 0 is out of range"),
        ({"MAX_CONCURRENT_TASKS": "lots"}, "MAX_CONCURRENT_TASKS: 'lots' is not a whole number"),
        ({"HEARTBEAT_INTERVAL": "soon"}, "HEARTBEAT_INTERVAL: 'soon' is not a number of seconds"),
        ({"WORKER_POLL_TIMEOUT": "-1"}, "WORKER_POLL_TIMEOUT: -1 is out of range"),
        (
            {"WORKER_PAYLOAD_DIR": "relative/dir"},
            "WORKER_PAYLOAD_DIR: 'relative/dir' is not an absolute",
        ),
        (
            {"TASK_FILES_DIR": "/etc/hostname"},
            "TASK_FILES_DIR: /etc/hostname exists and is not a dir",
        ),
        (
            {"HEARTBEAT_INTERVAL": "1", "WORKER_HEARTBEAT_INTERVAL": "2"},
            "WORKER_HEARTBEAT_INTERVAL and HEARTBEAT_INTERVAL are both set",
        ),
        (
            {"S3_ENDPOINT_URL": "http://minio:9000"},
            "S3_BUCKET: required when S3_ENDPOINT_URL is set",
        ),
        ({"S3_BUCKET": "Not_A_Bucket"}, "S3_BUCKET: 'Not_A_Bucket' is not a bucket name"),
        ({"S3_BUCKET": "b-1", "S3_ACCESS_KEY": "a"}, "S3_SECRET_KEY: missing"),
        ({"S3_ACCESS_KEY": "a", "S3_SECRET_KEY": "b"}, "S3 offloading is off; set S3_BUCKET"),
        ({"S3_BUCKET": "b-1", "S3_ENDPOINT_URL": "minio:9000"}, "S3_ENDPOINT_URL: 'minio:9000'"),
    ],
)
def test_each_mistake_names_its_variable(env: dict[str, str], expected: str) -> None:
    assert expected in problems({**BASE, **env})


def test_no_token_at_all_says_which_variables_to_set() -> None:
    message = problems({"ORCHESTRATOR_URL": "http://a:1"})
    assert "no worker token" in message
    assert "AVTOMATIKA_WORKER_TOKEN" in message
    assert "WORKER_TOKEN" in message
    message = problems({"ORCHESTRATORS_CONFIG": '[{"url": "http://a:1"}]'})
    assert "ORCHESTRATORS_CONFIG[0]: no worker token" in message


def test_every_problem_is_reported_at_once() -> None:
    message = problems(
        {
            **BASE,
            "MULTI_ORCHESTRATOR_MODE": "X",
            "MAX_CONCURRENT_TASKS": "-2",
            "ORCHESTRATORS_CONFIG": "[]",
        }
    )
    assert len(message.splitlines()) == 3


def test_s3_without_aioboto3_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "aioboto3" else real(name, *a)
    )
    assert "pip install 'interlock[s3]'" in problems({**BASE, "S3_BUCKET": "b-1"})
