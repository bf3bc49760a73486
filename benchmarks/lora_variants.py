"""Lesson 09's comparison: LoRA and its variants (DoRA, PiSSA, OLoRA, LoRA+, and on a 4-bit base
QLoRA, PiSSA and LoftQ) fine-tuned side by side on the booking task, several seeds each.

Every point is lesson 08's fine-tune (SmolLM2-135M-Instruct in fp32 on a CPU, 64 training bookings,
one epoch of 8 steps of 8, AdamW at 4e-3 with lesson 06's warm-up and decay, LoRA r = 8, α = 16 on
all linear layers), scored by the teacher-forced loss on 32 held-out bookings; only the variant
changes (``lessonlib.variants``). The 4-bit variants replace the targeted weights by their NF4 round
trip (fake quantization in fp32: what a bitsandbytes 4-bit layer computes with). One CSV row per
point is appended as soon as it is measured; a second run with the same ``--out`` adds only what is
missing. Order: seed 0 of every variant, then seeds 1 and 2, then LoRA+ and PiSSA at a 4x smaller
learning rate (seed 0); ``--minutes`` stops starting new points after that many minutes.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/lora_variants.py [--minutes 30] [--quick]

``--quick`` runs three variants on a tiny random model (2 layers) in seconds: the unit test's mode.
"""

from __future__ import annotations

import argparse
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from hyperparameter_sweep import BATCH, N_TRAIN, N_VAL, STEPS, tiny_model  # noqa: E402

from lessonlib.sweep import Point, read_rows, write_row  # noqa: E402
from lessonlib.variants import VARIANTS  # noqa: E402

DEFAULT_OUT = HERE / "results" / "lora_variants.csv"
SEEDS = (0, 1, 2)
LOW_LR = 1e-3


def grid(quick: bool) -> list[Point]:
    """The points in the order they run (the most important first)."""
    if quick:
        return [Point(r=2, variant=v) for v in ("lora", "dora", "loftq")]
    points = [Point(variant=v, seed=s) for s in SEEDS for v in VARIANTS]
    return points + [Point(variant=v, lr=LOW_LR) for v in ("lora+", "pissa")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the CSV (appended to)")
    parser.add_argument("--minutes", type=float, default=30.0, help="start no new point after this many minutes")
    parser.add_argument("--quick", action="store_true", help="three variants on a tiny random model (seconds)")
    args = parser.parse_args(argv)
    if not args.minutes > 0:
        parser.exit(2, f"{parser.prog}: error: --minutes must be a positive number, got {args.minutes}\n")
    started = time.perf_counter()

    import torch

    from lessonlib import data, models, train
    from lessonlib.env import quiet_library_logs
    from lessonlib.sweep import run_point

    quiet_library_logs()
    tokenizer = models.load_tokenizer()
    steps, batch, n_train, n_val = (2, 2, 4, 4) if args.quick else (STEPS, BATCH, N_TRAIN, N_VAL)
    splits = data.booking_splits(n_train, n_val, 0, seed=0)
    base = tiny_model(tokenizer) if args.quick else models.load_model(dtype="fp32", device="cpu")
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=HERE.parent, capture_output=True,
                                text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    command = "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/lora_variants.py " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    header = [f"command: {command.strip()}", f"commit: {commit}",
              f"settings: steps={steps} batch={batch} train={n_train} held_out={n_val} data_seed=0 "
              f"torch_threads={torch.get_num_threads()} torch={torch.__version__} python={platform.python_version()}",
              "score: val_loss = teacher-forced loss on the held-out bookings after training (lower is better)"]
    header.append(f"base model before training: val_loss={train.validation_loss(base, tokenizer, splits.val):.5f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    keys = ("method", "targets", "r", "scheme", "lr", "seed", "variant")
    done = {Point(**{k: row[k] for k in keys}).key() for row in (read_rows(args.out) if args.out.exists() else [])}
    for point in grid(args.quick):
        if point.key() in done:
            continue
        if time.perf_counter() - started > args.minutes * 60:
            print(f"time budget of {args.minutes:g} min reached: stopping", flush=True)
            return 0
        t0 = time.perf_counter()
        outcome, model = run_point(base, tokenizer, splits.train, splits.val, point, steps, batch)
        write_row(args.out, point, outcome, header)
        done.add(point.key())
        print(f"{point.variant} seed {point.seed} lr {point.lr:g} -> val_loss {outcome.val_loss:.4f}, "
              f"median step {outcome.median_step_s:.2f} s ({time.perf_counter() - t0:.0f} s)", flush=True)
        del model
    print(f"done in {(time.perf_counter() - started) / 60:.1f} min: {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
