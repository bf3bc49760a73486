"""Lesson 07's full fine-tune at other learning rates: what a LoRA-sized step does to every weight.

Trains SmolLM2-135M-Instruct with every weight trainable (fp32), on lesson 07's data, seed, batches
and steps (8 steps of 8 bookings, AdamW with the same warm-up), once per learning rate, then prints
the training losses, the held-out exact match and valid-JSON rate on lesson 07's 48 bookings, and
the perplexity of lesson 06's general text. Lesson 07 uses 1e-4 for full fine-tuning and 4e-3 for
LoRA; its exercise 3 asks what happens to full fine-tuning at 4e-3.

    .venv/bin/python benchmarks/full_lr.py [--lr 1e-4 4e-3] [--threads N]

Each learning rate takes one to two minutes on 2 idle cores.
"""

from __future__ import annotations

import argparse

SEED, STEPS, BATCH, N_TEST = 0, 8, 8, 48   # lesson 07's settings


def one_run(lr: float) -> None:
    from lessonlib import data, models, train
    from lessonlib.forgetting import perplexity

    tokenizer = models.load_tokenizer()
    splits = data.booking_splits(STEPS * BATCH, 0, N_TEST, seed=SEED)
    max_new = max(len(tokenizer(e.answer, add_special_tokens=False)["input_ids"]) for e in splits.test) + 1
    model = models.build_model("full", seed=SEED, dtype="fp32").train()
    result = train.train(model, tokenizer, splits.train, steps=STEPS, batch_size=BATCH, lr=lr, seed=SEED,
                         progress=False)
    scored = train.evaluate(model, tokenizer, splits.test, max_new_tokens=max_new, batch_size=N_TEST)
    losses = " ".join(f"{loss:.2f}" for loss in result.loss_history)
    print(f"lr {lr:g}: losses {losses}")
    print(f"         exact match {scored.scores.exact_count}/{scored.scores.n}, valid JSON {scored.valid_json:.0%}, "
          f"perplexity of the general text {perplexity(model, tokenizer):,.1f}")
    print(f"         first answer: {scored.generations[0]!r}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lr", type=float, nargs="+", default=[1e-4, 4e-3], help="learning rates (default 1e-4 4e-3)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args(argv)
    import torch

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    for lr in args.lr:
        one_run(lr)


if __name__ == "__main__":
    main()
