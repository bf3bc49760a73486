"""Lesson 09's comparison: LoRA and its variants (DoRA, PiSSA, OLoRA, LoRA+, and on a 4-bit base
QLoRA, PiSSA and LoftQ) fine-tuned side by side on the booking task, several seeds each.

Every point is lesson 08's fine-tune (SmolLM2-135M-Instruct in fp32 on a CPU, 64 training bookings,
one epoch of 8 steps of 8, AdamW at 4e-3 with lesson 06's warm-up and decay, LoRA r = 8, α = 16 on
all linear layers), scored by the teacher-forced loss on 32 held-out bookings; only the variant
changes (``lessonlib.variants``). The 4-bit variants replace the targeted weights by their NF4 round
trip (fake quantization in fp32: what a bitsandbytes 4-bit layer computes with). One CSV row per
point is appended as soon as it is measured; a second run with the same ``--out`` adds only what is
missing. Order: seed 0 of every variant at LoRA's best rate of lesson 08 (4e-3); seed 0 at 1e-3 of
the variants that start with a large adapter or a faster B (PiSSA, OLoRA, LoRA+, PiSSA on 4 bits),
and at 2.5e-4 of PiSSA and OLoRA; then seeds 1 and 2 of every variant at its best seed-0 rate.
``--minutes`` stops starting new points after that many minutes.

First (``--init-out``, skipped when that file exists): for every linear layer of the model, the
4-bit error ``||W - dequant(Q(W))||`` next to ``||W - (dequant(Q(W_res)) + s B A)||`` after PiSSA's and
LoftQ's initialisations (r = 8, α = 16), and each model's perplexity on lesson 07's general text and
held-out loss at step 0 (the 4-bit base plus the initialised adapter, before any training).

Last (``--steps-out``, skipped when that file exists): LoRA's and DoRA's training step timed side by side
on the same batch, alternating the two (so that a change of the machine's load hits both), 10 steps each.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/lora_variants.py [--minutes 30] [--quick]

``--quick`` runs three variants on a tiny random model (2 layers) in seconds: the unit test's mode.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from hyperparameter_sweep import prepare_run, sweep_arguments, write_csv  # noqa: E402

from lessonlib.sweep import Point, best_lr, read_rows, write_row  # noqa: E402
from lessonlib.variants import VARIANTS  # noqa: E402

DEFAULT_OUT = HERE / "results" / "lora_variants.csv"
DEFAULT_INIT_OUT = HERE / "results" / "lora_variants_init.csv"
DEFAULT_STEPS_OUT = HERE / "results" / "lora_variants_steps.csv"
"""Per layer; next to it, ``lora_variants_step0.csv`` holds the models at step 0."""
KINDS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
LOWER_LRS = {"pissa": (1e-3, 2.5e-4), "olora": (1e-3, 2.5e-4), "lora+": (1e-3,), "pissa-4bit": (1e-3,)}


def first_points(quick: bool) -> list[Point]:
    """Seed 0 of every variant at 4e-3, then the lower rates (the quick mode: three variants)."""
    if quick:
        return [Point(r=2, variant=v) for v in ("lora", "dora", "loftq")]
    return [Point(variant=v) for v in VARIANTS] + [Point(variant=v, lr=lr) for v, lrs in LOWER_LRS.items() for lr in lrs]


def seed_points(rows: list[dict]) -> list[Point]:
    """Seeds 1 and 2 of every variant at the rate with its lowest seed-0 loss."""
    out = []
    for v in VARIANTS:
        group = [r for r in rows if r["variant"] == v and r["seed"] == 0]
        if group:
            lr, _ = best_lr(group)
            out += [Point(variant=v, lr=lr, seed=s) for s in (1, 2)]
    return out


def init_rows(base, tokenizer, val, r: int = 8, alpha: float = 16.0) -> tuple[list[dict], list[dict]]:
    """Per layer: the 4-bit error of QLoRA, PiSSA and LoftQ at initialisation; per model (fp32 and
    the three 4-bit starts): its perplexity and held-out loss at step 0."""
    import copy

    import torch

    from lessonlib import forgetting, train
    from lessonlib.variants import loftq_factors, nf4_roundtrip, pissa_factors

    s = alpha / r
    rows, models, effective = [], [], {v: {} for v in ("qlora", "pissa-4bit", "loftq")}
    with torch.no_grad():
        for b, block in enumerate(base.model.layers):
            for kind in KINDS:
                w = getattr(block.self_attn if kind in KINDS[:4] else block.mlp, kind).weight.detach()
                A, B, res = pissa_factors(w, r, s)
                la, lb, lq = loftq_factors(w, r, s)
                eff = {"qlora": nf4_roundtrip(w), "pissa-4bit": nf4_roundtrip(res) + s * B @ A, "loftq": lq + s * lb @ la}
                name = f"model.layers.{b}.{'self_attn' if kind in KINDS[:4] else 'mlp'}.{kind}"
                row = {"layer": name, "kind": kind, "weight_norm": float(w.norm())}
                for v, e in eff.items():
                    effective[v][name + ".weight"] = e
                    row[v] = float((w - e).norm())
                rows.append(row)
        for v, weights in [("fp32", {})] + list(effective.items()):
            model = copy.deepcopy(base)
            params = dict(model.named_parameters())
            for name, e in weights.items():
                params[name].copy_(e)
            models.append({"variant": v, "perplexity": forgetting.perplexity(model, tokenizer),
                           "val_loss": train.validation_loss(model, tokenizer, val)})
            del model
    return rows, models


def step_time_rows(base, tokenizer, examples, batch: int, repeats: int = 10) -> list[dict]:
    """LoRA's and DoRA's training step (forward, backward, AdamW) on the same batch, alternating."""
    import time as clock

    import torch

    from lessonlib.data import collate, encode
    from lessonlib.sweep import build

    models = {v: build(base, Point(variant=v)).train() for v in ("lora", "dora")}
    optimizers = {v: torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-4) for v, m in models.items()}
    inputs = collate([encode(tokenizer, e) for e in examples[:batch]], tokenizer.pad_token_id)
    rows = []
    for i in range(repeats + 1):                     # the first round warms up and is not kept
        for v, model in models.items():
            t0 = clock.perf_counter()
            model(**inputs).loss.backward()
            optimizers[v].step()
            optimizers[v].zero_grad(set_to_none=True)
            if i:
                rows.append({"variant": v, "repeat": i, "seconds": clock.perf_counter() - t0})
    return rows


def main(argv: list[str] | None = None) -> int:
    args = sweep_arguments(argv, __doc__.splitlines()[0], DEFAULT_OUT, "the CSV (appended to)", 30.0,
                           "three variants on a tiny random model (seconds)",
                           [("--init-out", DEFAULT_INIT_OUT, "the initialisation CSV"),
                            ("--steps-out", DEFAULT_STEPS_OUT, "the step-time CSV")])
    started = time.perf_counter()

    from lessonlib.sweep import run_point

    run_ = prepare_run("lora_variants.py", argv, args.quick)
    tokenizer, steps, batch, splits, base, header = (run_.tokenizer, run_.steps, run_.batch, run_.splits,
                                                     run_.base, run_.header)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if not args.quick and not args.init_out.exists():
        t0 = time.perf_counter()
        layers, starts = init_rows(base, tokenizer, splits.val)
        write_csv(args.init_out, layers, digits=6, header=header[:3] + [
            "per layer: ||W - W_eff|| with W_eff = dequant(Q(W)) (qlora), dequant(Q(W_res)) + s B A (pissa-4bit, loftq); "
            "r=8 alpha=16 nf4 blocksize 64, double quantization for qlora and pissa-4bit, none for loftq (as peft) with 5 iterations"])
        write_csv(args.init_out.with_name(args.init_out.stem.replace("_init", "") + "_step0.csv"), starts, digits=6, header=header[:3] + [
            "each model at step 0 (every linear weight replaced by W_eff, the function of the 4-bit base plus the "
            "initialised adapter): perplexity of the general text of lessonlib.forgetting, held-out loss of the booking task"])
        print(f"initialisation errors written to {args.init_out} ({time.perf_counter() - t0:.0f} s)", flush=True)
    keys = ("method", "targets", "r", "scheme", "lr", "seed", "variant")
    done = {Point(**{k: row[k] for k in keys}).key() for row in (read_rows(args.out) if args.out.exists() else [])}
    def run(points: list[Point]) -> bool:
        for point in points:
            if point.key() in done:
                continue
            if time.perf_counter() - started > args.minutes * 60:
                print(f"time budget of {args.minutes:g} min reached: stopping", flush=True)
                return False
            t0 = time.perf_counter()
            outcome, model = run_point(base, tokenizer, splits.train, splits.val, point, steps, batch)
            write_row(args.out, point, outcome, header)
            done.add(point.key())
            print(f"{point.variant} seed {point.seed} lr {point.lr:g} -> val_loss {outcome.val_loss:.4f}, "
                  f"median step {outcome.median_step_s:.2f} s ({time.perf_counter() - t0:.0f} s)", flush=True)
            del model
        return True

    if not run(first_points(args.quick)):
        return 0
    if not args.quick and not run(seed_points(read_rows(args.out))):
        return 0
    if not args.quick and not args.steps_out.exists():
        write_csv(args.steps_out, step_time_rows(base, tokenizer, splits.train, batch), digits=6, header=header[:3] + [
            "seconds of one training step (forward, backward, AdamW) on the same batch of the task, LoRA and DoRA "
            "alternating, r=8 alpha=16 all linear layers, after one round of warm-up"])
        print(f"step times written to {args.steps_out}", flush=True)
    print(f"done in {(time.perf_counter() - started) / 60:.1f} min: {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
