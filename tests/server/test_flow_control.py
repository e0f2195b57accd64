"""Approvals (by the owner and by the single-use link), a job's graph, and schedules, through
HTTP on the embedded store."""

from __future__ import annotations

import asyncio
import re
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from engine.runtime.orchestrator import Orchestrator
from server.app import build_app, build_app_around
from server.config import Settings
from server.errors import ConfigError
from tests.server.conftest import make_settings, serve
from tests.server.helpers import (
    ACME,
    BLUEPRINTS,
    EXAMPLES,
    GLOBEX,
    ROOT,
    Client,
    error_of,
    job,
    ok_json,
    submit,
)
from tests.server.test_serve import INTERLOCK, clean_env, free_port, run_to_exit

EXPENSE = {"amount": 12.5, "employee": "ada"}
IMAGE = {"url": "https://example.com/cat.png"}
LINK = re.compile(r"^(http://127\.0\.0\.1:\d+)/_public/approvals/([0-9a-f]{32})/([0-9a-f]{48})$")
HIGHLIGHT = '"#1565c0"'


async def waiting_expense(api: Client) -> tuple[str, dict[str, Any], str]:
    """A job of the example approval blueprint, waiting for a person: (id, view, link)."""
    job_id = await submit(api, "jobs/expense_approval", EXPENSE)
    view = await job(api, job_id)
    assert view["status"] == "waiting_for_human"
    link: str = view["approval"]["link"]
    return job_id, view, link


async def approve(api: Client, job_id: str, body: Any, headers: dict[str, str] = ACME) -> Any:
    return await api.post(f"/api/v1/jobs/{job_id}/approval", json=body, headers=headers)


def link_path(link: str) -> str:
    match = LINK.match(link)
    assert match, link
    return link[len(match.group(1)) :]


# -- the owner decides --------------------------------------------------------------------


async def test_a_waiting_job_shows_its_owner_the_approval_and_its_link(api: Client) -> None:
    job_id, view, link = await waiting_expense(api)
    approval = view["approval"]
    assert set(approval) == {"state", "message", "decisions", "asked_at", "timeout_at", "link"}
    assert approval["state"] == "review"
    assert approval["message"] == "Approve 12.5 for ada?"
    assert approval["decisions"] == ["approve", "reject"]
    match = LINK.match(link)
    assert match, link
    assert match.group(1) == str(api.make_url("")).rstrip("/")  # the request's origin
    assert match.group(2) == job_id
    asked = time.strptime(approval["asked_at"][:19], "%Y-%m-%dT%H:%M:%S")
    due = time.strptime(approval["timeout_at"][:19], "%Y-%m-%dT%H:%M:%S")
    assert round(time.mktime(due) - time.mktime(asked)) == 2 * 86_400
    assert approval["timeout_at"].endswith("Z")
    assert "task" not in view


async def test_the_owner_approves_and_the_job_moves_on(api: Client) -> None:
    job_id, _, _ = await waiting_expense(api)
    view = await ok_json(await approve(api, job_id, {"decision": "approve"}))
    assert view["id"] == job_id
    assert view["status"] == "queued"
    assert view["state"] == "pay"
    assert view["task"]["type"] == "pay_expense"
    assert "approval" not in view
    history = await ok_json(await api.get(f"/api/v1/jobs/{job_id}/history", headers=ACME))
    decided = [e for e in history["events"] if e["event"] == "approval_decided"]
    assert [(e["state"], e["decision"], e["by"]) for e in decided] == [
        ("review", "approve", "client:acme")
    ]


async def test_a_rejection_takes_the_reject_transition(api: Client) -> None:
    job_id, _, _ = await waiting_expense(api)
    view = await ok_json(await approve(api, job_id, {"decision": "reject"}))
    assert view["status"] == "failed"
    assert view["state"] == "rejected"
    assert view["error"]["code"] == "REJECTED"


async def test_an_unknown_decision_is_a_400_listing_the_decisions(api: Client) -> None:
    job_id, _, _ = await waiting_expense(api)
    # "timeout" is a transition of the state, but not a decision anybody can make
    for decision in ("maybe", "timeout", "APPROVE"):
        error = await error_of(await approve(api, job_id, {"decision": decision}), 400)
        assert error["code"] == "unknown_decision"
        assert error["details"] == {"decision": decision, "allowed": ["approve", "reject"]}
        assert "approve, reject" in error["message"]
    assert (await job(api, job_id))["status"] == "waiting_for_human"


