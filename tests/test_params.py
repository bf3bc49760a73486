"""Tests of lessonlib.params: the analytical counts equal peft's on the real models (meta device)."""

from __future__ import annotations

import subprocess

import pytest

from lessonlib.env import quiet_library_logs

quiet_library_logs()
import peft  # noqa: E402  (imported once for the module, after the log filter)

from lessonlib.params import (  # noqa: E402
    ALL_LINEAR,
    REGISTRY,
    build_on_meta,
    count_parameters,
    linear_layers,
    model_shape,
    parameter_groups,
    registry_names,
    resolve_config,
    resolve_targets,
)
from lessonlib.params import main as params_main  # noqa: E402

from conftest import run_main  # noqa: E402

# a deprecation notice raised inside peft/transformers, not about this code
pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")


def peft_counts(name: str, rank: int, targets, dora: bool = False) -> tuple[int, int]:
    """(trainable, all) as peft counts them on the real model built on the meta device."""
    model = build_on_meta(name)
    target_modules = targets if isinstance(targets, str) else list(targets)
    fused_conv1d = REGISTRY.get(name, {}).get("model_type") == "gpt2"  # GPT-2's Conv1D stores (in, out)
    config = peft.LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=target_modules, fan_in_fan_out=fused_conv1d,
                             use_dora=dora)
    # low_cpu_mem_usage: peft creates the adapter on the meta device too (fast for 70B models)
    return peft.get_peft_model(model, config, low_cpu_mem_usage=True).get_nb_trainable_parameters()


def combinations(name: str) -> list[tuple[int, object]]:
    """Several (rank, targets) per model: one attention pair, all-linear, one MLP layer alone."""
    names = [layer.name for layer in linear_layers(name)]
    attention = [layer.name for layer in linear_layers(name) if layer.group == "attention"]
    mlp = [layer.name for layer in linear_layers(name) if layer.group == "mlp"]
    pair = ("q_proj", "v_proj") if "q_proj" in names else (attention[0],)
    return [(8, pair), (16, ALL_LINEAR), (3, (mlp[-1], attention[-1]))]


@pytest.mark.parametrize("name", registry_names())
def test_counts_equal_peft_on_every_registry_model(name):
    model = build_on_meta(name)
    assert sum(p.numel() for p in model.parameters()) == sum(parameter_groups(name).values())
    for rank, targets in combinations(name):
        ours = count_parameters(name, rank, targets)
        assert (ours.trainable, ours.total) == peft_counts(name, rank, targets), (rank, targets)


@pytest.mark.filterwarnings("ignore:Model has `tie_word_embeddings=True`:UserWarning")
def test_lm_head_as_a_target_equals_peft_on_a_tied_model():
    ours = count_parameters("smollm2-135m", 4, ("lm_head", "q_proj"))
    assert (ours.trainable, ours.total) == peft_counts("smollm2-135m", 4, ("lm_head", "q_proj"))


def test_linear_layers_match_the_modules_of_the_built_model():
    for name in ("smollm2-135m", "phi-3-mini", "gpt2", "qwen2.5-0.5b"):
        model = build_on_meta(name)
        shapes = {}
        for module_name, module in model.named_modules():
            weight = getattr(module, "weight", None)
            if weight is None or weight.dim() != 2 or "embed" in module_name or module_name.endswith(("wte", "wpe")):
                continue
            key = module_name.rsplit(".", 1)[-1]
            # nn.Linear stores (out, in); GPT-2's Conv1D stores (in, out)
            out_f, in_f = weight.shape if type(module).__name__ != "Conv1D" else weight.shape[::-1]
            shapes.setdefault((key, in_f, out_f, module.bias is not None), 0)
            shapes[(key, in_f, out_f, module.bias is not None)] += 1
        ours = {(l.name, l.in_features, l.out_features, l.bias): l.count for l in linear_layers(name)}
        assert ours == shapes, name


def test_design_figures_for_smollm2_and_llama2():
    small = count_parameters("smollm2-135m", 8, "all-linear")
    assert small.base == 134_515_008 and small.trainable == 2_442_240
    assert sum(l.weights for l in linear_layers("smollm2-135m") if l.group != "head") == 106_168_320
    assert count_parameters("llama-2-7b", 8, ("q_proj", "v_proj")).trainable == 4_194_304


