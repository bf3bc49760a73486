"""Tests of lessonlib.forgetting: perplexity computed as the definition says, and the probe's parts."""

from __future__ import annotations

import math

import pytest
import torch

from lessonlib import forgetting
from lessonlib.models import load_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer()


def tiny_model(tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2, pad_token_id=tokenizer.pad_token_id,
                      eos_token_id=tokenizer.eos_token_id)
    return LlamaForCausalLM(cfg).eval()


def test_perplexity_is_exp_of_the_mean_next_token_loss(tokenizer):
    model = tiny_model(tokenizer)
    ids = tokenizer(forgetting.GENERAL_TEXT, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[0, :-1].double(), -1)
    nll = -logp.gather(1, ids[0, 1:, None]).mean().item()
    assert forgetting.perplexity(model, tokenizer) == pytest.approx(math.exp(nll), rel=1e-4)
    # an untrained model is close to uniform over the vocabulary: perplexity of the order of its size
    assert forgetting.perplexity(model, tokenizer) > 1000
    with pytest.raises(ValueError):
        forgetting.perplexity(model, tokenizer, "")


def test_the_probe_answers_every_prompt_and_counts_json(tokenizer):
    model = tiny_model(tokenizer)
    p = forgetting.probe(model, tokenizer, max_new_tokens=3)
    assert len(p.answers) == len(forgetting.GENERAL_PROMPTS) and p.perplexity > 1
    assert forgetting.Probe(1.0, ["{", " {x", "no"]).json_like == 2
    n_tokens = len(tokenizer(forgetting.GENERAL_TEXT)["input_ids"])
    assert 150 <= n_tokens <= 260          # short: one cheap forward pass
