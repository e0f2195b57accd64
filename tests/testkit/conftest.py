"""Blueprint test files for the `interlock test` tests."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from tests.conftest import BLUEPRINTS


@pytest.fixture
def bp_dir(tmp_path: Path) -> Path:
    """A blueprint folder holding copies of the examples, and an empty tests/ folder."""
    for path in BLUEPRINTS.glob("*.yaml"):
        (tmp_path / path.name).write_text(path.read_text(encoding="utf-8"), encoding="utf-8")
    (tmp_path / "tests").mkdir()
    return tmp_path


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path
