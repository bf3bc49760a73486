"""Shared fixtures of the course's test suite."""

from __future__ import annotations

import contextlib
import io
import subprocess
import sys
from pathlib import Path
from typing import Callable

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


def run_main(main: Callable[[list[str]], int], args: list[str]) -> subprocess.CompletedProcess:
    """Run a command's ``main(argv)`` in this process, as ``python -m lessonlib ...`` would run it:
    its exit status (argparse's ``SystemExit`` included), stdout and stderr. Saves a new interpreter and
    its imports per call; ``tests/test_main.py`` checks the real entry point in a subprocess."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(args))
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())
