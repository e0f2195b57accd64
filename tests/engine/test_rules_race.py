"""Races (`parallel.compete`) and subflow branches, on the pure rules with a fake clock.

Given a blueprint and a `RulesDriver`, each test plays workers and child jobs and checks the
job document, the history and the cancel requests the store would act on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.blueprint.dot import to_dot
from engine.blueprint.loader import check_text, load_blueprint_text, validate_paths
from engine.blueprint.model import Blueprint
from engine.runtime.jobdoc import RuntimeSettings
from tests.engine.test_rules import CHILD
from tests.support.rules_driver import RulesDriver

SECOND = 1000

RACE = """
blueprint: race
start: fetch
states:
  fetch:
    parallel:
      compete: true
      branches:
        primary: {task: lookup, params: {source: primary}, retry: {max_attempts: 1}}
        mirror: {task: lookup, params: {source: mirror}, retry: {max_attempts: 1}}
        cache: {task: lookup, params: {source: cache}, retry: {max_attempts: 1}}
    on: {success: done, "error:NOT_FOUND": missing, failure: broken}
  done: {end: finished, output: "${ steps.fetch }"}
  missing: {end: failed, error: {code: MISSING}}
  broken: {end: failed}
"""

RACE_EACH = """
blueprint: race_each
start: fetch
states:
  fetch:
    parallel:
      compete: true
      for_each: initial_data.hosts
      max_concurrency: 2
      task: ping
      params: {host: "${ item }"}
      retry: {max_attempts: 1}
    on: {success: done, failure: broken}
  done: {end: finished, output: "${ steps.fetch }"}
  broken: {end: failed}
"""

EACH_CHILD = """
blueprint: each_child
start: fan
states:
  fan:
    parallel:
      for_each: initial_data.numbers
      max_concurrency: 2
      subflow: {blueprint: child, input: {n: "${ item }"}}
      on_branch_failure: {mode}
    on: {success: done, "error:CHILD_BROKE": caught}
  done: {end: finished, output: "${ steps.fan }"}
  caught: {end: failed, error: {code: CAUGHT, details: "${ steps.fan.error }"}}
"""

MIXED_RACE = """
blueprint: mixed_race
start: fetch
states:
  fetch:
    parallel:
      compete: true
      branches:
        fast: {task: lookup, retry: {max_attempts: 1}}
        deep: {subflow: {blueprint: child, input: {n: "${ initial_data.n }", tag: "${ branch }"}}}
    on: {success: done, failure: broken}
  done: {end: finished, output: "${ steps.fetch }"}
  broken: {end: failed}
