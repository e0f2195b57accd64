"""`interlock test`'s runner: the real orchestrator on the embedded store and a fake clock."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from engine.blueprint.loader import load_blueprints, validate_paths
from engine.clock import FakeClock, now_ms
from engine.testkit.runner import run_case
from engine.testkit.spec import TestFileInvalid, load_test_file
from engine.testkit.suite import BlueprintCache, Coverage, run_one
from tests.conftest import BLUEPRINTS
from tests.testkit.conftest import write


def test_the_fake_clock_holds_only_inside_its_block() -> None:
    clock = FakeClock(1_000)
    with clock.installed():
        assert now_ms() == 1_000
        clock.advance_to(5_000)
        clock.advance_to(2_000)  # never back
        assert now_ms() == 5_000
    assert abs(now_ms() - time.time() * 1000) < 5_000


async def test_two_days_of_waiting_and_backoff_take_no_real_time(bp_dir: Path) -> None:
    # Given an approval that times out after 2 days and an escalation that waits for ever
    path = write(
        bp_dir / "tests",
        "a.test.yaml",
        """\
        blueprint: expense_approval
        cases:
          - name: silence
            initial_data: {amount: 5, employee: e}
            send: [{approval: escalate, decision: approve, after: 1d}]
            tasks: {pay: [{error: {code: TRANSIENT_ERROR}}, {data: {ok: true}, delay: 1h}]}
        """,
    )
    file = load_test_file(path)
    started = time.monotonic()
    # When it runs
    run = await run_case(load_blueprints([bp_dir]), file.blueprint, file.cases[0])
    # Then three fake days pass: 2d timeout, 1d until the decision, a retry, an hour's work
    assert run.status == "finished"
    assert run.path == ["review", "escalate", "pay", "paid"]
    assert run.attempts == {"pay": 2}
    assert 3 * 86_400_000 + 3_600_000 < run.elapsed_ms < 3 * 86_400_000 + 3_700_000
    assert time.monotonic() - started < 30  # a generous bound for a loaded machine
    assert ("review", "timeout", "escalate") in run.taken["expense_approval"]


async def test_a_case_runs_the_same_every_time(bp_dir: Path) -> None:
    file = load_test_file(BLUEPRINTS / "tests" / "retries_timeouts.test.yaml")
    blueprints = load_blueprints([BLUEPRINTS])
    case = file.cases[2]  # five timeouts with jittered backoff
    first = await run_case(blueprints, file.blueprint, case)
    second = await run_case(blueprints, file.blueprint, case)
    assert first.elapsed_ms == second.elapsed_ms
    assert first.view() == second.view()


async def test_every_failed_expectation_is_reported_with_a_diff(bp_dir: Path) -> None:
    path = write(
        bp_dir / "tests",
        "wrong.test.yaml",
        """\
        blueprint: image_pipeline
        cases:
          - name: wrong about everything
            initial_data: {url: u}
            tasks:
              fetch: {data: {path: p}}
              resize: {data: {path: q}}
              publish: {data: {url: "https://x/y"}}
            expect:
              status: failed
              path: [fetch, publish, done]
              output: {thumbnail: "https://x/z"}
              error_includes: {code: X}
              attempts: {fetch: 2}
              assert: ["steps.fetch.path == 'other'"]
        """,
    )
    file = load_test_file(path)
    result = await run_one(BlueprintCache(), file, file.cases[0])
    text = "\n".join(result.failures)
    assert not result.passed
    assert len(result.failures) == 6
    assert "status: expected 'failed', got 'finished'" in text
    assert '-  "publish",' in text or '+  "resize",' in text
    assert '-  "thumbnail": "https://x/z"' in text
    assert '+  "thumbnail": "https://x/y"' in text
    assert "$: expected a mapping, got null" in text
    assert "attempts of 'fetch': expected 2, got 1" in text
    assert "assert \"steps.fetch.path == 'other'\" does not hold" in text


async def test_a_task_without_a_scripted_outcome_names_what_to_add(bp_dir: Path) -> None:
    path = write(
        bp_dir / "tests",
        "t.test.yaml",
        """\
        blueprint: image_pipeline
        cases:
          - {name: unscripted, initial_data: {url: u}}
        """,
    )
    file = load_test_file(path)
    result = await run_one(BlueprintCache(), file, file.cases[0])
    assert result.failures == [
        "no outcome for task 'fetch_image' of state 'fetch' (attempt 1); add one under "
        "`tasks:` keyed 'fetch' or 'fetch_image'"
    ]


def test_test_files_are_checked_against_the_shipped_schema(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "bad.test.yaml",
        """\
        blueprint: reminder
        cases:
          - name: one
            tasks: {send: {timeout: true, data: {}}}
            send: [{approval: x}, {event: paid, data: [1]}, {event: paid, decision: y}]
            advance: 2 days
            expect: {status: done, assert: ["a ==="]}
        """,
    )
    with pytest.raises(TestFileInvalid) as caught:
        load_test_file(path)
    text = str(caught.value)
    assert f"{path}:4:" in text  # timeout with data
    assert "$.cases[0].send[0]: 'decision' is a required property" in text
    assert "$.cases[0].send[1].data: [1] is not of type 'object'" in text
    assert "$.cases[0].send[2]: Additional properties are not allowed ('decision'" in text
    assert "$.cases[0].advance" in text
    assert "$.cases[0].expect.status: 'done' is not one of" in text


def test_test_files_are_not_loaded_as_blueprints(bp_dir: Path) -> None:
    write(bp_dir / "tests", "x.test.yaml", "blueprint: reminder\ncases: [{name: a}]\n")
    blueprints, problems = validate_paths([bp_dir])
    assert problems == []
    assert len(blueprints) == len(list(BLUEPRINTS.glob("*.yaml")))


async def test_coverage_names_what_no_case_took(bp_dir: Path) -> None:
    file = load_test_file(BLUEPRINTS / "tests" / "approval.test.yaml")
    cache = BlueprintCache()
    coverage = Coverage()
    result = await run_one(cache, file, file.cases[0])  # approve, pay, paid only
    assert result.run is not None
    coverage.add(result.run)
    coverage.include([cache.load(file).blueprints["expense_approval"]])
    report = coverage.report()
    assert report[0] == "expense_approval: 2/6 edges, 3/5 states"
    assert "  edge never taken: review --timeout--> escalate" in report
    assert "  state never entered: rejected" in report
    assert "  edge never taken: escalate --reject--> rejected" in report
    assert report[-1] == "coverage: 2/6 edges (33.3%), 3/5 states"


@pytest.mark.parametrize(
    ("scripts", "message"),
    [
        ("tasks: {fetch_img: {}}", "tasks: 'fetch_img' is neither a state nor a task type"),
        ("send: [{approval: reviw, decision: approve}]", "send: 'reviw' is not an approval"),
        (
            "send: [{event: payment_recieved, data: {amount: 1}}]",
            "send: no listen state waits for event 'payment_recieved'",
        ),
    ],
)
async def test_a_name_no_blueprint_has_fails_the_case_with_a_hint(
    bp_dir: Path, scripts: str, message: str
) -> None:
    path = write(
        bp_dir / "tests",
        "t.test.yaml",
        "blueprint: image_pipeline\ncases:\n"
        f"  - {{name: typo, initial_data: {{url: u}}, {scripts}}}\n",
    )
    file = load_test_file(path)
    result = await run_one(BlueprintCache(), file, file.cases[0])
    [failure] = result.failures
    assert failure.startswith(message)
    assert "did you mean" in failure


def test_answers_due_together_go_in_dispatch_order() -> None:
    from engine.testkit.runner import _dispatch_order

    ids = ["job-10", "job-2", "job-1", "child-3"]
    payloads = [{"job_id": i.split("-")[0], "task_id": i} for i in ids]
    ordered = [p["task_id"] for p in sorted(payloads, key=_dispatch_order)]
    assert ordered == ["child-3", "job-1", "job-2", "job-10"]


async def test_a_subflow_child_counts_toward_its_blueprints_coverage() -> None:
    file = load_test_file(BLUEPRINTS / "tests" / "subflow.test.yaml")
    run = await run_case(load_blueprints([BLUEPRINTS]), file.blueprint, file.cases[0])
    assert run.visited["image_pipeline"] == {"fetch", "resize", "publish", "done"}
    assert ("publish", "success", "done") in run.taken["image_pipeline"]


def test_k_runs_only_the_matching_cases(capsys: pytest.CaptureFixture[str]) -> None:
    from interlock_cli import main

    path = BLUEPRINTS / "tests" / "approval.test.yaml"
    assert main(["test", str(path), "-k", "*rejects*"]) == 0
    out = capsys.readouterr()
    assert [line.split("::")[1].split(" (")[0] for line in out.out.splitlines()] == [
        "the manager rejects",
        "the escalation rejects",
    ]
    assert "2 passed, 0 failed" in out.err
