"""Tests of lessonlib.train: batch plans, the training loop (full and LoRA), validation loss, generation, evaluation.

A tiny randomly initialised Llama with the course tokenizer keeps these tests fast; the real
model's fine-tune is exercised by the lesson-06 notebook and tests/test_finetune.py.
"""

from __future__ import annotations

import pytest
import torch

from lessonlib import data, train
from lessonlib.models import load_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer()


def tiny_model(tokenizer, seed=0, hidden=32):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                      pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                      initializer_range=0.5)
    return LlamaForCausalLM(cfg).eval()


def test_batch_plan_covers_each_epoch_once():
    plan = train.batch_indices(10, steps=5, batch_size=2, seed=1)
    assert sorted(i for b in plan for i in b) == list(range(10))  # one epoch, each example once
    longer = train.batch_indices(10, steps=10, batch_size=2, seed=1)
    assert longer[:5] == plan and sorted(i for b in longer[5:] for i in b) == list(range(10))
    with pytest.raises(ValueError, match="steps"):
        train.batch_indices(10, 0, 1, 0)


def test_lora_training_lowers_the_loss_and_changes_only_the_adapter(tokenizer):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny_model(tokenizer), LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    examples = data.booking_splits(4, 0, 0, seed=0).train
    result = train.train(model, tokenizer, examples, steps=30, batch_size=4, lr=5e-2, seed=0, progress=False)
    assert len(result.loss_history) == 30 and result.steps == 30 and result.examples_seen == 120
    assert result.loss_history[-1] < result.loss_history[0] - 1.0
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if not p.requires_grad)
    assert result.seconds > 0 and result.peak_memory_mib > 0 and not model.training


def test_training_is_reproducible_from_the_seed(tokenizer):
    examples = data.booking_splits(6, 0, 0, seed=0).train
    runs = [train.train(tiny_model(tokenizer), tokenizer, examples, steps=3, batch_size=2, seed=5, progress=False)
            for _ in range(2)]
    assert runs[0].loss_history == runs[1].loss_history


def test_parameter_groups_get_their_own_learning_rates(tokenizer):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny_model(tokenizer), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"],
                                                             init_lora_weights=False))  # B not zero: A has a gradient
    a = [p for n, p in model.named_parameters() if p.requires_grad and "lora_A" in n]
    b = [p for n, p in model.named_parameters() if p.requires_grad and "lora_B" in n]
    before = [p.detach().clone() for p in a + b]
    examples = data.booking_splits(2, 0, 0, seed=0).train
    train.train(model, tokenizer, examples, steps=1, batch_size=2, lr=1e-2, seed=0, progress=False,
                param_groups=[{"params": a, "lr": 0.0}, {"params": b, "lr": 1e-2}])
    assert all(torch.equal(p, q) for p, q in zip(a, before[:len(a)]))          # rate 0: A unchanged
    assert not any(torch.equal(p, q) for p, q in zip(b, before[len(a):]))      # B moved
    train.train(model, tokenizer, examples, steps=1, batch_size=2, lr=1e-2, seed=0, progress=False,
                param_groups=[{"params": a, "lr": 1e-2}, {"params": b, "lr": 0.0}])
    assert not any(torch.equal(p, q) for p, q in zip(a, before[:len(a)]))      # now A moved
    for groups in ([{"params": a}], [{"params": a + b}, {"params": b}]):       # B missing; B twice
        with pytest.raises(ValueError, match="param_groups must hold each of the model's 2 parameters"):
            train.train(model, tokenizer, examples, steps=1, batch_size=2, progress=False, param_groups=groups)


def test_training_refuses_a_model_without_trainable_parameters(tokenizer):
    model = tiny_model(tokenizer).requires_grad_(False)
    with pytest.raises(ValueError, match="requires_grad"):
        train.train(model, tokenizer, data.booking_splits(2, 0, 0).train, steps=1, progress=False)


def test_batched_generation_equals_one_at_a_time(tokenizer):
    model = tiny_model(tokenizer, seed=3)
    examples = data.booking_splits(0, 0, 5, seed=2).test
    batched = train.generate(model, tokenizer, examples, max_new_tokens=6, batch_size=5)
    single = [train.generate(model, tokenizer, [e], max_new_tokens=6)[0] for e in examples]
    assert batched == single and len(batched) == 5
    assert tokenizer.padding_side == "right"  # restored


