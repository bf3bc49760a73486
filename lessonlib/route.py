"""Choosing a fine-tuning route (full, LoRA, QLoRA) from the memory each would need on a GPU.

:func:`choose_route` answers the question that the usual rule of thumb ("12 GB or less and a larger
model: QLoRA; otherwise LoRA") answers without numbers, with
:func:`lessonlib.memory.estimate_training_memory`: the totals of every method against the GPU's
memory, the decision and the reasons for it.

Example:
    >>> from lessonlib.route import choose_route
    >>> choose_route(12, "llama-2-7b", batch=1, seq=512).method
    'qlora'
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from lessonlib.memory import (ACTIVATION_MODEL_TYPES, GB, METHODS, MemoryBreakdown, add_model_arguments,
                              estimate_training_memory)


# ----------------------------------------------------------------------------------------------


@dataclass
class RouteDecision:
    """What :func:`choose_route` decided, with the numbers behind it.

    ``method`` is ``"full"``, ``"lora"``, ``"qlora"`` or None (clarify the task first, or nothing
    fits); ``gradient_checkpointing`` whether the chosen set-up needs it; ``estimates`` maps each
    method to its :class:`MemoryBreakdown` (without checkpointing); ``reasons`` are the sentences
    that justify the decision.
    """

    decision: str
    method: str | None
    gradient_checkpointing: bool
    gpu_memory_gb: float
    usable_gb: float
    estimates: dict[str, MemoryBreakdown]
    reasons: list[str]

    def fits(self, method: str) -> bool:
        """Whether ``method``'s estimate (without checkpointing) fits in the usable memory."""
        return self.estimates[method].fits(self.usable_gb)

    def table(self) -> str:
        """The per-method totals against the GPU's memory, one line each.

        Example:
            >>> print(choose_route(24, "smollm2-135m", batch=1, seq=256).table())  # doctest: +NORMALIZE_WHITESPACE
            full    1.2 GB  fits in 23 GB
            lora    0.6 GB  fits in 23 GB
            qlora   0.6 GB  fits in 23 GB
        """
        return "\n".join(f"{name:<6}{m.total_gb:>5.1f} GB  {'fits' if m.fits(self.usable_gb) else 'does not fit'} "
                         f"in {self.usable_gb:g} GB" for name, m in self.estimates.items())

    def __str__(self) -> str:
        return "\n".join([self.decision, *(f"- {r}" for r in self.reasons)])


def choose_route(
    gpu_memory_gb: float,
    model: Any,
    batch: int = 1,
    seq: int = 512,
    task_boundary_clear: bool = True,
    want_larger_model: bool = False,
    *,
    rank: int = 16,
    targets: str | Iterable[str] | None = "all-linear",
    dtype: str = "bf16",
    optimizer: str = "adamw",
    reserve_gb: float = 1.0,
) -> RouteDecision:
    """Choose full fine-tuning, LoRA or QLoRA from the memory each would need on this GPU.

    The order of preference, and why: LoRA when it fits (it trains a small adapter on an exact base
    model); full fine-tuning is reported but only chosen when it fits and LoRA does not apply
    (never here: LoRA is cheaper whenever full fits); QLoRA when only a 4-bit base fits; then the
    same two with gradient checkpointing (slower: each layer is computed twice). ``reserve_gb`` is
    kept free for the CUDA context and the allocator's fragmentation. An unclear task boundary
    comes first: no amount of memory makes fine-tuning on a vague task useful. With
    ``want_larger_model`` the reasons also name the largest model of the registry that QLoRA
    fits at this batch and length.

    Raises:
        ValueError: a non-positive ``gpu_memory_gb``, a negative ``reserve_gb``, or any input that
            :func:`estimate_training_memory` refuses.

    Example:
        >>> r = choose_route(12, "llama-2-7b", batch=1, seq=512, want_larger_model=True)
        >>> r.method, r.gradient_checkpointing
        ('qlora', False)
        >>> r.fits("lora"), r.fits("qlora")
        (False, True)
        >>> choose_route(12, "llama-2-7b", task_boundary_clear=False).method is None
        True
    """
    if isinstance(gpu_memory_gb, bool) or not isinstance(gpu_memory_gb, (int, float)) or gpu_memory_gb <= 0:
        raise ValueError(f"gpu_memory_gb must be a positive number, got {gpu_memory_gb!r}")
    if reserve_gb < 0 or reserve_gb >= gpu_memory_gb:
        raise ValueError(f"reserve_gb must be at least 0 and below gpu_memory_gb, got {reserve_gb!r}")
    common = dict(batch=batch, seq=seq, rank=rank, targets=targets, dtype=dtype, optimizer=optimizer)
    estimates = {method: estimate_training_memory(model, method, **common) for method in METHODS}
    usable = gpu_memory_gb - reserve_gb
    name = model if isinstance(model, str) else "this model"
    reasons = [f"{m}: {est.total_gb:.1f} GB ({'fits' if est.total_gb <= usable else 'does not fit'} in "
               f"{usable:g} GB usable = {gpu_memory_gb:g} GB - {reserve_gb:g} GB reserve)"
               for m, est in estimates.items()]
    decision = RouteDecision("", None, False, gpu_memory_gb, usable, estimates, reasons)
    if not task_boundary_clear:
        decision.decision = "Clarify the task first: decide what goes in and what must come out, then fine-tune."
        reasons.insert(0, "the task boundary is unclear; the numbers below are for later")
        return decision
    full, lora = estimates["full"], estimates["lora"]
    if full.total_gb <= usable:
        reasons.append(f"full fine-tuning fits, but LoRA needs {lora.total_gb:.1f} GB instead of "
                       f"{full.total_gb:.1f} GB and saves a small adapter instead of a whole model")
    plan: list[tuple[str, bool]] = [("lora", False), ("qlora", False), ("lora", True), ("qlora", True)]
    for method, checkpointing in plan:
        est = estimates[method] if not checkpointing else estimate_training_memory(
            model, method, gradient_checkpointing=True, **common)
        if est.total_gb <= usable:
            decision.method, decision.gradient_checkpointing = method, checkpointing
            how = "QLoRA" if method == "qlora" else "LoRA"
            extra = " with gradient checkpointing" if checkpointing else ""
            decision.decision = f"Use {how}{extra}: {est.total_gb:.1f} GB of {gpu_memory_gb:g} GB."
            if method == "qlora":
                reasons.append(f"LoRA on a {dtype} base does not fit; the 4-bit base cuts the frozen weights "
                               f"from {lora.frozen_weights / GB:.1f} GB to {est.frozen_weights / GB:.1f} GB")
            if checkpointing:
                reasons.append(f"activations drop from {estimates[method].activations / GB:.1f} GB to "
                               f"{est.activations / GB:.1f} GB at the cost of recomputing each layer")
            break
    else:
        decision.decision = (f"Nothing fits in {gpu_memory_gb:g} GB at batch {batch} x {seq} tokens: "
                             "shorten the sequences, lower the batch (accumulate gradients) or pick a smaller model.")
    if want_larger_model:
        checkpointing = decision.gradient_checkpointing
        larger = largest_model_that_fits(usable, "qlora", gradient_checkpointing=checkpointing, **common)
        if larger is not None:
            reasons.append(f"largest registry model QLoRA{' with checkpointing' if checkpointing else ''} "
                           f"fits at this batch and length: {larger}")
    return decision


