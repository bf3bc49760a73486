"""Tests of lessonlib.check (the students' self-check) and of the split between the two halves of lessonlib."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from lessonlib.check import GRADING_NOTE, check

LESSONLIB = Path(__file__).resolve().parent.parent / "lessonlib"
# Every module a lesson may import; __main__ is the command line, which also runs the authoring commands.
LESSON_HALF = sorted(p for p in LESSONLIB.glob("*.py") if p.name != "__main__.py")


def test_check_reports_pass_failure_and_hint_and_never_raises(capsys):
    with check("q1", hint="look at the shapes"):
        assert 1 + 1 == 2
    with check("q1", hint="look at the shapes"):
        assert 1 + 1 == 3, "one and one"
    with check("q2"):
        undefined_name  # noqa: F821 (the student has not run the answer cell)
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"q1: the checks in this cell pass. {GRADING_NOTE}"
    assert out[1] == "q1: not yet. AssertionError: one and one"
    assert out[2] == "    hint: look at the shapes"
    assert out[3].startswith("q2: not answered yet (NameError")
    with pytest.raises(ValueError, match="question name"):
        check("")


def test_check_lets_an_interrupt_through():
    with pytest.raises(KeyboardInterrupt):
        with check("q1"):
            raise KeyboardInterrupt


def _imported_modules(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


@pytest.mark.parametrize("path", LESSON_HALF, ids=lambda p: p.name)
def test_the_lesson_half_never_imports_the_authoring_half(path):
    assert not [m for m in _imported_modules(path) if m.startswith("lessonlib.authoring")]


def test_the_import_checker_sees_an_authoring_import(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from lessonlib.authoring import grading\n")
    assert "lessonlib.authoring" in _imported_modules(module)


def test_a_notebook_importing_check_loads_nothing_of_the_authoring_half():
    code = ("import sys; from lessonlib.check import check; "
            "print(sorted(m for m in sys.modules if m.startswith('lessonlib')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['lessonlib', 'lessonlib.check']"
