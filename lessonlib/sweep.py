"""Hyperparameter sweeps of LoRA on the booking task: one point's settings, its run, and the stored sweep.

Lesson 08 and ``benchmarks/hyperparameter_sweep.py`` share these helpers: the benchmark runs the
whole grid and appends one CSV row per point; the lesson reads that CSV, summarizes it over seeds
and re-runs a few points live with the same :func:`run_point`.

A point is a method (``"lora"`` or ``"full"``), target modules, a rank ``r``, an α scheme, a
learning rate, a seed and a LoRA variant (lesson 09: ``"dora"``, ``"pissa"``, ...; see
:mod:`lessonlib.variants`; ``"lora"`` is plain LoRA, lesson 08's only one). The α schemes (peft's scaling is ``lora_alpha / r``, or
``lora_alpha / sqrt(r)`` with rsLoRA) all give the scaling 2 at ``r = 8``:

- ``"alpha16"``: α fixed at 16 whatever the rank, scaling ``16 / r``;
- ``"alpha2r"``: α = 2r, scaling 2 at every rank;
- ``"rslora"``: α = 2·√8 with ``use_rslora``, scaling ``2·√8 / √r``.

Example:
    >>> scaling("alpha16", 64), scaling("alpha2r", 64), round(scaling("rslora", 64), 3)
    (0.25, 2.0, 0.707)
    >>> target_modules("q,v")
    ('q_proj', 'v_proj')
"""

from __future__ import annotations

import csv
import math
import os
import statistics
import tempfile
from dataclasses import asdict, dataclass, fields
from typing import Any, Iterable, Sequence

from lessonlib.validation import positive_int, positive_number

SCHEMES = ("alpha16", "alpha2r", "rslora")
"""α schemes, see the module docstring."""

TARGETS = {
    "q,v": ("q_proj", "v_proj"),
    "attention": ("q_proj", "k_proj", "v_proj", "o_proj"),
    "mlp": ("gate_proj", "up_proj", "down_proj"),
    "all-linear": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
}
"""Named sets of SmolLM2's (Llama-style) linear layers that LoRA can target."""

REFERENCE_RANK = 8
"""The rank at which every α scheme gives the same scaling (2)."""


def results_path(name: str) -> str:
    """Path of a stored result of the course's benchmarks (``benchmarks/results/NAME``).

    Example:
        >>> results_path("hyperparameter_sweep.csv").endswith("hyperparameter_sweep.csv")
        True
    """
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "results", name)


def scaling(scheme: str, r: int) -> float:
    """The factor peft multiplies ``B @ A`` by, for an α ``scheme`` at rank ``r``.

    Example:
        >>> [scaling(s, 8) for s in SCHEMES]
        [2.0, 2.0, 2.0]
        >>> scaling("alpha", 8)
        Traceback (most recent call last):
        ...
        ValueError: unknown alpha scheme 'alpha'; accepted: alpha16, alpha2r, rslora
    """
    alpha, rs = lora_alpha(scheme, r)
    return alpha / math.sqrt(r) if rs else alpha / r


def lora_alpha(scheme: str, r: int) -> tuple[float, bool]:
    """Return ``(lora_alpha, use_rslora)`` of an α ``scheme`` at rank ``r``.

    Example:
        >>> lora_alpha("alpha2r", 4)
        (8.0, False)
    """
    positive_int("r", r)
    if scheme == "alpha16":
        return 16.0, False
    if scheme == "alpha2r":
        return 2.0 * r, False
    if scheme == "rslora":
        return 2.0 * math.sqrt(REFERENCE_RANK), True
    raise ValueError(f"unknown alpha scheme {scheme!r}; accepted: {', '.join(SCHEMES)}")


def target_modules(name: str) -> tuple[str, ...]:
    """The module names of a named target set (see :data:`TARGETS`).

    Example:
        >>> target_modules("mlp")
        ('gate_proj', 'up_proj', 'down_proj')
        >>> target_modules("everything")
        Traceback (most recent call last):
        ...
        ValueError: unknown target set 'everything'; accepted: q,v, attention, mlp, all-linear
    """
    if name not in TARGETS:
        raise ValueError(f"unknown target set {name!r}; accepted: {', '.join(TARGETS)}")
    return TARGETS[name]


def equal_budget_rank(targets: str, budget: int, model: str = "smollm2-135m") -> int:
    """The rank whose LoRA on ``targets`` trains the number of parameters closest to ``budget``.

    Example:
        >>> from lessonlib.params import count_parameters
        >>> budget = count_parameters("smollm2-135m", 8, "all-linear").trainable
        >>> [equal_budget_rank(t, budget) for t in ("q,v", "attention", "mlp")]
        [42, 21, 13]
    """
    from lessonlib.params import count_parameters

    positive_int("budget", budget)
    per_rank = count_parameters(model, 1, target_modules(targets)).trainable
    return max(1, round(budget / per_rank))


