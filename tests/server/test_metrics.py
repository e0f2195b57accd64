"""`GET /metrics`: per-process series counted from real requests and job changes, and the
deployment-wide gauges read from the store at scrape time."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from engine.runtime.orchestrator import Orchestrator
from server.app import build_app_around
from server.config import Settings
from server.metrics import LabelCap, Metrics, deployment_families, task_types
from tests.server.conftest import make_settings, serve
from tests.server.helpers import ACME, Client, job, ok_json, poll, register, result, submit

IMAGE = {"url": "https://example.com/cat.png"}
STEPS = {
    "fetch_image": {"path": "/tmp/cat.png"},
    "resize_image": {"path": "/tmp/small.png"},
    "publish_image": {"url": "https://cdn/x.png"},
}


async def scrape(api: Client) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape, by (name, sorted labels)."""
    response = await api.get("/metrics")
    text = await response.text()
    assert response.status == 200, text
    assert response.headers["Content-Type"].startswith("text/plain; version=")
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str):
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_a_finished_job_shows_in_the_process_counters(api: Client) -> None:
    # Given a worker and a job of the three-step pipeline
    skills = list(STEPS)
    await register(api, skills)
    job_id = await submit(api, "jobs/image_pipeline", IMAGE)

    # When the worker runs every task to success
    for _ in skills:
        task = await poll(api, skills)
        body = {"job_id": job_id, "task_id": task["task_id"], "data": STEPS[task["type"]]}
        assert await result(api, body) == {"status": "accepted"}
    assert (await job(api, job_id))["status"] == "finished"
    await api.get(f"/api/v1/jobs/{job_id}", headers=ACME)
    await api.get("/no/such/path")

    # Then the scrape counts it by blueprint, state, task type and route template
    s = await scrape(api)
    assert value(s, "interlock_jobs_created_total", blueprint="image_pipeline") == 1
    ended = value(s, "interlock_jobs_ended_total", blueprint="image_pipeline", status="finished")
    assert ended == 1
    run = "interlock_task_run_duration_seconds_count"
    for state, task_type in (("fetch", "fetch_image"), ("resize", "resize_image")):
        labels = {"blueprint": "image_pipeline", "state": state, "task_type": task_type}
        assert value(s, run, status="success", **labels) == 1
        states = {"blueprint": "image_pipeline", "state": state}
        assert value(s, "interlock_state_duration_seconds_count", **states) == 1
    route = "/api/v1/jobs/{job_id}"
    assert value(s, "interlock_http_requests_total", method="GET", route=route, status="200") == 2
    assert value(s, "interlock_http_requests_total", method="GET", route="unmatched", status="404")
    assert not any(job_id in labels_text for _, lbl in s for labels_text in map(str, lbl))
    assert value(s, "interlock_store_batch_size_count", operation="commit") >= 4
    assert value(s, "interlock_deployment_up") == 1


async def test_retries_and_timeouts_are_counted_by_reason(api: Client) -> None:
    # Given a charge whose first attempt fails with a transient error
    await register(api, ["charge_card"])
    job_id = await submit(api, "jobs/charge", {"card_token": "t", "amount": 5})
    task = await poll(api, ["charge_card"])
    error = {"code": "TRANSIENT_ERROR", "message": "gateway unreachable"}
    body = {"job_id": job_id, "task_id": task["task_id"], "status": "failure", "error": error}
    assert await result(api, body) == {"status": "accepted"}

    # Then the retry is counted with its code, and the job is not counted as ended
    s = await scrape(api)
    labels = {"blueprint": "flaky_payment", "task_type": "charge_card"}
    assert value(s, "interlock_task_retries_total", reason="TRANSIENT_ERROR", **labels) == 1
    assert value(s, "interlock_jobs_ended_total", blueprint="flaky_payment", status="failed") == 0


