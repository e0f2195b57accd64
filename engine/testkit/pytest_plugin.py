"""A pytest plugin (entry point `pytest11`): every `*.test.yaml` file pytest meets is
collected, and each of its cases runs as a pytest item, as `interlock test` runs it.

Disable it with `-p no:interlock`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from engine.blueprint.loader import TEST_FILE_SUFFIXES

_CACHE = pytest.StashKey[Any]()


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    if file_path.name.endswith(TEST_FILE_SUFFIXES):
        return BlueprintTestFile.from_parent(parent, path=file_path)
    return None


class CaseFailed(Exception):
    """A blueprint test case broke its expectations (`failures` says how)."""

    def __init__(self, failures: list[str]) -> None:
        super().__init__("\n".join(failures))
        self.failures = failures


class BlueprintTestFile(pytest.File):
    def collect(self) -> Iterator[pytest.Item]:
        from engine.testkit.spec import load_test_file  # lazily: only for such files

        test_file = load_test_file(self.path)  # TestFileInvalid: a collection error
        for case in test_file.cases:
            yield BlueprintCase.from_parent(self, name=case.name, test_file=test_file, case=case)

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException]) -> str:  # type: ignore[override]  # pytest types the return loosely
        from engine.testkit.spec import TestFileInvalid

        if isinstance(excinfo.value, TestFileInvalid):
            return f"invalid blueprint test file:\n{excinfo.value}"
        return str(super().repr_failure(excinfo))


class BlueprintCase(pytest.Item):
    def __init__(self, *, test_file: Any, case: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.test_file = test_file
        self.case = case

    def runtest(self) -> None:
        from engine.testkit.suite import BlueprintCache, run_one

        stash = self.config.stash
        if _CACHE not in stash:
            stash[_CACHE] = BlueprintCache()  # blueprints load once per session
        result = asyncio.run(run_one(stash[_CACHE], self.test_file, self.case))
        if not result.passed:
            raise CaseFailed(result.failures)

    def repr_failure(
        self,
        excinfo: pytest.ExceptionInfo[BaseException],
        style: Any = None,
    ) -> str:
        if isinstance(excinfo.value, CaseFailed):
            lines = "\n".join(excinfo.value.failures)
            return f"blueprint test {self.case.name!r} failed:\n{lines}"
        return str(super().repr_failure(excinfo, style=style))

    def reportinfo(self) -> tuple[Path, int, str]:
        return self.path, self.case.line - 1, f"blueprint case: {self.case.name}"
