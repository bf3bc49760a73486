"""Time lesson 06's QLoRA steps and generation on this machine, next to the lesson's targets.

Loads SmolLM2-135M-Instruct in 4-bit NF4 (double quantization), adds LoRA r=8 on all linear
layers, trains a few steps of lesson 06's booking task and generates for the held-out bookings,
then prints the per-step cost, the projected time of the lesson's 24 steps (target: at most 3
minutes on 2 idle cores) and the time of one held-out evaluation.

    .venv/bin/python benchmarks/qlora_steps.py [--steps 4] [--threads N]

On a shared machine, ``--threads 1`` per process is often faster than oversubscribing the cores.
"""

from __future__ import annotations

import argparse
import time

LESSON_STEPS = 24
TARGET_TRAIN_S = 180


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4, help="steps to time (default 4)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    args = parser.parse_args()

    import torch
    from transformers.utils import logging as hf_logging

    from lessonlib import data, models, train
    from lessonlib.env import quiet_library_logs

    quiet_library_logs()
    hf_logging.disable_progress_bar()
    if args.threads:
        torch.set_num_threads(args.threads)
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    splits = data.booking_splits(320, 0, 40, seed=0)
    tokenizer = models.load_tokenizer()
    start = time.perf_counter()
    model = models.load_model(quantization="nf4-dq")
    load_s = time.perf_counter() - start
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM"))
    result = train.train(model, tokenizer, splits.train, steps=args.steps, batch_size=8, lr=2e-3, progress=False)
    start = time.perf_counter()
    train.evaluate(model, tokenizer, splits.test, max_new_tokens=24, batch_size=40)
    eval_s = time.perf_counter() - start

    per_step = result.seconds_per_step
    print(f"torch threads           : {torch.get_num_threads()}")
    print(f"load 4-bit model        : {load_s:6.1f} s")
    print(f"QLoRA step (batch 8)    : {per_step:6.2f} s  (mean of {args.steps})")
    print(f"lesson's {LESSON_STEPS} steps       : {per_step * LESSON_STEPS:6.0f} s  projected; target <= {TARGET_TRAIN_S} s on 2 idle cores")
    print(f"evaluate 40 held-out    : {eval_s:6.1f} s")
    print(f"peak memory (process)   : {result.peak_memory_mb:6.0f} MB")


if __name__ == "__main__":
    main()
