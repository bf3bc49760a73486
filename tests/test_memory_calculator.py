"""Tests of lessonlib.memory_calculator: the stacked bars and the interactive calculator."""

from __future__ import annotations

import pytest

from lessonlib.memory import GB, MemoryBreakdown, estimate_training_memory
from lessonlib.memory_calculator import RESULT_CLASS, draw_breakdowns, memory_calculator


def test_bars_stack_every_component_in_gb():
    from matplotlib.figure import Figure

    ax = Figure().subplots()
    parts = MemoryBreakdown(frozen_weights=2 * GB, gradients=GB, activations=GB // 2)
    draw_breakdowns(ax, {"x": parts}, gpu_memory_gb=4)
    tops = [float(p.get_y() + p.get_height()) for p in ax.patches]
    assert max(tops) == pytest.approx(parts.total_gb)
    assert [float(y) for y in ax.lines[0].get_ydata()] == [4.0, 4.0]


def test_calculator_follows_its_widgets():
    calc = memory_calculator(gpu_gb=12, model="llama-2-7b", method="lora", seq=512, rank=16)
    assert RESULT_CLASS in calc.result._dom_classes
    lora = estimate_training_memory("llama-2-7b", "lora", seq=512, rank=16)
    assert calc.result_text() == f"lora: {lora.total_gb:.1f} GB of 12 GB: does not fit"
    calc.method.value = "qlora"
    assert calc.result_text().endswith(": fits")
    calc.checkpointing.value = True
    ckpt = estimate_training_memory("llama-2-7b", "qlora", seq=512, rank=16, gradient_checkpointing=True)
    assert calc.estimates["qlora"].total == ckpt.total
    assert bytes(calc.chart.value).startswith(b"\x89PNG")
    descriptions = {w.description for w in (calc.gpu_gb, calc.model, calc.method, calc.rank, calc.batch, calc.seq,
                                            calc.checkpointing)}
    assert descriptions == {"GPU (GB)", "model", "method", "rank", "batch", "seq length", "grad. checkpointing"}


def test_calculator_shows_errors_instead_of_failing():
    calc = memory_calculator(model="smollm2-135m", method="lora")
    calc.rank.value = 200  # larger than k_proj's 192 outputs
    assert calc.result_text().startswith("error: rank 200 is larger than")
    assert calc.estimates == {}


@pytest.mark.parametrize("kwargs, message", [(dict(model="gpt2"), "not among the offered models"),
                                             (dict(method="prefix"), "unknown method"),
                                             (dict(seq=1000), "seq must be one of"),
                                             (dict(batch=0), "batch must be an integer from 1 to 64"),
                                             (dict(gpu_gb=0), "gpu_gb must be a number")])
def test_bad_input(kwargs, message):
    with pytest.raises(ValueError, match=message):
        memory_calculator(**kwargs)