@pytest.mark.parametrize(
    ("body", "code", "fragment"),
    [
        ({}, "invalid_field", "'decision' is required"),
        ({"decision": ""}, "invalid_field", "'decision' is required"),
        ({"decision": 1}, "invalid_field", "'decision' must be a string, not a number"),
        ({"decision": None}, "invalid_field", "'decision' is required"),
        ({"decision": ["approve"]}, "invalid_field", "not an array"),
        ({"decision": "approve", "by": "me"}, "unknown_fields", "'by'"),
        ([], "invalid_body", "must be a JSON object"),
    ],
)
async def test_a_missing_or_malformed_decision_is_a_400(
    api: Client, body: Any, code: str, fragment: str
) -> None:
    job_id, _, _ = await waiting_expense(api)
    error = await error_of(await approve(api, job_id, body), 400)
    assert error["code"] == code
    assert fragment in error["message"]
    empty = await api.post(f"/api/v1/jobs/{job_id}/approval", data=b"", headers=ACME)
    assert (await error_of(empty, 400))["code"] == "invalid_json"
    assert (await job(api, job_id))["status"] == "waiting_for_human"


async def test_a_job_not_waiting_for_approval_is_a_409(api: Client) -> None:
    # A job running a task: a decision can never stand in for the worker's result
    job_id = await submit(api, "jobs/image_pipeline", IMAGE)
    error = await error_of(await approve(api, job_id, {"decision": "approve"}), 409)
    assert error["code"] == "not_waiting_for_approval"
    view = await job(api, job_id)
    assert (view["status"], view["state"]) == ("queued", "fetch")
    # An approval already decided
    job_id, _, _ = await waiting_expense(api)
    await ok_json(await approve(api, job_id, {"decision": "approve"}))
    again = await error_of(await approve(api, job_id, {"decision": "reject"}), 409)
    assert again["code"] == "not_waiting_for_approval"
    assert (await job(api, job_id))["state"] == "pay"
    # A cancelled job
    job_id, _, _ = await waiting_expense(api)
    await ok_json(await api.post(f"/api/v1/jobs/{job_id}/cancel", headers=ACME))
    cancelled = await error_of(await approve(api, job_id, {"decision": "approve"}), 409)
    assert cancelled["code"] == "not_waiting_for_approval"


async def test_another_clients_job_is_a_404_like_an_unknown_one(api: Client) -> None:
    job_id, _, _ = await waiting_expense(api)
    answers = [
        await error_of(await approve(api, target, {"decision": "approve"}, headers), 404)
        for target, headers in [
            (job_id, GLOBEX),
            ("f" * 32, ACME),
            ("not%20an%20id", ACME),
        ]
    ]
    assert answers[0] == answers[1] == answers[2]
    assert answers[0]["code"] == "job_not_found"
    assert (await job(api, job_id))["status"] == "waiting_for_human"
    unauthenticated = await approve(api, job_id, {"decision": "approve"}, {})
    assert (await error_of(unauthenticated, 401))["code"] == "missing_client_token"


# -- the approval link ----------------------------------------------------------------------


async def test_the_link_describes_the_approval_then_decides_once(api: Client) -> None:
    job_id, _, link = await waiting_expense(api)
    path = link_path(link)

    # Given the link, a person (no client token) reads what is asked and how to answer
    response = await api.get(path)
    described = await ok_json(response)
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["Referrer-Policy"] == "no-referrer"
    assert described["job_id"] == job_id
    assert described["message"] == "Approve 12.5 for ada?"
    assert described["decisions"] == ["approve", "reject"]
    assert described["how_to_decide"]["method"] == "POST"
    assert described["how_to_decide"]["url"] == link
    assert '{"decision": "approve"}' in described["how_to_decide"]["example"]

    # An unknown decision through the link is the same 400, and uses nothing up
    error = await error_of(await api.post(path, json={"decision": "maybe"}), 400)
    assert error["code"] == "unknown_decision"
    assert error["details"]["allowed"] == ["approve", "reject"]
    bad = await error_of(await api.post(path, json={"verdict": "approve"}), 400)
    assert bad["code"] == "unknown_fields"

    # When they reject through the link
    answer = await ok_json(await api.post(path, json={"decision": "reject"}))
    assert answer == {
        "status": "accepted",
        "job_id": job_id,
        "decision": "reject",
        "job_status": "failed",
        "state": "rejected",
    }

    # Then the job took the reject transition, decided "by link"
    view = await job(api, job_id)
    assert (view["status"], view["error"]["code"]) == ("failed", "REJECTED")
    history = await ok_json(await api.get(f"/api/v1/jobs/{job_id}/history", headers=ACME))
    decided = [e for e in history["events"] if e["event"] == "approval_decided"]
    assert [(e["decision"], e["by"]) for e in decided] == [("reject", "link")]

    # And the link is spent: both reading and deciding are the 404 of a link never valid
    reuse = await error_of(await api.post(path, json={"decision": "approve"}), 404)
    assert reuse["code"] == "approval_not_found"
    assert await error_of(await api.get(path), 404) == reuse
    assert (await job(api, job_id))["status"] == "failed"


