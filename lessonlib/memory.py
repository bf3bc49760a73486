"""Training memory: measured exactly from a real step, and estimated from a model's configuration.

One training step holds six kinds of memory, and both halves of this module report them in the same
:class:`MemoryBreakdown`:

================== ==================================================================================
frozen_weights     weights that do not train (all of them for LoRA; the packed 4-bit bytes for QLoRA)
quant_state        what 4-bit weights need besides their codes: block scales (absmax), the nested
                   scales of double quantization and the code tables
trainable_weights  the weights the optimizer updates (everything in full fine-tuning; A and B in LoRA)
gradients          one gradient per trainable weight
optimizer_state    AdamW: two moments per trainable weight (plus a step counter); SGD with momentum:
                   one; 8-bit AdamW: two bytes per weight plus block scales
activations        what the forward pass keeps for the backward pass
================== ==================================================================================

**Measure** (:func:`measure_training_step`): weights, gradients and optimizer state by tensor-storage
accounting (a storage shared by two tensors, like tied embeddings, counts once); activations with
``torch.autograd.graph.saved_tensors_hooks``: the distinct storages that autograd saves for backward
and that are not weights. On CUDA the step's ``torch.cuda.max_memory_allocated`` is recorded too.

**Estimate** (:func:`estimate_training_memory`): the same fields from the configuration alone, for
full fine-tuning, LoRA and QLoRA, any dtype, optimizer, batch and sequence length, with or without
gradient checkpointing. :func:`estimate_inference_memory` gives weights plus KV cache.

Example:
    >>> from lessonlib.memory import MemoryBreakdown
    >>> m = MemoryBreakdown(frozen_weights=10, trainable_weights=2, gradients=2, optimizer_state=4,
    ...                     activations=7)
    >>> m.total
    25
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from lessonlib.params import DTYPE_BYTES

GB = 1024**3
"""Bytes in a gigabyte as GPU makers' tools report it (GiB)."""

COMPONENTS = ("frozen_weights", "quant_state", "trainable_weights", "gradients", "optimizer_state", "activations")
"""The fields of a :class:`MemoryBreakdown`, in the order they are drawn and printed."""

COMPONENT_LABELS = {
    "frozen_weights": "frozen weights",
    "quant_state": "quantization state",
    "trainable_weights": "trainable weights",
    "gradients": "gradients",
    "optimizer_state": "optimizer state",
    "activations": "activations",
}
"""Readable names of the components, for tables and plot legends."""


