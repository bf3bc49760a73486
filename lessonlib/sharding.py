"""How many GPUs a training step needs when the model's state is split across them.

A model too large for one GPU is trained data-parallel with its state *fully sharded* (PyTorch's
FSDP ``FULL_SHARD``, DeepSpeed's ZeRO stage 3): each of ``n`` GPUs keeps ``1/n`` of the weights, the
quantization state, the gradients, the optimizer state and the autocast copies, and gathers one
layer's full weights at a time when it needs them. What does not shrink with ``n`` is each GPU's own
work: the activations of the sequences it processes, and the CUDA runtime.

:func:`shard` applies that split to an estimate of :func:`lessonlib.memory.estimate_training_memory`,
:func:`per_gpu_memory` estimates and splits, :func:`gpus_needed` finds the smallest ``n`` that fits a GPU of a given size. The model is a planning
figure with stated assumptions, not a measurement:

* every GPU runs the estimate's own batch (data parallel: more GPUs mean more sequences per step,
  never fewer per GPU);
* the sharded state divides exactly by ``n``; communication buckets are not counted;
* two layers' weights, as the forward pass reads them, are gathered at once (the layer being
  computed and the next one, prefetched); they count as autocast copies on every GPU when ``n > 1``;
* the runtime (context, workspaces, backward transients, allocator slack) is recomputed for what each
  GPU holds, with :func:`lessonlib.memory.runtime_memory`.
"""
from __future__ import annotations

import math
from dataclasses import replace
from typing import Any, Iterable

from lessonlib.memory import GiB, MemoryBreakdown, estimate_training_memory, runtime_memory
from lessonlib.params import model_shape
from lessonlib.validation import positive_int, positive_number

SHARDED = ("frozen_weights", "quant_state", "trainable_weights", "weight_copies", "gradients", "optimizer_state")
"""The components that FSDP / ZeRO-3 split across GPUs."""

GATHERED_LAYERS = 2
"""Layers whose full weights each GPU holds at once when sharded: the current one and the next."""


def shard(whole: MemoryBreakdown, n_gpus: int, *, layers: int, tokens: int, vocab: int) -> MemoryBreakdown:
    """Split a one-GPU estimate ``whole`` over ``n_gpus`` GPUs (fully sharded data parallel).

    ``layers`` is the model's number of decoder layers, ``tokens`` the tokens each GPU processes per
    step (batch x sequence), ``vocab`` the vocabulary size (for the runtime's backward transients).
    The gathered layers are what the forward pass reads: the frozen weights and quantization state,
    plus the autocast copies where there are some (else the trainable weights themselves).

    Example:
        >>> whole = MemoryBreakdown(trainable_weights=8 * GiB, gradients=8 * GiB, activations=GiB)
        >>> half = shard(whole, 2, layers=8, tokens=512, vocab=32000)
        >>> half.trainable_weights / GiB, half.weight_copies / GiB, half.activations / GiB
        (4.0, 2.0, 1.0)
    """
    positive_int("n_gpus", n_gpus)
    if n_gpus == 1:
        return whole
    read = whole.frozen_weights + whole.quant_state + (whole.weight_copies or whole.trainable_weights)
    split = {name: math.ceil(getattr(whole, name) / n_gpus) for name in SHARDED}
    split["weight_copies"] += math.ceil(GATHERED_LAYERS * read / layers)
    per_gpu = replace(whole, **split, runtime=0, runtime_parts={},
                      recipe=f"{whole.recipe}, sharded over {n_gpus} GPUs" if whole.recipe else "")
    if whole.runtime:               # a GPU estimate: recompute the runtime for what this GPU holds
        parts = runtime_memory(per_gpu, tokens=tokens, vocab=vocab)
        per_gpu = replace(per_gpu, runtime=sum(parts.values()), runtime_parts=parts)
    return per_gpu


def per_gpu_memory(model: Any, method: str, n_gpus: int, **estimate: Any) -> MemoryBreakdown:
    """Estimate one GPU's memory for a training step with the state fully sharded over ``n_gpus``.

    ``model``, ``method`` and ``estimate`` (batch, seq, rank, precision, ...) are passed to
    :func:`lessonlib.memory.estimate_training_memory`; ``n_gpus = 1`` returns its estimate unchanged.

    Example:
        >>> one = per_gpu_memory("llama-2-7b", "full", 1, batch=1, seq=512)
        >>> eight = per_gpu_memory("llama-2-7b", "full", 8, batch=1, seq=512)
        >>> round(one.total_gib), eight.activations == one.activations, eight.total < one.total / 4
        (121, True, True)
    """
    return _sharder(model, method, estimate)(n_gpus)


def _sharder(model: Any, method: str, estimate: dict[str, Any]) -> Any:
    """Estimate once; return a function of the number of GPUs."""
    whole = estimate_training_memory(model, method, **estimate)
    shape = model_shape(model)
    tokens = estimate.get("batch", 1) * estimate.get("seq", 512)
    return lambda n: shard(whole, n, layers=shape.layers, tokens=tokens, vocab=shape.vocab)


def gpus_needed(model: Any, method: str, gpu_memory_gib: float, *, max_gpus: int = 64,
                **estimate: Any) -> int | None:
    """Return the fewest GPUs of ``gpu_memory_gib`` GiB that fit a training step, or None beyond ``max_gpus``.

    Uses :func:`shard` (fully sharded data parallel); ``estimate`` goes to
    :func:`lessonlib.memory.estimate_training_memory`.

    Example:
        >>> gpus_needed("llama-2-7b", "qlora", 16, batch=1, seq=512)
        1
        >>> gpus_needed("llama-2-7b", "full", 80, batch=1, seq=512)
        2
    """
    positive_number("gpu_memory_gib", gpu_memory_gib)
    positive_int("max_gpus", max_gpus)
    return _fewest(_sharder(model, method, estimate), gpu_memory_gib, max_gpus)


def _fewest(per_gpu: Any, gpu_memory_gib: float, max_gpus: int) -> int | None:
    for n in range(1, max_gpus + 1):
        if per_gpu(n).total <= gpu_memory_gib * GiB:
            return n
    return None


def gpus_needed_table(models: Iterable[str], methods: Iterable[str], gpu_sizes_gib: Iterable[float], *,
                      max_gpus: int = 64, **estimate: Any) -> dict[tuple[str, str], list[int | None]]:
    """:func:`gpus_needed` for every model, method and GPU size, estimating each model and method once.

    Returns ``{(model, method): [GPUs needed for each size in gpu_sizes_gib]}`` (None: more than
    ``max_gpus``).

    Example:
        >>> gpus_needed_table(["llama-2-7b"], ["full", "qlora"], [24, 80], batch=1, seq=512)
        {('llama-2-7b', 'full'): [7, 2], ('llama-2-7b', 'qlora'): [1, 1]}
    """
    sizes = [positive_number("gpu_memory_gib", size) for size in gpu_sizes_gib]
    positive_int("max_gpus", max_gpus)
    table = {}
    for model in models:
        for method in methods:
            per_gpu = _sharder(model, method, estimate)
            table[model, method] = [_fewest(per_gpu, size, max_gpus) for size in sizes]
    return table