async def test_a_forged_link_is_a_404_that_reveals_nothing(api: Client) -> None:
    job_id, _, link = await waiting_expense(api)
    token = link.rsplit("/", 1)[1]
    other_id, _, _ = await waiting_expense(api)
    forged = ("0" if token[0] != "0" else "1") + token[1:]
    answers = []
    for path in (
        f"/_public/approvals/{job_id}/{forged}",  # right job, wrong token
        f"/_public/approvals/{other_id}/{token}",  # a real token on another job
        f"/_public/approvals/{'f' * 32}/{token}",  # an unknown job
        f"/_public/approvals/{job_id}/{token[:-1]}",  # a truncated token
        f"/_public/approvals/{job_id}/not%20a%20token",  # not even the right shape
    ):
        answers.append(await error_of(await api.post(path, json={"decision": "approve"}), 404))
        answers.append(await error_of(await api.get(path), 404))
    assert all(answer == answers[0] for answer in answers)
    assert answers[0]["code"] == "approval_not_found"
    # The client's token does not make a wrong link right either
    with_token = await api.post(
        f"/_public/approvals/{job_id}/{forged}", json={"decision": "approve"}, headers=ACME
    )
    assert await error_of(with_token, 404) == answers[0]
    for waiting in (job_id, other_id):
        assert (await job(api, waiting))["status"] == "waiting_for_human"


async def test_a_link_approval_continues_the_job(api: Client) -> None:
    job_id, _, link = await waiting_expense(api)
    answer = await ok_json(await api.post(link_path(link), json={"decision": "approve"}))
    assert (answer["job_status"], answer["state"]) == ("queued", "pay")
    # The owner's endpoint now finds nothing to decide
    late = await error_of(await approve(api, job_id, {"decision": "reject"}), 409)
    assert late["code"] == "not_waiting_for_approval"


async def test_the_token_is_never_in_history_listings_or_other_views(api: Client) -> None:
    job_id, _, link = await waiting_expense(api)
    token = link.rsplit("/", 1)[1]
    texts = [
        await (await api.get(f"/api/v1/jobs/{job_id}/history", headers=ACME)).text(),
        await (await api.get("/api/v1/jobs", headers=ACME)).text(),
        await (
            await api.get(
                "/api/v1/jobs",
                params={"status": "waiting_for_human", "blueprint": "expense_approval"},
                headers=ACME,
            )
        ).text(),
        await (await api.get(f"/api/v1/jobs/{job_id}", headers=GLOBEX)).text(),
        await (await api.get(f"/api/v1/jobs/{job_id}/graph", headers=ACME)).text(),
    ]
    listing = await ok_json(await api.get("/api/v1/jobs", headers=ACME))
    assert [item["id"] for item in listing["jobs"]] == [job_id]
    assert "approval_requested" in texts[0]
    for text in texts:
        assert token not in text
    # Nor in the answer to the decision made through the link
    answer = await api.post(link_path(link), json={"decision": "approve"})
    assert token not in await answer.text()


async def test_public_url_is_the_base_of_approval_links(
    orchestrator: Orchestrator, tmp_path: Path
) -> None:
    settings = make_settings(tmp_path, PUBLIC_URL="https://ops.example.com/interlock/")
    api = await serve(build_app_around(orchestrator, settings))
    try:
        job_id, _, link = await waiting_expense(api)
        assert link.startswith(f"https://ops.example.com/interlock/_public/approvals/{job_id}/")
        described = await ok_json(
            await api.get(link.removeprefix("https://ops.example.com/interlock"))
        )
        assert described["how_to_decide"]["url"] == link
    finally:
        await api.close()


