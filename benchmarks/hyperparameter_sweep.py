"""Lesson 08's sweep: rank, α scheme, target modules and learning rate of LoRA (and full fine-tuning's
learning rate) on the booking task, plus the singular values of a real full fine-tune's update.

Every point fine-tunes SmolLM2-135M-Instruct (fp32, CPU) for the same short budget on the same 64
training bookings (one epoch, 8 steps of 8) and scores it by the teacher-forced loss on 32 held-out
bookings (unseen phrasings and values). The seed sets the adapter's initialisation and the batch
order. One CSV row is appended per point as soon as it is measured, so an interrupted run keeps
what it measured and a second run with the same ``--out`` only adds the missing points.

The grid is ordered by importance; ``--minutes`` stops starting new points after that many minutes
(what was not run is simply absent from the CSV, and lesson 08 says which groups are thin):

1. rank sweep: r in 1, 2, 4, 8, 16, 64 on all linear layers, α = 16, lr 4e-3, seed 0;
2. α schemes x learning rate (1e-3, 4e-3, 1.6e-2) at r = 8, where the three schemes coincide, and r = 64;
3. full fine-tuning's learning rate (2.5e-5, 1e-4, 4e-4); its run at lr 1e-4 also writes the
   singular values of its update per layer type (``--svd-out``);
4. target modules (q,v / attention / MLP) at the trainable budget of all-linear r = 8, then at r = 8;
5. seeds 1 and 2 of the rank sweep at r = 1, 8, 64;
6. seeds 1 and 2 of the target modules at equal budget;
7. one learning rate beyond the grid wherever a best rate lies at its edge;
8. the remaining seeds (ranks 2, 4, 16; targets at r = 8).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/hyperparameter_sweep.py [--minutes 50] [--quick]

``--quick`` runs a handful of points on a tiny random model (2 layers) in seconds: the unit test's mode.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from lessonlib.sweep import (Outcome, Point, SCHEMES, best_lr, energy_captured, equal_budget_rank,  # noqa: E402
                             read_rows, select, write_row)

STEPS, BATCH, N_TRAIN, N_VAL = 8, 8, 64, 32
RANKS = (1, 2, 4, 8, 16, 64)
LORA_LRS = (1e-3, 4e-3, 1.6e-2)
EXTRA_LRS = (2.5e-4, 6.4e-2)
FULL_LRS = (2.5e-5, 1e-4, 4e-4)
FULL_EXTRA_LRS = (6.25e-6, 1.6e-3)
SVD_LR = 1e-4
SVD_RANKS = (1, 2, 4, 8, 16, 64)
DEFAULT_OUT = HERE / "results" / "hyperparameter_sweep.csv"
DEFAULT_SVD_OUT = HERE / "results" / "update_rank.csv"
LAYER_TYPES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def stages(budget_ranks: dict[str, int]) -> list[list[Point]]:
    """Stages 1-5 of the grid (fixed in advance), the most important first."""
    ranks = [Point(r=r) for r in RANKS]
    # at r = 8 the three schemes give the same scaling (2): the same model, run once (as alpha16)
    schemes = [Point(r=8, lr=lr) for lr in LORA_LRS]
    schemes += [Point(r=64, scheme=sc, lr=lr) for sc in SCHEMES for lr in LORA_LRS]
    full = [Point(method="full", lr=lr) for lr in FULL_LRS]
    targets = [Point(targets=t, r=budget_ranks[t]) for t in ("q,v", "attention", "mlp")]
    targets += [Point(targets=t, r=8) for t in ("q,v", "attention", "mlp")]
    rank_seeds = [Point(r=r, seed=s) for s in (1, 2) for r in (1, 8, 64)]
    target_seeds = [Point(targets=t, r=budget_ranks[t], seed=s) for s in (1, 2) for t in ("q,v", "attention", "mlp")]
    return [ranks, schemes, full, targets, rank_seeds, target_seeds]


def edge_points(rows: list[dict]) -> list[Point]:
    """Stage 7: one learning rate beyond the grid wherever a best rate lies at its edge."""
    out = []
    for r, scheme_names in ((8, ("alpha16",)), (64, SCHEMES)):
        for sc in scheme_names:
            group = select(rows, method="lora", targets="all-linear", r=r, scheme=sc, seed=0)
            if len(group) < 2:
                continue
            best, at_edge = best_lr(group)
            if at_edge:
                low = best == min(g["lr"] for g in group)
                out.append(Point(r=r, scheme=sc, lr=EXTRA_LRS[0] if low else EXTRA_LRS[1]))
    group = select(rows, method="full", seed=0)
    if len(group) >= 2:
        best, at_edge = best_lr(group)
        if at_edge:
            low = best == min(g["lr"] for g in group)
            out.append(Point(method="full", lr=FULL_EXTRA_LRS[0] if low else FULL_EXTRA_LRS[1]))
    return out


def last_points(budget_ranks: dict[str, int]) -> list[Point]:
    """Stage 8: the remaining seeds of the rank sweep and of the targets at r = 8."""
    out = [Point(r=r, seed=s) for s in (1, 2) for r in (2, 4, 16)]
    return out + [Point(targets=t, r=8, seed=s) for s in (1, 2) for t in ("q,v", "attention", "mlp")]


def tiny_model(tokenizer):
    """A random 2-layer Llama with the course's tokenizer (for ``--quick``)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    return LlamaForCausalLM(cfg).eval()


