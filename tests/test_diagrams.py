"""Tests of lessonlib.diagrams: the LoRA / QLoRA forward paths and the memory picture."""

from __future__ import annotations

import re
import warnings
from io import BytesIO

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from lessonlib.diagrams import (PALETTE, diagram_labels, lora_forward_diagram, memory_diagram,  # noqa: E402
                                qlora_forward_diagram)
from lessonlib.memory import (COMPONENT_LABELS, COMPONENTS, GiB, MiB, MemoryBreakdown,  # noqa: E402
                              estimate_training_memory)
from lessonlib.quantization import bits_per_parameter  # noqa: E402


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def smol_breakdowns() -> dict[str, MemoryBreakdown]:
    return {m: estimate_training_memory("smollm2-135m", m, batch=1, seq=64, rank=8, device="cpu")
            for m in ("full", "lora", "qlora")}


BUILDERS = {
    "lora": lambda: lora_forward_diagram((8, 8), (8, 2), (2, 8), alpha=4, x=(4, 8)),
    "lora-peft": lambda: lora_forward_diagram((576, 576), (8, 576), (576, 8), alpha=16, convention="peft"),
    "qlora": lambda: qlora_forward_diagram((1536, 576), rank=8, alpha=16, x=(8, 90, 576)),
    "memory": lambda: memory_diagram(smol_breakdowns(), title="SmolLM2-135M, 1 x 64 tokens"),
    "memory-7b": lambda: memory_diagram({m: estimate_training_memory("llama-2-7b", m, batch=4, seq=1024, rank=16)
                                         for m in ("full", "lora", "qlora")}),
}


def png(fig) -> bytes:
    buffer = BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


@pytest.mark.parametrize("name", BUILDERS)
def test_each_diagram_renders_to_a_png_of_plausible_size_without_warnings(name):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a missing glyph, a layout problem: fail
        fig = BUILDERS[name]()
        data = png(fig)
    assert data.startswith(b"\x89PNG")
    assert 10_000 < len(data) < 500_000, len(data)
    width, height = fig.get_size_inches()
    assert 8 <= width <= 10 and 2 <= height <= 7                         # readable at a notebook's width
    assert all(not ax.axison for ax in fig.axes)                        # no axes: a picture, not a chart
    assert png(BUILDERS[name]()) == data                                # deterministic, to the byte


@pytest.mark.parametrize("name", BUILDERS)
def test_texts_do_not_overlap_and_stay_inside_the_figure(name):
    fig = BUILDERS[name]()
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    boxes = [(t.get_text(), t.get_window_extent(renderer)) for ax in fig.axes for t in ax.texts if t.get_text()]
    frame = fig.bbox
    for text, box in boxes:
        assert frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1, text
    for i, (a, box_a) in enumerate(boxes):
        for b, box_b in boxes[i + 1:]:
            assert not box_a.overlaps(box_b), (a, b)


def test_lora_labels_come_from_the_tensors():
    import torch

    fig = lora_forward_diagram(torch.zeros(8, 8), torch.zeros(8, 2), torch.zeros(2, 8), alpha=4, x=torch.zeros(4, 8))
    labels = diagram_labels(fig)
    assert labels["W"] == "W: 8 × 8  (d_in × d_out)"
    assert labels["A"] == "A: 8 × 2  (d_in × r)" and labels["B"] == "B: 2 × 8  (r × d_out)"
    assert labels["x"] == "x\n4 × 8" and labels["h"] == "h\n4 × 8"
    assert labels["scale"] == "× α/r = 2\nα = 4, r = 2"
    assert "32 numbers (50% of W's 64)" in labels["caption"]

    other = diagram_labels(lora_forward_diagram(torch.zeros(8, 6), torch.zeros(8, 3), torch.zeros(3, 6), alpha=4))
    assert other["A"] == "A: 8 × 3  (d_in × r)" and other["B"] == "B: 3 × 6  (r × d_out)"
    assert other["W"] == "W: 8 × 6  (d_in × d_out)" and other["h"] == "h\n… × 6"
    assert other["scale"] == "× α/r = 1.333\nα = 4, r = 3"
    assert "42 numbers (87.5% of W's 48)" in other["caption"]

    single = diagram_labels(lora_forward_diagram((8, 6), (8, 3), (3, 6), x=torch.zeros(8)))   # one input vector
    assert single["x"] == "x\n8" and single["h"] == "h\n6"

    plain = diagram_labels(lora_forward_diagram((8, 8), (8, 2), (2, 8)))          # the demo: no α/r
    assert "scale" not in plain and plain["title"] == "h = x @ W + x @ A @ B"


