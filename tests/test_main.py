"""Tests of the command line, python -m lessonlib."""

from __future__ import annotations

import subprocess
import sys


def run(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lessonlib", *args], capture_output=True, text=True, cwd=cwd)


def test_env_prints_the_report():
    result = run("env")
    assert result.returncode == 0
    assert "torch" in result.stdout and "4-bit (bitsandbytes)" in result.stdout


def test_notebooks_check_passes_on_the_stored_notebooks(repo):
    result = run("notebooks", "check", cwd=repo)
    assert result.returncode == 0, result.stdout
    assert "0 problem(s)" in result.stdout


def test_notebooks_check_fails_on_a_bad_notebook(tmp_path):
    bad = tmp_path / "bad.ipynb"
    bad.write_text("{}")
    result = run("notebooks", "check", str(bad))
    assert result.returncode == 1 and "set-up cell" in result.stdout


def test_execute_says_clearly_what_is_wrong(tmp_path):
    result = run("notebooks", "execute", str(tmp_path / "nope.ipynb"))
    assert result.returncode == 2 and "no such notebook" in result.stderr
    result = run("notebooks", "execute", "--jobs", "0")
    assert result.returncode == 2 and "--jobs must be at least 1" in result.stderr


def test_unknown_command_is_a_usage_error():
    result = run("frobnicate")
    assert result.returncode == 2 and "invalid choice" in result.stderr