@dataclass(frozen=True)
class Point:
    """One point of the sweep: what is trained, how, and with which seed."""

    method: str = "lora"
    """``"lora"`` or ``"full"`` (every weight trains; r, scheme and targets are ignored)."""
    targets: str = "all-linear"
    r: int = 8
    scheme: str = "alpha16"
    lr: float = 4e-3
    seed: int = 0
    variant: str = "lora"
    """One of :data:`lessonlib.variants.VARIANTS` (method ``"lora"`` only)."""

    def key(self) -> tuple[str, str, int, str, float, int, str]:
        """The identity of the point in a CSV (the learning rate rounded to 4 significant digits).

        Example:
            >>> Point(lr=0.004).key() == Point(lr=4e-3).key()
            True
        """
        if self.method == "full":
            return ("full", "-", 0, "-", float(f"{self.lr:.4g}"), self.seed, "-")
        return (self.method, self.targets, self.r, self.scheme, float(f"{self.lr:.4g}"), self.seed, self.variant)


@dataclass
class Outcome:
    """What :func:`run_point` measured (one CSV row together with the point)."""

    trainable: int
    adapter_bytes: int
    """Size of the saved adapter file (for full fine-tuning: 4 bytes per parameter, not saved)."""
    val_loss: float
    """Teacher-forced loss on the held-out examples after training (the primary score)."""
    train_loss_last: float
    median_step_s: float


COLUMNS = tuple(f.name for f in fields(Point)) + tuple(f.name for f in fields(Outcome))


def build(base: Any, point: Point) -> Any:
    """A trainable copy of ``base`` for ``point`` (a deep copy; ``base`` is left untouched).

    Example:
        >>> build(None, Point(scheme="x"))
        Traceback (most recent call last):
        ...
        ValueError: unknown alpha scheme 'x'; accepted: alpha16, alpha2r, rslora
    """
    if point.method not in ("lora", "full"):
        raise ValueError(f"unknown method {point.method!r}; accepted: lora, full")
    if point.method == "lora":
        alpha, rs = lora_alpha(point.scheme, point.r)
        modules = list(target_modules(point.targets))
    from lessonlib import variants

    variants.check_variant(point.variant)
    import copy

    import torch

    torch.manual_seed(point.seed)
    model = copy.deepcopy(base)
    if point.method == "full":
        return model.requires_grad_(True)
    return variants.apply(model, point.variant, point.r, alpha, modules, use_rslora=rs)


def run_point(base: Any, tokenizer: Any, train_examples: Sequence[Any], val_examples: Sequence[Any],
              point: Point, steps: int, batch_size: int) -> tuple[Outcome, Any]:
    """Fine-tune a copy of ``base`` at ``point``; return what was measured and the trained model.

    The seed sets the adapter's initialisation and the order of the batches; the data and the
    held-out examples are the caller's. The score is :func:`lessonlib.train.validation_loss`.

    Example:
        >>> run_point(None, None, [], [], Point(), steps=0, batch_size=8)
        Traceback (most recent call last):
        ...
        ValueError: steps must be a finite number above 0, got 0
    """
    from lessonlib import train, variants

    for name, value in (("steps", steps), ("batch_size", batch_size), ("lr", point.lr)):
        positive_number(name, value)
    model = build(base, point)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    groups = variants.optimizer_groups(model, point.lr, point.variant) if point.method == "lora" else None
    result = train.train(model, tokenizer, train_examples, steps=steps, batch_size=batch_size,
                         lr=point.lr, seed=point.seed, progress=False, param_groups=groups)
    val = train.validation_loss(model, tokenizer, val_examples)
    if point.method == "lora":
        with tempfile.TemporaryDirectory() as folder:
            model.save_pretrained(folder)
            size = os.path.getsize(os.path.join(folder, "adapter_model.safetensors"))
    else:
        size = 4 * trainable
    outcome = Outcome(trainable=trainable, adapter_bytes=size, val_loss=val,
                      train_loss_last=result.loss_history[-1], median_step_s=result.median_step_seconds)
    return outcome, model


def write_row(path: str | os.PathLike, point: Point, outcome: Outcome, header: Sequence[str] = ()) -> None:
    """Append one point's row to the CSV at ``path`` (creating it with ``header`` comment lines).

    A file made before a column existed (lesson 08's has no ``variant``) keeps its columns; a point
    that needs the missing column (a variant other than ``"lora"``) is refused.

    Example:
        >>> import tempfile, os
        >>> p = os.path.join(tempfile.mkdtemp(), "s.csv")
        >>> write_row(p, Point(), Outcome(10, 40, 0.5, 0.4, 1.0), header=["command: x"])
        >>> [r["val_loss"] for r in read_rows(p)]
        [0.5]
    """
    new = not os.path.exists(path)
    columns = COLUMNS
    if not new:
        with open(path, newline="") as f:
            columns = tuple(next(csv.reader(line for line in f if not line.startswith("#")), COLUMNS))
        if "variant" not in columns and point.variant != "lora":
            raise ValueError(f"{path} has no variant column: write variant {point.variant!r} to a new file")
    with open(path, "a", newline="") as f:
        if new:
            for line in header:
                f.write(f"# {line}\n")
            csv.writer(f).writerow(columns)
        values = {**asdict(point), **asdict(outcome)}
        values["val_loss"] = f"{outcome.val_loss:.5f}"
        values["train_loss_last"] = f"{outcome.train_loss_last:.5f}"
        values["median_step_s"] = f"{outcome.median_step_s:.3f}"
        values["lr"] = f"{point.lr:.4g}"
        if point.method == "full":                      # no adapter: these settings do not apply
            values.update(targets="-", r=0, scheme="-", variant="-")
        csv.writer(f).writerow([values[c] for c in columns])


