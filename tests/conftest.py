"""Shared fixtures of the course's test suite."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def repo() -> Path:
    """The repository's root folder."""
    return REPO


@pytest.fixture
def python() -> str:
    """The Python of the course environment (the one running the tests)."""
    return sys.executable