def test_peft_convention_reads_a_real_peft_layer():
    import torch
    from peft import LoraConfig, get_peft_model

    base = torch.nn.Sequential(torch.nn.Linear(10, 6, bias=False))
    layer = get_peft_model(base, LoraConfig(r=3, lora_alpha=6, target_modules=["0"])).base_model.model[0]
    W, A, B = layer.base_layer.weight, layer.lora_A["default"].weight, layer.lora_B["default"].weight
    labels = diagram_labels(lora_forward_diagram(W, A, B, alpha=6, convention="peft"))
    assert labels["W"] == "base_layer.weight: 6 × 10  (out × in)"
    assert labels["A"] == "lora_A.weight: 3 × 10  (r × in)" and labels["B"] == "lora_B.weight: 6 × 3  (out × r)"
    assert labels["scale"] == f"× α/r = {layer.scaling['default']:g}\nα = 6, r = 3"
    assert labels["h"] == "h\n… × 6"
    # the same layer in the lesson's x @ W notation is the transposes
    row = diagram_labels(lora_forward_diagram(W.T, A.T, B.T, alpha=6))
    assert row["W"] == "W: 10 × 6  (d_in × d_out)" and row["A"] == "A: 10 × 3  (d_in × r)"
    assert "48 numbers (80% of W's 60)" in row["caption"]
    assert "48 numbers (80% of base_layer.weight's 60)" in labels["caption"]


