"""Tests of lessonlib.memory_calculator: the stacked bars and the interactive calculator."""

from __future__ import annotations

import pytest

from lessonlib.memory import GiB, MemoryBreakdown, estimate_training_memory
from lessonlib.memory_calculator import RESULT_CLASS, draw_breakdowns, memory_calculator


def test_bars_stack_every_component_in_gib_with_the_runtime_on_top():
    from matplotlib.figure import Figure

    ax = Figure().subplots()
    parts = MemoryBreakdown(frozen_weights=2 * GiB, gradients=GiB, activations=GiB // 2, runtime=GiB // 4)
    draw_breakdowns(ax, {"x": parts}, gpu_memory_gb=4)
    tops = [float(p.get_y() + p.get_height()) for p in ax.patches]
    assert max(tops) == pytest.approx(parts.total_gib)
    runtime_bar = [p for p in ax.patches if p.get_hatch()]
    assert len(runtime_bar) == 1 and runtime_bar[0].get_height() == pytest.approx(0.25)
    assert [float(y) for y in ax.lines[0].get_ydata()] == [4.0, 4.0]
    assert ax.get_ylabel() == "GiB"
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "CUDA runtime" in labels and "quantization state" not in labels  # zero everywhere: no legend entry


def test_bars_start_at_a_zero_tick_and_no_label_overlaps_a_bar():
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 4))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    bars = {m: estimate_training_memory("llama-2-7b", m, batch=4, seq=1024, rank=16) for m in ("full", "lora", "qlora")}
    draw_breakdowns(ax, bars, gpu_memory_gb=12)
    fig.tight_layout()
    renderer = fig.canvas.get_renderer()
    assert ax.get_ylim()[0] == 0 and 0 in [float(t) for t in ax.get_yticks()]
    legend = ax.get_legend()
    assert "GPU memory, 12 GiB" in [t.get_text() for t in legend.get_texts()]
    boxes = [p.get_window_extent(renderer) for p in ax.patches if p.get_height() > 0]
    labels = [legend.get_window_extent(renderer)] + [t.get_window_extent(renderer) for t in ax.texts]
    assert len(labels) == 4                                    # the legend and one total per bar
    assert not any(label.overlaps(box) for label in labels for box in boxes)


def test_calculator_follows_its_widgets():
    calc = memory_calculator(gpu_gb=12, model="llama-2-7b", method="lora", seq=512, rank=16)
    assert RESULT_CLASS in calc.result._dom_classes
    lora = estimate_training_memory("llama-2-7b", "lora", seq=512, rank=16)
    assert calc.result_text() == f"lora: {lora.total_gib:.1f} GiB of 12 GiB: does not fit"
    calc.method.value = "qlora"
    assert calc.result_text().endswith(": fits")
    calc.checkpointing.value = True
    ckpt = estimate_training_memory("llama-2-7b", "qlora", seq=512, rank=16, gradient_checkpointing=True)
    assert calc.estimates["qlora"].total == ckpt.total
    calc.precision.value = "fp32"
    fp32 = estimate_training_memory("llama-2-7b", "qlora", seq=512, rank=16, gradient_checkpointing=True,
                                    precision="fp32")
    assert calc.estimates["qlora"].total == fp32.total != ckpt.total
    assert bytes(calc.chart.value).startswith(b"\x89PNG")
    descriptions = {w.description for w in (calc.gpu_gb, calc.model, calc.method, calc.precision, calc.rank,
                                            calc.batch, calc.seq, calc.checkpointing)}
    assert descriptions == {"GPU (GiB)", "model", "method", "precision", "rank", "batch", "seq length",
                            "grad. checkpointing"}


def test_calculator_shows_errors_instead_of_failing():
    calc = memory_calculator(model="smollm2-135m", method="lora")
    calc.rank.value = 200  # larger than k_proj's 192 outputs
    assert calc.result_text().startswith("error: rank 200 is larger than")
    assert calc.estimates == {}


@pytest.mark.parametrize("kwargs, message", [(dict(model="gpt2"), "model must be one of smollm2-135m, .*, got 'gpt2'"),
                                             (dict(method="prefix"), "method must be one of full, lora, qlora, got 'prefix'"),
                                             (dict(precision="fp8"), "precision must be one of fp32, bf16, fp16, amp-bf16, amp-fp16, got 'fp8'"),
                                             (dict(seq=1000), "seq must be one of"),
                                             (dict(batch=0), "batch must be an integer from 1 to 64"),
                                             (dict(gpu_gb=0), "gpu_gb must be a number")])
def test_bad_input(kwargs, message):
    with pytest.raises(ValueError, match=message):
        memory_calculator(**kwargs)
