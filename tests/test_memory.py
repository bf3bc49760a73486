"""Tests of lessonlib.memory: exact measurement of a training step, and the estimate checked against it.

The models are tiny Llama models built from a config (seconds on a CPU). Expected values come
from measuring real training steps with torch, peft and bitsandbytes, never from the estimator.
"""

from __future__ import annotations

import pytest
import torch

from lessonlib import memory
from lessonlib.env import quiet_library_logs

TINY = dict(model_type="llama", hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=256, tie_word_embeddings=True)
WEIGHT_KINDS = ("frozen_weights", "quant_state", "trainable_weights", "gradients", "optimizer_state")


def _tiny_model():
    quiet_library_logs()
    from transformers import AutoModelForCausalLM

    from lessonlib.params import resolve_config

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(resolve_config(TINY), dtype=torch.float32)


def _batch(batch: int, seq: int) -> dict:
    ids = torch.randint(0, TINY["vocab_size"], (batch, seq), generator=torch.Generator().manual_seed(1))
    return dict(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids)


def _lora(model, dropout: float = 0.0):
    from peft import LoraConfig, get_peft_model

    return get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", lora_dropout=dropout,
                                            task_type="CAUSAL_LM"))


def _measure(model, batch, seq, optimizer="adamw"):
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    if optimizer == "adamw8bit":
        import bitsandbytes as bnb

        opt = bnb.optim.AdamW8bit(params)
    elif optimizer == "adamw":
        opt = torch.optim.AdamW(params)
    else:
        opt = torch.optim.SGD(params, lr=0.1, momentum=0.9)
    return memory.measure_training_step(model, _batch(batch, seq), opt)


def _assert_close(measured, estimated, act_tol=0.10, weight_tol=0.02):
    for kind in WEIGHT_KINDS:
        m, e = getattr(measured, kind), getattr(estimated, kind)
        assert e == pytest.approx(m, rel=weight_tol), (kind, m, e)
    assert estimated.activations == pytest.approx(measured.activations, rel=act_tol)


def test_storage_bytes_counts_shared_storage_once():
    model = _tiny_model()
    assert model.lm_head.weight is model.model.embed_tokens.weight  # tied
    tensors = [p for _, p in model.named_parameters(remove_duplicate=False)]
    assert memory.storage_bytes(tensors) == 4 * sum(p.numel() for p in model.parameters())
    assert memory.storage_bytes([model.lm_head.weight, model.lm_head.weight.t()]) == 4 * 256 * 64


def test_measurement_is_exact_on_a_hand_countable_step():
    torch.manual_seed(0)
    net = torch.nn.Linear(10, 3)
    frozen = torch.nn.Linear(10, 10)
    frozen.requires_grad_(False)
    model = torch.nn.Sequential(frozen, net)
    x = torch.randn(5, 10)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    m = memory.measure_training_step(model, {"x": x}, opt, loss_fn=lambda mod, b: mod(b["x"]).sum())
    assert m.frozen_weights == 4 * 110 and m.trainable_weights == 4 * 33 == m.gradients == m.optimizer_state
    # net keeps its input (frozen's 5x10 output) for its weight gradient; frozen keeps nothing
    assert m.activations == 4 * 50
    assert m.peak_allocated is None
    assert all(p.grad is None for p in net.parameters())  # cleared for the next step


@pytest.mark.parametrize("method", ["full", "lora"])
@pytest.mark.parametrize("optimizer", ["adamw", "sgd", "adamw8bit"])
def test_estimate_matches_measurement(method, optimizer):
    model = _tiny_model()
    if method == "lora":
        model = _lora(model)
    for batch, seq in [(1, 16), (3, 24)]:
        measured = _measure(model, batch, seq, optimizer)
        estimated = memory.estimate_training_memory(TINY, method, batch=batch, seq=seq, rank=4, dtype="fp32",
                                                    targets="all-linear", optimizer=optimizer)
        _assert_close(measured, estimated)


def test_lora_dropout_keeps_a_copy_and_a_mask():
    model = _lora(_tiny_model(), dropout=0.1)
    measured = _measure(model, 2, 16)
    estimated = memory.estimate_training_memory(TINY, "lora", batch=2, seq=16, rank=4, dtype="fp32",
                                                lora_dropout=0.1)
    without = memory.estimate_training_memory(TINY, "lora", batch=2, seq=16, rank=4, dtype="fp32")
    _assert_close(measured, estimated)
    assert estimated.activations > without.activations


