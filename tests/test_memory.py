"""Tests of lessonlib.memory: exact measurement of a training step, and the estimate checked against it.

The models are tiny Llama, Mistral and Qwen2 models built from a config (a second or two each on a
CPU). Expected values come from measuring real training steps with torch, peft and bitsandbytes,
never from the estimator. On a CPU the estimate must equal the measurement to the byte, component
by component, for every precision recipe and method: every comparison below is exact.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from lessonlib import memory, models
from lessonlib.env import quiet_library_logs

TINY = dict(model_type="llama", hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=256, tie_word_embeddings=True)
MISTRAL = dict(TINY, model_type="mistral", sliding_window=8)
QWEN2 = dict(TINY, model_type="qwen2", tie_word_embeddings=False)
TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
RANK = 4

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")


def _base(cfg: dict, dtype: str):
    quiet_library_logs()
    from transformers import AutoModelForCausalLM

    from lessonlib.params import resolve_config

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(resolve_config(cfg), dtype=TORCH_DTYPES[dtype])


@pytest.fixture(scope="module")
def saved_models(tmp_path_factory):
    """Folders with the tiny models saved in fp32, to be loaded again in 4 bits."""
    folders = {}

    def folder(cfg: dict):
        key = json.dumps(cfg, sort_keys=True)
        if key not in folders:
            folders[key] = tmp_path_factory.mktemp("model")
            _base(cfg, "fp32").save_pretrained(folders[key])
        return folders[key]

    return folder


def _build(saved_models, cfg: dict, method: str, precision: str, *, checkpointing: bool = False,
           dropout: float = 0.0, quantization: str = "nf4-dq"):
    """The model as the recipe's usual set-up loads it (see estimate_training_memory's docstring)."""
    return models.build_model(method, r=RANK, lora_alpha=8, lora_dropout=dropout, source=saved_models(cfg),
                              device="cpu", precision=precision, gradient_checkpointing=checkpointing,
                              quantization=quantization if method == "qlora" else None).train()


def _batch(cfg: dict, batch: int, seq: int, padded: bool = False) -> dict:
    ids = torch.randint(0, cfg["vocab_size"], (batch, seq), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    if padded:
        mask[-1, seq // 2:] = 0
    return dict(input_ids=ids, attention_mask=mask, labels=ids)


def _optimizer(model, name: str):
    params = [p for p in model.parameters() if p.requires_grad]
    if name == "adamw":
        return torch.optim.AdamW(params)
    if name == "sgd":
        return torch.optim.SGD(params, lr=0.1, momentum=0.9)
    import bitsandbytes as bnb

    # On a CPU the paged optimizers fall back to ordinary memory, with the same state (and a warning)
    cls = {"adamw8bit": bnb.optim.AdamW8bit, "paged-adamw": bnb.optim.PagedAdamW,
           "paged-adamw8bit": bnb.optim.PagedAdamW8bit}[name]
    return cls(params)


def _measure_and_estimate(saved_models, cfg, method, precision, batch=2, seq=16, *, checkpointing=False,
                          padded=False, dropout=0.0, optimizer="adamw", quantization="nf4-dq"):
    model = _build(saved_models, cfg, method, precision, checkpointing=checkpointing, dropout=dropout,
                   quantization=quantization)
    measured = memory.measure_training_step(model, _batch(cfg, batch, seq, padded), _optimizer(model, optimizer),
                                            autocast=memory.recipe(precision).autocast)
    estimated = memory.estimate_training_memory(
        cfg, method, batch=batch, seq=seq, rank=RANK, precision=precision, device="cpu", optimizer=optimizer,
        gradient_checkpointing=checkpointing, padded=padded, lora_dropout=dropout, quantization=quantization)
    return measured, estimated


def _assert_equal(measured, estimated):
    wrong = {k: (getattr(measured, k), getattr(estimated, k)) for k in memory.COMPONENTS
             if getattr(measured, k) != getattr(estimated, k)}
    assert not wrong, f"(measured, estimated) differ: {wrong}"


# ---------------------------------------------------------------------------------------------
# Measurement on hand-countable steps
# ---------------------------------------------------------------------------------------------


def test_storage_bytes_counts_shared_storage_once():
    model = _base(TINY, "fp32")
    assert model.lm_head.weight is model.model.embed_tokens.weight  # tied
    tensors = [p for _, p in model.named_parameters(remove_duplicate=False)]
    assert memory.storage_bytes(tensors) == 4 * sum(p.numel() for p in model.parameters())
    assert memory.storage_bytes([model.lm_head.weight, model.lm_head.weight.t()]) == 4 * 256 * 64


def _two_layers():
    torch.manual_seed(0)
    net, frozen = torch.nn.Linear(10, 3), torch.nn.Linear(10, 10)
    frozen.requires_grad_(False)
    return torch.nn.Sequential(frozen, net), net


def test_measurement_is_exact_on_a_hand_countable_step():
    model, net = _two_layers()
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    m = memory.measure_training_step(model, {"x": torch.randn(5, 10)}, opt, loss_fn=lambda mod, b: mod(b["x"]).sum())
    assert m.frozen_weights == 4 * 110 and m.trainable_weights == 4 * 33 == m.gradients == m.optimizer_state
    # net keeps its input (frozen's 5x10 output) for its weight gradient; frozen keeps nothing
    assert m.activations == 4 * 50 and m.weight_copies == 0 == m.runtime
    assert m.peak_allocated is None
    assert all(p.grad is None for p in net.parameters())  # cleared for the next step


def test_what_a_dropped_part_of_the_graph_saved_does_not_count():
    model, net = _two_layers()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)

    def loss_fn(mod, b):
        out = mod(b["x"])
        (out * out).sum().detach()  # a side computation: mul saves out (5x3), then its graph is dropped
        return out.sum()

    m = memory.measure_training_step(model, {"x": torch.randn(5, 10)}, opt, loss_fn=loss_fn)
    assert m.activations == 4 * 50  # what the step without the side computation keeps (the test above)


def test_autocast_keeps_a_16_bit_copy_of_what_it_casts():
    model, net = _two_layers()
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    x = torch.randn(5, 10, requires_grad=True)  # now frozen's weight is needed for x's gradient
    m = memory.measure_training_step(model, {"x": x}, opt, loss_fn=lambda mod, b: mod(b["x"]).sum(), autocast="bf16")
    # bf16 copies of both weights (100 + 30 values; the frozen one is needed for x's gradient)
    assert m.weight_copies == 2 * (100 + 30)
    # net keeps its input (frozen's output, already bf16); frozen keeps no input: its weight is frozen
    assert m.activations == 2 * 50
    assert m.trainable_weights == 4 * 33  # the weights themselves stay fp32


def test_reentrant_checkpointing_is_refused():
    model = _base(TINY, "fp32").train()
    model.activation_checkpointing_enable({"use_reentrant": True})
    with pytest.raises(ValueError, match="use_reentrant=False"):
        memory.measure_training_step(model, _batch(TINY, 1, 8), torch.optim.SGD(model.parameters(), lr=0.1))


def test_measure_refuses_a_model_with_nothing_to_train():
    model = torch.nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        memory.measure_training_step(model, {}, torch.optim.SGD([torch.zeros(1, requires_grad=True)]))


# ---------------------------------------------------------------------------------------------
# The estimate equals the measurement: every recipe x method, then every option
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("precision", memory.PRECISIONS)
@pytest.mark.parametrize("method", memory.METHODS)
def test_estimate_equals_measurement_per_recipe(saved_models, method, precision):
    measured, estimated = _measure_and_estimate(saved_models, TINY, method, precision)
    _assert_equal(measured, estimated)
    assert measured.activations > 0 and measured.optimizer_state > 0
    # what the recipe is about shows in the measurement itself
    if method == "full" and precision.startswith("amp-"):
        assert measured.weight_copies > 0 and measured.trainable_weights == 4 * estimated.trainable_weights // 4
    if method == "qlora":
        assert measured.quant_state > 0


@pytest.mark.parametrize("method, precision", [("full", "amp-bf16"), ("lora", "amp-bf16"), ("qlora", "amp-bf16"),
                                               ("lora", "bf16"), ("qlora", "fp32"), ("full", "fp16")])
def test_gradient_checkpointing(saved_models, method, precision):
    measured, estimated = _measure_and_estimate(saved_models, TINY, method, precision, checkpointing=True)
    _assert_equal(measured, estimated)
    plain = memory.estimate_training_memory(TINY, method, batch=2, seq=16, rank=RANK, precision=precision,
                                            device="cpu")
    assert measured.activations < plain.activations


@pytest.mark.parametrize("method, precision", [("full", "amp-bf16"), ("lora", "bf16"), ("qlora", "amp-bf16"),
                                               ("lora", "fp32")])
def test_padded_batch_keeps_masks_and_repeated_key_values(saved_models, method, precision):
    measured, estimated = _measure_and_estimate(saved_models, TINY, method, precision, padded=True)
    _assert_equal(measured, estimated)
    unpadded = memory.estimate_training_memory(TINY, method, batch=2, seq=16, rank=RANK, precision=precision,
                                               device="cpu")
    assert measured.activations > unpadded.activations


@pytest.mark.parametrize("method, precision", [("lora", "amp-bf16"), ("lora", "fp32"), ("qlora", "amp-bf16"),
                                               ("qlora", "bf16")])
def test_lora_dropout_keeps_a_copy_and_a_mask(saved_models, method, precision):
    measured, estimated = _measure_and_estimate(saved_models, TINY, method, precision, dropout=0.1)
    _assert_equal(measured, estimated)
    without = memory.estimate_training_memory(TINY, method, batch=2, seq=16, rank=RANK, precision=precision,
                                             device="cpu")
    assert measured.activations > without.activations


def test_dropout_mask_is_one_byte_on_cuda():
    cpu, cuda = (memory.estimate_training_memory(TINY, "lora", batch=2, seq=16, rank=RANK, lora_dropout=0.1,
                                                 precision="fp32", device=d) for d in ("cpu", "cuda"))
    plain = memory.estimate_training_memory(TINY, "lora", batch=2, seq=16, rank=RANK, precision="fp32", device="cpu")
    # fp32 noise (4 bytes) on a CPU, a bool mask on CUDA: the masks of the CPU cost 4 times as much
    assert cpu.activations - plain.activations > cuda.activations - plain.activations > 0


@pytest.mark.parametrize("seq", [7, 8, 24])
@pytest.mark.parametrize("method", memory.METHODS)
def test_sliding_window_mistral(saved_models, method, seq):
    measured, estimated = _measure_and_estimate(saved_models, MISTRAL, method, "amp-bf16", batch=1, seq=seq)
    _assert_equal(measured, estimated)
    no_window = memory.estimate_training_memory(dict(MISTRAL, sliding_window=None), method, batch=1, seq=seq,
                                               rank=RANK, device="cpu")
    if seq >= MISTRAL["sliding_window"]:  # a window no longer than the sequence needs a mask in every layer
        assert measured.activations > no_window.activations
    else:
        assert measured.activations == no_window.activations


@pytest.mark.parametrize("optimizer", ["sgd", "adamw8bit", "paged-adamw", "paged-adamw8bit"])
@pytest.mark.parametrize("method, precision", [("full", "bf16"), ("full", "amp-bf16"), ("lora", "amp-bf16")])
def test_optimizers(saved_models, method, precision, optimizer):
    measured, estimated = _measure_and_estimate(saved_models, TINY, method, precision, optimizer=optimizer)
    _assert_equal(measured, estimated)


def test_8bit_adamw_state_is_two_bytes_per_weight_plus_scales():
    full = {o: memory.estimate_training_memory("llama-2-7b", "full", optimizer=o, precision="fp32", device="cpu")
            for o in ("adamw", "adamw8bit", "paged-adamw", "paged-adamw8bit")}
    n = 6_738_415_616
    assert full["adamw8bit"].optimizer_state == full["paged-adamw8bit"].optimizer_state
    assert 2 * n < full["adamw8bit"].optimizer_state < 2.04 * n  # + one fp32 scale per 256 values, per moment
    assert full["paged-adamw"].optimizer_state == 8 * n < full["adamw"].optimizer_state  # no step tensors


@pytest.mark.parametrize("precision", ["amp-bf16", "bf16"])
def test_16_bit_adapters(saved_models, precision):
    model = models.build_model("lora", r=RANK, lora_alpha=8, source=saved_models(TINY), device="cpu", dtype="bf16",
                               autocast_adapter_dtype=False).train()  # A and B stay bf16
    measured = memory.measure_training_step(model, _batch(TINY, 2, 16), _optimizer(model, "adamw"),
                                            autocast=memory.recipe(precision).autocast)
    estimated = memory.estimate_training_memory(TINY, "lora", batch=2, seq=16, rank=RANK, precision=precision,
                                                adapter_dtype="bf16", device="cpu")
    _assert_equal(measured, estimated)
    assert measured.weight_copies == 0  # nothing to cast: base and adapters are already bf16


@pytest.mark.parametrize("quantization", ["nf4", "fp4"])
def test_other_4bit_formats(saved_models, quantization):
    measured, estimated = _measure_and_estimate(saved_models, TINY, "qlora", "amp-bf16", quantization=quantization)
    _assert_equal(measured, estimated)


@pytest.mark.parametrize("precision", ["bf16", "amp-bf16"])
def test_qwen2_biases_and_untied_head(saved_models, precision):
    for method in memory.METHODS:
        measured, estimated = _measure_and_estimate(saved_models, QWEN2, method, precision, padded=True)
        _assert_equal(measured, estimated)


# ---------------------------------------------------------------------------------------------
# What the numbers say for a 7B model, asserted where the lesson says it
# ---------------------------------------------------------------------------------------------


def test_mixed_precision_full_fine_tuning_costs_at_least_16_bytes_per_parameter():
    n = 6_738_415_616
    amp = memory.estimate_training_memory("llama-2-7b", "full", precision="amp-bf16")
    assert amp.trainable_weights == amp.gradients == 4 * n and amp.optimizer_state >= 8 * n
    assert (amp.trainable_weights + amp.gradients + amp.optimizer_state) / n >= 16
    assert amp.weight_copies > 1.9 * n  # autocast's bf16 copy of (almost) every weight
    assert amp.total_gib > 100 and not amp.fits(80)
    pure = memory.estimate_training_memory("llama-2-7b", "full", precision="bf16")
    assert (pure.trainable_weights + pure.gradients + pure.optimizer_state) / n < 8.01


def test_lora_saves_activations_under_autocast_not_in_pure_bf16():
    act = {(m, p): memory.estimate_training_memory("llama-2-7b", m, batch=32, seq=512, rank=16,
                                                   precision=p).activations
           for m in memory.METHODS for p in ("fp32", "bf16", "amp-bf16")}
    assert act["lora", "fp32"] < act["full", "fp32"]
    assert act["lora", "amp-bf16"] < act["full", "amp-bf16"]
    assert act["lora", "bf16"] > act["full", "bf16"]  # fp32 copies of every adapted layer's input
    assert act["qlora", "amp-bf16"] > act["lora", "amp-bf16"]  # prepare_model_for_kbit_training: fp32 hidden states


def test_gradient_checkpointing_and_4bit_shrink_the_estimate():
    kwargs = dict(batch=4, seq=1024, rank=16)
    plain = memory.estimate_training_memory("llama-2-7b", "lora", **kwargs)
    ckpt = memory.estimate_training_memory("llama-2-7b", "lora", gradient_checkpointing=True, **kwargs)
    qlora = memory.estimate_training_memory("llama-2-7b", "qlora", **kwargs)
    assert ckpt.activations < plain.activations / 5
    assert qlora.frozen_weights < plain.frozen_weights / 3


def test_the_cuda_runtime_is_a_component_of_its_own():
    cuda = memory.estimate_training_memory("llama-2-7b", "qlora", batch=1, seq=512)
    cpu = memory.estimate_training_memory("llama-2-7b", "qlora", batch=1, seq=512, device="cpu")
    assert cpu.runtime == 0 and cpu.runtime_parts == {}
    assert cuda.runtime == sum(cuda.runtime_parts.values()) > memory.CUDA_CONTEXT_BYTES
    assert set(cuda.runtime_parts) == {"context", "workspaces", "transients", "allocator"}
    assert cuda.total == cuda.tensors + cuda.runtime
    gib = cuda.total_gib
    assert cuda.fits(math.ceil(gib)) and not cuda.fits(cuda.tensors / memory.GiB + 0.01)
    assert memory.allocated_peak(cuda) < cuda.total


# ---------------------------------------------------------------------------------------------
# Bad input and the command line
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, message", [
    (dict(method="prefix"), "method must be one of full, lora, qlora, got 'prefix'"),
    (dict(batch=0), "batch must be a positive integer, got 0"),
    (dict(seq=-5), "seq must be a positive integer, got -5"),
    (dict(precision="fp8"), "precision must be one of fp32, bf16, fp16, amp-bf16, amp-fp16, got 'fp8'"),
    (dict(dtype="fp8"), "dtype must be one of fp32, bf16, fp16, got 'fp8'"),
    (dict(dtype="bf16", precision="bf16"), "not both"),
    (dict(optimizer="adam"), "optimizer must be one of adamw, sgd, adamw8bit"),
    (dict(quantization="int4"), "quantization must be one of nf4, nf4-dq, fp4, got 'int4'"),
    (dict(compute_dtype="fp8"), "compute_dtype must be one of fp32, bf16, fp16, got 'fp8'"),
    (dict(device="tpu"), "device must be one of cuda, cpu, got 'tpu'"),
    (dict(lora_dropout=1.5), "lora_dropout must be a number in"),
    (dict(rank=0), "rank must be a positive integer"),
    (dict(rank=5000), "rank 5000 is larger than k_proj's smaller dimension"),
    (dict(targets="x_proj"), "no module 'x_proj'"),
])
def test_bad_input_says_what_is_accepted(kwargs, message):
    kwargs = {"method": "lora", **kwargs}
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        memory.estimate_training_memory("smollm2-135m", **kwargs)


def test_older_dtype_keyword_is_the_pure_recipe_without_runtime():
    old = memory.estimate_training_memory("smollm2-135m", "full", dtype="bf16")
    new = memory.estimate_training_memory("smollm2-135m", "full", precision="bf16", device="cpu")
    assert old.as_dict() == new.as_dict() and old.runtime == 0
    assert memory.estimate_training_memory("smollm2-135m", "full", dtype="bf16", device="cuda").runtime > 0


def test_unsupported_architecture_is_refused():
    with pytest.raises(ValueError, match="model_type 'gpt2'"):
        memory.estimate_training_memory("gpt2", "lora")


def test_cli_table(capsys):
    assert memory.main(["--model", "llama-2-7b", "--method", "qlora", "--rank", "16", "--batch", "4",
                        "--seq", "1024", "--gpu-gb", "12"]) == 0
    out = capsys.readouterr().out
    assert "quantization state" in out and "CUDA runtime" in out and "does not fit in 12 GiB" in out


def test_cli_json_shows_16_bytes_per_parameter_for_mixed_precision(capsys):
    assert memory.main(["--model", "llama-2-7b", "--method", "full", "--precision", "amp-bf16", "--json",
                        "--gpu-gb", "80"]) == 0
    out = json.loads(capsys.readouterr().out)
    parts = out["bytes"]
    assert (parts["trainable_weights"] + parts["gradients"] + parts["optimizer_state"]) / 6_738_415_616 >= 16
    assert parts["total"] == sum(parts[k] for k in memory.COMPONENTS)
    assert out["precision"] == "amp-bf16" and out["fits"] is False and out["gpu_gib"] == 80


@pytest.mark.parametrize("args, message", [
    (["--gpu-gb", "0"], "--gpu-gb: must be a finite number above 0, got '0'"),
    (["--gpu-gb", "-1"], "must be a finite number above 0, got '-1'"),
    (["--gpu-gb", "nan"], "got 'nan'"),
    (["--gpu-gb", "inf"], "got 'inf'"),
    (["--batch", "0"], "--batch: must be a whole number of at least 1, got '0'"),
    (["--rank", "abc"], "got 'abc'"),
    (["--rank", "1e9"], "got '1e9'"),
    (["--rank", "-1"], "got '-1'"),
    (["--rank", "1000000000"], "with these targets the rank can be at most 4096"),
    (["--precision", "fp8"], "invalid choice: 'fp8'"),
    (["--model", "nope"], "unknown model 'nope': not a registry name"),
])
def test_cli_bad_values_get_one_line_and_status_2(capsys, args, message):
    assert memory.main(args) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and captured.err.startswith("error: ") and message in captured.err


def test_cli_takes_a_config_file_and_huge_sizes(tmp_path, capsys):
    (tmp_path / "config.json").write_text(json.dumps(MISTRAL))
    assert memory.main(["--model", str(tmp_path), "--method", "lora", "--rank", "4", "--seq", "64", "--json"]) == 0
    from_file = json.loads(capsys.readouterr().out)["bytes"]["total"]
    assert from_file == memory.estimate_training_memory(MISTRAL, "lora", rank=4, seq=64, precision="amp-bf16").total
    assert memory.main(["--model", "llama-2-7b", "--batch", "100000", "--seq", "1000000", "--gpu-gb", "80"]) == 0
    assert "does not fit in 80 GiB" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------
# The prepared GPU script (benchmarks/gpu_memory.py)
# ---------------------------------------------------------------------------------------------


def _gpu_script(*args: str):
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_memory.py"
    return subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=600)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is present: the script would measure")
def test_gpu_script_skips_cleanly_without_cuda():
    result = _gpu_script()
    assert result.returncode == 0 and result.stderr == ""
    assert result.stdout.count("\n") == 1 and result.stdout.startswith("No CUDA GPU here")


def test_gpu_script_runs_its_code_on_a_cpu_with_a_tiny_model():
    result = _gpu_script("--smoke")
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith("tiny llama")]
    assert [row.split()[3] for row in rows] == ["full", "lora", "qlora"]
    for row in rows:  # the two largest differences between measurement and estimate: none on a CPU
        largest = [float(part.split()[-1]) for part in row.rsplit("  ", 1)[-1].split(",")]
        assert largest == [0.0, 0.0], row
    assert _gpu_script("--bogus").returncode == 2


@pytest.mark.parametrize("precision", ["fp32", "amp-bf16"])
def test_dora_magnitudes_are_exact_and_its_activations_a_lower_bound(precision):
    import peft

    rec = memory.recipe(precision)
    model = peft.get_peft_model(_base(TINY, rec.base), peft.LoraConfig(
        r=RANK, lora_alpha=8, target_modules="all-linear", use_dora=True)).train()
    measured = memory.measure_training_step(model, _batch(TINY, 2, 16), _optimizer(model, "adamw"),
                                            autocast=rec.autocast)
    estimated = memory.estimate_training_memory(TINY, "lora", batch=2, seq=16, rank=RANK, precision=precision,
                                                device="cpu", dora=True)
    plain = memory.estimate_training_memory(TINY, "lora", batch=2, seq=16, rank=RANK, precision=precision,
                                            device="cpu")
    for part in ("frozen_weights", "trainable_weights", "gradients", "optimizer_state"):
        assert getattr(measured, part) == getattr(estimated, part), part
    magnitudes = 2 * (64 + 32 + 32 + 64 + 160 + 160 + 64)          # out_features of the 7 layers, 2 blocks
    assert estimated.trainable_weights - plain.trainable_weights == 4 * magnitudes
    assert measured.activations > estimated.activations == plain.activations    # DoRA keeps more: not counted
    with pytest.raises(ValueError, match="dora applies to the methods lora and qlora"):
        memory.estimate_training_memory(TINY, "full", dora=True)