async def test_deployment_gauges_read_queues_workers_and_approvals(api: Client) -> None:
    # Given two queued pipeline jobs, a job waiting for approval and a registered worker
    await submit(api, "jobs/image_pipeline", IMAGE)
    await submit(api, "jobs/image_pipeline", IMAGE)
    await submit(api, "jobs/expense_approval", {"amount": 10, "employee": "ann"})
    await register(api, ["publish_image"])

    # When scraped
    s = await scrape(api)

    # Then the gauges count them, whichever process is asked
    assert value(s, "interlock_deployment_queued_tasks", task_type="fetch_image") == 2
    assert value(s, "interlock_deployment_queued_tasks", task_type="resize_image") == 0
    age = value(s, "interlock_deployment_oldest_queued_task_age_seconds", task_type="fetch_image")
    assert 0 <= age < 60
    assert value(s, "interlock_deployment_jobs_waiting_for_human") == 1
    assert value(s, "interlock_deployment_connected_workers", task_type="publish_image") == 1
    assert value(s, "interlock_deployment_connected_workers", task_type="fetch_image") == 0
    assert value(s, "interlock_deployment_webhook_backlog") == 0

    # And a decided approval leaves the index; a taken task leaves the queue
    approval = await ok_json(await api.get("/api/v1/jobs?status=waiting_for_human", headers=ACME))
    waiting = approval["jobs"][0]["id"]
    decided = await api.post(
        f"/api/v1/jobs/{waiting}/approval", json={"decision": "reject"}, headers=ACME
    )
    assert decided.status == 200, await decided.text()
    await register(api, ["fetch_image"])
    assert (await poll(api, ["fetch_image"])) is not None
    s = await scrape(api)
    assert value(s, "interlock_deployment_jobs_waiting_for_human") == 0
    assert value(s, "interlock_deployment_queued_tasks", task_type="fetch_image") == 1


async def test_metrics_off_serves_no_metrics(orchestrator: Orchestrator, tmp_path: Path) -> None:
    settings: Settings = make_settings(tmp_path, METRICS="off")
    api = await serve(build_app_around(orchestrator, settings))
    try:
        response = await api.get("/metrics")
        assert response.status == 404
    finally:
        await api.close()


async def test_a_dispatch_timeout_is_counted_with_its_reason(api: Client) -> None:
    # Given a job whose first task no worker takes within 100ms
    job_id = await submit(api, "jobs/image_pipeline", IMAGE, dispatch_timeout="100ms")

    # When the timer fails it (waiting for the end, not sleeping)
    assert (await job(api, job_id, wait=10))["status"] == "failed"

    # Then the timeout is counted by task type and reason, and no lease expired
    s = await scrape(api)
    labels = {"blueprint": "image_pipeline", "task_type": "fetch_image"}
    assert value(s, "interlock_task_timeouts_total", reason="dispatch", **labels) == 1
    assert (
        value(s, "interlock_lease_expiries_total", task_type="fetch_image", reason="dispatch") == 0
    )
    ended = value(s, "interlock_jobs_ended_total", blueprint="image_pipeline", status="failed")
    assert ended == 1


async def test_webhook_deliveries_and_failures_are_counted() -> None:
    metrics = Metrics()
    answers: list[int | OSError] = [204, 500, OSError("refused")]

    async def sender(url: str, body: bytes, headers: Mapping[str, str]) -> int:
        answer = answers.pop(0)
        if isinstance(answer, OSError):
            raise answer
        return answer

    send = metrics.counting_sender(sender)
    assert await send("http://127.0.0.1:9/hook", b"{}", {}) == 204
    assert await send("http://127.0.0.1:9/hook", b"{}", {}) == 500
    with pytest.raises(OSError, match="refused"):
        await send("http://127.0.0.1:9/hook", b"{}", {})
    text = generate_latest(metrics.collectors).decode()
    assert "interlock_webhook_deliveries_total 1.0" in text
    assert 'interlock_webhook_failures_total{reason="http"} 1.0' in text
    assert 'interlock_webhook_failures_total{reason="network"} 1.0' in text