def test_evaluate_scores_its_own_generations(tokenizer):
    model = tiny_model(tokenizer)
    examples = data.booking_splits(0, 0, 3, seed=0).test
    ev = train.evaluate(model, tokenizer, examples, max_new_tokens=4)
    assert len(ev.generations) == 3
    assert ev.scores == data.score(ev.generations, [e.answer for e in examples])
    assert (ev.exact_match, ev.valid_json) == (ev.scores.exact_match, ev.scores.valid_json)
    records = [data.to_record(e) for e in examples]      # records (own data) are generated from the same prompts
    assert train.generate(model, tokenizer, records, max_new_tokens=4) == ev.generations


def test_validation_loss_is_the_token_mean_of_the_models_loss(tokenizer):
    model = tiny_model(tokenizer, seed=2)
    examples = data.booking_splits(0, 3, 0, seed=0).val
    batch = data.collate([data.encode(tokenizer, e) for e in examples], tokenizer.pad_token_id)
    with torch.no_grad():
        expected = model(**batch).loss.item()    # the model's own mean over the answer tokens
    assert train.validation_loss(model, tokenizer, examples, batch_size=2) == pytest.approx(expected, rel=1e-5)


def test_training_records_the_validation_loss_every_few_steps(tokenizer):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny_model(tokenizer), LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    splits = data.booking_splits(4, 2, 0, seed=0)
    result = train.train(model, tokenizer, splits.train, steps=10, batch_size=4, lr=5e-2, seed=0, progress=False,
                         val_examples=splits.val, eval_every=4)
    assert result.eval_steps == [0, 4, 8, 10] and len(result.eval_losses) == 4
    assert result.eval_losses[-1] == pytest.approx(train.validation_loss(model, tokenizer, splits.val))
    assert result.eval_losses[-1] != result.eval_losses[0]


def test_step_times_and_token_counts_of_a_hand_countable_run(tokenizer, monkeypatch):
    """Four examples of 3, 5, 4 and 6 tokens, 2 steps of 2, seed 0: the plan is [[2, 0], [1, 3]], so the
    steps hold 4 + 3 = 7 and 5 + 6 = 11 tokens (the one padding token of step 1 not counted). A clock
    that reads 0, 2, then 10, 15 makes the steps last 2 s and 5 s: 3.5 and 2.2 tokens per second."""
    from types import SimpleNamespace

    lengths = {"a": 3, "b": 5, "c": 4, "d": 6}
    monkeypatch.setattr(train, "encode", lambda tok, e: {"input_ids": [7] * lengths[e], "labels": [7] * lengths[e]})
    clock = iter([0.0, 2.0, 10.0, 15.0])
    monkeypatch.setattr(train, "time", SimpleNamespace(perf_counter=lambda: next(clock)))
    result = train.train(tiny_model(tokenizer), tokenizer, ["a", "b", "c", "d"], steps=2, batch_size=2, seed=0,
                         progress=False)
    assert train.batch_indices(4, 2, 2, seed=0) == [[2, 0], [1, 3]]
    assert result.step_tokens == [7, 11]
    assert result.step_seconds == [2.0, 5.0] and result.seconds == 7.0
    assert result.median_step_seconds == 3.5
    assert result.tokens_per_second == pytest.approx((3.5 + 2.2) / 2)
    assert result.examples_seen == 4 and len(result.loss_history) == 2


def test_generation_leaves_4bit_weights_as_training_sees_them(tokenizer, tmp_path):
    """bitsandbytes repacks 4-bit weights for CPU inference on some CPUs; generate must not."""
    from lessonlib.models import load_model

    tiny_model(tokenizer, hidden=128).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    examples = data.booking_splits(2, 0, 2, seed=0)
    batch = data.collate([data.encode(tokenizer, e) for e in examples.train], tokenizer.pad_token_id)
    fresh, used = (load_model(tmp_path, quantization="nf4", device="cpu").train() for _ in range(2))
    train.generate(used, tokenizer, examples.test, max_new_tokens=2)
    used.train()
    with torch.no_grad():
        assert torch.equal(fresh(**batch).logits, used(**batch).logits)
    # A model that did run the packing path (where the CPU has it) is refused, not trained wrongly.
    raw = load_model(tmp_path, quantization="nf4", device="cpu")
    with torch.no_grad():
        raw(**batch)
    packed = any(getattr(m.weight.quant_state, "packing_format_for_cpu", False)
                 for m in raw.modules() if hasattr(m, "support_avx512bf16_for_cpu"))
    if packed:
        with pytest.raises(ValueError, match="repacked"):
            train.keep_4bit_weights_unpacked(raw)
