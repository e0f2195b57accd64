"""Shared fixtures. Tests that need an external program fail (not skip) under CI=true."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BLUEPRINTS = ROOT / "blueprints"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require_program(name: str, hint: str) -> str:
    """Path of `name`; skip locally when missing, but fail in CI."""
    path = shutil.which(name)
    if path is None:
        message = f"`{name}` is not installed ({hint})"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture
def dot_program() -> str:
    return require_program("dot", "apt-get install graphviz")