def update_rank_rows(before, after, ranks=SVD_RANKS) -> list[dict]:
    """Per layer type: the share of ΔW's energy that rank r keeps (mean, min, max over layers),
    next to a random Gaussian matrix of the same shape, and the rank that keeps 90%."""
    import torch

    gen = torch.Generator().manual_seed(0)
    deltas: dict[str, list] = {t: [] for t in LAYER_TYPES}
    for name, w in after.named_parameters():
        kind = name.split(".")[-2]
        if kind in deltas and name.endswith(".weight"):
            deltas[kind].append(w.detach().double() - before[name].double())
    rows = []
    for kind, mats in deltas.items():
        if not mats:
            continue
        spectra = [torch.linalg.svdvals(d).tolist() for d in mats]
        noise = torch.linalg.svdvals(torch.randn(mats[0].shape, generator=gen, dtype=torch.float64)).tolist()
        r90 = []
        for sv in spectra:
            r90.append(next(r for r in range(1, len(sv) + 1) if energy_captured(sv, r) >= 0.9))
        for r in ranks:
            if r > min(mats[0].shape):
                continue
            shares = [energy_captured(sv, r) for sv in spectra]
            rows.append({"layer_type": kind, "shape": "x".join(map(str, mats[0].shape)), "layers": len(mats),
                         "r": r, "energy_mean": sum(shares) / len(shares), "energy_min": min(shares),
                         "energy_max": max(shares), "energy_random": energy_captured(noise, r),
                         "rank90_mean": sum(r90) / len(r90), "rank90_min": min(r90), "rank90_max": max(r90),
                         "full_rank": min(mats[0].shape)})
    return rows


def write_csv(path: Path, rows: list[dict], header: list[str], digits: int = 5) -> None:
    """Write ``rows`` (dicts with the same keys) to ``path``, after ``header`` as ``#`` comment lines."""
    with open(path, "w") as f:
        for line in header:
            f.write(f"# {line}\n")
        f.write(",".join(rows[0]) + "\n")
        for row in rows:
            f.write(",".join(f"{v:.{digits}f}" if isinstance(v, float) else str(v) for v in row.values()) + "\n")


def run_header(script: str, argv: list[str] | None, steps: int, batch: int, n_train: int, n_val: int) -> list[str]:
    """The CSV header of a run of ``benchmarks/<script>``: its command, commit, settings and score."""
    import torch

    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=HERE.parent, capture_output=True,
                                text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    command = f"OMP_NUM_THREADS=1 .venv/bin/python benchmarks/{script} " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    return [f"command: {command.strip()}", f"commit: {commit}",
            f"settings: steps={steps} batch={batch} train={n_train} held_out={n_val} data_seed=0 "
            f"torch_threads={torch.get_num_threads()} torch={torch.__version__} python={platform.python_version()}",
            "score: val_loss = teacher-forced loss on the held-out bookings after training (lower is better)"]


