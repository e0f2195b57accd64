"""The corpus of broken blueprints: every problem is reported, where a user would look for it.

Each file in `tests/corpus/invalid/` is a small blueprint with one kind of mistake. Its leading
comment lines say what the loader must report:

    # expect: LINE:COL: $.json.path: message fragment
    # expect-warning: LINE:COL: $.json.path: message fragment

Each expected problem must be reported with exactly that line, column, JSON path and severity,
and with a message containing the fragment; any other problem (error or warning) fails the
test. Folder cases in `tests/corpus/folders/<case>/` hold several files validated together,
and an `expect.txt` whose lines name the file too: `# expect: a.yaml:LINE:COL: $.path: text`.
Files in `tests/corpus/valid/` must validate with no problem at all.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest

from engine.blueprint.loader import validate_paths
from engine.errors import Problem, Severity
from tests.conftest import BLUEPRINTS, ROOT

CORPUS = Path(__file__).resolve().parent / "corpus"
INVALID = sorted((CORPUS / "invalid").glob("*.yaml"))
VALID = sorted(p for p in (CORPUS / "valid").iterdir() if p.suffix in (".yaml", ".yml"))
FOLDERS = sorted(p for p in (CORPUS / "folders").iterdir() if p.is_dir())

_EXPECT = re.compile(
    r"^#\s*expect(?P<warning>-warning)?:\s*"
    r"(?:(?P<file>[^\s:]+):)?(?P<line>\d+):(?P<column>\d+):\s+"
    r"(?P<path>\$\S*):\s+(?P<fragment>\S.*?)\s*$"
)
# `file:LINE:COL: $.path: message`, as `interlock validate` prints a problem.
_PROBLEM_LINE = re.compile(r"^(?P<file>[^:]+):(?P<line>\d+):(?P<column>\d+): (?P<path>\$\S*): .+$")


@dataclass(frozen=True)
class Expected:
    """One problem a corpus case must produce."""

    file: str  # relative to the case (its own name for a single-file case)
    line: int
    column: int
    path: str
    fragment: str
    severity: Severity

    def matches(self, file: str, problem: Problem) -> bool:
        return (
            file == self.file
            and problem.line == self.line
            and problem.column == self.column
            and problem.path == self.path
            and problem.severity == self.severity
            and self.fragment in problem.message
        )

    def __str__(self) -> str:
        kind = "expect-warning" if self.severity == "warning" else "expect"
        return f"{kind}: {self.file}:{self.line}:{self.column}: {self.path}: {self.fragment}"


def parse_expectations(text: str, default_file: str | None, where: str) -> list[Expected]:
    """The `# expect:` lines of `text`. With `default_file` (a single-file case) they must
    come first, before any YAML, and name no file; otherwise each must name one."""
    expected: list[Expected] = []
    in_header = True
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if default_file is not None and line and not line.startswith("#"):
            in_header = False
        if not re.match(r"^#\s*expect", line):
            continue
        match = _EXPECT.match(line)
        if match is None:
            raise ValueError(f"{where}:{number}: malformed expectation {line!r}")
        if not in_header:
            raise ValueError(f"{where}:{number}: expectations go before the YAML body")
        file = match["file"] or default_file
        if file is None or (default_file is not None and match["file"]):
            raise ValueError(f"{where}:{number}: an expectation must name its file here")
        expected.append(
            Expected(
                file=file,
                line=int(match["line"]),
                column=int(match["column"]),
                path=match["path"],
                fragment=match["fragment"],
                severity="warning" if match["warning"] else "error",
            )
        )
    return expected


def _relative(file: str, base: Path) -> str:
    path = Path(file)
    try:
        return path.resolve().relative_to(base.resolve()).as_posix()
    except ValueError:
        return path.as_posix()


def _show(file: str, problem: Problem) -> str:
    where = f"{file}:{problem.line}:{problem.column}: {problem.path}"
    return f"{where}: {problem.severity}: {problem.message}"


def compare(expected: list[Expected], reported: Iterable[tuple[str, Problem]]) -> list[str]:
    """Differences between expected and reported problems, as lines (empty when they agree).

    Each reported problem satisfies at most one expectation, so a problem reported twice
    where it was expected once shows up as unexpected."""
    unmatched = list(reported)
    everything = [_show(file, problem) for file, problem in unmatched]
    missing: list[Expected] = []
    for item in expected:
        found = next((i for i, (f, p) in enumerate(unmatched) if item.matches(f, p)), None)
        if found is None:
            missing.append(item)
        else:
            del unmatched[found]
    if not missing and not unmatched:
        return []
    return [
        "expected but not reported:",
        *(f"  {item}" for item in missing),
        "reported but not expected:",
        *(f"  {_show(file, problem)}" for file, problem in unmatched),
        "everything reported:",
        *(f"  {line}" for line in everything),
    ]


def _case_expectations(path: Path) -> list[Expected]:
    return parse_expectations(path.read_text(encoding="utf-8"), path.name, str(path))


def _folder_expectations(folder: Path) -> list[Expected]:
    expect = folder / "expect.txt"
    return parse_expectations(expect.read_text(encoding="utf-8"), None, str(expect))


def test_the_corpus_is_well_formed() -> None:
    assert len(INVALID) >= 40
    for path in INVALID:
        assert _case_expectations(path), f"{path.name} has no `# expect:` line"
    assert len(FOLDERS) >= 4
    for folder in FOLDERS:
        assert sorted(folder.glob("*.yaml")), f"{folder.name} holds no blueprint"
        expected = _folder_expectations(folder)
        assert expected, f"{folder.name}/expect.txt has no `# expect:` line"
        for item in expected:
            assert (folder / item.file).is_file(), f"{folder.name}: no file {item.file}"
    assert VALID


def test_expectation_lines_are_parsed_strictly() -> None:
    text = "# expect: 3:5: $.states.a.on: duplicate key\n# expect-warning: 1:1: $: hm\nx: 1\n"
    assert parse_expectations(text, "f.yaml", "f.yaml") == [
        Expected("f.yaml", 3, 5, "$.states.a.on", "duplicate key", "error"),
        Expected("f.yaml", 1, 1, "$", "hm", "warning"),
    ]
    with pytest.raises(ValueError, match="malformed"):
        parse_expectations("# expect: 3: $: no column\n", "f.yaml", "f.yaml")
    with pytest.raises(ValueError, match="before the YAML body"):
        parse_expectations("x: 1\n# expect: 1:1: $: late\n", "f.yaml", "f.yaml")
    with pytest.raises(ValueError, match="name its file"):
        parse_expectations("# expect: 1:1: $: which file?\n", None, "expect.txt")


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.name)
def test_invalid_blueprint_reports_exactly_the_expected_problems(path: Path) -> None:
    expected = _case_expectations(path)
    blueprints, problems = validate_paths([path])
    differences = compare(expected, [(_relative(p.file, path.parent), p) for p in problems])
    assert not differences, f"{path.name}\n" + "\n".join(differences)
    if any(item.severity == "error" for item in expected):
        assert len(blueprints) == 0
    else:
        assert len(blueprints) == 1, "a file with only warnings still loads"


@pytest.mark.parametrize("folder", FOLDERS, ids=lambda p: p.name)
def test_folder_reports_exactly_the_expected_problems(folder: Path) -> None:
    expected = _folder_expectations(folder)
    _, problems = validate_paths([folder])
    differences = compare(expected, [(_relative(p.file, folder), p) for p in problems])
    assert not differences, f"{folder.name}/\n" + "\n".join(differences)


@pytest.mark.parametrize("path", VALID, ids=lambda p: p.name)
def test_valid_blueprint_has_no_problems_at_all(path: Path) -> None:
    blueprints, problems = validate_paths([path])
    assert [str(p) for p in problems] == []
    assert len(blueprints) == 1


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n", "---\n"])
def test_an_empty_file_is_an_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text(text, encoding="utf-8")
    blueprints, problems = validate_paths([path])
    assert len(blueprints) == 0
    assert [(p.line, p.column, p.path, p.severity) for p in problems] == [(1, 1, "$", "error")]
    assert "empty" in problems[0].message


def _interlock(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "interlock_cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def test_the_cli_prints_each_problem_as_file_line_column_path_message() -> None:
    name = "tests/corpus/invalid/duplicate_top_key.yaml"
    run = _interlock("validate", name)
    assert run.returncode == 1, run.stderr
    lines = run.stdout.splitlines()
    assert lines == [f"{name}:4:1: $.start: duplicate key 'start' (first defined at line 3)"]
    assert all(_PROBLEM_LINE.match(line) for line in lines)


def test_the_cli_exits_0_on_warnings_and_marks_them() -> None:
    name = "tests/corpus/invalid/choice_without_otherwise.yaml"
    run = _interlock("validate", name)
    assert run.returncode == 0, run.stdout + run.stderr
    [line] = run.stdout.splitlines()
    assert line.startswith(f"{name}:6:5: $.states.route.choice: warning: no `otherwise`")
    quiet = _interlock("validate", "--no-warnings", name)
    assert (quiet.returncode, quiet.stdout) == (0, "")


def test_the_cli_exits_0_on_the_example_blueprints() -> None:
    run = _interlock("validate", str(BLUEPRINTS.relative_to(ROOT)))
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout == ""