@pytest.mark.parametrize("args, kwargs, message", [
    (((8, 8), (8, 2), (3, 8)), {}, "the inner sizes must match: A is 8 × 2 (r = 2), so B must have 2 rows"),
    (((8, 8), (7, 2), (2, 8)), {}, "A must have W's 8 rows (d_in)"),
    (((8, 8), (8, 2), (2, 9)), {}, "B must have W's 8 columns (d_out)"),
    (((8, 8), (8, 0), (0, 8)), {}, "the rank r (A's columns, A is 8 × 0) must be a positive integer, got 0"),
    (((8, 8), (2, 8), (8, 3)), {"convention": "peft"}, "lora_B.weight must have 2 columns"),
    (((8, 8), (0, 8), (8, 0)), {"convention": "peft"},
     "the rank r (lora_A.weight's rows, lora_A.weight is 0 × 8) must be a positive integer, got 0"),
    (((8, 8, 1), (8, 2), (2, 8)), {}, "W must be a 2-D matrix, got shape (8, 8, 1)"),
    (((8, 8), (8, 2), (2, 8)), {"convention": "x @ W.T"}, "convention must be one of 'x @ W', 'peft'"),
    (((8, 8), (8, 2), (2, 8)), {"alpha": 0}, "alpha (lora_alpha, or None) must be a finite number above 0, got 0"),
    (((8, 8), (8, 2), (2, 8)), {"x": (4, 7)}, "x's last size must be the layer's input size 8"),
    (((8, 8), "A", (2, 8)), {}, "A must be a tensor or a shape"),
    (((8, 8), (8, 2.5), (2, 8)), {}, "A's shape must hold integers"),
])
def test_lora_bad_inputs_raise_clear_errors(args, kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        lora_forward_diagram(*args, **kwargs)


def test_qlora_labels_follow_the_settings():
    fig = qlora_forward_diagram((1536, 576), rank=8, alpha=16, x=(2, 90, 576))
    labels = diagram_labels(fig)
    bits = bits_per_parameter(64, double_quant=True)
    assert labels["bits"] == f"= {bits:.4g} bits per stored weight, against 16 in bf16"
    assert labels["codes"] == "NF4 codes: 4 bits per weight\n1536 × 576 = 884,736 weights, 2 per byte"
    assert "8-bit codes" in labels["scales"] and "per 256 absmaxes" in labels["scales"]
    assert labels["A"] == "lora_A.weight: 8 × 576\n(r × in), fp32"
    assert labels["B"] == "lora_B.weight: 1536 × 8\n(out × r), fp32"
    assert labels["dequantize"].startswith("dequantize to bf16\n1536 × 576")
    assert labels["x"] == "x\n2 × 90 × 576" and labels["h"] == "h\n2 × 90 × 1536"
    assert "16,896 adapter numbers in fp32" in labels["caption"]  # 8 * (576 + 1536)

    other = diagram_labels(qlora_forward_diagram((32, 64), rank=4, blocksize=128, double_quant=False,
                                                 compute_dtype="fp16", adapter_dtype="bf16", quant_type="fp4"))
    assert other["bits"] == "= 4.25 bits per stored weight, against 16 in fp16"
    assert other["scales"] == "absmax: one fp32 per 128 weights\n(no double quantization)"
    assert other["codes"].startswith("FP4 codes") and other["matmul"] == "x @ W.T in fp16"
    assert other["A"].endswith("bf16") and "scale" not in other


def test_qlora_reads_a_real_bitsandbytes_layer():
    import torch
    bnb = pytest.importorskip("bitsandbytes")

    layer = bnb.nn.Linear4bit(64, 32, bias=False, compute_dtype=torch.bfloat16, compress_statistics=True,
                              quant_type="nf4").to("cpu")
    st = layer.weight.quant_state
    labels = diagram_labels(qlora_forward_diagram(st.shape, rank=4, blocksize=st.blocksize, double_quant=st.nested,
                                                  nested_blocksize=st.state2.blocksize, quant_type=st.quant_type,
                                                  compute_dtype=layer.compute_dtype, adapter_dtype=torch.float32))
    assert labels["codes"].endswith("32 × 64 = 2,048 weights, 2 per byte")
    assert labels["matmul"] == "x @ W.T in bf16"
    assert labels["bits"].startswith("= 4.127 bits")


@pytest.mark.parametrize("kwargs, message", [
    ({"shape": (576,)}, "shape must be a 2-D matrix"),
    ({"shape": (0, 576)}, "shape must have positive sizes"),
    ({"rank": 0}, "the rank r must be a positive integer, got 0"),
    ({"blocksize": 0}, "blocksize must be a positive integer"),
    ({"nested_blocksize": -1}, "nested_blocksize must be a positive integer"),
    ({"compute_dtype": "int8"}, "compute_dtype must be one of fp32, bf16, fp16"),
    ({"adapter_dtype": "fp8"}, "adapter_dtype must be one of"),
    ({"quant_type": "int4"}, "quant_type must be one of nf4, fp4, got 'int4'"),
    ({"double_quant": "yes"}, "double_quant must be True or False"),
    ({"alpha": -1}, "alpha"),
    ({"x": (4, 10)}, "x's last size must be the layer's input size 576"),
])
def test_qlora_bad_inputs_raise_clear_errors(kwargs, message):
    args = {"shape": (576, 576), "rank": 8, **kwargs}
    with pytest.raises(ValueError, match=re.escape(message)):
        qlora_forward_diagram(args.pop("shape"), **args)


def test_memory_box_areas_are_proportional_to_the_bytes():
    breakdowns = smol_breakdowns()
    fig = memory_diagram(breakdowns)
    patches = {p.get_gid(): p for p in fig.axes[0].patches if p.get_gid()}
    area = {gid: p.get_width() * p.get_height() for gid, p in patches.items()}
    per_byte = area["full/optimizer_state"] / breakdowns["full"].optimizer_state
    drawn = 0
    for method, b in breakdowns.items():
        assert area[method] == pytest.approx(b.total * per_byte, rel=1e-9)        # the squares, one scale
        square = patches[method]
        assert square.get_width() == pytest.approx(square.get_height())
        stacked = 0.0
        for kind in COMPONENTS:
            value = getattr(b, kind)
            if value == 0:
                assert f"{method}/{kind}" not in patches
                continue
            assert area[f"{method}/{kind}"] == pytest.approx(value * per_byte, rel=1e-9)
            stacked += patches[f"{method}/{kind}"].get_height()
            drawn += 1
        assert stacked == pytest.approx(square.get_height(), rel=1e-9)           # the boxes fill the square
    assert drawn >= 15


def test_memory_labels_name_each_component_in_binary_units():
    parts = {"full": MemoryBreakdown(trainable_weights=4 * GiB, gradients=4 * GiB, optimizer_state=8 * GiB,
                                     activations=GiB // 2),
             "qlora": MemoryBreakdown(frozen_weights=GiB, quant_state=60 * MiB, trainable_weights=20 * MiB,
                                      runtime=GiB // 2),
             "my run": MemoryBreakdown(activations=1000)}
    fig = memory_diagram(parts)
    labels = diagram_labels(fig)
    assert labels["full"] == "full fine-tuning: 16.5 GiB" and labels["qlora"] == "QLoRA: 1.6 GiB"
    assert labels["my run"] == "my run: < 0.1 MiB"
    assert labels["full/optimizer_state"] == "optimizer state: 8.0 GiB"
    assert labels["full/activations"] == "activations: 512.0 MiB"
    assert labels["qlora/quant_state"] == f"{COMPONENT_LABELS['quant_state']}: 60.0 MiB"
    assert labels["qlora/runtime"] == "CUDA runtime: 512.0 MiB"
    assert "full/frozen_weights" not in labels and "qlora/gradients" not in labels
    patches = {p.get_gid(): p for p in fig.axes[0].patches if p.get_gid()}
    assert patches["qlora/runtime"].get_hatch() == "//"
    assert patches["qlora/trainable_weights"].get_facecolor() == matplotlib.colors.to_rgba(PALETTE["trainable"])
    assert patches["qlora/quant_state"].get_facecolor() == matplotlib.colors.to_rgba(PALETTE["quantized"])


def test_one_palette_for_the_three_diagrams():
    lora = lora_forward_diagram((8, 8), (8, 2), (2, 8))
    qlora = qlora_forward_diagram((8, 8), rank=2)
    colours = {fig: {matplotlib.colors.to_hex(p.get_facecolor()) for p in fig.axes[0].patches} for fig in (lora, qlora)}
    assert {PALETTE["frozen"], PALETTE["trainable"]} <= colours[lora]
    assert {PALETTE["quantized"], PALETTE["trainable"]} <= colours[qlora] and PALETTE["frozen"] not in colours[qlora]


@pytest.mark.parametrize("breakdowns, message", [
    ({}, "non-empty mapping"),
    ({"lora": 3}, r"breakdowns\['lora'\] must be a MemoryBreakdown"),
    ({"lora": MemoryBreakdown()}, "holds 0 bytes"),
    ({"lora": MemoryBreakdown(gradients=-1, activations=5)}, "negative bytes in gradients"),
])
def test_memory_bad_inputs_raise_clear_errors(breakdowns, message):
    with pytest.raises(ValueError, match=message):
        memory_diagram(breakdowns)


def test_memory_too_narrow_says_how_wide():
    with pytest.raises(ValueError, match=r"width 3 inches is too small for 3 squares .* give at least"):
        memory_diagram(smol_breakdowns(), width=3)


def test_diagrams_draw_on_a_given_axis():
    fig, (left, right) = plt.subplots(1, 2, figsize=(20, 4))
    assert lora_forward_diagram((8, 8), (8, 2), (2, 8), ax=left) is fig
    assert memory_diagram(smol_breakdowns(), ax=right) is fig
    assert not left.axison and not right.axison
    assert diagram_labels(fig)["A"] == "A: 8 × 2  (d_in × r)"
    assert len(png(fig)) > 10_000
