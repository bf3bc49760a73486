"""Tests of lessonlib.finetune (TRL's SFTTrainer as a command): flags and config, your own data and its
errors, save and reload, resume after an interruption, and a real 2-process DDP run (gloo, CPU).

The runs use a tiny randomly initialised Llama saved with the course tokenizer, loaded in 4-bit NF4
like the real model, so each finishes in seconds; the same command fine-tunes SmolLM2-135M-Instruct
when ``--model`` is left out.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from lessonlib import finetune
from lessonlib.models import load_tokenizer

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "booking.jsonl"


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


def tiny_flags(model_dir, out, *more):
    return ["--model", str(model_dir), "--quantization", "nf4", "--batch-size", "2", "--lr", "1e-2",
            "--no-progress", "--output", str(out), *more]


def test_config_file_and_flags(tmp_path):
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps({"steps": 5, "r": 4, "targets": "q_proj,v_proj", "grad_accum": 2}))
    args = finetune.parse_arguments(["--config", str(path), "--steps", "7"])
    assert (args.steps, args.r, args.target_modules, args.grad_accum, args.quantization) == (7, 4, ["q_proj", "v_proj"], 2, "nf4-dq")
    path.write_text(json.dumps({"stepz": 5}))
    with pytest.raises(finetune.UsageError, match="unknown config keys"):
        finetune.parse_arguments(["--config", str(path)])
    with pytest.raises(finetune.UsageError, match="unrecognized arguments"):
        finetune.parse_arguments(["--stepz", "5"])
    assert finetune.main(["--lr", "-1"]) == 2
    assert finetune.main(["--config", str(tmp_path / "missing.json")]) == 2
    assert finetune.main(["--eval-data", "x.jsonl"]) == 2          # needs --data


@pytest.mark.parametrize("flags, message", [
    (["--lr", "inf"], "lr must be a finite number above 0, got inf"),
    (["--lr", "nan"], "lr must be a finite number above 0, got nan"),
    (["--data", "a.jsonl", "--eval-data", "b.jsonl", "--eval-fraction", "0.1"], "not both"),
    (["--data", "a.jsonl", "--eval-fraction", "1"], "eval_fraction must be a number in (0, 1), got 1.0"),
])
def test_bad_values_get_one_line_and_exit_status_2(flags, message, tmp_path, capsys):
    assert finetune.main([*flags, "--output", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "run").exists()


BAD_LINES = {
    "not JSON": ('{"prompt": "a", "completion": "b"', "not JSON"),
    "missing key": ('{"prompt": "a"}', "missing key 'completion'"),
    "empty completion": ('{"prompt": "a", "completion": "  "}', "empty completion"),
    "wrong role order": ('{"messages": [{"role": "assistant", "content": "b"}, {"role": "user", "content": "a"}]}',
                         "wrong role order"),
    "too long": (json.dumps({"prompt": "word " * 400, "completion": "b"}), "too long"),
}


@pytest.mark.parametrize("kind", sorted(BAD_LINES))
def test_each_bad_line_gets_one_line_and_exit_status_2(kind, tmp_path, python):
    line, message = BAD_LINES[kind]
    data = tmp_path / "train.jsonl"
    good = EXAMPLE.read_text().splitlines()[:3]
    data.write_text("\n".join(good + [line] + good) + "\n")
    out = tmp_path / "run"
    done = subprocess.run([python, "-m", "lessonlib", "finetune", "--data", str(data), "--max-length", "128",
                           "--output", str(out)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: train.jsonl, line 4: ") and message in lines[0], done.stderr
    assert not out.exists()   # nothing trained or written


def test_own_data_trains_saves_and_reloads(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    assert finetune.main(tiny_flags(tiny_model_dir, out, "--data", str(EXAMPLE), "--eval-fraction", "0.25",
                                    "--steps", "4", "--eval-steps", "2", "--save-steps", "2",
                                    "--score-examples", "2")) == 0
    report = json.loads((out / "rank0.json").read_text())
    assert report["adapter_sha256"] != report["initial_adapter_sha256"] and report["global_step"] == 4
    assert len(report["loss_history"]) == 4 and [s for s, _ in report["eval_loss_history"]] == [2, 4]
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log if "loss" in e] == [1, 2, 3, 4] and any("eval_loss" in e for e in log)
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    scores = json.loads((out / "eval.json").read_text())
    assert scores["examples"] == 2 and len(scores["generations"]) == 2

    from peft import PeftModel

    from lessonlib.models import load_model

    reloaded = PeftModel.from_pretrained(load_model(tiny_model_dir, quantization="nf4", device="cpu"),
                                         out / "adapter", is_trainable=True)
    assert finetune.adapter_hash(reloaded) == report["adapter_sha256"]


def test_the_trainer_path_trains_as_many_parameters_as_the_loop_path(tiny_model_dir, tmp_path):
    """SFTTrainer with a LoraConfig trains exactly what get_peft_model gives the visible loop (lesson 06)."""
    from lessonlib.models import build_model

    args = finetune.parse_arguments(tiny_flags(tiny_model_dir, tmp_path / "run", "--steps", "1", "--n-train", "2",
                                               "--eval-examples", "0", "--score-examples", "0", "--r", "4"))
    report = finetune.run(args)
    loop_model = build_model("qlora", r=4, lora_alpha=16, source=tiny_model_dir, quantization="nf4", device="cpu")
    assert report["trainable_parameters"] == loop_model.get_nb_trainable_parameters()[0] > 0


def test_gradient_accumulation_counts_micro_batches(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    args = finetune.parse_arguments(tiny_flags(tiny_model_dir, out, "--steps", "2", "--grad-accum", "3",
                                               "--n-train", "12", "--eval-examples", "0", "--score-examples", "0"))
    report = finetune.run(args)
    assert report["global_step"] == 2 and len(report["loss_history"]) == 2


def test_resume_after_an_interruption_reaches_the_same_adapter(tiny_model_dir, tmp_path):
    from transformers import TrainerCallback

    class Interrupt(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.global_step == 2:
                control.should_training_stop = True

    flags = ["--steps", "4", "--save-steps", "2", "--n-train", "12", "--eval-examples", "4", "--eval-steps", "2",
             "--score-examples", "0", "--dropout", "0.1"]  # dropout: the random state must be restored too
    whole = finetune.run(finetune.parse_arguments(tiny_flags(tiny_model_dir, tmp_path / "whole", *flags)))
    cut = finetune.run(finetune.parse_arguments(tiny_flags(tiny_model_dir, tmp_path / "cut", *flags)),
                       extra_callbacks=[Interrupt()])
    assert cut["global_step"] == 2 and cut["adapter_sha256"] != whole["adapter_sha256"]
    resumed = finetune.run(finetune.parse_arguments(tiny_flags(tiny_model_dir, tmp_path / "cut", *flags, "--resume")))
    assert resumed["global_step"] == 4
    assert resumed["adapter_sha256"] == whole["adapter_sha256"]
    assert finetune.main(tiny_flags(tiny_model_dir, tmp_path / "empty", "--resume")) == 2   # nothing to resume


def test_the_trainer_keeps_4bit_weights_unpacked(tiny_model_dir, tmp_path):
    """bitsandbytes repacks 4-bit weights on a CPU's first no-grad forward; the trainer's callback stops it."""
    from lessonlib.models import load_model

    model = load_model(tiny_model_dir, quantization="nf4", device="cpu")
    keep, _log = finetune.callbacks(tmp_path)
    keep.on_train_begin(None, None, None, model=model)
    layers = [m for m in model.modules() if hasattr(m, "support_avx512bf16_for_cpu")]
    assert layers and not any(m.support_avx512bf16_for_cpu for m in layers)


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
    command = [python, *LAUNCHERS[launcher], "-m", "lessonlib.finetune",
               *tiny_flags(tiny_model_dir, out, "--steps", "3", "--n-train", "12", "--eval-examples", "4",
                           "--eval-steps", "3", "--score-examples", "0")]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    reports = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["world_size"] for r in reports] == [2, 2]
    assert reports[0]["adapter_sha256"] == reports[1]["adapter_sha256"]          # DDP kept them in step
    assert reports[0]["adapter_sha256"] != reports[0]["initial_adapter_sha256"]  # and they did train
    assert (out / "adapter" / "adapter_model.safetensors").is_file()

    from peft import PeftModel

    from lessonlib.models import load_model

    reloaded = PeftModel.from_pretrained(load_model(tiny_model_dir, quantization="nf4", device="cpu"),
                                         out / "adapter", is_trainable=True)
    assert finetune.adapter_hash(reloaded) == reports[0]["adapter_sha256"]