# -- the job's graph ------------------------------------------------------------------------


def dot_line(dot: str, start: str) -> str:
    """The one DOT statement that starts with `start` (a node or an edge)."""
    found = [line for line in dot.splitlines() if line.startswith(start + " [")]
    assert len(found) == 1, (start, dot)
    return found[0]


async def graph(api: Client, job_id: str, headers: dict[str, str] = ACME) -> str:
    response = await api.get(f"/api/v1/jobs/{job_id}/graph", headers=headers)
    text = await response.text()
    assert response.status == 200, text
    assert response.content_type == "text/vnd.graphviz"
    assert response.charset == "utf-8"
    return text


async def test_the_graph_draws_the_path_and_marks_the_current_state(api: Client) -> None:
    # Given a job waiting in `review`
    job_id, _, _ = await waiting_expense(api)
    dot = await graph(api, job_id)
    assert dot.startswith('digraph "expense_approval" {')
    assert 'xlabel="current"' in dot_line(dot, '"review"')
    assert dot.count('xlabel="current"') == 1
    assert HIGHLIGHT in dot_line(dot, '"__start__" -> "review"')
    assert HIGHLIGHT not in dot_line(dot, '"review" -> "pay"')

    # When it is approved, the taken edge is highlighted and `pay` is current
    await ok_json(await approve(api, job_id, {"decision": "approve"}))
    dot = await graph(api, job_id)
    assert HIGHLIGHT in dot_line(dot, '"review" -> "pay"')
    assert HIGHLIGHT in dot_line(dot, '"review"')
    assert 'xlabel="current"' not in dot_line(dot, '"review"')
    assert 'xlabel="current"' in dot_line(dot, '"pay"')
    for untaken in ('"review" -> "rejected"', '"review" -> "escalate"', '"escalate" -> "pay"'):
        assert HIGHLIGHT not in dot_line(dot, untaken)
    for unvisited in ('"escalate"', '"paid"', '"rejected"'):
        assert HIGHLIGHT not in dot_line(dot, unvisited)


async def test_an_ended_job_has_its_path_but_no_current_state(api: Client) -> None:
    job_id, _, _ = await waiting_expense(api)
    await ok_json(await approve(api, job_id, {"decision": "reject"}))
    dot = await graph(api, job_id)
    assert "xlabel" not in dot
    assert HIGHLIGHT in dot_line(dot, '"review" -> "rejected"')
    assert HIGHLIGHT in dot_line(dot, '"rejected"')
    assert HIGHLIGHT not in dot_line(dot, '"review" -> "pay"')


async def test_the_graph_is_the_owners_only(api: Client) -> None:
    job_id, _, _ = await waiting_expense(api)
    foreign = await error_of(await api.get(f"/api/v1/jobs/{job_id}/graph", headers=GLOBEX), 404)
    unknown = await error_of(await api.get(f"/api/v1/jobs/{'f' * 32}/graph", headers=ACME), 404)
    assert foreign == unknown
    assert foreign["code"] == "job_not_found"
    missing = await api.get(f"/api/v1/jobs/{job_id}/graph")
    assert (await error_of(missing, 401))["code"] == "missing_client_token"


# -- schedules --------------------------------------------------------------------------------