def prepare_run(script: str, argv: list[str] | None, quick: bool) -> SimpleNamespace:
    """What every sweep script starts from: the tokenizer, the step and batch sizes, the booking splits,
    the base model (a tiny random one with ``quick``) and the CSV header, ending with the base's score."""
    from lessonlib import data, models, train
    from lessonlib.env import quiet_library_logs

    quiet_library_logs()
    tokenizer = models.load_tokenizer()
    steps, batch, n_train, n_val = (2, 2, 4, 4) if quick else (STEPS, BATCH, N_TRAIN, N_VAL)
    splits = data.booking_splits(n_train, n_val, 0, seed=0)
    base = tiny_model(tokenizer) if quick else models.load_model(dtype="fp32", device="cpu")
    header = run_header(script, argv, steps, batch, n_train, n_val)
    header.append(f"base model before training: val_loss={train.validation_loss(base, tokenizer, splits.val):.5f}")
    return SimpleNamespace(tokenizer=tokenizer, steps=steps, batch=batch, splits=splits, base=base, header=header)


def sweep_arguments(argv: list[str] | None, description: str, out: Path, out_help: str, minutes: float,
                    quick_help: str, extra: list[tuple[str, Path, str]]) -> argparse.Namespace:
    """The command line every sweep script takes: ``--out``, its ``extra`` output files, ``--minutes`` and
    ``--quick``; a ``--minutes`` that is not a positive number is one line on stderr and status 2."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--out", type=Path, default=out, help=out_help)
    for flag, default, help_text in extra:
        parser.add_argument(flag, type=Path, default=default, help=help_text)
    parser.add_argument("--minutes", type=float, default=minutes, help="start no new point after this many minutes")
    parser.add_argument("--quick", action="store_true", help=quick_help)
    args = parser.parse_args(argv)
    if not args.minutes > 0:
        parser.exit(2, f"{parser.prog}: error: --minutes must be a positive number, got {args.minutes}\n")
    return args


def main(argv: list[str] | None = None) -> int:
    args = sweep_arguments(argv, __doc__.splitlines()[0], DEFAULT_OUT, "the sweep's CSV (appended to)", 50.0,
                           "a few points on a tiny random model (seconds)",
                           [("--svd-out", DEFAULT_SVD_OUT, "the update-rank CSV")])
    started = time.perf_counter()

    from lessonlib.params import count_parameters
    from lessonlib.sweep import run_point

    run_ = prepare_run("hyperparameter_sweep.py", argv, args.quick)
    tokenizer, steps, batch, splits, base, header = (run_.tokenizer, run_.steps, run_.batch, run_.splits,
                                                     run_.base, run_.header)
    budget = count_parameters("smollm2-135m", 8, "all-linear").trainable
    budget_ranks = {t: equal_budget_rank(t, budget) for t in ("q,v", "attention", "mlp")}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    done = {Point(**{k: row[k] for k in ("method", "targets", "r", "scheme", "lr", "seed")}).key()
            for row in (read_rows(args.out) if args.out.exists() else [])}

    def run(points: list[Point]) -> bool:
        for point in points:
            if point.key() in done:
                continue
            if time.perf_counter() - started > args.minutes * 60:
                print(f"time budget of {args.minutes:g} min reached: stopping", flush=True)
                return False
            t0 = time.perf_counter()
            before = None
            if point.method == "full" and point.lr == SVD_LR and point.seed == 0:
                before = {k: v.detach().clone() for k, v in base.named_parameters()}
            outcome, model = run_point(base, tokenizer, splits.train, splits.val, point, steps, batch)
            write_row(args.out, point, outcome, header)
            done.add(point.key())
            print(f"{point} -> val_loss {outcome.val_loss:.4f} ({time.perf_counter() - t0:.0f} s)", flush=True)
            if before is not None:
                write_csv(args.svd_out, update_rank_rows(before, model),
                                  header[:3] + [f"update of full fine-tuning at lr {SVD_LR:g}, seed 0"])
                print(f"update rank written to {args.svd_out}", flush=True)
            del model
        return True

    if args.quick:
        grid = [[Point(r=1), Point(r=2), Point(scheme="rslora", r=2), Point(method="full", lr=SVD_LR),
                 Point(targets="mlp", r=2)]]
    else:
        grid = stages(budget_ranks)
    for stage in grid:
        if not run(stage):
            return 0
    if not args.quick:
        if not run(edge_points(read_rows(args.out))):
            return 0
        run(last_points(budget_ranks))
    print(f"done in {(time.perf_counter() - started) / 60:.1f} min: {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
