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
    assert result.returncode == 2 and "--jobs: must be a whole number of at least 1, got '0'" in result.stderr
    assert result.stderr.count("\n") == 1


def test_every_command_is_a_modules_main():
    import importlib

    from lessonlib.__main__ import COMMANDS

    assert {"env", "notebooks", "params", "memory", "route", "finetune", "prepare", "exercises", "grade"} <= set(COMMANDS)
    for name, (module, _help) in COMMANDS.items():
        assert callable(importlib.import_module(module).main), name
    result = run("notebooks", "--help")
    assert result.returncode == 0 and all(action in result.stdout for action in ("execute", "check", "sync"))


def test_unknown_command_is_a_usage_error():
    result = run("frobnicate")
    assert result.returncode == 2 and "invalid choice" in result.stderr and result.stderr.count("\n") == 1
    result = run()
    assert result.returncode == 2 and result.stderr.startswith("error: ") and result.stderr.count("\n") == 1


# --- params, memory and route through `python -m lessonlib`: one line and status 2 for bad values ---


def test_memory_json_for_scripts():
    import json

    result = run("memory", "--model", "llama-2-7b", "--method", "full", "--precision", "amp-bf16", "--json")
    assert result.returncode == 0, result.stderr
    parts = json.loads(result.stdout)["bytes"]
    assert (parts["trainable_weights"] + parts["gradients"] + parts["optimizer_state"]) / 6_738_415_616 >= 16


def test_bad_values_on_the_command_line_are_one_line_without_traceback(tmp_path):
    (tmp_path / "config.json").write_text("not json")
    cases = [("memory", "--gpu-gb", "inf"), ("route", "--gpu-gb", "0"), ("route", "--gpu-gb", "nan"),
             ("params", "--rank", "abc"), ("memory", "--rank", "1e9"), ("memory", "--model", str(tmp_path)),
             ("route", "--gpu-gb", "12", "--model", str(tmp_path / "nowhere")), ("params", "--model", "nope")]
    for args in cases:
        result = run(*args)
        assert result.returncode == 2, args
        assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: "), (args, result.stderr)
        assert "Traceback" not in result.stderr and result.stdout == "", args


def test_grade_and_exercises_are_delegated_to_the_authoring_half():
    result = run("grade", "--help")
    assert result.returncode == 0
    for option in ("--resume", "--no-sandbox", "--memory", "--jobs", "--timeout"):
        assert option in result.stdout
    result = run("exercises", "--help")
    assert result.returncode == 0 and "build" in result.stdout