def largest_model_that_fits(gpu_memory_gb: float, method: str = "qlora", **kwargs: Any) -> str | None:
    """Return the registry model with the most parameters whose estimate fits, or None.

    Example:
        >>> largest_model_that_fits(12, "qlora", batch=1, seq=512)
        'mistral-7b'
    """
    from lessonlib.params import REGISTRY, parameter_groups, registry_names

    best: tuple[int, str] | None = None
    for name in registry_names():
        if REGISTRY[name].get("model_type") not in ACTIVATION_MODEL_TYPES:
            continue
        try:
            est = estimate_training_memory(name, method, **kwargs)
        except ValueError:
            continue
        if est.total <= gpu_memory_gb * GB:
            size = sum(parameter_groups(name).values())
            if best is None or size > best[0]:
                best = (size, name)
    return None if best is None else best[1]


def main(argv: list[str] | None = None) -> int:
    """``python -m lessonlib route``: the decision and its reasons, printed.

    Example:
        >>> main(["--gpu-gb", "12", "--model", "llama-2-7b", "--seq", "512"])
        Use QLoRA: 9.4 GB of 12 GB.
        - full: 53.1 GB (does not fit in 11 GB usable = 12 GB - 1 GB reserve)
        - lora: 17.4 GB (does not fit in 11 GB usable = 12 GB - 1 GB reserve)
        - qlora: 9.4 GB (fits in 11 GB usable = 12 GB - 1 GB reserve)
        - LoRA on a bf16 base does not fit; the 4-bit base cuts the frozen weights from 12.6 GB to 4.0 GB
        0
    """
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m lessonlib route",
                                     description="Choose full fine-tuning, LoRA or QLoRA from the memory each needs.")
    parser.add_argument("--gpu-gb", type=float, required=True, help="the GPU's memory in GB")
    add_model_arguments(parser)
    parser.add_argument("--unclear-task", action="store_true", help="the task boundary is not clear yet")
    parser.add_argument("--want-larger-model", action="store_true", help="also name the largest model QLoRA fits")
    parser.add_argument("--reserve-gb", type=float, default=1.0, help="kept free for the CUDA context (default 1)")
    args = parser.parse_args(argv)
    try:
        decision = choose_route(args.gpu_gb, args.model, args.batch, args.seq,
                                task_boundary_clear=not args.unclear_task,
                                want_larger_model=args.want_larger_model, rank=args.rank, targets=args.targets,
                                dtype=args.dtype, optimizer=args.optimizer, reserve_gb=args.reserve_gb)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(decision)
    return 0