async def test_a_scrape_is_one_round_trip_of_a_known_number_of_commands(
    orchestrator: Orchestrator,
) -> None:
    # Given the example blueprints' task types and the store's partitions
    store = orchestrator.store
    types = task_types(orchestrator.registry.by_name.values())
    partitions = store.keys.partitions
    assert (len(types), partitions) == (14, 8)  # the figures the README quotes
    sent: list[int] = []
    real_pipeline = store.redis.pipeline

    def counting_pipeline(*args: Any, **kwargs: Any) -> Any:
        pipe = real_pipeline(*args, **kwargs)
        execute = pipe.execute

        async def counted(*a: Any, **k: Any) -> Any:
            sent.append(len(pipe.command_stack))
            return await execute(*a, **k)

        pipe.execute = counted  # type: ignore[method-assign]
        return pipe

    store.redis.pipeline = counting_pipeline  # type: ignore[method-assign]
    try:
        # When the deployment-wide gauges are read
        await deployment_families(orchestrator, types, 60_000, 0)
    finally:
        store.redis.pipeline = real_pipeline  # type: ignore[method-assign]

    # Then that took one pipeline of 2*P*T + T + 2*P commands
    assert sent == [2 * partitions * len(types) + len(types) + 2 * partitions] == [254]


def test_error_codes_chosen_by_workers_are_bounded_as_label_values() -> None:
    cap = LabelCap(limit=3)
    assert [cap(code) for code in ("A", "B", "A", "C", "D", "E", None)] == [
        "A", "B", "A", "C", "other", "other", "other",
    ]  # fmt: skip
    assert LabelCap()("X" * 500) == "X" * 64


async def test_methods_clients_invent_are_counted_as_other(api: Client) -> None:
    # Given requests with methods beyond the usual ones (aiohttp accepts dozens)
    for method in ("PROPFIND", "PURGE", "MKCALENDAR"):
        response = await api.request(method, "/no/such/path")
        assert response.status in (404, 405)

    # Then they share one label value, so the scrape cannot grow with them
    s = await scrape(api)
    methods = {
        dict(labels)["method"] for name, labels in s if name == "interlock_http_requests_total"
    }
    assert "other" in methods
    assert not methods & {"PROPFIND", "PURGE", "MKCALENDAR"}


def test_the_exposition_is_the_one_prometheus_client_writes_for_the_same_updates() -> None:
    # Given the same updates made to our series and to prometheus-client's own classes
    import re

    from prometheus_client import CollectorRegistry, Counter, Histogram

    ours = Metrics()
    theirs = CollectorRegistry()
    requests = Counter(
        ours.jobs_ended.name, ours.jobs_ended.documentation, ours.jobs_ended.labels,
        registry=theirs,
    )  # fmt: skip
    series = ours.state_duration  # (registered in the order Metrics declares them)
    states = Histogram(
        series.name, series.documentation, series.labels, buckets=series.bounds, registry=theirs
    )
    deliveries = Counter(
        ours.webhook_deliveries.name, ours.webhook_deliveries.documentation, registry=theirs
    )
    for key, count in ((("bp", "finished"), 3), (("bp", "failed"), 1), (("other", "failed"), 2)):
        for _ in range(count):
            ours.jobs_ended.inc(key)
            requests.labels(*key).inc()
    ours.webhook_deliveries.inc(())
    deliveries.inc()
    for seconds in (0.0, 0.005, 0.0051, 1, 86400, 1e9):
        ours.state_duration.observe(("bp", "s"), seconds)
        states.labels("bp", "s").observe(seconds)

    # Then the text is the same, line for line, but for the creation times
    def lines(text: str, names: tuple[str, ...]) -> list[str]:
        kept = [line for line in text.splitlines() if any(name in line for name in names)]
        return [re.sub(r"(_created(\{.*\})?) \S+$", r"\1 T", line) for line in kept]

    names = (ours.jobs_ended.name, ours.webhook_deliveries.name, series.name)
    mine = lines(generate_latest(ours.collectors).decode(), names)
    reference = lines(generate_latest(theirs).decode(), names)
    assert mine == reference
    assert any(line.endswith("_created T") for line in mine)
    assert 'interlock_state_duration_seconds_bucket{blueprint="bp",le="+Inf",state="s"} 6.0' in mine