def test_qlora_on_a_small_4bit_model(tmp_path):
    quiet_library_logs()
    from peft import prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM

    from lessonlib.models import quantization_config

    _tiny_model().save_pretrained(tmp_path)
    for quant in ("nf4", "nf4-dq"):
        model = AutoModelForCausalLM.from_pretrained(tmp_path, quantization_config=quantization_config(quant),
                                                     device_map={"": "cpu"}, dtype=torch.float32)
        model = _lora(prepare_model_for_kbit_training(model, use_gradient_checkpointing=False))
        measured = _measure(model, 2, 16)
        estimated = memory.estimate_training_memory(TINY, "qlora", batch=2, seq=16, rank=4, dtype="fp32",
                                                    quantization=quant)
        assert measured.quant_state > 0
        _assert_close(measured, estimated)


def test_inference_kv_cache_matches_a_real_cache():
    model = _tiny_model().eval()
    with torch.no_grad():
        out = model(**{k: v for k, v in _batch(2, 12).items() if k != "labels"}, use_cache=True)
    cache = out.past_key_values
    tensors = [t for layer in cache.layers for t in (layer.keys, layer.values)]
    estimated = memory.estimate_inference_memory(TINY, batch=2, seq=12, dtype="fp32")
    assert estimated.kv_cache == memory.storage_bytes(tensors)
    assert estimated.weights == memory.storage_bytes(model.parameters())


def test_gradient_checkpointing_and_4bit_shrink_the_estimate():
    kwargs = dict(batch=4, seq=1024, rank=16)
    plain = memory.estimate_training_memory("llama-2-7b", "lora", **kwargs)
    ckpt = memory.estimate_training_memory("llama-2-7b", "lora", gradient_checkpointing=True, **kwargs)
    qlora = memory.estimate_training_memory("llama-2-7b", "qlora", **kwargs)
    assert ckpt.activations < plain.activations / 5
    assert qlora.frozen_weights < plain.frozen_weights / 3
    eight_bit = memory.estimate_training_memory("llama-2-7b", "full", optimizer="adamw8bit", **kwargs)
    adamw = memory.estimate_training_memory("llama-2-7b", "full", **kwargs)
    assert eight_bit.optimizer_state == pytest.approx(adamw.optimizer_state / 2, rel=0.02)  # 2 bytes vs 4 (bf16)


@pytest.mark.parametrize("kwargs, message", [
    (dict(method="prefix"), "unknown method 'prefix'; accepted: full, lora, qlora"),
    (dict(batch=0), "batch must be a positive integer, got 0"),
    (dict(seq=-5), "seq must be a positive integer, got -5"),
    (dict(dtype="fp8"), "unknown dtype 'fp8'; accepted: fp32, bf16, fp16"),
    (dict(optimizer="adam"), "unknown optimizer 'adam'; accepted: adamw, sgd, adamw8bit"),
    (dict(quantization="int4"), "unknown quantization 'int4'"),
    (dict(rank=0), "rank must be a positive integer"),
    (dict(rank=5000), "rank 5000 is larger than"),
    (dict(targets="x_proj"), "no module 'x_proj'"),
])
def test_bad_input_says_what_is_accepted(kwargs, message):
    kwargs = {"method": "lora", **kwargs}
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        memory.estimate_training_memory("smollm2-135m", **kwargs)


def test_unsupported_architecture_is_refused():
    with pytest.raises(ValueError, match="model_type 'gpt2'"):
        memory.estimate_training_memory("gpt2", "lora")


def test_measure_refuses_a_model_with_nothing_to_train():
    model = torch.nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        memory.measure_training_step(model, {}, torch.optim.SGD([torch.zeros(1, requires_grad=True)]))


def test_cli(capsys):
    assert memory.main(["--model", "llama-2-7b", "--method", "qlora", "--rank", "16", "--batch", "4",
                        "--seq", "1024", "--gpu-gb", "12"]) == 0
    out = capsys.readouterr().out
    assert "quantization state" in out and "does not fit in 12 GB" in out
    assert memory.main(["--model", "llama-2-7b", "--batch", "0"]) == 2
    assert "batch must be a positive integer" in capsys.readouterr().err
