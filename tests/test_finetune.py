"""Tests of lessonlib.finetune: config handling, and a real 2-process DDP run (torchrun, gloo, CPU).

The DDP run uses a tiny randomly initialised Llama saved with the course tokenizer, loaded in
4-bit NF4 like the real model, so it finishes in seconds; the same command fine-tunes
SmolLM2-135M-Instruct when ``--model`` is left out.
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from lessonlib import finetune
from lessonlib.models import load_tokenizer


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = load_tokenizer()
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                      pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    path = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(cfg).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_config_file_and_flags(tmp_path):
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps({"steps": 5, "r": 4, "targets": ["q_proj", "v_proj"]}))
    cfg = finetune.FinetuneConfig.from_json(path, steps=7)
    assert (cfg.steps, cfg.r, cfg.targets, cfg.quantization) == (7, 4, ["q_proj", "v_proj"], "nf4-dq")
    path.write_text(json.dumps({"stepz": 5}))
    with pytest.raises(ValueError, match="unknown config keys"):
        finetune.FinetuneConfig.from_json(path)
    assert finetune.main(["--lr", "-1"]) == 2
    assert finetune.main(["--config", str(tmp_path / "missing.json")]) == 2


LAUNCHERS = {
    "torchrun": ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"],
    # accelerate's multi-process launcher is torchrun's; on a CPU the processes use gloo.
    "accelerate": ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                   "--mixed_precision", "no", "--dynamo_backend", "no"],
}


@pytest.mark.parametrize("launcher", sorted(LAUNCHERS))
def test_two_processes_end_with_identical_adapters(launcher, tiny_model_dir, tmp_path, python):
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [python, *LAUNCHERS[launcher], "-m", "lessonlib.finetune", "--model", str(tiny_model_dir), "--quantization", "nf4",
               "--steps", "3", "--batch-size", "2", "--n-train", "12", "--eval-examples", "0", "--lr", "1e-2",
               "--no-progress", "--output", str(out)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    reports = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["world_size"] for r in reports] == [2, 2]
    assert reports[0]["adapter_sha256"] == reports[1]["adapter_sha256"]          # DDP kept them in step
    assert reports[0]["adapter_sha256"] != reports[0]["initial_adapter_sha256"]  # and they did train
    assert reports[0]["loss_history"] != reports[1]["loss_history"]            # on different batches
    assert (out / "adapter" / "adapter_model.safetensors").is_file()

    # The saved adapter is the trained one: reloaded onto the base, it hashes the same.
    from peft import PeftModel

    from lessonlib.models import load_model

    reloaded = PeftModel.from_pretrained(load_model(tiny_model_dir, quantization="nf4", device="cpu"),
                                         out / "adapter", is_trainable=True)
    assert finetune.adapter_hash(reloaded) == reports[0]["adapter_sha256"]
