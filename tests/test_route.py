"""Tests of lessonlib.route: the route chosen from memory estimates, its reasons and its command."""

from __future__ import annotations

import math

import pytest

from lessonlib import route
from lessonlib.memory import GiB, estimate_training_memory


def test_choose_route_follows_the_estimates():
    small = route.choose_route(12, "llama-2-7b", batch=1, seq=512, want_larger_model=True)
    assert small.method == "qlora" and not small.fits("lora") and small.fits("qlora")
    lora = estimate_training_memory("llama-2-7b", "lora", batch=1, seq=512, rank=16)
    assert small.estimates["lora"].total == lora.total and lora.runtime > 0  # default recipe, runtime counted
    assert any("largest registry model" in r for r in small.reasons)
    assert route.choose_route(80, "llama-2-7b", batch=1, seq=512).method == "lora"
    long = route.choose_route(12, "llama-2-7b", batch=4, seq=1024)
    assert (long.method, long.gradient_checkpointing) == ("qlora", True)
    none = route.choose_route(2, "llama-2-7b", batch=8, seq=4096)
    assert none.method is None and none.decision.startswith("Nothing fits")


def test_full_fine_tuning_of_a_7b_model_needs_more_than_an_80_gib_gpu():
    r = route.choose_route(80, "llama-2-7b", batch=1, seq=512)
    full = r.estimates["full"]
    assert not r.fits("full") and full.total > 100 * GiB
    assert (full.trainable_weights + full.gradients + full.optimizer_state) / 6_738_415_616 >= 16


def test_the_runtime_replaces_a_flat_reserve():
    r = route.choose_route(12, "llama-2-7b", batch=1, seq=512)
    q = r.estimates["qlora"]
    assert r.usable_gb == 12 and q.fits(12) == r.fits("qlora")
    assert f"CUDA runtime {q.runtime / GiB:.1f} GiB included" in "\n".join(r.reasons)
    # a GPU just large enough for the tensors but not for the runtime does not fit
    tight = q.tensors / GiB + 0.01
    assert not route.choose_route(tight, "llama-2-7b", batch=1, seq=512).fits("qlora")
    reserved = route.choose_route(12, "llama-2-7b", batch=1, seq=512, reserve_gb=2)
    assert reserved.usable_gb == 10 and "usable = 12 - 2 GiB" in "\n".join(reserved.reasons)


def test_precision_changes_the_decision():
    pure = route.choose_route(24, "llama-2-7b", batch=1, seq=512, precision="bf16")
    amp = route.choose_route(24, "llama-2-7b", batch=1, seq=512)
    assert pure.estimates["full"].total < amp.estimates["full"].total


def test_unclear_task_comes_first():
    r = route.choose_route(80, "llama-2-7b", task_boundary_clear=False)
    assert r.method is None and r.decision.startswith("Clarify the task first")
    assert set(r.estimates) == {"full", "lora", "qlora"}


@pytest.mark.parametrize("gpu, reserve, message", [(0, 0.0, "gpu_memory_gb must be a finite number above 0"),
                                                   (-1, 0.0, "gpu_memory_gb must be"),
                                                   (math.nan, 0.0, "gpu_memory_gb must be"),
                                                   (math.inf, 0.0, "gpu_memory_gb must be"),
                                                   (8, 9, r"reserve_gb \(below gpu_memory_gb\) must be a number in \[0, 8\), got 9"),
                                                   (8, -1, r"reserve_gb \(below gpu_memory_gb\) must be a number in \[0, 8\), got -1")])
def test_bad_input(gpu, reserve, message):
    with pytest.raises(ValueError, match=message):
        route.choose_route(gpu, "llama-2-7b", reserve_gb=reserve)


def test_cli(capsys):
    assert route.main(["--gpu-gb", "12", "--model", "llama-2-7b", "--want-larger-model"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Use QLoRA") and "GiB" in out and " GB" not in out


@pytest.mark.parametrize("args, message", [
    (["--gpu-gb", "0"], "must be a finite number above 0, got '0'"),
    (["--gpu-gb", "-1"], "got '-1'"),
    (["--gpu-gb", "nan"], "got 'nan'"),
    (["--gpu-gb", "inf"], "got 'inf'"),
    (["--gpu-gb", "twelve"], "got 'twelve'"),
    ([], "the following arguments are required: --gpu-gb"),
    (["--gpu-gb", "12", "--model", "no-such-model"], "unknown model 'no-such-model': not a registry name"),
    (["--gpu-gb", "12", "--rank", "0"], "--rank: must be a whole number of at least 1, got '0'"),
    (["--gpu-gb", "12", "--rank", "5000"],
     "q_proj's smaller dimension (4096 x 4096); with these targets the rank can be at most 4096"),
    (["--gpu-gb", "12", "--reserve-gb", "12"], "reserve_gb (below gpu_memory_gb) must be a number in [0, 12), got 12.0"),
])
def test_cli_bad_values_get_one_line_and_status_2(capsys, args, message):
    assert route.main(args) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1 and message in captured.err