@dataclass
class MemoryBreakdown:
    """Bytes held by one training step, by kind (see the module docstring).

    ``peak_allocated`` is ``torch.cuda.max_memory_allocated`` during a measured CUDA step (None
    elsewhere); ``total`` is the sum of the six components.

    Example:
        >>> m = MemoryBreakdown(frozen_weights=3 * GB, activations=GB // 2)
        >>> round(m.total_gb, 2), m.fits(4), m.fits(3)
        (3.5, True, False)
    """

    frozen_weights: int = 0
    quant_state: int = 0
    trainable_weights: int = 0
    gradients: int = 0
    optimizer_state: int = 0
    activations: int = 0
    peak_allocated: int | None = None

    @property
    def total(self) -> int:
        """Sum of the six components, in bytes.

        Example:
            >>> MemoryBreakdown(gradients=5, activations=1).total
            6
        """
        return sum(getattr(self, name) for name in COMPONENTS)

    @property
    def total_gb(self) -> float:
        """:attr:`total` in GiB.

        Example:
            >>> MemoryBreakdown(activations=GB).total_gb
            1.0
        """
        return self.total / GB

    def fits(self, gpu_memory_gb: float) -> bool:
        """Whether :attr:`total` fits in ``gpu_memory_gb`` GiB.

        Example:
            >>> MemoryBreakdown(activations=GB).fits(1.5)
            True
        """
        return self.total <= gpu_memory_gb * GB

    def as_dict(self) -> dict[str, int]:
        """The six components and the total, in bytes.

        Example:
            >>> MemoryBreakdown(gradients=2).as_dict()["total"]
            2
        """
        out = {name: getattr(self, name) for name in COMPONENTS}
        out["total"] = self.total
        return out

    def table(self, unit: int = 1024**2, unit_name: str = "MiB") -> str:
        """A two-column text table of the components (default unit MiB).

        Example:
            >>> print(MemoryBreakdown(frozen_weights=3 * 1024**2).table())  # doctest: +NORMALIZE_WHITESPACE
            frozen weights          3.0 MiB
            quantization state      0.0 MiB
            trainable weights       0.0 MiB
            gradients               0.0 MiB
            optimizer state         0.0 MiB
            activations             0.0 MiB
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


def measure_training_step(
    model: Any,
    batch: Mapping[str, Any],
    optimizer: Any,
    loss_fn: Callable[[Any, Mapping[str, Any]], Any] | None = None,
) -> MemoryBreakdown:
    """Run one training step (forward, backward, optimizer step) and measure what it holds.

    * frozen / trainable weights, gradients, optimizer state: exact, from tensor storages, each
      storage once; 4-bit weights count their packed bytes as frozen weights and their block
      scales and code tables as ``quant_state``;
    * activations: exact, the distinct storages that autograd saved for backward during the
      forward pass (and the loss), weights and quantization state excluded;
    * on CUDA, ``peak_allocated``: ``torch.cuda.max_memory_allocated`` during the step.

    The optimizer state is measured after ``optimizer.step()``, when AdamW has created its moments.
    Gradients are cleared at the end (``zero_grad(set_to_none=True)``), so steps can be repeated.

    Args:
        model: a torch module; the trainable weights are those with ``requires_grad``.
        batch: keyword arguments of the model (``input_ids``, ``attention_mask``, ``labels``).
        optimizer: a torch optimizer over the trainable weights.
        loss_fn: ``loss_fn(model, batch) -> loss``; default ``model(**batch).loss``.

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
        >>> m.activations > 0
        True
    """
    import torch

    if loss_fn is None:
        loss_fn = _default_loss
    params = list(model.parameters())
    trainable = [p for p in params if p.requires_grad]
    if not trainable:
        raise ValueError("the model has no trainable parameters (requires_grad is False everywhere)")
    frozen = [p for p in params if not p.requires_grad] + list(model.buffers())
    qstate = quant_state_tensors(model)
    weight_keys = {_storage_key(t) for t in params + frozen + qstate}

    cuda = any(p.is_cuda for p in params)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()

    optimizer.zero_grad(set_to_none=True)
    saved: dict[tuple[str, int], Any] = {}

    def pack(t: Any) -> Any:
        if t.device.type != "meta":
            key = _storage_key(t)
            if key not in weight_keys and key not in saved:
                saved[key] = t  # keeping a reference keeps the address unique while we count
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = loss_fn(model, batch)
    activations = sum(t.untyped_storage().nbytes() for t in saved.values())
    saved.clear()

    loss.backward()
    gradients = storage_bytes(p.grad for p in trainable)
    optimizer.step()
    peak = None
    if cuda:
        torch.cuda.synchronize()
        peak = int(torch.cuda.max_memory_allocated())
    result = MemoryBreakdown(
        frozen_weights=storage_bytes(frozen),
        quant_state=storage_bytes(qstate),
        trainable_weights=storage_bytes(trainable),
        gradients=gradients,
        optimizer_state=storage_bytes(_optimizer_tensors(optimizer)),
        activations=activations,
        peak_allocated=peak,
    )
    optimizer.zero_grad(set_to_none=True)
    return result


# ----------------------------------------------------------------------------------------------
# Estimate
# ----------------------------------------------------------------------------------------------

METHODS = ("full", "lora", "qlora")
"""Training methods the estimator knows."""

DTYPES = DTYPE_BYTES
"""Weight / activation dtypes and their bytes per number (the same table as lessonlib.params)."""

OPTIMIZERS = ("adamw", "sgd", "adamw8bit")
"""``adamw`` (torch AdamW: two fp moments and a step counter per tensor), ``sgd`` (SGD with
momentum: one buffer) and ``adamw8bit`` (bitsandbytes AdamW8bit: two 8-bit moments with one fp32
scale per 256 values for tensors of at least 4096 values, 32-bit moments below that)."""

QUANTIZATIONS = ("nf4", "nf4-dq")
"""4-bit formats for QLoRA: NF4, and NF4 with double quantization (QLoRA's default)."""

ACTIVATION_MODEL_TYPES = ("llama", "mistral", "qwen2")
"""Architectures whose activations the estimator models (pre-norm RMSNorm, SDPA, SwiGLU MLP)."""

_BNB_8BIT_MIN_SIZE = 4096  # bitsandbytes' min_8bit_size: smaller tensors keep 32-bit state
_BNB_8BIT_BLOCK = 256  # values per absmax of the 8-bit optimizer state
_NESTED_BLOCK = 256  # absmaxes per block of double quantization
_QUANT_BLOCK = 64  # weights per absmax of NF4


@dataclass
class _Shape:
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool
    linears: list[Any] = field(default_factory=list)  # lessonlib.params.LinearLayer, lm_head excluded
    base_params: int = 0
    param_tensors: int = 0


def _shape(model: Any) -> _Shape:
    from lessonlib.params import linear_layers, parameter_groups, resolve_config

    cfg = resolve_config(model)
    if cfg.model_type not in ACTIVATION_MODEL_TYPES:
        raise ValueError(f"the memory estimate models {', '.join(ACTIVATION_MODEL_TYPES)} architectures; "
                         f"got model_type {cfg.model_type!r}")
    layers = linear_layers(cfg)
    heads = cfg.num_attention_heads
    shape = _Shape(
        hidden=cfg.hidden_size, intermediate=cfg.intermediate_size, layers=cfg.num_hidden_layers, heads=heads,
        kv_heads=getattr(cfg, "num_key_value_heads", None) or heads,
        head_dim=getattr(cfg, "head_dim", None) or cfg.hidden_size // heads, vocab=cfg.vocab_size,
        tied=bool(getattr(cfg, "tie_word_embeddings", False)),
        linears=[layer for layer in layers if layer.group != "head"],
        base_params=sum(parameter_groups(cfg).values()),
    )
    # parameter tensors: embeddings, 2 norms per layer and a final one, weights and biases, lm_head if untied
    per_layer = 2 + sum(1 + layer.bias for layer in shape.linears)
    shape.param_tensors = 1 + shape.layers * per_layer + 1 + (0 if shape.tied else 1)
    return shape


def _check_positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def _check_choice(name: str, value: Any, choices: Iterable[str]) -> str:
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; accepted: {', '.join(choices)}")
    return value


def _optimizer_bytes(optimizer: str, tensor_sizes: list[int], dtype_bytes: int) -> int:
    """Bytes of optimizer state for trainable tensors of the given sizes stored in ``dtype_bytes``."""
    if optimizer == "sgd":
        return sum(tensor_sizes) * dtype_bytes
    if optimizer == "adamw":
        return sum(tensor_sizes) * 2 * dtype_bytes + 4 * len(tensor_sizes)  # moments + fp32 step per tensor
    # the two quantization maps, shared by all 8-bit tensors (none when every tensor is small)
    total = 2 * 256 * 4 if any(n >= _BNB_8BIT_MIN_SIZE for n in tensor_sizes) else 0
    for n in tensor_sizes:
        if n >= _BNB_8BIT_MIN_SIZE:
            total += 2 * n + 2 * 4 * math.ceil(n / _BNB_8BIT_BLOCK)
        else:
            total += 2 * 4 * n
    return total


def _nf4_state_bytes(n: int, double_quant: bool) -> int:
    """Quantization state of one 4-bit tensor of ``n`` weights, as bitsandbytes stores it."""
    blocks = math.ceil(n / _QUANT_BLOCK)
    code = 16 * 4
    if not double_quant:
        return blocks * 4 + code
    return blocks + 4 + math.ceil(blocks / _NESTED_BLOCK) * 4 + 256 * 4 + code  # uint8 absmax, offset, nested


def _activation_bytes(s: _Shape, method: str, targets: tuple[str, ...], rank: int, batch: int, seq: int,
                      act: int, adapter: int, checkpointing: bool, lora_dropout: float) -> int:
    """What the forward pass saves for backward (see :func:`estimate_training_memory`)."""
    n = batch * seq
    h, inter = s.hidden, s.intermediate
    q_width, kv_width = s.heads * s.head_dim, s.kv_heads * s.head_dim
    full = method == "full"
    trainable = {layer.name: full for layer in s.linears}
    lora = {layer.name: (not full and layer.name in targets) for layer in s.linears}
    width_in = {layer.name: layer.in_features for layer in s.linears}

    def inputs_saved(names: tuple[str, ...], shared_input_saved: bool) -> int:
        """Inputs the linear layers keep for their weight gradients, and LoRA's A outputs."""
        total = 0
        base_needs = any(trainable[m] for m in names)
        cast = adapter != act  # peft casts the input to the adapter's dtype: one copy per module
        shared = base_needs or any(lora[m] and not cast for m in names)
        if shared and not shared_input_saved:
            total += n * width_in[names[0]] * act
        for m in names:
            if lora[m]:
                if cast:
                    total += n * width_in[m] * adapter
                if lora_dropout > 0:  # dropout's output (new tensor) and its mask
                    total += n * width_in[m] * (adapter + 1)
                total += n * rank * adapter
        return total

    def norm(x_rg: bool) -> int:
        # RMSNorm computes in fp32: it keeps its input (an fp32 copy) and 1/rms per token, and the
        # normalized values when its own weight trains.
        return (n * (4 * h + 4) if x_rg else 0) + (n * h * act if full else 0)

    def layer(x_rg: bool) -> tuple[int, bool]:
        total = norm(x_rg)
        n1 = x_rg or full
        total += inputs_saved(("q_proj", "k_proj", "v_proj"), False)
        attn_rg = n1 or any(lora[m] or trainable[m] for m in ("q_proj", "k_proj", "v_proj"))
        if attn_rg:  # SDPA keeps q, k, v, its output and the log-sum-exp per head and token
            total += n * (2 * q_width + 2 * kv_width) * act + n * s.heads * 4
        total += inputs_saved(("o_proj",), attn_rg)  # o_proj's input is a view of SDPA's output
        x_rg = x_rg or attn_rg or lora["o_proj"] or trainable["o_proj"]
        total += norm(x_rg)
        n2 = x_rg or full
        total += inputs_saved(("gate_proj", "up_proj"), False)
        g_rg = n2 or lora["gate_proj"] or trainable["gate_proj"]
        u_rg = n2 or lora["up_proj"] or trainable["up_proj"]
        total += n * inter * act * ((1 if g_rg else 0) + (1 if u_rg else 0) + (1 if g_rg else 0))
        total += inputs_saved(("down_proj",), False)
        x_rg = x_rg or g_rg or u_rg or lora["down_proj"] or trainable["down_proj"]
        return total, x_rg

    x_rg = full  # the embeddings' output needs a gradient only when the embeddings train
    total = n * 8 if full else 0  # the embedding keeps the token ids
    per_layer = []
    for _ in range(s.layers):
        size, x_rg = layer(x_rg)
        per_layer.append(size)
    total += 2 * seq * s.head_dim * act  # cos and sin of the rotary embedding, shared by all layers
    if checkpointing:
        # each layer keeps only its input; one layer's activations come back during backward
        total += s.layers * n * h * act + max(per_layer)
    else:
        total += sum(per_layer)
    total += norm(x_rg)
    if full:
        total += n * h * act  # lm_head's input (the final norm's output)
    # loss: log-softmax in fp32 over the vocabulary, the shifted labels, the loss itself
    # (one sequence's shifted labels are a view of the padded ones; several are copied out)
    total += n * s.vocab * 4 + (seq + 1 if batch == 1 else n) * 8 + 4
    return total


def estimate_training_memory(
    model: Any,
    method: str = "lora",
    *,
    batch: int = 1,
    seq: int = 512,
    rank: int = 8,
    targets: str | Iterable[str] | None = "all-linear",
    dtype: str = "bf16",
    quantization: str = "nf4-dq",
    optimizer: str = "adamw",
    gradient_checkpointing: bool = False,
    prepare_kbit: bool = True,
    adapter_dtype: str = "fp32",
    lora_dropout: float = 0.0,
    activation_dtype: str | None = None,
) -> MemoryBreakdown:
    """Estimate the memory of one training step from a model's configuration (nothing is built).

    What it counts, and why:

    * **weights**: full fine-tuning trains all of them; LoRA freezes them and trains ``A`` and
      ``B`` (rank ``r``, on ``targets``); QLoRA stores the frozen linear layers in 4 bits (NF4:
      half a byte per weight) plus their quantization state (one fp32 absmax per 64 weights, or
      with double quantization one byte per 64 weights and one fp32 per 64*256), and
      ``prepare_model_for_kbit_training`` (``prepare_kbit=True``) up-casts the rest (embeddings,
      norms, an untied ``lm_head``) to fp32;
    * **adapters** train in ``adapter_dtype`` (``peft`` up-casts bf16/fp16 adapters to fp32);
    * **gradients**: one per trainable weight, in its dtype;
    * **optimizer state**: see :data:`OPTIMIZERS`;
    * **activations**: for Llama-style models (:data:`ACTIVATION_MODEL_TYPES`) layer by layer, as
      PyTorch's autograd keeps them: a linear layer keeps its input only when its weight (or a
      LoRA adapter on it) trains; RMSNorm keeps an fp32 copy of its input and 1/rms; attention
      (SDPA) keeps q, k, v, its output and a log-sum-exp; the SwiGLU MLP keeps three
      intermediate-sized tensors (four when ``down_proj`` trains); the loss keeps fp32
      log-probabilities over the vocabulary. With ``gradient_checkpointing`` each layer keeps
      only its input, and one layer is recomputed at a time. QLoRA after
      ``prepare_model_for_kbit_training`` computes its activations in fp32, because the
      up-cast embeddings produce fp32 hidden states.

    Checked against :func:`measure_training_step` on CPU (fp32) for full fine-tuning, LoRA and
    QLoRA, AdamW, SGD and 8-bit AdamW, with and without LoRA dropout. Not yet checked against a
    measurement: bf16/fp16 runs on CUDA and gradient checkpointing (computed from the libraries'
    rules: which tensors are cast or recomputed).

    Args:
        model: a registry name of :mod:`lessonlib.params`, a config dict or a transformers config.
        method: ``"full"``, ``"lora"`` or ``"qlora"``.
        batch, seq: sequences per step and tokens per sequence.
        rank, targets: LoRA's rank and target modules (as in :func:`lessonlib.params.count_parameters`).
        dtype: dtype of the (unquantized) weights and activations: ``fp32``, ``bf16`` or ``fp16``.
        quantization: QLoRA's 4-bit format, ``"nf4"`` or ``"nf4-dq"``.
        optimizer: ``"adamw"``, ``"sgd"`` or ``"adamw8bit"``.
        gradient_checkpointing: recompute activations in backward instead of keeping them.
        prepare_kbit: QLoRA only: whether ``prepare_model_for_kbit_training`` up-casts to fp32.
        adapter_dtype: dtype of LoRA's A and B (``peft`` default: fp32).
        lora_dropout: LoRA's dropout; above 0 it keeps a dropped copy of each input and its mask.
        activation_dtype: override the activations' dtype (None: what a plain training loop
            gives; ``"bf16"`` for QLoRA under ``torch.autocast``, as the Trainer's ``bf16=True`` runs it).

    Raises:
        ValueError: a non-positive size, an unknown method / dtype / optimizer / quantization, or
            a bad rank or target (the messages say what is accepted).

    Example:
        >>> m = estimate_training_memory("llama-2-7b", "qlora", batch=1, seq=512, rank=16)
        >>> round(m.frozen_weights / GB, 2), round(m.trainable_weights / 2**20), m.fits(12)
        (3.99, 152, True)
        >>> full = estimate_training_memory("llama-2-7b", "full", batch=1, seq=512)
        >>> round(full.total_gb), full.fits(80)
        (53, True)
        >>> estimate_training_memory("llama-2-7b", "prefix")
        Traceback (most recent call last):
        ...
        ValueError: unknown method 'prefix'; accepted: full, lora, qlora
    """
    from lessonlib.params import count_parameters, resolve_targets

    _check_choice("method", method, METHODS)
    _check_choice("dtype", dtype, DTYPES)
    _check_choice("adapter_dtype", adapter_dtype, DTYPES)
    _check_choice("optimizer", optimizer, OPTIMIZERS)
    _check_choice("quantization", quantization, QUANTIZATIONS)
    _check_positive_int("batch", batch)
    _check_positive_int("seq", seq)
    if not 0 <= lora_dropout < 1:
        raise ValueError(f"lora_dropout must be in [0, 1), got {lora_dropout!r}")
    s = _shape(model)
    wbytes = DTYPES[dtype]
    result = MemoryBreakdown()
    if method == "full":
        result.trainable_weights = s.base_params * wbytes
        tensor_sizes = _full_tensor_sizes(s)
        names: tuple[str, ...] = ()
        act = wbytes
        adapter = wbytes
    else:
        count = count_parameters(model, rank=rank, targets=targets)
        names = resolve_targets(model, targets)
        adapter = 4 if wbytes == 4 else DTYPES[adapter_dtype]
        result.trainable_weights = count.trainable * adapter
        tensor_sizes = []
        for layer in s.linears:
            if layer.name in names:
                tensor_sizes += [rank * layer.in_features, layer.out_features * rank] * layer.count
        act = wbytes
        if method == "lora":
            result.frozen_weights = s.base_params * wbytes
        else:
            double = quantization == "nf4-dq"
            rest_bytes = 4 if prepare_kbit else wbytes
            quantized = sum(layer.count * layer.in_features * layer.out_features for layer in s.linears)
            result.frozen_weights = sum(layer.count * math.ceil(layer.in_features * layer.out_features / 2)
                                        for layer in s.linears)
            result.frozen_weights += (s.base_params - quantized) * rest_bytes  # biases stay unquantized
            result.quant_state = sum(layer.count * _nf4_state_bytes(layer.in_features * layer.out_features, double)
                                     for layer in s.linears)
            if prepare_kbit:
                act = 4
    if activation_dtype is not None:
        act = DTYPES[_check_choice("activation_dtype", activation_dtype, DTYPES)]
    result.frozen_weights += 2 * (s.head_dim // 2) * 4  # rotary inv_freq buffers (fp32)
    result.gradients = result.trainable_weights
    result.optimizer_state = _optimizer_bytes(optimizer, tensor_sizes, adapter)
    result.activations = _activation_bytes(s, method, names, rank, batch, seq, act, adapter,
                                           gradient_checkpointing, lora_dropout)
    return result


def _full_tensor_sizes(s: _Shape) -> list[int]:
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


@dataclass
class InferenceMemory:
    """Bytes to run a model for generation: weights (and 4-bit state) plus the KV cache.

    Example:
        >>> InferenceMemory(weights=10, quant_state=1, kv_cache=5).total
        16
    """

    weights: int = 0
    quant_state: int = 0
    kv_cache: int = 0

    @property
    def total(self) -> int:
        """weights + quant_state + kv_cache."""
        return self.weights + self.quant_state + self.kv_cache


def estimate_inference_memory(model: Any, *, batch: int = 1, seq: int = 2048, dtype: str = "bf16",
                              quantization: str = "none") -> InferenceMemory:
    """Estimate inference memory: the weights (4-bit or not) and the KV cache of ``batch x seq`` tokens.

    The KV cache keeps, per layer and token, a key and a value for every key/value head:
    ``2 * layers * batch * seq * kv_heads * head_dim`` numbers in ``dtype``. Activations of one
    forward pass without gradients are short-lived and small next to these, and left out.

    Example:
        >>> m = estimate_inference_memory("llama-2-7b", batch=1, seq=4096)
        >>> round(m.weights / GB, 1), round(m.kv_cache / GB, 1)
        (12.6, 2.0)
        >>> round(estimate_inference_memory("llama-2-7b", quantization="nf4").weights / GB, 1)
        3.5
    """
    _check_choice("dtype", dtype, DTYPES)
    _check_choice("quantization", quantization, ("none", *QUANTIZATIONS))
    _check_positive_int("batch", batch)
    _check_positive_int("seq", seq)
    s = _shape(model)
    wbytes = DTYPES[dtype]
    result = InferenceMemory()
    if quantization == "none":
        result.weights = s.base_params * wbytes
    else:
        quantized = sum(layer.count * layer.in_features * layer.out_features for layer in s.linears)
        result.weights = sum(layer.count * math.ceil(layer.in_features * layer.out_features / 2)
                             for layer in s.linears) + (s.base_params - quantized) * wbytes
        result.quant_state = sum(layer.count * _nf4_state_bytes(layer.in_features * layer.out_features,
                                                                quantization == "nf4-dq") for layer in s.linears)
    result.kv_cache = 2 * s.layers * batch * seq * s.kv_heads * s.head_dim * wbytes
    return result


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------


def add_model_arguments(parser: Any) -> None:
    """Add --model, --batch, --seq, --rank, --targets, --dtype, --optimizer to an argparse parser."""
    parser.add_argument("--model", default="llama-2-7b", help="registry name (see `python -m lessonlib params --list`)")
    parser.add_argument("--batch", type=int, default=1, help="sequences per step (default 1)")
    parser.add_argument("--seq", type=int, default=512, help="tokens per sequence (default 512)")
    parser.add_argument("--rank", type=int, default=16, help="LoRA rank (default 16)")
    parser.add_argument("--targets", default="all-linear", help="LoRA targets: all-linear or q_proj,v_proj,...")
    parser.add_argument("--dtype", default="bf16", choices=list(DTYPES), help="weights and activations (default bf16)")
    parser.add_argument("--optimizer", default="adamw", choices=list(OPTIMIZERS), help="default adamw")


def main(argv: list[str] | None = None) -> int:
    """``python -m lessonlib memory ...``: the estimate of one training step as a table.

    Example:
        >>> main(["--model", "smollm2-135m", "--method", "lora", "--seq", "256", "--gpu-gb", "4"])  # doctest: +ELLIPSIS
        smollm2-135m, lora, batch 1 x 256 tokens, bf16, adamw
        frozen weights          256.6 MiB
        ...
        total                   ... MiB
        fits in 4 GB
        0
    """
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m lessonlib memory",
                                     description="Estimate the memory of one training step (and of inference).")
    add_model_arguments(parser)
    parser.add_argument("--method", default="lora", choices=list(METHODS), help="default lora")
    parser.add_argument("--quantization", default="nf4-dq", choices=list(QUANTIZATIONS), help="QLoRA's format")
    parser.add_argument("--gradient-checkpointing", action="store_true", help="recompute activations in backward")
    parser.add_argument("--gpu-gb", type=float, help="say whether the total fits in this many GB")
    args = parser.parse_args(argv)
    try:
        est = estimate_training_memory(args.model, args.method, batch=args.batch, seq=args.seq, rank=args.rank,
                                       targets=args.targets, dtype=args.dtype, quantization=args.quantization,
                                       optimizer=args.optimizer, gradient_checkpointing=args.gradient_checkpointing)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{args.model}, {args.method}, batch {args.batch} x {args.seq} tokens, {args.dtype}, {args.optimizer}"
          + (", gradient checkpointing" if args.gradient_checkpointing else ""))
    print(est.table())
    if args.gpu_gb is not None:
        print(f"{'fits' if est.fits(args.gpu_gb) else 'does not fit'} in {args.gpu_gb:g} GB")
    return 0

