"""Lesson 06's fine-tune on this machine, next to its targets: training time and held-out exact match.

Loads SmolLM2-135M-Instruct in 4-bit NF4 (double quantization), adds LoRA r=8 on all linear
layers and trains lesson 06's run (its steps, batch, learning rate and validation loss every few
steps) with the visible loop, then scores the 40 held-out bookings (unseen phrasings and values).
Prints the training time next to the target (at most 3 minutes on 2 idle cores) and the exact match
next to its target (at least 90%). With ``--trl`` it also trains the same run with TRL's
``SFTTrainer`` (lesson 06, section 9) and prints both.

    .venv/bin/python benchmarks/qlora_steps.py [--threads N] [--repeat R] [--trl] [--steps N]

On a shared machine, timings vary from run to run: ``--repeat`` prints each run and the range.
"""

from __future__ import annotations

import argparse
import tempfile
import time

STEPS, BATCH, LR, EVAL_EVERY = 20, 8, 4e-3, 5   # lesson 06's settings
TARGET_TRAIN_S, TARGET_EXACT = 180, 0.90


def one_run(with_trl: bool, steps: int = STEPS) -> dict[str, float]:
    import torch

    from lessonlib import data, models, train

    splits = data.booking_splits(steps * BATCH, 16, 40, seed=0)
    tokenizer = models.load_tokenizer()
    max_new = max(len(tokenizer(e.answer)["input_ids"]) for e in splits.test) + 1
    out: dict[str, float] = {}
    model = models.build_model("qlora", r=8, lora_alpha=16, seed=0)   # nf4-dq base, prepared, seeded, adapter on
    result = train.train(model, tokenizer, splits.train, steps=steps, batch_size=BATCH, lr=LR, seed=0, progress=False,
                         val_examples=splits.val, eval_every=EVAL_EVERY)
    start = time.perf_counter()
    ev = train.evaluate(model, tokenizer, splits.test, max_new_tokens=max_new, batch_size=40)
    out.update(loop_train_s=result.seconds, loop_step_s=result.median_step_seconds, eval_s=time.perf_counter() - start,
               loop_exact=ev.exact_match, loop_exact_count=ev.scores.exact_count, peak_mib=result.peak_memory_mib)
    if with_trl:
        from transformers import PrinterCallback
        from trl import SFTConfig, SFTTrainer

        base = models.load_base("qlora")   # SFTTrainer adds the adapter from peft_config
        cfg = SFTConfig(output_dir=tempfile.mkdtemp(), max_steps=steps, per_device_train_batch_size=BATCH,
                        learning_rate=LR, lr_scheduler_type="linear", warmup_steps=max(1, steps // 10),
                        seed=0, completion_only_loss=True, activation_checkpointing=False, bf16=False,
                        use_cpu=models.resolve_device() == "cpu", logging_steps=1, save_strategy="no", report_to=[],
                        disable_tqdm=True)
        trainer = SFTTrainer(model=base, args=cfg, train_dataset=data.to_dataset(splits.train),
                             processing_class=tokenizer, peft_config=models.lora_config(r=8, lora_alpha=16))
        trainer.remove_callback(PrinterCallback)
        for p in trainer.model.parameters():
            if p.requires_grad:
                p.data = p.data.float()
        start = time.perf_counter()
        trainer.train()
        out["trl_train_s"] = time.perf_counter() - start
        trl_ev = train.evaluate(trainer.model, tokenizer, splits.test, max_new_tokens=max_new, batch_size=40)
        out.update(trl_exact=trl_ev.exact_match, trl_exact_count=trl_ev.scores.exact_count)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    parser.add_argument("--repeat", type=int, default=1, help="runs to time (default 1)")
    parser.add_argument("--trl", action="store_true", help="also train the same run with TRL's SFTTrainer")
    parser.add_argument("--steps", type=int, default=STEPS, help=f"training steps (default {STEPS}, the lesson's)")
    args = parser.parse_args()

    import datasets
    import torch
    from transformers.utils import logging as hf_logging

    from lessonlib.env import quiet_library_logs

    quiet_library_logs()
    hf_logging.disable_progress_bar()
    datasets.disable_progress_bars()
    if args.threads:
        torch.set_num_threads(args.threads)
    runs = []
    for i in range(args.repeat):
        r = one_run(args.trl, args.steps)
        runs.append(r)
        line = (f"run {i + 1}: loop {args.steps} steps in {r['loop_train_s']:5.0f} s (median step {r['loop_step_s']:.2f} s), "
                f"held-out exact match {r['loop_exact_count']:.0f}/40 = {r['loop_exact']:.0%}, "
                f"evaluation {r['eval_s']:.0f} s, peak {r['peak_mib']:,.0f} MiB")
        if args.trl:
            line += (f"; SFTTrainer {r['trl_train_s']:.0f} s, exact match {r['trl_exact_count']:.0f}/40 = "
                     f"{r['trl_exact']:.0%}")
        print(line, flush=True)
    times = [r["loop_train_s"] for r in runs]
    exact = [r["loop_exact"] for r in runs]
    print(f"torch threads            : {torch.get_num_threads()}")
    print(f"training (loop)          : {min(times):.0f} to {max(times):.0f} s   target <= {TARGET_TRAIN_S} s on 2 idle cores")
    print(f"held-out exact match     : {min(exact):.0%} to {max(exact):.0%}   target >= {TARGET_EXACT:.0%}")
    print("meets both targets       :", max(times) <= TARGET_TRAIN_S and min(exact) >= TARGET_EXACT)


if __name__ == "__main__":
    main()