def test_a_dict_and_a_config_object_give_the_same_count_as_the_name():
    by_name = count_parameters("qwen2.5-0.5b", 8, "all-linear")
    by_dict = count_parameters(dict(REGISTRY["qwen2.5-0.5b"]), 8, "all-linear")
    by_config = count_parameters(resolve_config("qwen2.5-0.5b"), 8, "all-linear")
    assert by_name.trainable == by_dict.trainable == by_config.trainable
    assert by_name.total == by_dict.total == by_config.total
    assert resolve_config("HuggingFaceTB/SmolLM2-135M-Instruct").hidden_size == 576


def test_breakdown_percent_and_adapter_bytes_are_consistent():
    c = count_parameters("llama-3.1-8b", 16, "all-linear")
    assert sum(c.by_module.values()) == c.trainable
    assert list(c.by_module) == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    assert c.percent == pytest.approx(100 * c.trainable / c.total)
    assert c.adapter_bytes("fp32") == 2 * c.adapter_bytes("bf16") == 2 * c.adapter_bytes("fp16") == 4 * c.trainable
    assert "trainable" in c.table() and f"{c.trainable:,}" in c.table()


def test_default_targets_are_peft_defaults_where_peft_has_one():
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as defaults

    for name in registry_names():
        model_type = REGISTRY[name]["model_type"]
        if model_type in defaults:
            assert list(count_parameters(name).targets) == defaults[model_type], name
    assert count_parameters("phi-3-mini").targets == ("qkv_proj",)


def test_gqa_makes_k_and_v_smaller():
    layers = {l.name: l for l in linear_layers("llama-2-70b")}
    assert layers["k_proj"].out_features * 8 == layers["q_proj"].out_features


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: count_parameters("llama-9b"), "not a registry name \\(smollm2-135m"),
        (lambda: count_parameters("llama-2-7b", 0), "rank must be a positive integer"),
        (lambda: count_parameters("llama-2-7b", 2.5), "rank must be a positive integer"),
        (lambda: count_parameters("smollm2-135m", 200, ("k_proj",)), "larger than k_proj's smaller dimension"),
        (lambda: resolve_config({"model_type": 7}), "not supported"),
        (lambda: resolve_config({"model_type": "llama", "hidden_size": 64, "intermediate_size": 64,
                                 "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 10,
                                 "rope_parameters": "oops"}), "config is not valid|rope"),
        (lambda: count_parameters("phi-3-mini", 8, ("q_proj",)), "its linear modules are: qkv_proj"),
        (lambda: count_parameters("gpt2", 8, ()), "at least one module"),
        (lambda: resolve_config({"model_type": "llama", "hidden_size": 8}), "missing 'intermediate_size'"),
        (lambda: resolve_config({"hidden_size": 8}), "missing 'model_type'"),
        (lambda: resolve_config({"model_type": "bert"}), "not supported"),
        (lambda: count_parameters("gpt2").adapter_bytes("int3"), "dtype must be one of fp32, bf16, fp16, got 'int3'"),
    ],
)
def test_bad_input_is_a_clear_value_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_resolve_targets_all_linear_leaves_out_the_head():
    assert "lm_head" not in resolve_targets("llama-2-7b", ALL_LINEAR)
    assert resolve_targets("phi-3-mini", "ALL-LINEAR") == ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")


def cli(*args: str) -> subprocess.CompletedProcess:
    return run_main(params_main, list(args))


def test_cli_prints_the_table_of_the_issue_example():
    result = cli("--model", "llama-2-7b", "--rank", "8", "--targets", "q_proj,v_proj")
    assert result.returncode == 0, result.stderr
    expected = count_parameters("llama-2-7b", 8, ("q_proj", "v_proj"))
    assert f"trainable      : {expected.trainable:,}" in result.stdout
    assert f"{expected.percent:.4f}%" in result.stdout and "0.0622%" in result.stdout


def test_cli_reports_bad_input_and_lists_the_registry():
    result = cli("--model", "nope")
    assert result.returncode == 2 and "unknown model 'nope'" in result.stderr
    assert "dict" not in result.stderr and "config.json" in result.stderr  # what a terminal user can give
    listed = cli("--list")
    assert listed.returncode == 0 and listed.stdout.split() == registry_names()