"""


def bp(text: str) -> Blueprint:
    return load_blueprint_text(text)


def family(parent: str) -> dict[str, Blueprint]:
    return {"parent": bp(parent), "child": bp(CHILD)}


def each_child(mode: str = "fail_fast") -> str:
    return EACH_CHILD.replace("{mode}", mode)


def by_source(job: RulesDriver) -> dict[str, dict[str, Any]]:
    """The queued lookups, leased: source -> payload."""
    tasks = [job.lease(f"w{n}") for n in range(len(job.queued()))]
    return {t["params"]["source"]: t for t in tasks}


# -- races of tasks ------------------------------------------------------------------------------


def test_the_first_branch_to_succeed_wins_and_the_others_are_cancelled() -> None:
    job = RulesDriver(bp(RACE))
    tasks = by_source(job)
    job.result(tasks["mirror"], data={"hit": "m"})
    assert job.status == "finished"
    assert job.doc["result"] == {"branch": "mirror", "result": {"hit": "m"}}
    told = {task_id for _, task_id in job.cancel_requests}
    assert told == {tasks["primary"]["task_id"], tasks["cache"]["task_id"]}
    cancelled = job.events("task_cancelled")
    assert {e["reason"] for e in cancelled} == {"RACE_LOST"}
    assert job.events("parallel_won")[0]["branch"] == "mirror"
    # The losers' late results are ignored: their tasks were taken back.
    job.result(tasks["primary"], data={"hit": "p"})
    assert job.ignored == ["job_finished"]
    assert job.doc["result"]["branch"] == "mirror"


def test_a_failed_branch_leaves_the_others_racing() -> None:
    job = RulesDriver(bp(RACE))
    tasks = by_source(job)
    job.result(tasks["primary"], "failure", error={"code": "PERMANENT_ERROR"})
    assert job.status == "running"
    job.result(tasks["cache"], data=1)
    assert (job.status, job.doc["result"]) == ("finished", {"branch": "cache", "result": 1})
    assert job.doc["parallel"] is None


@pytest.mark.parametrize(
    ("last_code", "state", "code"),
    [("NOT_FOUND", "missing", "MISSING"), ("PERMANENT_ERROR", "broken", "FAILED")],
)
def test_a_race_fails_once_every_branch_failed_and_routes_by_the_last_error(
    last_code: str, state: str, code: str
) -> None:
    job = RulesDriver(bp(RACE))
    tasks = by_source(job)
    job.result(tasks["primary"], "failure", error={"code": "PERMANENT_ERROR"})
    job.result(tasks["mirror"], "failure", error={"code": "PERMANENT_ERROR"})
    assert job.status == "running"
    job.result(tasks["cache"], "failure", error={"code": last_code})
    assert (job.status, job.doc["state"], job.doc["error"]["code"]) == ("failed", state, code)
    error = job.doc["steps"]["fetch"]["error"]
    assert (error["code"], error["branch"]) == (last_code, "cache")


def test_two_results_decided_on_the_same_version_give_exactly_one_winner() -> None:
    """Two orchestrators decide two results on the same version of the job; the store's
    version guard commits the first, and the second is decided again on what it wrote."""
    job = RulesDriver(bp(RACE))
    tasks = by_source(job)
    version = job.commits
    job.result(tasks["primary"], data="p")  # committed first
    assert job.commits == version + 1
    job.result(tasks["cache"], data="c")  # decided again on the new version: a loser
    assert job.ignored == ["job_finished"]
    assert job.event_names().count("parallel_won") == 1
    assert job.doc["result"] == {"branch": "primary", "result": "p"}


def test_a_for_each_race_never_launches_the_items_after_the_winner() -> None:
    job = RulesDriver(bp(RACE_EACH), {"hosts": ["a", "b", "c", "d"]})
    first = [job.lease("w1"), job.lease("w2")]
    assert [t["params"]["host"] for t in first] == ["a", "b"]
    job.result(first[0], "failure", error={"code": "PERMANENT_ERROR"})  # c starts
    third = job.lease("w3")
    assert third["params"]["host"] == "c"
    job.result(third, data="pong")
    assert job.doc["result"] == {"branch": 2, "result": "pong"}
    assert job.cancel_requests == [("w2", first[1]["task_id"])]
    assert "d" not in [p["params"]["host"] for p in job.payloads.values()]
    assert job.branch_items == {}  # the items stored for the fan-out are dropped


def test_a_race_over_an_empty_list_fails() -> None:
    job = RulesDriver(bp(RACE_EACH), {"hosts": []})
    assert job.status == "failed"
    assert job.doc["steps"]["fetch"]["error"]["code"] == "EMPTY_RACE"


def test_a_paused_race_keeps_its_winner_and_moves_on_resume() -> None:
    job = RulesDriver(bp(RACE))
    tasks = by_source(job)
    job.pause()
    job.result(tasks["mirror"], data="m")
    assert job.status == "running"  # held: the move waits for the resume
    assert job.doc["steps"]["fetch"] == {"branch": "mirror", "result": "m"}
    job.resume()
    assert job.status == "finished"


def test_dot_labels_a_race_and_its_subflow_branches() -> None:
    dot = to_dot(bp(MIXED_RACE))
    assert "parallel race: fast: lookup, deep: subflow child" in dot
    assert "parallel: for_each initial_data.numbers -> subflow child" in to_dot(bp(each_child()))


def test_subflow_branches_must_name_a_loaded_blueprint_and_make_no_cycle(tmp_path: Path) -> None:
    (tmp_path / "parent.yaml").write_text(MIXED_RACE.replace("blueprint: child", "blueprint: chld"))
    cycle = CHILD.replace(
        "task: child_work", "parallel: {for_each: initial_data.x, subflow: {blueprint: child}}"
    ).replace('    params: {n: "${ initial_data.n }"}\n', "")
    cycle = cycle.replace("    retry: {max_attempts: 1}\n", "")
    (tmp_path / "child.yaml").write_text(cycle)
    _, problems = validate_paths([tmp_path])
    found = sorted(f"{p.file.rsplit('/', 1)[-1]}:{p.line}: {p.message}" for p in problems)
    assert found == [
        "child.yaml:6: subflow calls its own blueprint 'child', a cycle: child -> child",
        "parent.yaml:10: subflow blueprint 'chld' is not loaded; did you mean 'child'?",
    ]


def test_a_race_cannot_say_how_failed_branches_are_handled() -> None:
    text = RACE.replace("compete: true", "compete: true\n      on_branch_failure: collect")
    with pytest.raises(Exception, match="does not apply to a race") as raised:
        bp(text)
    assert ":8:7:" in str(raised.value)


# -- subflow branches ---------------------------------------------------------------------------


def test_a_for_each_of_subflows_joins_their_outputs_in_order() -> None:
    blueprints = family(each_child())
    job = RulesDriver(blueprints["parent"], {"numbers": [1, 2, 3]}, blueprints=blueprints)
    assert len(job.children) == 2  # max_concurrency
    first = job.branch_child(0)
    assert first.doc["parent"] == {"job_id": "job", "state": "fan", "depth": 1, "branch": 0}
    assert first.doc["initial_data"] == {"n": 1}
    second = job.branch_child(1)
    second.result(second.lease("w"), data={"doubled": 4})  # the third starts
    third = job.branch_child(2)
    assert third.doc["initial_data"] == {"n": 3}
    third.result(third.lease("w"), data={"doubled": 6})
    assert job.status == "running"
    first.result(first.lease("w"), data={"doubled": 2})
    assert job.status == "finished"
    assert job.doc["result"] == [{"doubled": 2}, {"doubled": 4}, {"doubled": 6}]


def test_a_failed_child_fails_its_branch_with_its_error_code() -> None:
    blueprints = family(each_child())
    job = RulesDriver(blueprints["parent"], {"numbers": [1, 2]}, blueprints=blueprints)
    other = job.branch_child(1)
    failing = job.branch_child(0)
    failing.result(failing.lease("w"), "failure", error={"code": "PERMANENT_ERROR"})
    assert (job.status, job.doc["state"]) == ("failed", "caught")  # error:CHILD_BROKE
    details = job.doc["error"]["details"]
    assert (details["code"], details["branch"]) == ("CHILD_BROKE", 0)
    assert details["child_job_id"] == failing.doc["id"]
    assert other.status == "cancelled"  # fail_fast cancels the sibling's child job


def test_collect_keeps_a_failed_childs_error_as_its_result() -> None:
    blueprints = family(each_child("collect"))
    job = RulesDriver(blueprints["parent"], {"numbers": [1, 2]}, blueprints=blueprints)
    job.branch_child(0).result(job.branch_child(0).lease("w"), "failure")
    job.branch_child(1).result(job.branch_child(1).lease("w"), data={"doubled": 4})
    assert job.status == "finished"
    assert job.doc["result"][0]["error"]["code"] == "CHILD_BROKE"
    assert job.doc["result"][1] == {"doubled": 4}


def test_a_race_of_a_task_and_a_subflow_cancels_the_losing_child() -> None:
    blueprints = family(MIXED_RACE)
    job = RulesDriver(blueprints["parent"], {"n": 5}, blueprints=blueprints)
    child = job.branch_child(1)
    job.result(job.lease("w"), data="quick")
    assert job.doc["result"] == {"branch": "fast", "result": "quick"}
    assert child.status == "cancelled"
    assert job.ignored == ["not_waiting_for_this_child"]  # its end came after the race


def test_a_race_won_by_a_child_cancels_the_task() -> None:
    blueprints = family(MIXED_RACE)
    job = RulesDriver(blueprints["parent"], {"n": 5}, blueprints=blueprints)
    task = job.lease("w")
    child = job.branch_child(1)
    assert child.doc["initial_data"] == {"n": 5, "tag": "deep"}
    child.result(child.lease("cw"), data={"doubled": 10})
    assert job.doc["result"] == {"branch": "deep", "result": {"doubled": 10}}
    assert job.cancel_requests == [("w", task["task_id"])]


def test_a_subflow_branch_without_input_gets_the_jobs_initial_data() -> None:
    text = MIXED_RACE.replace(
        '{subflow: {blueprint: child, input: {n: "${ initial_data.n }", tag: "${ branch }"}}}',
        "{subflow: {blueprint: child}}",
    )
    blueprints = family(text)
    job = RulesDriver(blueprints["parent"], {"n": 7, "x": 1}, blueprints=blueprints)
    assert job.branch_child(1).doc["initial_data"] == {"n": 7, "x": 1}


@pytest.mark.parametrize(
    ("branch", "where", "message"),
    [
        (
            "{task: a, subflow: {blueprint: child}}",
            ":9:",
            "give the branch a `task` or a `subflow`, not both",
        ),
        (
            "{subflow: {blueprint: child}, retry: {max_attempts: 2}}",
            ":9:",
            "`retry` goes with `task`, not with a subflow",
        ),
        (
            "{}",
            ":9:",
            "missing required field 'task' (what the branch runs: a `task` or a `subflow`)",
        ),
    ],
)
def test_a_branch_runs_a_task_or_a_subflow(branch: str, where: str, message: str) -> None:
    text = MIXED_RACE.replace("fast: {task: lookup, retry: {max_attempts: 1}}", f"fast: {branch}")
    _, problems = check_text(text)
    assert [(where in str(p), p.message) for p in problems] == [(True, message)]


def test_a_paused_fan_out_starts_no_child_until_resumed() -> None:
    blueprints = family(each_child())
    job = RulesDriver(blueprints["parent"], {"numbers": [1, 2, 3]}, blueprints=blueprints)
    job.pause()
    first = job.branch_child(0)
    first.result(first.lease("w"), data={"doubled": 2})  # a running child ends meanwhile
    assert len(job.children) == 2  # the third branch is held, not started
    assert [r["branch"] for r in job.doc["retries"]] == [2]
    job.resume()
    third = job.branch_child(2)
    assert third.doc["initial_data"] == {"n": 3}
    for child in (job.branch_child(1), third):
        child.result(child.lease("w"), data={"doubled": 2 * child.doc["initial_data"]["n"]})
    assert job.doc["result"] == [{"doubled": 2}, {"doubled": 4}, {"doubled": 6}]


def test_cancelling_the_parent_cancels_its_branch_children() -> None:
    blueprints = family(each_child())
    job = RulesDriver(blueprints["parent"], {"numbers": [1, 2, 3]}, blueprints=blueprints)
    job.cancel()
    assert job.status == "cancelled"
    assert sorted(c.status for c in job.children.values()) == ["cancelled", "cancelled"]


def test_a_lost_child_is_started_again_and_a_lost_notice_found_by_the_timer() -> None:
    blueprints = family(each_child())
    job = RulesDriver(blueprints["parent"], {"numbers": [1]}, blueprints={})  # not loaded
    assert job.children == {}
    assert job.doc["parallel"]["children"]
    child_id = job.doc["parallel"]["children"]["0"]["child_id"]
    job.blueprints = blueprints  # ... until it is
    job.fire_due(job.now + job.settings.subflow_check_ms)
    child = job.branch_child(0)
    assert child.doc["id"] == child_id  # started again with the same id
    child.notify = None  # its `done` notification is lost
    child.result(child.lease("w"), data={"doubled": 2})
    assert job.status == "running"
    job.fire_due(job.now + job.settings.subflow_check_ms)
    assert (job.status, job.doc["result"]) == ("finished", [{"doubled": 2}])


@pytest.mark.parametrize("mode", ["fail_fast", "collect"])
def test_a_for_each_of_subflows_nested_too_deep_fails_the_state_once(mode: str) -> None:
    blueprints = family(each_child(mode))
    job = RulesDriver(
        blueprints["parent"],
        {"numbers": list(range(5000))},  # one failure, not one per item (nor a recursion)
        blueprints=blueprints,
        settings=RuntimeSettings(max_subflow_depth=1),
        parent={"job_id": "up", "state": "s", "depth": 1},
    )
    assert job.children == {}
    assert job.doc["steps"]["fan"]["error"]["code"] == "SUBFLOW_DEPTH"
    assert (job.status, job.doc["parallel"], job.branch_items) == ("failed", None, {})


def test_a_static_subflow_branch_nested_too_deep_fails_and_the_race_goes_on() -> None:
    blueprints = family(MIXED_RACE)
    job = RulesDriver(
        blueprints["parent"],
        {"n": 1},
        blueprints=blueprints,
        settings=RuntimeSettings(max_subflow_depth=1),
        parent={"job_id": "up", "state": "s", "depth": 1},
    )
    assert job.children == {}
    [ended] = job.events("branch_ended")
    assert (ended["branch"], ended["error"]["code"]) == ("deep", "SUBFLOW_DEPTH")
    job.result(job.lease("w"), data="quick")
    assert job.doc["result"] == {"branch": "fast", "result": "quick"}


# -- any interleaving ---------------------------------------------------------------------------

ACTIONS = st.lists(
    st.tuples(
        st.sampled_from(["lease", "win", "fail", "late", "tick", "child"]), st.integers(0, 9)
    ),
    max_size=25,
)


def _act(job: RulesDriver, action: str, n: int) -> None:
    leased = sorted(t for t, lease in job.leases.items() if lease.state == "leased")
    if action == "lease" and job.queued():
        job.lease(f"w{n % 3}")
    elif action in ("win", "fail") and leased:
        task = leased[n % len(leased)]
        if action == "win":
            job.result(task, data=task)
        else:
            job.result(task, "failure", error={"code": "PERMANENT_ERROR"})
    elif action == "late" and job.payloads:
        task = sorted(job.payloads)[n % len(job.payloads)]
        job.result(task, data=task, worker=f"w{n % 3}")
    elif action == "tick":
        job.fire_due(job.now + n * SECOND)
    elif action == "child" and job.children:
        child = list(job.children.values())[n % len(job.children)]
        if not child.ended and child.queued():
            child.result(child.lease("cw"), data={"doubled": n} if n % 2 else None)


@settings(max_examples=150, deadline=None)
@given(actions=ACTIONS)
def test_any_interleaving_of_a_race_has_one_winner_and_no_launch_after_it(
    actions: list[tuple[str, int]],
) -> None:
    """Whatever the order of leases, wins, failures, late results, child ends and time:
    at most one branch wins, nothing is launched after the state is left, no task or child
    of the race outlives it, and the winner is the first success."""
    blueprints = family(MIXED_RACE)
    job = RulesDriver(blueprints["parent"], {"n": 1}, blueprints=blueprints)
    for action, n in actions:
        queued_before = len(job.payloads) + len(job.children)
        was_running = job.doc["parallel"] is not None
        _act(job, action, n)
        names = job.event_names()
        assert names.count("parallel_won") <= 1
        if not was_running:
            assert len(job.payloads) + len(job.children) == queued_before
        if job.doc["parallel"] is None:
            assert job.leases == {}
            assert all(c.ended for c in job.children.values())
    if job.status == "finished":
        won = job.events("parallel_won")[0]
        assert job.doc["result"]["branch"] == won["branch"]


CHILD_ACTIONS = st.lists(
    st.tuples(st.sampled_from(["ok", "fail", "lose", "tick", "cancel"]), st.integers(0, 9)),
    max_size=30,
)


@settings(max_examples=100, deadline=None)
@given(count=st.integers(0, 5), actions=CHILD_ACTIONS)
def test_any_order_of_child_ends_and_lost_notices_joins_a_collect_fan_out_once(
    count: int, actions: list[tuple[str, int]]
) -> None:
    """Whatever the order in which children end, whether their notices reach the parent or
    are lost (found by the timer), and however time passes: the fan-out never runs more
    than max_concurrency children, joins once with each item's outcome in item order, and
    leaves no child running once it has moved on (or was cancelled)."""
    blueprints = family(each_child("collect"))
    job = RulesDriver(blueprints["parent"], {"numbers": list(range(count))}, blueprints=blueprints)
    outcome: dict[int, str] = {}
    for action, n in actions:
        running = [c for c in job.children.values() if not c.ended and c.queued()]
        if action in ("ok", "fail", "lose") and running:
            child = running[n % len(running)]
            if action == "lose":
                child.notify = None  # this child's notice never reaches the parent
            item = child.doc["initial_data"]["n"]
            if action == "fail":
                child.result(child.lease("w"), "failure")
            else:
                child.result(child.lease("w"), data={"doubled": 2 * item})
            outcome[item] = action
        elif action == "tick":
            job.fire_due(job.now + n * SECOND)
        elif action == "cancel" and n == 0:
            job.cancel()
        live = [c for c in job.children.values() if not c.ended]
        assert len(live) <= 2  # max_concurrency
        assert job.event_names().count("parallel_joined") <= 1
        if job.doc["parallel"] is None:
            assert live == []
    for _ in range(20):  # the children still running end well, and time passes
        for child in [c for c in job.children.values() if not c.ended and c.queued()]:
            item = child.doc["initial_data"]["n"]
            child.result(child.lease("w"), data={"doubled": 2 * item})
            outcome[item] = "ok"
        job.fire_due(job.now + 10 * SECOND)
    if job.status == "cancelled":
        return
    assert job.status == "finished"
    for item, got in enumerate(job.doc["result"]):
        if outcome[item] == "fail":
            assert got["error"]["code"] == "CHILD_BROKE"
        else:
            assert got == {"doubled": 2 * item}
