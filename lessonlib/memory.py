"""Training memory: measured exactly from a real step, and estimated from a model's configuration.

One training step holds eight kinds of memory, and both halves of this module report them in the
same :class:`MemoryBreakdown`:

================== ==================================================================================
frozen_weights     weights that do not train (all of them for LoRA; the packed 4-bit bytes for QLoRA)
quant_state        what 4-bit weights need besides their codes: block scales (absmax), the nested
                   scales of double quantization and the code tables
trainable_weights  the weights the optimizer updates (everything in full fine-tuning; A and B in LoRA)
weight_copies      the 16-bit copies of weights that autocast makes and keeps for the backward pass
gradients          one gradient per trainable weight
optimizer_state    AdamW: two moments per trainable weight (plus a step counter); SGD with momentum:
                   one; 8-bit AdamW: two bytes per weight plus block scales
activations        what the forward pass keeps for the backward pass
runtime            what a CUDA process holds beyond these tensors (context, library workspaces,
                   backward temporaries, the caching allocator's slack); 0 on a CPU
================== ==================================================================================

**Precision recipes** (:data:`PRECISIONS`): ``fp32``; ``bf16`` and ``fp16``, *pure* half precision
(the model cast to 16 bits, no autocast); ``amp-bf16`` and ``amp-fp16``, *mixed* precision as
``transformers``' ``Trainer(bf16=True)`` / ``Trainer(fp16=True)`` runs it: the weights that train
and their gradients and optimizer state stay fp32, the forward pass runs under ``torch.autocast``.
``amp-bf16`` is the default for every method (see :func:`estimate_training_memory`).

**Measure** (:func:`measure_training_step`): weights, gradients and optimizer state by tensor-storage
accounting (a storage shared by two tensors, like tied embeddings, counts once); activations with
``torch.autograd.graph.saved_tensors_hooks``: the distinct storages that autograd saves for backward
and that are not weights; weight copies are the saved storages that a cast of a weight produced.
With gradient checkpointing the tensors saved inside each checkpointed layer are counted too, for
the largest layer (one layer is recomputed at a time). On CUDA the step's
``torch.cuda.max_memory_allocated`` and ``max_memory_reserved`` are recorded too.

**Estimate** (:func:`estimate_training_memory`): the same fields from the configuration alone, for
full fine-tuning, LoRA and QLoRA, any precision recipe, optimizer, batch and sequence length, padded
batches, LoRA dropout, sliding-window attention, with or without gradient checkpointing; on a CPU it
equals the measurement to the byte. :func:`runtime_memory` gives the CUDA runtime's share.

Example:
    >>> from lessonlib.memory import MemoryBreakdown
    >>> m = MemoryBreakdown(frozen_weights=10, trainable_weights=2, gradients=2, optimizer_state=4,
    ...                     activations=7)
    >>> m.total
    25
"""

from __future__ import annotations

import contextlib
import json
import math
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from lessonlib.quantization import DTYPE_BYTES, DTYPES, FOUR_BIT, packed_bytes, tensor_state_bytes
from lessonlib.validation import number_in, one_of, positive_int

GiB = 1024**3
"""Bytes in a GiB (2**30): the unit of every memory figure the course prints for a GPU."""

MiB = 1024**2
"""Bytes in a MiB (2**20)."""

GB = GiB
"""Old name of :data:`GiB`, kept while older notebooks still import it."""

COMPONENTS = ("frozen_weights", "quant_state", "trainable_weights", "weight_copies", "gradients",
              "optimizer_state", "activations", "runtime")
"""The fields of a :class:`MemoryBreakdown`, in the order they are drawn and printed."""

COMPONENT_LABELS = {
    "frozen_weights": "frozen weights",
    "quant_state": "quantization state",
    "trainable_weights": "trainable weights",
    "weight_copies": "autocast copies",
    "gradients": "gradients",
    "optimizer_state": "optimizer state",
    "activations": "activations",
    "runtime": "CUDA runtime",
}
"""Readable names of the components, for tables and plot legends."""

TENSOR_COMPONENTS = COMPONENTS[:-1]
"""The components that are tensors (everything but ``runtime``): what a CPU measurement sees."""


