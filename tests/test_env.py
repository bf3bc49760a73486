"""Tests of lessonlib.env: report, seeding, Colab detection and set-up, lazy imports."""

from __future__ import annotations

import subprocess
import sys

import pytest

from lessonlib import env


def test_report_lists_versions_device_and_4bit(capsys):
    report = env.environment_report()
    printed = capsys.readouterr().out
    for name in ("python", "lessonlib", "torch", "transformers", "peft", "bitsandbytes", "device", "4-bit"):
        assert name in printed
    assert report.versions["torch"] == env.package_version("torch")
    assert report.device == ("cuda" if __import__("torch").cuda.is_available() else "cpu")
    assert report.bnb_4bit, report.bnb_detail  # bitsandbytes 0.50 quantizes on CPU too


def test_report_can_stay_silent(capsys):
    env.environment_report(print_report=False)
    assert capsys.readouterr().out == ""


def test_report_rows_describe_a_gpu():
    report = env.EnvironmentReport(python="3.11.7", versions={"torch": "2.13.0"}, device="cuda",
                                   gpu_name="Tesla T4", gpu_memory_gib=14.7, bnb_4bit=False, bnb_detail="no")
    text = str(report)
    assert "cuda: Tesla T4, 14.7 GiB" in text
    assert "NOT available: no" in text


def test_bitsandbytes_check_really_quantizes():
    works, detail = env.check_bitsandbytes_4bit("cpu")
    assert works and "ok" in detail


def test_bitsandbytes_check_reports_a_broken_kernel(monkeypatch):
    import bitsandbytes.functional as bnbf

    def broken(packed, state):
        return __import__("torch").zeros(256)

    monkeypatch.setattr(bnbf, "dequantize_4bit", broken)
    works, detail = env.check_bitsandbytes_4bit("cpu")
    assert not works and "wrong values" in detail


def test_bitsandbytes_check_reports_an_exception(monkeypatch):
    import bitsandbytes.functional as bnbf

    def failing(*args, **kwargs):
        raise RuntimeError("no kernel for this device")

    monkeypatch.setattr(bnbf, "quantize_4bit", failing)
    works, detail = env.check_bitsandbytes_4bit("cpu")
    assert not works and "no kernel for this device" in detail


def test_seed_everything_makes_torch_numpy_and_random_repeat():
    import random

    import numpy as np
    import torch

    env.seed_everything(7)
    first = (random.random(), np.random.rand(), torch.randn(2))
    env.seed_everything(7)
    second = (random.random(), np.random.rand(), torch.randn(2))
    assert first[0] == second[0] and first[1] == second[1] and torch.equal(first[2], second[2])


@pytest.mark.parametrize("bad", [-1, 1.5, "0", True, None])
def test_seed_everything_rejects_bad_seeds(bad):
    with pytest.raises(ValueError, match="non-negative integer"):
        env.seed_everything(bad)


def test_colab_detection(monkeypatch):
    assert not env.in_colab()
    monkeypatch.setitem(sys.modules, "google.colab", object())
    assert env.in_colab()


def test_colab_install_keeps_what_colab_provides_and_installs_the_rest():
    from lessonlib.requirements import colab_provided, course_requirements, requirement_name

    command = env.colab_install_command(course_requirements(), colab_provided())
    assert command[:5] == [sys.executable, "-m", "pip", "install", "--quiet"]
    installed = [requirement_name(r) for r in command[5:]]
    assert "torch" not in installed and "numpy" not in installed and "jupyterlab" not in installed
    for needed in ("transformers", "peft", "bitsandbytes", "accelerate", "gguf", "tqdm"):
        assert needed in installed
    assert "peft>=0.21,<0.22" in command  # with its pin


def test_install_colab_requirements_does_nothing_outside_colab(monkeypatch):
    calls = []
    monkeypatch.setattr(env.subprocess, "run", lambda *a, **k: calls.append(a))
    env.install_colab_requirements()
    assert calls == []
    monkeypatch.setitem(sys.modules, "google.colab", object())
    env.install_colab_requirements()
    assert len(calls) == 1 and "install" in calls[0][0]


def test_quiet_logs_drop_only_the_missing_hub_kernel_message(caplog):
    import logging

    env.quiet_library_logs()
    logger = logging.getLogger("bitsandbytes.backends.cpu.ops")
    with caplog.at_level(logging.WARNING, logger=logger.name):
        logger.warning("Failed to load CPU gemm_4bit_forward from kernels-community: x")
        logger.warning("some other warning")
    assert [r.getMessage() for r in caplog.records] == ["some other warning"]


def test_importing_lessonlib_and_env_loads_no_heavy_library():
    code = ("import sys, lessonlib, lessonlib.env, lessonlib.requirements, lessonlib.authoring.notebooks; "
            "heavy = [m for m in ('torch', 'transformers', 'peft', 'bitsandbytes', 'numpy', 'nbclient') "
            "if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
