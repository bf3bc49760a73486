"""Tests of benchmarks/gpu_check.py: it skips cleanly without CUDA, its plan and commands are what
runs, and its runner tells pass from fail."""

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


def test_plan_lists_every_stored_notebook_and_both_finetune_recipes_without_running_anything(capsys):
    from lessonlib.authoring.notebooks import stored_notebooks
    from lessonlib.finetune import parse_arguments

    check = _load()
    assert check.main(["--plan"]) == 0
    lines = capsys.readouterr().out.splitlines()
    notebooks = [line.split()[-1] for line in lines if line.startswith("notebook")]
    assert notebooks == [f"{p.parent.name}/{p.name}" for p in stored_notebooks()]
    assert any(n.startswith("solutions/") for n in notebooks) and not any(n.startswith("exercises/") for n in notebooks)
    recipes = []
    for _, argv in check.finetune_commands(REPO / "runs"):
        assert argv[1:4] == ["-m", "lessonlib", "finetune"]
        args = parse_arguments(argv[4:])                 # the command line the fine-tune really accepts
        recipes.append((args.compute_dtype, args.precision, args.steps))
    assert recipes == [("bfloat16", "bf16", 4), ("float16", "fp16", 4)]   # an A100/H100's, then a T4's
    assert sum(line.startswith("command") for line in lines) == 2 + check.MEMORY_SCRIPT.is_file()


def test_the_report_names_the_gpu_and_goes_where_save_puts_it():
    from types import SimpleNamespace

    check = _load()
    t4 = SimpleNamespace(name="Tesla T4", total_memory=15 * 2**30, major=7, minor=5)
    line = check.header_line(t4, native_bf16=False)
    assert line.startswith("GPU: Tesla T4, 15.0 GiB, compute capability 7.5; native bf16: False; torch ")
    assert "bitsandbytes " in line
    assert check.report_path("NVIDIA A100-SXM4-80GB") == REPO / "benchmarks" / "gpu_check-nvidia-a100-sxm4-80gb.txt"


def test_a_path_that_is_not_a_notebook_is_one_line_and_status_2():
    done = subprocess.run([sys.executable, str(SCRIPT), "no/such.ipynb"], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 2 and done.stderr == "error: not a notebook file: no/such.ipynb\n"