@dataclass
class MemoryBreakdown:
    """Bytes held by one training step, by kind (see the module docstring).

    ``total`` is the sum of the components; ``tensors`` the same without ``runtime``.
    ``peak_allocated`` / ``peak_reserved`` are ``torch.cuda.max_memory_allocated`` /
    ``max_memory_reserved`` during a measured CUDA step (None elsewhere). ``recipe`` says how the
    figures were obtained (e.g. ``"lora, amp-bf16, adamw, cuda"``); ``runtime_parts`` splits
    ``runtime`` (see :func:`runtime_memory`).

    Example:
        >>> m = MemoryBreakdown(frozen_weights=3 * GiB, activations=GiB // 2)
        >>> round(m.total_gib, 2), m.fits(4), m.fits(3)
        (3.5, True, False)
    """

    frozen_weights: int = 0
    quant_state: int = 0
    trainable_weights: int = 0
    weight_copies: int = 0
    gradients: int = 0
    optimizer_state: int = 0
    activations: int = 0
    runtime: int = 0
    peak_allocated: int | None = None
    peak_reserved: int | None = None
    recipe: str = ""
    runtime_parts: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        """Sum of all components, in bytes.

        Example:
            >>> MemoryBreakdown(gradients=5, activations=1, runtime=2).total
            8
        """
        return sum(getattr(self, name) for name in COMPONENTS)

    @property
    def tensors(self) -> int:
        """Sum of the tensor components (everything but ``runtime``), in bytes.

        Example:
            >>> MemoryBreakdown(gradients=5, runtime=2).tensors
            5
        """
        return self.total - self.runtime

    @property
    def total_gib(self) -> float:
        """:attr:`total` in GiB.

        Example:
            >>> MemoryBreakdown(activations=GiB).total_gib
            1.0
        """
        return self.total / GiB

    @property
    def total_gb(self) -> float:
        """Old name of :attr:`total_gib` (the value is in GiB)."""
        return self.total_gib

    def fits(self, gpu_memory_gib: float) -> bool:
        """Whether :attr:`total` (runtime included) fits in ``gpu_memory_gib`` GiB.

        Example:
            >>> MemoryBreakdown(activations=GiB).fits(1.5)
            True
        """
        return self.total <= gpu_memory_gib * GiB

    def as_dict(self) -> dict[str, Any]:
        """The components and the total, in bytes (plus the recipe and the runtime's parts).

        Example:
            >>> MemoryBreakdown(gradients=2).as_dict()["total"]
            2
        """
        out: dict[str, Any] = {name: getattr(self, name) for name in COMPONENTS}
        out["total"] = self.total
        if self.recipe:
            out["recipe"] = self.recipe
        if self.runtime_parts:
            out["runtime_parts"] = dict(self.runtime_parts)
        for name in ("peak_allocated", "peak_reserved"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        return out

    def table(self, unit: int = MiB, unit_name: str = "MiB") -> str:
        """A two-column text table of the components (default unit MiB).

        Example:
            >>> print(MemoryBreakdown(frozen_weights=3 * MiB).table())  # doctest: +NORMALIZE_WHITESPACE
            frozen weights          3.0 MiB
            quantization state      0.0 MiB
            trainable weights       0.0 MiB
            autocast copies         0.0 MiB
            gradients               0.0 MiB
            optimizer state         0.0 MiB
            activations             0.0 MiB
            CUDA runtime            0.0 MiB
            total                   3.0 MiB
        """
        rows = [(COMPONENT_LABELS[n], getattr(self, n)) for n in COMPONENTS] + [("total", self.total)]
        return "\n".join(f"{label:<20}{value / unit:>9.1f} {unit_name}" for label, value in rows)


# ----------------------------------------------------------------------------------------------
# Measurement
# ----------------------------------------------------------------------------------------------


def _storage_key(t: Any) -> tuple[str, int]:
    storage = t.untyped_storage()
    return (str(t.device), storage.data_ptr())


def storage_bytes(tensors: Iterable[Any]) -> int:
    """Bytes of the distinct storages behind ``tensors`` (a storage shared by two tensors counts once).

    Views (a transpose, a slice) share their base's storage and add nothing.

    Example:
        >>> import torch
        >>> w = torch.zeros(4, 8)                      # 32 floats: 128 bytes
        >>> storage_bytes([w, w.t(), w[:2], torch.zeros(2, dtype=torch.float16)])
        132
    """
    seen: dict[tuple[str, int], int] = {}
    for t in tensors:
        if t is None:
            continue
        key = _storage_key(t)
        if key not in seen:
            seen[key] = t.untyped_storage().nbytes()
    return sum(seen.values())


def quant_state_tensors(model: Any) -> list[Any]:
    """The tensors of the 4-bit quantization states in ``model`` (bitsandbytes ``Params4bit``).

    For each 4-bit weight: its block scales (``absmax``), its code table (``code``) and, with double
    quantization, the offset and the nested state's ``absmax`` and ``code``. The packed 4-bit codes
    themselves are the weight's own storage and are not listed here.

    Example:
        >>> import torch
        >>> quant_state_tensors(torch.nn.Linear(4, 4))
        []
    """
    found: list[Any] = []
    for param in model.parameters():
        state = getattr(param, "quant_state", None)
        while state is not None:
            for name in ("absmax", "code", "offset"):
                value = getattr(state, name, None)
                if value is not None and hasattr(value, "untyped_storage"):
                    found.append(value)
            state = getattr(state, "state2", None) if getattr(state, "nested", False) else None
    return found


def _optimizer_tensors(optimizer: Any) -> list[Any]:
    import torch

    out: list[Any] = []
    for state in optimizer.state.values():
        for value in state.values():
            if isinstance(value, torch.Tensor):
                out.append(value)
    return out


def _default_loss(model: Any, batch: Mapping[str, Any]) -> Any:
    outputs = model(**batch)
    loss = getattr(outputs, "loss", None)
    if loss is None:
        raise ValueError("the model returned no loss: put 'labels' in the batch or pass loss_fn")
    return loss


def _reentrant_checkpointing(loss: Any) -> bool:
    """Whether the graph behind ``loss`` holds a layer checkpointed with ``use_reentrant=True``."""
    seen, todo = set(), [getattr(loss, "grad_fn", None)]
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if type(node).__name__ == "CheckpointFunctionBackward":
            return True
        todo.extend(next_node for next_node, _ in node.next_functions)
    return False


class _Packed:
    """What autograd keeps for one saved tensor while it is watched: alive as long as the part of the
    graph that saved it. (An operation that saves its own output, such as ``exp``, makes a reference
    cycle with it, so such a tensor still counts when its part of the graph is dropped.)"""

    __slots__ = ("tensor", "__weakref__")

    def __init__(self, tensor: Any) -> None:
        self.tensor = tensor


class _SavedTensors:
    """What autograd saves during a forward pass, by storage: outside and inside checkpointed layers.

    ``outer`` holds the storages saved by the graph itself (a checkpointed layer's inputs among
    them); ``frames`` one dict per checkpointed layer, of the storages its forward saved (they come
    back, one layer at a time, when backward recomputes the layer). The tensors are kept referenced
    while counting, so that no address is reused by a later tensor.
    """

    def __init__(self, weight_keys: set[tuple[str, int]]) -> None:
        self.weight_keys = weight_keys
        self.copy_keys: set[tuple[str, int]] = set()  # storages made by casting a weight
        self.outer: dict[tuple[str, int], Any] = {}
        self.frames: list[dict[tuple[str, int], Any]] = []
        # what the graph holds for each outer storage (see _Packed): a storage saved only by parts of
        # the graph that were dropped before the forward pass ended (DoRA's detached weight norm) is
        # no longer held, and does not count
        self.holders: dict[tuple[str, int], list[Any]] = {}

    def record(self, t: Any, into: dict[tuple[str, int], Any], holder: Any = None) -> None:
        if t.device.type != "meta":
            key = _storage_key(t)
            if key not in self.weight_keys:
                into.setdefault(key, t)
                if holder is not None:
                    self.holders.setdefault(key, []).append(weakref.ref(holder))

    def held_outer(self) -> dict[tuple[str, int], Any]:
        """The outer storages that the graph still holds."""
        return {k: t for k, t in self.outer.items()
                if k not in self.holders or any(ref() is not None for ref in self.holders[k])}

    def counts(self) -> tuple[int, int]:
        """(activations, weight_copies) in bytes: the outer storages still held, the storages that
        several checkpointed layers share (once) and the largest checkpointed layer's own storages."""
        def split(tensors: Mapping[tuple[str, int], Any]) -> tuple[int, int]:
            copies = sum(t.untyped_storage().nbytes() for k, t in tensors.items() if k in self.copy_keys)
            return sum(t.untyped_storage().nbytes() for t in tensors.values()) - copies, copies

        outer = self.held_outer()
        act, copies = split(outer)
        seen_in: dict[tuple[str, int], int] = {}
        for frame in self.frames:
            for key in frame:
                seen_in[key] = seen_in.get(key, 0) + 1
        shared = {k: t for frame in self.frames for k, t in frame.items() if seen_in[k] > 1 and k not in outer}
        a, c = split(shared)
        act, copies = act + a, copies + c
        largest = (0, 0)
        for frame in self.frames:
            own = {k: t for k, t in frame.items() if seen_in[k] == 1 and k not in outer}
            largest = max(largest, split(own), key=sum)
        return act + largest[0], copies + largest[1]


@contextlib.contextmanager
def _watching(saved: _SavedTensors) -> Iterator[None]:
    """Record saved tensors, weight casts and checkpointed layers' saved tensors during a forward pass."""
    import torch
    import torch.utils.checkpoint as ckpt
    from torch.utils._python_dispatch import TorchDispatchMode

    class CastWatcher(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
            out = func(*args, **(kwargs or {}))
            if func is torch.ops.aten._to_copy.default and isinstance(out, torch.Tensor):
                if _storage_key(args[0]) in saved.weight_keys:
                    saved.copy_keys.add(_storage_key(out))
            return out

    original = ckpt._checkpoint_hook

    class RecordingCheckpointHook(original):  # type: ignore[misc, valid-type]
        """torch's hook of non-reentrant checkpointing, recording what each layer saves."""

        def __init__(self, frame: Any) -> None:
            super().__init__(frame)
            inner, mine = self.pack_hook, {}
            saved.frames.append(mine)

            def pack_hook(x: Any) -> Any:
                saved.record(x, mine)
                return inner(x)

            self.pack_hook = pack_hook

    def pack(t: Any) -> Any:
        holder = _Packed(t)
        saved.record(t, saved.outer, holder)
        return holder

    ckpt._checkpoint_hook = RecordingCheckpointHook
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda holder: holder.tensor), CastWatcher():
            yield
    finally:
        ckpt._checkpoint_hook = original


def measure_training_step(
    model: Any,
    batch: Mapping[str, Any],
    optimizer: Any,
    loss_fn: Callable[[Any, Mapping[str, Any]], Any] | None = None,
    *,
    autocast: str | None = None,
) -> MemoryBreakdown:
    """Run one training step (forward, backward, optimizer step) and measure what it holds.

    * frozen / trainable weights, gradients, optimizer state: exact, from tensor storages, each
      storage once; 4-bit weights count their packed bytes as frozen weights and their block
      scales and code tables as ``quant_state``;
    * activations: exact, the distinct storages that autograd saved for backward during the
      forward pass (and the loss), weights and quantization state excluded;
    * weight copies: the saved storages that a cast of a weight made (autocast's 16-bit copies);
    * gradient checkpointing (``torch.utils.checkpoint`` with ``use_reentrant=False``, the
      ``transformers`` default): the layers' inputs as above, plus what the largest checkpointed
      layer saves, which backward recomputes one layer at a time;
    * on CUDA, ``peak_allocated`` and ``peak_reserved`` of the step.

    The forward pass (and the loss) runs under ``torch.autocast`` when ``autocast`` is ``"bf16"``
    or ``"fp16"``; backward and the optimizer step run outside it, as ``transformers``' Trainer
    does. The optimizer state is measured after ``optimizer.step()``, when AdamW has created its
    moments. Gradients are cleared at the end (``zero_grad(set_to_none=True)``).

    Args:
        model: a torch module; the trainable weights are those with ``requires_grad``.
        batch: keyword arguments of the model (``input_ids``, ``attention_mask``, ``labels``).
        optimizer: a torch optimizer over the trainable weights.
        loss_fn: ``loss_fn(model, batch) -> loss``; default ``model(**batch).loss``.
        autocast: None, ``"bf16"`` or ``"fp16"``: the dtype of ``torch.autocast``.

    Example:
        >>> import torch
        >>> torch.manual_seed(0) and None
        >>> net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
        >>> opt = torch.optim.AdamW(net.parameters())
        >>> step = lambda m, b: m(b["x"]).pow(2).mean()
        >>> m = measure_training_step(net, {"x": torch.randn(4, 8)}, opt, loss_fn=step)
        >>> n = sum(p.numel() for p in net.parameters())          # 161 weights in fp32
        >>> m.trainable_weights == m.gradients == 4 * n, m.optimizer_state == 2 * 4 * n + 4 * 4
        (True, True)
        >>> m.activations > 0, m.weight_copies
        (True, 0)
        >>> measure_training_step(net, {"x": torch.randn(4, 8)}, opt, loss_fn=step, autocast="bf16").weight_copies
        32
    """
    import torch

    one_of("autocast", autocast, (None, "bf16", "fp16"))
    if loss_fn is None:
        loss_fn = _default_loss
    params = list(model.parameters())
    trainable = [p for p in params if p.requires_grad]
    if not trainable:
        raise ValueError("the model has no trainable parameters (requires_grad is False everywhere)")
    frozen = [p for p in params if not p.requires_grad] + list(model.buffers())
    qstate = quant_state_tensors(model)
    saved = _SavedTensors({_storage_key(t) for t in params + frozen + qstate})
    # Hold the weights' storages through the forward pass: a layer that replaces a weight's storage
    # (bitsandbytes casts a 4-bit layer's bias at its first call) must not free an address that a
    # new tensor could then take and be mistaken for a weight.
    held = [t.untyped_storage() for t in params + frozen + qstate]

    cuda = any(p.is_cuda for p in params)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    device_type = "cuda" if cuda else "cpu"
    if autocast is None:
        casting: Any = contextlib.nullcontext()
    else:
        casting = torch.autocast(device_type, dtype=getattr(torch, "bfloat16" if autocast == "bf16" else "float16"))

    optimizer.zero_grad(set_to_none=True)
    with _watching(saved), casting:
        loss = loss_fn(model, batch)
    if _reentrant_checkpointing(loss):
        raise ValueError("the model uses reentrant gradient checkpointing (use_reentrant=True), which recomputes "
                         "layers out of autograd's sight; enable it with use_reentrant=False to measure it")
    activations, copies = saved.counts()
    saved.outer.clear()
    saved.holders.clear()
    saved.frames.clear()
    del held

    loss.backward()
    gradients = storage_bytes(p.grad for p in trainable)
    optimizer.step()
    peak = reserved = None
    if cuda:
        torch.cuda.synchronize()
        peak, reserved = int(torch.cuda.max_memory_allocated()), int(torch.cuda.max_memory_reserved())
    result = MemoryBreakdown(
        frozen_weights=storage_bytes(frozen),
        quant_state=storage_bytes(qstate),
        trainable_weights=storage_bytes(trainable),
        weight_copies=copies,
        gradients=gradients,
        optimizer_state=storage_bytes(_optimizer_tensors(optimizer)),
        activations=activations,
        peak_allocated=peak,
        peak_reserved=reserved,
        recipe=f"measured, {device_type}" + (f", autocast {autocast}" if autocast else ""),
    )
    optimizer.zero_grad(set_to_none=True)
    return result


# ----------------------------------------------------------------------------------------------
# Precision recipes and the other choices of a training run
# ----------------------------------------------------------------------------------------------

METHODS = ("full", "lora", "qlora")
"""Training methods the estimator knows."""

PRECISIONS = ("fp32", "bf16", "fp16", "amp-bf16", "amp-fp16")
"""Precision recipes: plain fp32; pure bf16 / fp16 (everything stored in 16 bits, no autocast);
mixed precision with bf16 / fp16 autocast (fp32 trainable weights, gradients and optimizer state)."""

DEFAULT_PRECISION = "amp-bf16"
"""What ``transformers``' Trainer (and TRL's SFTTrainer on top of it) runs with ``bf16=True``, for
every method (see :func:`estimate_training_memory`)."""

DTYPES = DTYPES
"""The dtype names of the course (:data:`lessonlib.quantization.DTYPES`)."""

OPTIMIZERS = ("adamw", "sgd", "adamw8bit", "paged-adamw", "paged-adamw8bit")
"""``adamw``: torch AdamW (two moments in the weights' dtype and a step counter per tensor);
``sgd``: SGD with momentum (one buffer); ``adamw8bit``: bitsandbytes AdamW8bit (two 8-bit moments
with one fp32 scale per 256 values for tensors of at least 4096 values, fp32 moments below that);
``paged-adamw`` / ``paged-adamw8bit``: bitsandbytes' paged AdamW (fp32 moments) and paged AdamW8bit,
QLoRA's third ingredient. Paging keeps the same state resident; it only lets the driver move it to
CPU memory when the GPU runs short (a spike), instead of failing."""

QUANTIZATIONS = FOUR_BIT
"""4-bit formats for QLoRA (the 4-bit entries of :data:`lessonlib.quantization.QUANTIZATIONS`)."""

DEVICES = ("cuda", "cpu")
"""Where the step runs: ``cuda`` adds the :func:`runtime_memory` component and follows the
libraries' CUDA code paths; ``cpu`` is what :func:`measure_training_step` measures on this machine."""

ACTIVATION_MODEL_TYPES = ("llama", "mistral", "qwen2")
"""Architectures whose activations the estimator models (pre-norm RMSNorm, SDPA, SwiGLU MLP)."""

_BNB_8BIT_MIN_SIZE = 4096  # bitsandbytes' min_8bit_size: smaller tensors keep 32-bit state
_BNB_8BIT_BLOCK = 256  # values per absmax of the 8-bit optimizer state
_EXTRA_BYTES = {"bool": 1, "int64": 8}


@dataclass(frozen=True)
class Recipe:
    """The dtypes one precision recipe gives each part of a method's training step.

    ``autocast``: the dtype of ``torch.autocast`` (None: no autocast); ``trainable``: full
    fine-tuning's weights, their gradients and optimizer state; ``base``: LoRA's frozen base
    weights (and QLoRA's unquantized weights when they are not up-cast to fp32); ``adapter``: LoRA's
    A and B; ``compute``: the dtype QLoRA's 4-bit layers compute in.

    Example:
        >>> recipe("amp-bf16")
        Recipe(precision='amp-bf16', autocast='bf16', trainable='fp32', base='bf16', adapter='fp32', compute='bf16')
    """

    precision: str
    autocast: str | None
    trainable: str
    base: str
    adapter: str
    compute: str


def recipe(precision: str = DEFAULT_PRECISION, *, adapter_dtype: str = "fp32",
           compute_dtype: str | None = None) -> Recipe:
    """Return the dtypes of a precision recipe (see :class:`Recipe` and :data:`PRECISIONS`).

    ``adapter_dtype`` is LoRA's A and B (``peft`` up-casts 16-bit adapters to fp32 by default;
    some scripts cast them back to 16 bits); under ``fp32`` they are fp32. ``compute_dtype``
    overrides QLoRA's compute dtype (default: the recipe's 16-bit type, fp32 under ``fp32``).

    Example:
        >>> recipe("bf16").trainable, recipe("bf16").adapter, recipe("fp32").compute
        ('bf16', 'fp32', 'fp32')
        >>> recipe("fp8")
        Traceback (most recent call last):
        ...
        ValueError: precision must be one of fp32, bf16, fp16, amp-bf16, amp-fp16, got 'fp8'
    """
    one_of("precision", precision, PRECISIONS)
    one_of("adapter_dtype", adapter_dtype, DTYPES)
    if compute_dtype is not None:
        one_of("compute_dtype", compute_dtype, DTYPES)
    if precision == "fp32":
        return Recipe(precision, None, "fp32", "fp32", "fp32", compute_dtype or "fp32")
    half = precision.removeprefix("amp-")
    if precision.startswith("amp-"):
        return Recipe(precision, half, "fp32", half, adapter_dtype, compute_dtype or half)
    return Recipe(precision, None, half, half, adapter_dtype, compute_dtype or half)


# ----------------------------------------------------------------------------------------------
# The forward pass, traced symbolically: which tensors autograd keeps, in which dtype
# ----------------------------------------------------------------------------------------------


class _T:
    """A tensor of the symbolic trace: numbers, dtype, whether it needs a gradient, and what it is."""

    __slots__ = ("numel", "dtype", "rg", "kind", "serial")

    def __init__(self, numel: int, dtype: str, rg: bool, kind: str, serial: int) -> None:
        self.numel, self.dtype, self.rg, self.kind, self.serial = numel, dtype, rg, kind, serial

    @property
    def nbytes(self) -> int:
        return self.numel * (DTYPE_BYTES.get(self.dtype) or _EXTRA_BYTES[self.dtype])


def _wider(a: str, b: str) -> str:
    """The dtype torch promotes two floating dtypes to (fp32 wins; bf16 with fp16 gives fp32)."""
    return a if a == b else "fp32"


class _Trace:
    """Runs a decoder's forward pass on symbolic tensors and records what autograd would save.

    Each operation follows the rule of the library that runs it (torch's autograd formulas,
    ``torch.autocast``'s casts, ``transformers``' Llama layers, ``peft``'s LoRA layers,
    ``bitsandbytes``' 4-bit layers); the docstring of :func:`estimate_training_memory` lists them.
    """

    def __init__(self, autocast: str | None) -> None:
        self.autocast = autocast
        self.serial = 0
        self.saved: dict[int, _T] = {}
        self.cast_cache: dict[int, _T] = {}
        self.frames: list[dict[int, _T]] | None = None
        self.frame: dict[int, _T] | None = None
        self.frame_start = 0

    # -- tensors --------------------------------------------------------------------------
    def new(self, numel: int, dtype: str, rg: bool, kind: str = "act") -> _T:
        self.serial += 1
        return _T(numel, dtype, rg, kind, self.serial)

    def weight(self, numel: int, dtype: str, trainable: bool) -> _T:
        return self.new(numel, dtype, trainable, "trainable" if trainable else "frozen")

    def save(self, t: _T) -> None:
        if t.kind in ("trainable", "frozen"):
            return
        if self.frame is not None and t.serial > self.frame_start:
            self.frame.setdefault(t.serial, t)
        else:
            self.saved.setdefault(t.serial, t)

    def cast(self, t: _T, dtype: str) -> _T:
        """``t.to(dtype)``: the same tensor when the dtype already matches, else a copy."""
        if t.dtype == dtype:
            return t
        kind = "copy" if t.kind in ("trainable", "frozen") else "act"
        return self.new(t.numel, dtype, t.rg, kind)

    def autocast_cast(self, t: _T) -> _T:
        """What autocast does to an input of a 16-bit op: cast it, caching casts of trainable weights."""
        if self.autocast is None:
            return t
        if t.kind == "trainable" and t.dtype != self.autocast:
            if t.serial not in self.cast_cache:
                self.cast_cache[t.serial] = self.cast(t, self.autocast)
            return self.cast_cache[t.serial]
        return self.cast(t, self.autocast)

    # -- checkpointed layers -------------------------------------------------------------------
    @contextlib.contextmanager
    def checkpointed(self, layer_input: _T) -> Iterator[None]:
        """A layer under non-reentrant checkpointing: its input is saved outside, the rest per layer."""
        self.save(layer_input)
        self.frame, self.frame_start = {}, self.serial
        self.cast_cache = {}  # autocast's cache is rebuilt when backward recomputes the layer
        try:
            yield
        finally:
            assert self.frames is not None
            self.frames.append(self.frame)
            self.frame = None

    def totals(self) -> tuple[int, int]:
        """(activations, weight_copies) in bytes, as :class:`_SavedTensors` counts them."""
        def split(tensors: Iterable[_T]) -> tuple[int, int]:
            tensors = list(tensors)
            copies = sum(t.nbytes for t in tensors if t.kind == "copy")
            return sum(t.nbytes for t in tensors) - copies, copies

        act, copies = split(self.saved.values())
        largest = max((split(f.values()) for f in self.frames or []), key=sum, default=(0, 0))
        return act + largest[0], copies + largest[1]

    # -- operations ----------------------------------------------------------------------------
    def linear(self, x: _T, w: _T, out_features: int, tokens: int) -> _T:
        """``F.linear``: keeps its input when the weight trains, its weight when the input does."""
        xc, wc = self.autocast_cast(x), self.autocast_cast(w)
        if w.rg:
            self.save(xc)
        if x.rg:
            self.save(wc)
        return self.new(tokens * out_features, wc.dtype, x.rg or w.rg)

    def mul(self, a: _T, b: _T) -> _T:
        """Elementwise product: each factor is kept when the other one needs a gradient."""
        if a.rg:
            self.save(b)
        if b.rg:
            self.save(a)
        return self.new(max(a.numel, b.numel), _wider(a.dtype, b.dtype), a.rg or b.rg)

    def add(self, a: _T, b: _T) -> _T:
        return self.new(max(a.numel, b.numel), _wider(a.dtype, b.dtype), a.rg or b.rg)

    def silu(self, x: _T) -> _T:
        if x.rg:
            self.save(x)
        return self.new(x.numel, x.dtype, x.rg)

    def dropout(self, x: _T, device: str) -> _T:
        """``nn.Dropout`` in training: a new tensor, and its mask kept when a gradient flows: one byte
        per value on CUDA (a fused kernel), the input's dtype on a CPU (a multiplication by noise)."""
        if x.rg:
            self.save(self.new(x.numel, "bool" if device == "cuda" else x.dtype, False))
        return self.new(x.numel, x.dtype, x.rg)

    def rms_norm(self, x: _T, w: _T, tokens: int) -> _T:
        """Llama's RMSNorm: an fp32 copy of the input and 1/rms per token, the normalized values
        when the norm's own weight trains."""
        h = self.cast(x, "fp32")
        if x.rg:
            self.save(h)
            self.save(self.new(tokens, "fp32", True))
        normed = self.cast(self.new(x.numel, "fp32", x.rg), x.dtype)
        return self.mul(w, normed)


@dataclass
class _Plan:
    """Everything the trace needs to know about one training step."""

    method: str
    recipe: Recipe
    targets: tuple[str, ...]
    rank: int
    batch: int
    seq: int
    lora_dropout: float
    prepare_kbit: bool
    checkpointing: bool
    padded: bool
    device: str
    input_grads: bool


def _trace_forward(s: Any, plan: _Plan) -> tuple[int, int]:
    """(activations, weight_copies) of one forward pass of a Llama-style model, in bytes."""
    r = plan.recipe
    tr = _Trace(r.autocast)
    n, full, qlora = plan.batch * plan.seq, plan.method == "full", plan.method == "qlora"
    if plan.checkpointing:
        tr.frames = []
    # dtypes of the weights that are not 4-bit: trained (full), or frozen in the base dtype or fp32
    plain = r.trainable if full else ("fp32" if qlora and plan.prepare_kbit else r.base)
    adapter = r.adapter

    def proj(name: str, in_f: int, out_f: int, x: _T) -> _T:
        lora = name in plan.targets and not full
        if qlora and name != "lm_head":
            out = bnb_4bit(x, out_f)
        else:
            out = tr.linear(x, tr.weight(in_f * out_f, plain, full), out_f, n)
        if not lora:
            return out
        if qlora and name != "lm_head":
            return peft_4bit_lora(x, out, in_f, out_f)
        dtype = out.dtype
        xa = tr.cast(x, adapter)  # peft casts the input to the adapter's dtype
        delta = lora_branch(xa, in_f, out_f)
        return tr.cast(tr.add(out, delta), dtype)

    def lora_branch(x: _T, in_f: int, out_f: int) -> _T:
        if plan.lora_dropout > 0:
            x = tr.dropout(x, plan.device)
        a = tr.linear(x, tr.weight(plan.rank * in_f, adapter, True), plan.rank, n)
        b = tr.linear(a, tr.weight(out_f * plan.rank, adapter, True), out_f, n)
        return tr.new(b.numel, b.dtype, True)  # times the scaling: no tensor kept

    def bnb_4bit(x: _T, out_f: int) -> _T:
        # bitsandbytes' Linear4bit: input cast to the compute dtype, output cast back; its matmul
        # (MatMul4Bit) keeps only the packed weight for backward, never its input
        xc = tr.cast(x, r.compute)
        return tr.cast(tr.new(n * out_f, xc.dtype, x.rg), x.dtype)

    def peft_4bit_lora(x: _T, out: _T, in_f: int, out_f: int) -> _T:
        result = tr.new(out.numel, out.dtype, out.rg)  # peft clones the 4-bit layer's output
        # peft converts dtypes itself unless torch.is_autocast_enabled(), which sees CUDA autocast only
        converts = r.autocast is None or plan.device == "cpu"
        xa = tr.cast(x, adapter) if converts else x
        delta = lora_branch(xa, in_f, out_f)
        if converts:
            delta = tr.cast(delta, result.dtype)
        return tr.add(result, delta)

    def attention(x: _T, cos: _T, sin: _T, masked: bool) -> _T:
        q_w, kv_w = s.heads * s.head_dim, s.kv_heads * s.head_dim
        q = proj("q_proj", s.hidden, q_w, x)
        k = proj("k_proj", s.hidden, kv_w, x)
        v = proj("v_proj", s.hidden, kv_w, x)

        def rope(t: _T) -> _T:  # t * cos + rotate_half(t) * sin
            return tr.add(tr.mul(t, cos), tr.mul(tr.new(t.numel, t.dtype, t.rg), sin))

        q, k = rope(q), rope(k)
        if masked and s.kv_heads < s.heads:  # with a mask, transformers repeats k and v per query head
            k = tr.new(n * q_w, k.dtype, k.rg)
            v = tr.new(n * q_w, v.dtype, v.rg)
        q, k, v = tr.autocast_cast(q), tr.autocast_cast(k), tr.autocast_cast(v)
        out = tr.new(n * q_w, q.dtype, q.rg or k.rg or v.rg)
        if out.rg:  # SDPA keeps q, k, v, its output, the log-sum-exp and the mask (in q's dtype)
            for t in (q, k, v, out, tr.new(n * s.heads, "fp32", False)):
                tr.save(t)
            if masked:
                tr.save(tr.new(plan.batch * plan.seq * plan.seq, q.dtype, False))
        return proj("o_proj", q_w, s.hidden, out)  # o_proj's input is a view of SDPA's output

    def mlp(x: _T) -> _T:
        gate = proj("gate_proj", s.hidden, s.intermediate, x)
        up = proj("up_proj", s.hidden, s.intermediate, x)
        return proj("down_proj", s.intermediate, s.hidden, tr.mul(tr.silu(gate), up))

    def layer(x: _T, cos: _T, sin: _T, masked: bool) -> _T:
        h = tr.rms_norm(x, tr.weight(s.hidden, plain, full), n)
        x = tr.add(x, attention(h, cos, sin, masked))
        h = tr.rms_norm(x, tr.weight(s.hidden, plain, full), n)
        return tr.add(x, mlp(h))

    # embeddings: the token ids are kept when the embedding trains
    if full:
        tr.save(tr.new(n, "int64", False))
    x = tr.new(n * s.hidden, plain, full or plan.input_grads)
    cos, sin = tr.new(plan.seq * s.head_dim, x.dtype, False), tr.new(plan.seq * s.head_dim, x.dtype, False)
    for index in range(s.layers):
        window = s.sliding_window if index >= s.layers - s.sliding_layers else None
        masked = plan.padded or (window is not None and plan.seq >= window)
        if plan.checkpointing:
            with tr.checkpointed(x):
                x = layer(x, cos, sin, masked)
        else:
            x = layer(x, cos, sin, masked)
    x = tr.rms_norm(x, tr.weight(s.hidden, plain, full), n)
    logits = proj("lm_head", s.hidden, s.vocab, x)
    # the loss: log-softmax in fp32 over the vocabulary, the shifted labels (one sequence's are a
    # view of the padded ones; several are copied out) and the weight total
    tr.cast(logits, "fp32")
    if logits.rg:
        tr.save(tr.new(n * s.vocab, "fp32", True))
        tr.save(tr.new(plan.seq + 1 if plan.batch == 1 else n, "int64", False))
        tr.save(tr.new(1, "fp32", False))
    return tr.totals()


# ----------------------------------------------------------------------------------------------
# What a CUDA process holds beyond its tensors
# ----------------------------------------------------------------------------------------------

CUDA_CONTEXT_BYTES = 512 * MiB
"""The CUDA context: the driver's state and the kernels loaded for the process, outside PyTorch's
allocator (``nvidia-smi`` counts it, ``torch.cuda.memory_allocated`` does not). Reported sizes:
1,343 MB on a V100 with CUDA 11.2 and eager kernel loading ("Model training anatomy",
https://huggingface.co/docs/transformers/model_memory_anatomy ); 287,047,680 bytes right after
start with lazy loading against 666,632,192 without (PyTorch pull request #86509, which made
``CUDA_MODULE_LOADING=LAZY`` PyTorch's default in 1.13, https://github.com/pytorch/pytorch/pull/86509 );
lazy loading is the driver's default on Linux since CUDA 12.2 (NVIDIA, CUDA C++ Programming Guide,
"Lazy Loading"). A training run loads more kernels than an empty start (cuBLAS, attention, the
optimizer), so 512 MiB is planned; ``benchmarks/gpu_memory.py`` measures it on a GPU."""

WORKSPACE_BYTES = 64 * MiB
"""cuBLAS and cuBLASLt workspaces, allocated through PyTorch's caching allocator (so they count in
``max_memory_allocated``): 8,519,680 bytes of cuBLAS workspace by default (reported on the PyTorch
forum, https://discuss.pytorch.org/t/178671 ), and a cuBLASLt workspace of 1 MiB, 4 MiB on large
Ampere GPUs and 32 MiB on Hopper (PyTorch pull request #120925,
https://github.com/pytorch/pytorch/pull/120925 ), per handle and stream; 64 MiB covers a Hopper GPU
with a second stream."""

ALLOCATOR_SLACK = 0.10
"""Share of the memory that every step frees and allocates again (activations, autocast copies,
gradients, backward temporaries) that PyTorch's caching allocator keeps reserved on top of what is
allocated: freed blocks stay cached, sizes are rounded up (to 512 bytes, large blocks to 2 MiB
segments) and free space fragments ("CUDA semantics, memory management",
https://docs.pytorch.org/docs/stable/notes/cuda.html#memory-management ). A planning figure for the
gap between ``max_memory_reserved`` and ``max_memory_allocated``, not a measurement;
``benchmarks/gpu_memory.py`` measures it on a GPU."""


def runtime_memory(m: MemoryBreakdown, *, tokens: int, vocab: int) -> dict[str, int]:
    """Return what a CUDA training step needs beyond the tensors of ``m``, in bytes, by part.

    * ``context``: :data:`CUDA_CONTEXT_BYTES` (``nvidia-smi`` shows it, PyTorch's counters do not);
    * ``workspaces``: :data:`WORKSPACE_BYTES` of cuBLAS workspaces;
    * ``transients``: the largest temporary tensors of backward: at the loss, the gradient of the
      fp32 log-probabilities and of the logits (two ``tokens x vocab`` fp32 tensors) while the
      saved log-probabilities are still alive;
    * ``allocator``: :data:`ALLOCATOR_SLACK` of what each step frees and allocates again.

    ``torch.cuda.max_memory_allocated`` corresponds to tensors + workspaces + transients
    (:func:`allocated_peak`); ``max_memory_reserved`` adds the allocator's share; the GPU's used
    memory (``nvidia-smi``) adds the context.

    Example:
        >>> parts = runtime_memory(MemoryBreakdown(activations=4 * GiB), tokens=512, vocab=32000)
        >>> {k: round(v / MiB) for k, v in parts.items()}
        {'context': 512, 'workspaces': 64, 'transients': 125, 'allocator': 422}
    """
    transients = 2 * tokens * vocab * 4
    churn = m.activations + m.weight_copies + m.gradients + transients
    return {"context": CUDA_CONTEXT_BYTES, "workspaces": WORKSPACE_BYTES, "transients": transients,
            "allocator": int(ALLOCATOR_SLACK * churn)}


def allocated_peak(m: MemoryBreakdown) -> int:
    """What ``torch.cuda.max_memory_allocated`` should show for an estimated step: held tensors,
    workspaces and backward transients (not the CUDA context, not the allocator's cached slack).

    Example:
        >>> m = MemoryBreakdown(activations=GiB, runtime=3, runtime_parts={"context": 1, "transients": 2})
        >>> allocated_peak(m) - GiB
        2
    """
    parts = m.runtime_parts
    return m.tensors + parts.get("workspaces", 0) + parts.get("transients", 0)


# ----------------------------------------------------------------------------------------------
# Estimate
# ----------------------------------------------------------------------------------------------


def _optimizer_bytes(optimizer: str, tensor_sizes: list[int], dtype_bytes: int) -> int:
    """Bytes of optimizer state for trainable tensors of the given sizes stored in ``dtype_bytes``."""
    if optimizer == "sgd":
        return sum(tensor_sizes) * dtype_bytes
    if optimizer == "adamw":
        return sum(tensor_sizes) * 2 * dtype_bytes + 4 * len(tensor_sizes)  # moments + fp32 step per tensor
    if optimizer == "paged-adamw":
        return sum(tensor_sizes) * 2 * 4  # bitsandbytes' 32-bit moments are fp32; its step is a Python int
    # 8-bit: the two quantization maps, shared by all 8-bit tensors (none when every tensor is small)
    total = 2 * 256 * 4 if any(n >= _BNB_8BIT_MIN_SIZE for n in tensor_sizes) else 0
    for n in tensor_sizes:
        if n >= _BNB_8BIT_MIN_SIZE:
            total += 2 * n + 2 * 4 * math.ceil(n / _BNB_8BIT_BLOCK)
        else:
            total += 2 * 4 * n
    return total


def _shape(model: Any) -> Any:
    from lessonlib.params import model_shape

    s = model_shape(model)
    if s.model_type not in ACTIVATION_MODEL_TYPES:
        raise ValueError(f"the memory estimate models {', '.join(ACTIVATION_MODEL_TYPES)} architectures; "
                         f"got model_type {s.model_type!r}")
    return s


def _full_tensor_sizes(s: Any) -> list[int]:
    sizes = [s.vocab * s.hidden]
    for _ in range(s.layers):
        sizes += [s.hidden, s.hidden]
        for layer in s.linears:
            sizes.append(layer.in_features * layer.out_features)
            if layer.bias:
                sizes.append(layer.out_features)
    sizes.append(s.hidden)
    if not s.tied:
        sizes.append(s.vocab * s.hidden)
    return sizes


def estimate_training_memory(
    model: Any,
    method: str = "lora",
    *,
    batch: int = 1,
    seq: int = 512,
    rank: int = 8,
    targets: str | Iterable[str] | None = "all-linear",
    precision: str | None = None,
    quantization: str = "nf4-dq",
    compute_dtype: str | None = None,
    optimizer: str = "adamw",
    gradient_checkpointing: bool = False,
    padded: bool = False,
    lora_dropout: float = 0.0,
    prepare_kbit: bool = True,
    adapter_dtype: str = "fp32",
    device: str | None = None,
    input_grads: bool | None = None,
    dtype: str | None = None,
    dora: bool = False,
) -> MemoryBreakdown:
    """Estimate the memory of one training step from a model's configuration (nothing is built).

    **The default recipe** is ``amp-bf16`` for every method, because that is what
    ``transformers``' Trainer (and TRL's SFTTrainer) does with ``bf16=True`` to the model each
    method is usually loaded as: full fine-tuning loads the model in fp32, so the weights, their
    gradients and AdamW's two moments are fp32 (4 + 4 + 8 = 16 bytes per parameter) and autocast
    adds a bf16 copy of each linear weight for the forward pass; LoRA loads the frozen base in bf16
    (``dtype=torch.bfloat16``) and ``peft`` keeps the adapters in fp32; QLoRA stores the linear
    layers in 4 bits with bf16 compute, and ``prepare_model_for_kbit_training`` keeps the rest fp32.
    Pass ``precision="fp32"``, ``"bf16"``, ``"fp16"`` (pure: everything in 16 bits, no autocast) or
    ``"amp-fp16"`` for the other recipes (:data:`PRECISIONS`, :func:`recipe`).

    What it counts, and why:

    * **weights**: full fine-tuning trains all of them; LoRA freezes them and trains ``A`` and
      ``B`` (rank ``r``, on ``targets``); QLoRA stores the frozen linear layers in 4 bits (half a
      byte per weight) plus their quantization state (:func:`lessonlib.quantization.tensor_state_bytes`);
    * **autocast copies**: under autocast each linear layer casts its weight to 16 bits; the copy
      of a weight that trains is cached and kept for backward when the layer's input needs a
      gradient (every layer, in full fine-tuning); a frozen weight already in 16 bits is not copied;
    * **gradients**: one per trainable weight, in its dtype;
    * **optimizer state**: see :data:`OPTIMIZERS`;
    * **activations**: for Llama-style models (:data:`ACTIVATION_MODEL_TYPES`) layer by layer, as
      autograd keeps them: a linear layer keeps its input only when its weight (or a LoRA adapter
      on it) trains, in the dtype it computes in (under autocast a 16-bit copy, one per layer even
      when q, k and v share their input); RMSNorm keeps an fp32 copy of its input and 1/rms (and
      its output when its weight trains); attention (SDPA) keeps q, k, v, its output and a
      log-sum-exp; with a mask (a padded batch, or a sliding window no longer than the sequence)
      it also keeps the mask, one per layer, in q's dtype, and k and v repeated for every query
      head; the SwiGLU MLP keeps three intermediate-sized tensors; the loss keeps fp32
      log-probabilities over the vocabulary. ``peft`` casts an adapted layer's input to the
      adapter's dtype: without autocast, an fp32 adapter on a 16-bit base keeps an fp32 copy of
      every adapted layer's input, which is why pure-bf16 LoRA can keep more activations than
      full fine-tuning; under autocast the copy it keeps is 16-bit. QLoRA's 4-bit layers return
      their input's dtype, so after ``prepare_model_for_kbit_training`` (fp32 embeddings) QLoRA's
      hidden states are fp32, autocast or not. LoRA dropout keeps a dropped copy of each adapted
      layer's input and a one-byte mask.
    * **gradient checkpointing** (``use_reentrant=False``, ``transformers``' default): each layer
      keeps only its input, and backward recomputes one layer at a time (the largest layer's
      tensors count once). ``input_grads``: whether the embeddings' output requires a gradient
      although the embeddings are frozen (``enable_input_require_grads``); by default True for
      LoRA with checkpointing (``get_peft_model`` does it when the model checkpoints) and False
      otherwise (``prepare_model_for_kbit_training`` does it only for reentrant checkpointing).
    * **runtime** (``device="cuda"``): :func:`runtime_memory`.

    Checked against :func:`measure_training_step` on a CPU, to the byte (tests/test_memory.py),
    for full fine-tuning, LoRA and QLoRA under fp32, bf16 and amp-bf16 (and amp-fp16, fp16),
    with AdamW, SGD, 8-bit and paged AdamW, gradient checkpointing, padded batches, LoRA dropout
    and a sliding window. Not measured here: the CUDA path (``device="cuda"``) differs from the
    CPU one in peft's 4-bit layers under autocast (it then skips its own casts) and adds the
    runtime; ``benchmarks/gpu_memory.py`` compares it with a GPU's counters.

    Args:
        model: a registry name, a config.json path, a config dict or a transformers config.
        method: ``"full"``, ``"lora"`` or ``"qlora"``.
        batch, seq: sequences per step and tokens per sequence.
        rank, targets: LoRA's rank and target modules (as in :func:`lessonlib.params.count_parameters`).
        precision: one of :data:`PRECISIONS` (None: :data:`DEFAULT_PRECISION`).
        quantization: QLoRA's 4-bit format, ``"nf4"``, ``"nf4-dq"`` or ``"fp4"``.
        compute_dtype: QLoRA's compute dtype (default: the recipe's, see :func:`recipe`).
        optimizer: one of :data:`OPTIMIZERS`.
        gradient_checkpointing: recompute activations in backward instead of keeping them.
        padded: the batch has padding (an attention mask that is not all ones).
        lora_dropout: LoRA's dropout; above 0 it keeps a dropped copy of each input and its mask.
        prepare_kbit: QLoRA only: whether ``prepare_model_for_kbit_training`` up-casts to fp32.
        adapter_dtype: LoRA's A and B (``peft`` default: fp32; ignored under ``fp32``).
        device: ``"cuda"`` (the default: a GPU, runtime included) or ``"cpu"`` (what a CPU step holds).
        input_grads: whether the frozen embeddings' output requires a gradient (see above).
        dora: DoRA (``use_dora=True``, LoRA and QLoRA only): its magnitude vectors (one number per
            output row of each adapted layer) are counted exactly in the trainable weights, gradients and
            optimizer state. **Not** in the activations: DoRA's forward keeps more tensors (the base
            output, the rescaled adapter output, the norms of the merged weight), which this estimate
            leaves out, so for DoRA the activations (and the total) are a lower bound; lesson 09
            measures how much more a DoRA step keeps.
        dtype: older name of ``precision`` (``"fp32"``, ``"bf16"`` or ``"fp16"``: the pure recipes), kept
            for older notebooks: with it and no ``device``, the estimate leaves the CUDA runtime out,
            as it used to.

    Raises:
        ValueError: a non-positive size, an unknown method / precision / optimizer /
            quantization / device, or a bad rank or target (the messages say what is accepted).

    Example:
        >>> full = estimate_training_memory("llama-2-7b", "full", batch=1, seq=512)
        >>> n = 6_738_415_616
        >>> (full.trainable_weights + full.gradients + full.optimizer_state) / n >= 16
        True
        >>> round(full.total_gib), full.fits(80)
        (121, False)
        >>> q = estimate_training_memory("llama-2-7b", "qlora", batch=1, seq=512, rank=16)
        >>> round(q.frozen_weights / GiB, 2), q.fits(12)
        (3.99, True)
        >>> estimate_training_memory("llama-2-7b", "prefix")
        Traceback (most recent call last):
        ...
        ValueError: method must be one of full, lora, qlora, got 'prefix'
    """
    from lessonlib.params import count_parameters, resolve_targets

    one_of("method", method, METHODS)
    if dora and method == "full":
        raise ValueError("dora applies to the methods lora and qlora, not full")
    if dtype is not None:
        if precision is not None:
            raise ValueError("give precision or its older name dtype, not both")
        precision = one_of("dtype", dtype, DTYPES)
        device = "cpu" if device is None else device
    device = "cuda" if device is None else device
    precision = DEFAULT_PRECISION if precision is None else precision
    r = recipe(precision, adapter_dtype=adapter_dtype, compute_dtype=compute_dtype)
    one_of("optimizer", optimizer, OPTIMIZERS)
    one_of("quantization", quantization, QUANTIZATIONS)
    one_of("device", device, DEVICES)
    positive_int("batch", batch)
    positive_int("seq", seq)
    number_in("lora_dropout", lora_dropout, 0, 1)
    s = _shape(model)
    result = MemoryBreakdown(recipe=f"{method}, {precision}, {optimizer}, {device}"
                             + (", gradient checkpointing" if gradient_checkpointing else "")
                             + (", DoRA (its extra activations not counted: a lower bound)" if dora else ""))
    names: tuple[str, ...] = ()
    if method == "full":
        state_bytes = DTYPE_BYTES[r.trainable]
        result.trainable_weights = s.base_params * state_bytes
        tensor_sizes = _full_tensor_sizes(s)
    else:
        count = count_parameters(model, rank=rank, targets=targets, dora=dora)
        names = resolve_targets(model, targets)
        state_bytes = DTYPE_BYTES[r.adapter]
        result.trainable_weights = count.trainable * state_bytes
        tensor_sizes = []
        for layer in (*s.linears, s.head):
            if layer.name in names:
                tensor_sizes += [rank * layer.in_features, layer.out_features * rank] * layer.count
                if dora:
                    tensor_sizes += [layer.out_features] * layer.count
        if method == "lora":
            result.frozen_weights = s.base_params * DTYPE_BYTES[r.base]
        else:
            rest = "fp32" if prepare_kbit else r.base
            # a 4-bit layer's bias is cast to the compute dtype at its first forward pass (bitsandbytes)
            biases = sum(layer.count * layer.out_features for layer in s.linears if layer.bias)
            result.frozen_weights = sum(layer.count * packed_bytes(layer.in_features * layer.out_features)
                                        for layer in s.linears) + biases * DTYPE_BYTES[r.compute]
            result.frozen_weights += (s.base_params - s.linear_weights - biases) * DTYPE_BYTES[rest]
            result.quant_state = sum(layer.count * tensor_state_bytes(layer.in_features * layer.out_features,
                                                                      quantization) for layer in s.linears)
    result.frozen_weights += 2 * (s.head_dim // 2) * 4  # rotary inv_freq buffers (fp32)
    result.gradients = result.trainable_weights
    result.optimizer_state = _optimizer_bytes(optimizer, tensor_sizes, state_bytes)
    if input_grads is None:
        input_grads = method == "lora" and gradient_checkpointing
    plan = _Plan(method, r, names, rank, batch, seq, lora_dropout, prepare_kbit, gradient_checkpointing, padded,
                 device, bool(input_grads))
    result.activations, result.weight_copies = _trace_forward(s, plan)
    if device == "cuda":
        result.runtime_parts = runtime_memory(result, tokens=batch * seq, vocab=s.vocab)
        result.runtime = sum(result.runtime_parts.values())
    return result


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------


def add_model_arguments(parser: Any) -> None:
    """Add the options shared by ``memory`` and ``route``: model, batch, seq, rank, targets, precision,
    optimizer (every value checked as it is parsed)."""
    from lessonlib.params import MODEL_HELP
    from lessonlib.validation import positive_int_arg

    parser.add_argument("--model", default="llama-2-7b", help=MODEL_HELP + "; default llama-2-7b")
    parser.add_argument("--batch", type=positive_int_arg, default=1, help="sequences per step (default 1)")
    parser.add_argument("--seq", type=positive_int_arg, default=512, help="tokens per sequence (default 512)")
    parser.add_argument("--rank", type=positive_int_arg, default=16, help="LoRA rank (default 16)")
    parser.add_argument("--targets", default="all-linear", help="LoRA targets: all-linear or q_proj,v_proj,...")
    parser.add_argument("--precision", default=DEFAULT_PRECISION, choices=list(PRECISIONS),
                        help=f"precision recipe (default {DEFAULT_PRECISION}, what Trainer(bf16=True) does)")
    parser.add_argument("--optimizer", default="adamw", choices=list(OPTIMIZERS), help="default adamw")
    parser.add_argument("--gradient-checkpointing", action="store_true", help="recompute activations in backward")
    parser.add_argument("--padded", action="store_true", help="the batches are padded (attention mask not all ones)")


def main(argv: list[str] | None = None) -> int:
    """``python -m lessonlib memory ...``: the estimate of one training step, as a table or as JSON.

    Every bad value gets one line on stderr and exit status 2.

    Example:
        >>> main(["--model", "smollm2-135m", "--method", "lora", "--seq", "256", "--gpu-gb", "4"])  # doctest: +ELLIPSIS
        smollm2-135m: lora, amp-bf16, adamw, cuda; batch 1 x 256 tokens
        frozen weights          256.6 MiB
        ...
        total ... MiB
        fits in 4 GiB
        0
    """
    from lessonlib.params import CommandLineParser, run_command
    from lessonlib.validation import positive_number_arg

    parser = CommandLineParser(prog="python -m lessonlib memory",
                               description="Estimate the memory of one training step on a GPU (or a CPU).")
    add_model_arguments(parser)
    parser.add_argument("--method", default="lora", choices=list(METHODS), help="default lora")
    parser.add_argument("--quantization", default="nf4-dq", choices=list(QUANTIZATIONS), help="QLoRA's 4-bit format")
    parser.add_argument("--compute-dtype", choices=list(DTYPES), help="QLoRA's compute dtype (default: the recipe's)")
    parser.add_argument("--lora-dropout", type=float, default=0.0, help="LoRA dropout (default 0)")
    parser.add_argument("--device", default="cuda", choices=list(DEVICES),
                        help="cuda (default; adds the CUDA runtime) or cpu (what a CPU step measures)")
    parser.add_argument("--gpu-gb", type=positive_number_arg, help="say whether the total fits in this many GiB")
    parser.add_argument("--json", action="store_true", help="print the breakdown as JSON (bytes), for scripts")

    def command(args: Any) -> int:
        est = estimate_training_memory(
            args.model, args.method, batch=args.batch, seq=args.seq, rank=args.rank, targets=args.targets,
            precision=args.precision, quantization=args.quantization, compute_dtype=args.compute_dtype,
            optimizer=args.optimizer, gradient_checkpointing=args.gradient_checkpointing, padded=args.padded,
            lora_dropout=args.lora_dropout, device=args.device)
        if args.json:
            parts = est.as_dict()
            out = {"model": args.model, "method": args.method, "precision": args.precision, "batch": args.batch,
                   "seq": args.seq, "recipe": parts.pop("recipe"), "bytes": parts}
            if "runtime_parts" in parts:
                out["runtime_parts"] = parts.pop("runtime_parts")
            if args.method != "full":
                out["rank"] = args.rank
            if args.gpu_gb is not None:
                out["gpu_gib"], out["fits"] = args.gpu_gb, est.fits(args.gpu_gb)
            print(json.dumps(out, indent=2))
            return 0
        print(f"{args.model}: {est.recipe}; batch {args.batch} x {args.seq} tokens")
        print(est.table())
        if args.gpu_gb is not None:
            print(f"{'fits' if est.fits(args.gpu_gb) else 'does not fit'} in {args.gpu_gb:g} GiB")
        return 0

    return run_command(parser, argv, command)