def test_rank_message_names_the_layer_that_limits_the_rank():
    # all-linear on SmolLM2: k_proj and v_proj (576 -> 192) limit the rank, not the first layer listed
    with pytest.raises(ValueError, match=r"k_proj's smaller dimension \(576 x 192\); with these targets the rank "
                                         r"can be at most 192"):
        count_parameters("smollm2-135m", 500, "all-linear")
    assert count_parameters("smollm2-135m", 192, "all-linear").trainable > 0  # the limit it names is accepted
    with pytest.raises(ValueError, match="at most 192"):
        count_parameters("smollm2-135m", 193, "all-linear")


def test_a_config_json_file_or_folder_names_a_model(tmp_path):
    import json

    (tmp_path / "config.json").write_text(json.dumps({**REGISTRY["qwen2.5-0.5b"], "architectures": ["Qwen2ForCausalLM"],
                                                     "torch_dtype": "bfloat16"}))
    by_folder = count_parameters(str(tmp_path), 8, "all-linear")
    by_file = count_parameters(tmp_path / "config.json", 8, "all-linear")
    by_name = count_parameters("qwen2.5-0.5b", 8, "all-linear")
    assert by_folder.trainable == by_file.trainable == by_name.trainable
    assert by_folder.total == by_name.total
    shape = model_shape(tmp_path)
    assert (shape.kv_heads, shape.head_dim, shape.sliding_window) == (2, 64, None)


def test_model_shape_resolves_the_sizes_once():
    s = model_shape("mistral-7b")
    assert (s.heads, s.kv_heads, s.head_dim, s.sliding_window, s.sliding_layers) == (32, 8, 128, 4096, 32)
    assert s.base_params == sum(parameter_groups("mistral-7b").values())
    assert s.linear_weights == sum(l.count * l.in_features * l.out_features for l in linear_layers("mistral-7b")
                                   if l.group != "head")
    assert model_shape(dict(REGISTRY["mistral-7b"], sliding_window=None)).sliding_window is None
    assert model_shape("gemma-2b").head_dim == 256


def test_format_bytes_uses_binary_units():
    from lessonlib.params import format_bytes

    assert format_bytes(2**30) == "1.00 GiB" and format_bytes(3 * 2**20) == "3.00 MiB"
    assert format_bytes(1536) == "1.50 KiB" and format_bytes(1023) == "1023 B"


@pytest.mark.parametrize("args, message", [
    (("--rank", "0"), "--rank/-r: must be a whole number of at least 1, got '0'"),
    (("--rank", "-1"), "got '-1'"),
    (("--rank", "abc"), "got 'abc'"),
    (("--rank", "1e9"), "got '1e9'"),
    (("--rank", "1000000000"), "with these targets the rank can be at most 192"),
    (("--model", "no/such/dir/"), "no such file or folder"),
    (("--model", "nope.json"), "no such file or folder"),
])
def test_cli_bad_values_are_one_line_with_status_2(args, message):
    result = cli(*args)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: ") and message in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_hostile_model_paths(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text("{not json")
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text('{"model_type": "bert", "hidden_size": 8}')
    listed = tmp_path / "list.json"
    listed.write_text("[1, 2]")
    for path, message in [(empty, "holds no config.json"), (bad, "is not a readable JSON file"),
                          (bert, "model_type 'bert' is not supported; supported: gemma, gpt2"),
                          (listed, "does not hold a JSON object")]:
        result = cli("--model", str(path))
        assert result.returncode == 2 and result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
    ok = tmp_path / "mine"
    ok.mkdir()
    (ok / "config.json").write_text('{"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, '
                                    '"num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 100}')
    result = cli("--model", str(ok), "--rank", "4")
    assert result.returncode == 0 and "trainable" in result.stdout


@pytest.mark.parametrize("name", registry_names())
def test_dora_counts_equal_peft_on_every_registry_model(name):
    rank, targets = combinations(name)[-1]          # one MLP and one attention layer kind (fast to build)
    ours = count_parameters(name, rank, targets, dora=True)
    assert (ours.trainable, ours.total) == peft_counts(name, rank, targets, dora=True), targets
    plain = count_parameters(name, rank, targets)
    magnitudes = sum(layer.count * layer.out_features for layer in linear_layers(name) if layer.name in targets)
    assert ours.trainable - plain.trainable == magnitudes > 0


def test_cli_counts_dora(capsys):
    from lessonlib.params import main

    assert main(["--model", "llama-2-7b", "--rank", "8", "--dora"]) == 0
    out = capsys.readouterr().out
    assert "4,456,448" in out and "DoRA" in out
