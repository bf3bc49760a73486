"""Tests of benchmarks/gpu_check.py: it skips cleanly without CUDA, and its runner tells pass from fail."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import nbformat
import pytest
import torch

from tests.conftest import REPO

SCRIPT = REPO / "benchmarks" / "gpu_check.py"


def _load():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the check would really run")
def test_without_cuda_it_says_so_in_one_line_and_exits_0():
    done = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert done.stdout == _load().SKIP_MESSAGE + "\n"


def _notebook(tmp_path, name, source):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source)])
    path = tmp_path / name
    nbformat.write(nb, path)
    return path


@pytest.mark.slow
def test_a_notebook_passes_or_fails_on_its_asserts(tmp_path):
    check = _load()
    good = check.run_notebook(_notebook(tmp_path, "good.ipynb", "assert 1 + 1 == 2"))
    bad = check.run_notebook(_notebook(tmp_path, "bad.ipynb", "x = 3\nassert x == 2, 'x is not 2'"))
    assert good.passed and good.detail == ""
    assert not bad.passed and bad.detail == "AssertionError: x is not 2"
    assert "FAIL" in bad.line() and "bad.ipynb" in bad.line()
    assert nbformat.read(tmp_path / "bad.ipynb", as_version=4).cells[0].outputs == []  # the stored file is untouched


def test_a_command_passes_on_exit_status_0_and_reports_its_last_error_line():
    check = _load()
    assert check.run_command("ok", [sys.executable, "-c", "pass"]).passed
    failed = check.run_command("bad", [sys.executable, "-c", "import sys; sys.exit('no GPU kernel for this')"])
    assert not failed.passed and failed.detail == "no GPU kernel for this"
