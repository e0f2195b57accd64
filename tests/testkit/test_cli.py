"""`interlock test` as a user runs it: a real process, its output and exit status."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from engine.blueprint.loader import load_blueprints
from tests.conftest import BLUEPRINTS, ROOT
from tests.testkit.conftest import write


def interlock(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "interlock_cli", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        check=False,
    )


def test_every_example_blueprint_has_cases_that_take_every_edge(tmp_path: Path) -> None:
    # The README's command, on the committed cases next to the examples.
    run = interlock("test", "blueprints/", "--coverage", "--graph", str(tmp_path))
    assert run.returncode == 0, run.stdout + run.stderr
    assert "FAIL" not in run.stdout
    for name in load_blueprints([BLUEPRINTS]).blueprints:
        assert (tmp_path / f"{name}.dot").is_file()
    lines = run.stdout.splitlines()
    assert lines[-1] == "coverage: 52/52 edges (100.0%), 54/54 states"
    assert not any("never taken" in x or "never entered" in x for x in lines)
    dot = (tmp_path / "expense_approval.dot").read_text()
    assert 'label="timeout (2d)", color="#1565c0"' in dot


def test_a_failing_case_exits_1_with_a_diff(tmp_path: Path) -> None:
    for path in BLUEPRINTS.glob("*.yaml"):
        (tmp_path / path.name).write_text(path.read_text())
    write(
        tmp_path,
        "reminder.test.yaml",
        """\
        blueprint: reminder
        cases:
          - name: expects another text
            initial_data: {user: ann}
            tasks: {send: {}}
            expect:
              output: {sent: "Bye ann"}
        """,
    )
    run = interlock("test", str(tmp_path), "--coverage")
    assert run.returncode == 1
    assert f"FAIL {tmp_path}/reminder.test.yaml::expects another text" in run.stdout
    assert '-  "sent": "Bye ann"' in run.stdout
    assert '+  "sent": "Hello ann, this is your reminder."' in run.stdout
    assert "  edge never taken: compose --next--> pause" not in run.stdout
    assert "0 passed, 1 failed" in run.stderr


def test_an_invalid_test_file_exits_1_naming_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "x.test.yaml", "blueprint: reminder\ncases:\n  - {nam: a}\n")
    run = interlock("test", str(path))
    assert run.returncode == 1
    assert f"{path}:3:5: $.cases[0]: 'name' is a required property" in run.stdout


def test_the_readme_example_is_the_committed_test_file() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    start = readme.index("`blueprints/tests/wait_and_set.test.yaml`:\n\n```yaml\n")
    block = readme[start:].split("```yaml\n", 1)[1].split("```", 1)[0]
    committed = (BLUEPRINTS / "tests" / "wait_and_set.test.yaml").read_text(encoding="utf-8")
    assert _content(block) == _content(committed)


def _content(text: str) -> list[str]:
    """The lines of a YAML text without comments and blank lines."""
    lines = (line.split("#", 1)[0].rstrip() for line in text.splitlines())
    return [line for line in lines if line.strip()]


def test_without_the_embedded_store_the_command_says_what_to_install() -> None:
    code = (
        "import sys; sys.modules['fakeredis'] = None; "  # as if the extra were not installed
        "from interlock_cli import main; sys.exit(main(['test', 'blueprints']))"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert run.returncode == 2
    assert "pip install 'interlock[server]'" in run.stderr