def test_schedule_and_public_url_settings(tmp_path: Path) -> None:
    settings = Settings.from_sources({}, {})
    assert settings.schedules_path is None
    assert settings.public_url == ""
    env = {"SCHEDULES_CONFIG_PATH": "env.toml", "PUBLIC_URL": "https://x.example:8443/"}
    settings = Settings.from_sources(env, {"SCHEDULES_CONFIG_PATH": "flag.toml"})
    assert settings.schedules_path == Path("flag.toml")
    assert settings.public_url == "https://x.example:8443"
    for bad in (
        "ftp://x.example",
        "x.example",
        "https://",
        "https://x.example/?a=1",
        "http://h:99999",
    ):
        with pytest.raises(ConfigError, match=r"^PUBLIC_URL: "):
            Settings.from_sources({"PUBLIC_URL": bad}, {})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '[nightly]\nblueprint = "nope"\nevery = "1h"\n',
            "[nightly]: blueprint 'nope' is not loaded (loaded: batch_thumbnails,",
        ),
        (
            '[ok]\nblueprint = "reminder"\nevery = "1h"\n\n[broken]\nblueprint = "reminder"\n'
            'cron = "61 * * * *"\n',
            "[broken]: cron '61 * * * *' is not a valid cron expression",
        ),
        ('[twice]\nblueprint = "reminder"\ncron = "* * * * *"\nevery = "1m"\n', "[twice]: give"),
        ('[tz]\nblueprint = "reminder"\nevery = "1m"\ntimezone = "Mars/Base"\n', "[tz]: unknown"),
    ],
)
async def test_a_bad_schedules_file_exits_2_naming_file_and_table(
    tmp_path: Path, text: str, message: str
) -> None:
    schedules = tmp_path / "schedules.toml"
    schedules.write_text(text, encoding="utf-8")
    code, out, err = await run_to_exit(
        "--schedules-config",
        str(schedules),
        "--blueprints",
        str(BLUEPRINTS),
        "--port",
        str(free_port()),
        env=clean_env(),
    )
    assert code == 2
    assert out == ""
    assert err.startswith(f"interlock serve: {schedules}: {message}"), err
    assert "Traceback" not in err


async def test_a_missing_or_unreadable_schedules_file_exits_2(tmp_path: Path) -> None:
    missing = tmp_path / "absent.toml"
    code, _, err = await run_to_exit(
        "--port", str(free_port()), env=clean_env(SCHEDULES_CONFIG_PATH=str(missing))
    )
    assert code == 2
    assert err.startswith(f"interlock serve: {missing}: cannot read: "), err
    broken = tmp_path / "broken.toml"
    broken.write_text("[a\n", encoding="utf-8")
    code, _, err = await run_to_exit(
        "--schedules-config", str(broken), "--port", str(free_port()), env=clean_env()
    )
    assert code == 2
    assert err.startswith(f"interlock serve: {broken}: "), err
    assert "line 1" in err


async def test_serve_announces_its_schedules(tmp_path: Path) -> None:
    schedules = tmp_path / "schedules.toml"
    schedules.write_text('[hourly]\nblueprint = "reminder"\ncron = "0 * * * *"\n')
    process = await asyncio.create_subprocess_exec(
        str(INTERLOCK),
        "serve",
        "--port",
        str(free_port()),
        "--schedules-config",
        str(schedules),
        env=clean_env(WORKER_TOKEN="w", CLIENT_TOKEN="c", WEBHOOK_SECRET="s"),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    try:
        async with asyncio.timeout(30):
            line = (await process.stdout.readline()).decode()
        expected = f"(store: memory:// embedded, {EXAMPLES} blueprints, 1 schedule)\n"
        assert line.endswith(expected), line
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(20):
            assert await process.wait() == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_the_server_starts_the_jobs_of_its_schedules(tmp_path: Path) -> None:
    # Given a schedule every second, owned by client acme
    schedules = tmp_path / "schedules.toml"
    schedules.write_text(
        '[pay_ada]\nblueprint = "expense_approval"\nevery = "1s"\nclient = "acme"\n'
        'initial_data = {amount = 3, employee = "ada"}\n',
        encoding="utf-8",
    )
    settings = make_settings(tmp_path, SCHEDULES_CONFIG_PATH=str(schedules))
    # When the server that owns its engine runs for a moment
    api = await serve(build_app(settings))
    try:
        jobs: list[dict[str, Any]] = []
        async with asyncio.timeout(10):
            while len(jobs) < 2:
                await asyncio.sleep(0.2)
                listing = await ok_json(
                    await api.get(
                        "/api/v1/jobs", params={"blueprint": "expense_approval"}, headers=ACME
                    )
                )
                jobs = listing["jobs"]
        # Then acme owns the scheduled jobs, each started with the schedule's data
        view = await job(api, jobs[0]["id"])
        assert view["status"] == "waiting_for_human"
        assert view["approval"]["message"] == "Approve 3 for ada?"
        others = await ok_json(await api.get("/api/v1/jobs", headers=GLOBEX))
        assert others["jobs"] == []
    finally:
        await api.close()