_TYPES = {"r": int, "seed": int, "trainable": int, "adapter_bytes": int, "lr": float,
          "val_loss": float, "train_loss_last": float, "median_step_s": float}


def read_rows(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The rows of a sweep CSV, typed (``#`` lines are the header's comments).

    Example:
        >>> read_rows("no-such.csv")
        Traceback (most recent call last):
        ...
        FileNotFoundError: no sweep CSV at no-such.csv; run benchmarks/hyperparameter_sweep.py to make it
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"no sweep CSV at {path}; run benchmarks/hyperparameter_sweep.py to make it")
    with open(path, newline="") as f:
        lines = [line for line in f if not line.startswith("#")]
    rows = list(csv.DictReader(lines))
    return [{k: _TYPES.get(k, str)(v) for k, v in row.items()} for row in rows]


def read_comments(path: str | os.PathLike) -> list[str]:
    """The ``#`` comment lines of a CSV (the command and commit a sweep ran with), without ``# ``.

    Example:
        >>> import tempfile, os
        >>> p = os.path.join(tempfile.mkdtemp(), "s.csv")
        >>> write_row(p, Point(), Outcome(10, 40, 0.5, 0.4, 1.0), header=["commit: abc"])
        >>> read_comments(p)
        ['commit: abc']
    """
    with open(path) as f:
        return [line[2:].rstrip("\n") for line in f if line.startswith("# ")]


@dataclass(frozen=True)
class Summary:
    """Mean, sample standard deviation, min and max of one score over seeds."""

    n: int
    mean: float
    std: float
    low: float
    high: float


def summarize(values: Iterable[float]) -> Summary:
    """Summarize a score over seeds (std is 0 for a single seed).

    Example:
        >>> summarize([1.0, 2.0, 3.0])
        Summary(n=3, mean=2.0, std=1.0, low=1.0, high=3.0)
        >>> summarize([])
        Traceback (most recent call last):
        ...
        ValueError: summarize needs at least one value, got none
    """
    v = [float(x) for x in values]
    if not v:
        raise ValueError("summarize needs at least one value, got none")
    std = statistics.stdev(v) if len(v) > 1 else 0.0
    return Summary(len(v), statistics.fmean(v), std, min(v), max(v))


def select(rows: Iterable[dict[str, Any]], **where: Any) -> list[dict[str, Any]]:
    """The rows whose columns equal ``where`` (a learning rate compared to 4 significant digits).

    Example:
        >>> select([{"r": 8, "lr": 0.004}, {"r": 4, "lr": 0.004}], r=8, lr=4e-3)
        [{'r': 8, 'lr': 0.004}]
    """
    def same(k: str, a: Any, b: Any) -> bool:
        return f"{a:.4g}" == f"{b:.4g}" if k == "lr" else a == b

    return [row for row in rows if all(same(k, row[k], v) for k, v in where.items())]


def best_lr(rows: Iterable[dict[str, Any]], metric: str = "val_loss") -> tuple[float, bool]:
    """The learning rate with the lowest mean ``metric`` over seeds, and whether it is at the grid's edge.

    A best rate at the edge of the grid is a bound, not a location: the true best may lie beyond.

    Example:
        >>> best_lr([{"lr": 1e-3, "val_loss": 0.5}, {"lr": 4e-3, "val_loss": 0.3}, {"lr": 1.6e-2, "val_loss": 0.4}])
        (0.004, False)
    """
    by_lr: dict[float, list[float]] = {}
    for row in rows:
        by_lr.setdefault(float(f"{row['lr']:.4g}"), []).append(row[metric])
    if not by_lr:
        raise ValueError("best_lr needs at least one row, got none")
    means = {lr: statistics.fmean(v) for lr, v in by_lr.items()}
    best = min(means, key=means.__getitem__)
    grid = sorted(means)
    return best, len(grid) > 1 and best in (grid[0], grid[-1])


def energy_captured(singular_values: Sequence[float], r: int) -> float:
    """The share of a matrix's squared Frobenius norm kept by its best rank-``r`` approximation.

    (Eckart–Young: the best rank-r approximation keeps the r largest singular values.)

    Example:
        >>> energy_captured([3.0, 1.0, 0.0], 1)
        0.9
    """
    positive_int("r", r)
    squares = sorted((float(s) ** 2 for s in singular_values), reverse=True)
    total = sum(squares)
    if total == 0:
        raise ValueError("the matrix is zero: no share of its energy to capture")
    return sum(squares[:r]) / total

