"""Tests of lessonlib.route: the route chosen from memory estimates, its reasons and its command."""

from __future__ import annotations

import pytest

from lessonlib import route
from lessonlib.memory import estimate_training_memory


def test_choose_route_follows_the_estimates():
    small = route.choose_route(12, "llama-2-7b", batch=1, seq=512, want_larger_model=True)
    assert small.method == "qlora" and not small.fits("lora") and small.fits("qlora")
    lora = estimate_training_memory("llama-2-7b", "lora", batch=1, seq=512, rank=16)
    assert small.estimates["lora"].total == lora.total
    assert any("largest registry model" in r for r in small.reasons)
    assert route.choose_route(80, "llama-2-7b", batch=1, seq=512).method == "lora"
    long = route.choose_route(12, "llama-2-7b", batch=4, seq=1024)
    assert (long.method, long.gradient_checkpointing) == ("qlora", True)
    none = route.choose_route(2, "llama-2-7b", batch=8, seq=4096)
    assert none.method is None and none.decision.startswith("Nothing fits")


def test_unclear_task_comes_first():
    r = route.choose_route(80, "llama-2-7b", task_boundary_clear=False)
    assert r.method is None and r.decision.startswith("Clarify the task first")
    assert set(r.estimates) == {"full", "lora", "qlora"}


@pytest.mark.parametrize("gpu, reserve, message", [(0, 1.0, "gpu_memory_gb must be a positive number"),
                                                   (8, 9, "reserve_gb must be at least 0")])
def test_bad_input(gpu, reserve, message):
    with pytest.raises(ValueError, match=message):
        route.choose_route(gpu, "llama-2-7b", reserve_gb=reserve)


def test_cli(capsys):
    assert route.main(["--gpu-gb", "12", "--model", "llama-2-7b", "--want-larger-model"]) == 0
    assert capsys.readouterr().out.startswith("Use QLoRA")
    assert route.main(["--gpu-gb", "12", "--model", "no-such-model"]) == 2
    assert "unknown model" in capsys.readouterr().err
