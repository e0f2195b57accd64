"""The pytest plugin: blueprint test files become pytest items in a user's suite."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import BLUEPRINTS

pytest_plugins = ["pytester"]

CASES = """\
blueprint: reminder
blueprints: ..
cases:
  - name: sends the reminder
    initial_data: {user: ann}
    tasks: {send: {data: {ok: true}}}
    expect: {status: finished, path: [compose, pause, send, done]}
  - name: expects the wrong status
    initial_data: {user: ann}
    tasks: {send: {}}
    expect: {status: failed}
"""


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    folder = pytester.mkdir("blueprints")
    for path in BLUEPRINTS.glob("*.yaml"):
        (folder / path.name).write_text(path.read_text())
    (folder / "tests").mkdir()
    (folder / "tests" / "reminder.test.yaml").write_text(CASES)
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    return pytester


def test_each_case_is_an_item_and_failures_show_what_differs(project: pytest.Pytester) -> None:
    result = project.runpytest_subprocess("-v", "-p", "no:randomly", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*reminder.test.yaml::sends the reminder PASSED*",
            "*reminder.test.yaml::expects the wrong status FAILED*",
            "*blueprint test 'expects the wrong status' failed:*",
            "*status: expected 'failed', got 'finished'*",
        ]
    )


def test_an_invalid_file_is_a_collection_error(project: pytest.Pytester) -> None:
    bad = Path(project.path) / "blueprints" / "tests" / "bad.test.yaml"
    bad.write_text("blueprint: reminder\ncases: []\n")
    result = project.runpytest_subprocess("-p", "no:randomly", "-p", "no:cacheprovider")
    result.stdout.fnmatch_lines(
        ["*invalid blueprint test file:*", "*$.cases: [[]] should be non-empty*"]
    )
    assert result.ret != 0


def test_the_plugin_can_be_turned_off(project: pytest.Pytester) -> None:
    result = project.runpytest_subprocess("-p", "no:interlock", "-p", "no:randomly")
    result.assert_outcomes()
    assert result.ret == pytest.ExitCode.NO_TESTS_COLLECTED
