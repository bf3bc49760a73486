"""Choosing a fine-tuning route (full, LoRA, QLoRA) from the memory each would need on a GPU.

:func:`choose_route` answers the question that the usual rule of thumb ("12 GB or less and a larger
model: QLoRA; otherwise LoRA") answers without numbers, with
:func:`lessonlib.memory.estimate_training_memory`: the totals of every method (each under its
default precision recipe, ``amp-bf16``, and with the CUDA runtime's share counted) against the GPU's
memory, the decision and the reasons for it. Memory is in GiB (2**30 bytes), as ``nvidia-smi`` and
``torch.cuda`` report it.

Example:
    >>> from lessonlib.route import choose_route
    >>> choose_route(12, "llama-2-7b", batch=1, seq=512).method
    'qlora'
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from lessonlib.memory import (ACTIVATION_MODEL_TYPES, METHODS, GiB, MemoryBreakdown, add_model_arguments,
                              estimate_training_memory)
from lessonlib.validation import number_in, positive_number, positive_number_arg


# ----------------------------------------------------------------------------------------------


@dataclass
class RouteDecision:
    """What :func:`choose_route` decided, with the numbers behind it.

    ``method`` is ``"full"``, ``"lora"``, ``"qlora"`` or None (clarify the task first, or nothing
    fits); ``gradient_checkpointing`` whether the chosen set-up needs it; ``estimates`` maps each
    method to its :class:`MemoryBreakdown` (without checkpointing, CUDA runtime included);
    ``usable_gb`` is the GPU's memory less ``reserve_gb``; ``reasons`` are the sentences that
    justify the decision. Figures are in GiB.
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
            full    3.3 GiB  fits in 24 GiB
            lora    1.3 GiB  fits in 24 GiB
            qlora   1.3 GiB  fits in 24 GiB
        """
        return "\n".join(f"{name:<6}{m.total_gib:>5.1f} GiB  {'fits' if m.fits(self.usable_gb) else 'does not fit'} "
                         f"in {self.usable_gb:g} GiB" for name, m in self.estimates.items())

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
    precision: str | None = None,
    optimizer: str = "adamw",
    padded: bool = False,
    reserve_gb: float = 0.0,
) -> RouteDecision:
    """Choose full fine-tuning, LoRA or QLoRA from the memory each would need on this GPU.

    The order of preference, and why: LoRA when it fits (it trains a small adapter on an exact base
    model); full fine-tuning is reported but only chosen when it fits and LoRA does not apply
    (never here: LoRA is cheaper whenever full fits); QLoRA when only a 4-bit base fits; then the
    same two with gradient checkpointing (slower: each layer is computed twice). Every estimate
    uses ``precision`` (default ``amp-bf16``, what ``Trainer(bf16=True)`` runs) and includes the
    CUDA runtime (context, workspaces, backward temporaries, the allocator's slack:
    :func:`lessonlib.memory.runtime_memory`) instead of a flat reserve; ``reserve_gb`` keeps more
    GiB free if other processes share the GPU. An unclear task boundary comes first: no amount of
    memory makes fine-tuning on a vague task useful. With ``want_larger_model`` the reasons also
    name the largest model of the registry that QLoRA fits at this batch and length.

    Raises:
        ValueError: a ``gpu_memory_gb`` that is not a finite number above 0, a ``reserve_gb``
            outside [0, gpu_memory_gb), or any input that :func:`estimate_training_memory` refuses.

    Example:
        >>> r = choose_route(12, "llama-2-7b", batch=1, seq=512, want_larger_model=True)
        >>> r.method, r.gradient_checkpointing
        ('qlora', False)
        >>> r.fits("lora"), r.fits("qlora")
        (False, True)
        >>> choose_route(12, "llama-2-7b", task_boundary_clear=False).method is None
        True
    """
    positive_number("gpu_memory_gb", gpu_memory_gb)
    number_in("reserve_gb (below gpu_memory_gb)", reserve_gb, 0, gpu_memory_gb)
    common = dict(batch=batch, seq=seq, rank=rank, targets=targets, precision=precision, optimizer=optimizer,
                  padded=padded)
    estimates = {method: estimate_training_memory(model, method, **common) for method in METHODS}
    usable = gpu_memory_gb - reserve_gb
    within = f"{usable:g} GiB" if not reserve_gb else f"{usable:g} GiB usable = {gpu_memory_gb:g} - {reserve_gb:g} GiB"
    reasons = [f"{m}: {est.total_gib:.1f} GiB ({'fits' if est.fits(usable) else 'does not fit'} in {within}; "
               f"CUDA runtime {est.runtime / GiB:.1f} GiB included)" for m, est in estimates.items()]
    decision = RouteDecision("", None, False, gpu_memory_gb, usable, estimates, reasons)
    if not task_boundary_clear:
        decision.decision = "Clarify the task first: decide what goes in and what must come out, then fine-tune."
        reasons.insert(0, "the task boundary is unclear; the numbers below are for later")
        return decision
    full, lora = estimates["full"], estimates["lora"]
    if full.fits(usable):
        reasons.append(f"full fine-tuning fits, but LoRA needs {lora.total_gib:.1f} GiB instead of "
                       f"{full.total_gib:.1f} GiB and saves a small adapter instead of a whole model")
    plan: list[tuple[str, bool]] = [("lora", False), ("qlora", False), ("lora", True), ("qlora", True)]
    for method, checkpointing in plan:
        est = estimates[method] if not checkpointing else estimate_training_memory(
            model, method, gradient_checkpointing=True, **common)
        if est.fits(usable):
            decision.method, decision.gradient_checkpointing = method, checkpointing
            how = "QLoRA" if method == "qlora" else "LoRA"
            extra = " with gradient checkpointing" if checkpointing else ""
            decision.decision = f"Use {how}{extra}: {est.total_gib:.1f} GiB of {gpu_memory_gb:g} GiB."
            if method == "qlora":
                reasons.append(f"LoRA on a 16-bit base does not fit; the 4-bit base cuts the frozen weights "
                               f"from {lora.frozen_weights / GiB:.1f} GiB to {est.frozen_weights / GiB:.1f} GiB")
            if checkpointing:
                reasons.append(f"activations drop from {estimates[method].activations / GiB:.1f} GiB to "
                               f"{est.activations / GiB:.1f} GiB at the cost of recomputing each layer")
            break
    else:
        decision.decision = (f"Nothing fits in {gpu_memory_gb:g} GiB at batch {batch} x {seq} tokens: "
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
        if est.fits(gpu_memory_gb):
            size = sum(parameter_groups(name).values())
            if best is None or size > best[0]:
                best = (size, name)
    return None if best is None else best[1]


def main(argv: list[str] | None = None) -> int:
    """``python -m lessonlib route``: the decision and its reasons, printed.

    Every bad value gets one line on stderr and exit status 2.

    Example:
        >>> main(["--gpu-gb", "12", "--model", "llama-2-7b", "--seq", "512"])  # doctest: +ELLIPSIS
        Use QLoRA: ... GiB of 12 GiB.
        - full: ... GiB (does not fit in 12 GiB; CUDA runtime ... GiB included)
        ...
        0
    """
    from lessonlib.params import CommandLineParser, run_command

    parser = CommandLineParser(prog="python -m lessonlib route",
                               description="Choose full fine-tuning, LoRA or QLoRA from the memory each needs.")
    parser.add_argument("--gpu-gb", type=positive_number_arg, required=True, help="the GPU's memory in GiB")
    add_model_arguments(parser)
    parser.add_argument("--unclear-task", action="store_true", help="the task boundary is not clear yet")
    parser.add_argument("--want-larger-model", action="store_true", help="also name the largest model QLoRA fits")
    parser.add_argument("--reserve-gb", type=float, default=0.0,
                        help="GiB to keep free for other processes (default 0; the CUDA runtime is already counted)")

    def command(args: Any) -> int:
        decision = choose_route(args.gpu_gb, args.model, args.batch, args.seq,
                                task_boundary_clear=not args.unclear_task,
                                want_larger_model=args.want_larger_model, rank=args.rank, targets=args.targets,
                                precision=args.precision, optimizer=args.optimizer, padded=args.padded,
                                reserve_gb=args.reserve_gb)
        print(decision)
        return 0

    return run_command(parser, argv, command)
