"""LoRA's variants: DoRA, PiSSA, OLoRA, LoftQ and LoRA+, written out, and a model built with each.

Lesson 09 writes each variant's core in its own cells and checks it against ``peft``; the fine-tunes
of ``benchmarks/lora_variants.py`` (through :mod:`lessonlib.sweep`) build their models here:

- ``"lora"``: plain LoRA (A Kaiming-uniform, B zero);
- ``"dora"``: ``use_dora=True``: the weight is split into a magnitude (one trainable number per
  output row) and a direction, ``W' = m * (W + s B A) / ||W + s B A||`` (row norms);
- ``"pissa"``: A and B from the ``r`` principal singular vectors of W, the residual left in the base;
- ``"olora"``: A and B from the first ``r`` columns of W's QR decomposition, the residual in the base;
- ``"lora+"``: plain LoRA whose B trains at ``LORAPLUS_RATIO`` times A's learning rate;
- ``"qlora"``: plain LoRA on a base whose targeted weights are replaced by their NF4 round trip
  (``dequant(Q(W))``: what a 4-bit layer computes with, held in fp32);
- ``"pissa-4bit"``: PiSSA, then the *residual* is quantized (``dequant(Q(W_res))``);
- ``"loftq"``: LoftQ's alternation (quantize, fit the rest with rank r, repeat), base ``dequant(Q(W_res))``.

The three 4-bit variants simulate a 4-bit base in fp32 ("fake quantization"): a bitsandbytes
``Linear4bit`` with fp32 compute multiplies by the same dequantized weight (lesson 09 checks it).

Example:
    >>> VARIANTS
    ('lora', 'dora', 'pissa', 'olora', 'lora+', 'qlora', 'pissa-4bit', 'loftq')
    >>> check_variant("loha")
    Traceback (most recent call last):
    ...
    ValueError: variant must be one of lora, dora, pissa, olora, lora+, qlora, pissa-4bit, loftq, got 'loha'
"""

from __future__ import annotations

from typing import Any

from lessonlib.validation import one_of, positive_int, positive_number

VARIANTS = ("lora", "dora", "pissa", "olora", "lora+", "qlora", "pissa-4bit", "loftq")
"""The variants :func:`apply` builds (see the module docstring)."""

FOUR_BIT = ("qlora", "pissa-4bit", "loftq")
"""The variants whose base is the NF4 round trip of the weights."""

LORAPLUS_RATIO = 16.0
"""LoRA+'s ratio of B's learning rate to A's (the paper's suggestion, 2**4)."""

LOFTQ_ITERS = 5
"""LoftQ's alternating steps (peft's ``LoftQConfig`` default is 1; the paper uses 1 to 5)."""


def check_variant(variant: str) -> str:
    """Return ``variant`` if it is one of :data:`VARIANTS`, else raise a ``ValueError`` that lists them.

    Example:
        >>> check_variant("dora")
        'dora'
    """
    return one_of("variant", variant, VARIANTS)


def nf4_roundtrip(weight: Any, double_quant: bool = True) -> Any:
    """``dequant(Q(weight))``: the weight a bitsandbytes NF4 layer computes with, in ``weight``'s dtype.

    Blocks of 64, as the course's QLoRA (``double_quant``: the block scales quantized too, ``nf4-dq``).

    Example:
        >>> import torch
        >>> w = torch.randn(8, 64, generator=torch.Generator().manual_seed(0))
        >>> err = (w - nf4_roundtrip(w)).norm() / w.norm()
        >>> 0.05 < float(err) < 0.15
        True
    """
    import bitsandbytes.functional as bf

    packed, state = bf.quantize_4bit(weight.detach().float().contiguous(), blocksize=64, quant_type="nf4",
                                     compress_statistics=double_quant)
    return bf.dequantize_4bit(packed, state).to(weight.dtype)


def pissa_factors(weight: Any, r: int, scaling: float) -> tuple[Any, Any, Any]:
    """PiSSA: ``(A, B, W_res)`` with ``scaling * B @ A`` the best rank-``r`` part of ``weight``.

    ``W = U S Vᵀ``; ``B = U_r √(S_r/scaling)``, ``A = √(S_r/scaling) V_rᵀ``; ``W_res = W - scaling B A``.

    Example:
        >>> import torch
        >>> w = torch.randn(6, 5, generator=torch.Generator().manual_seed(0))
        >>> A, B, res = pissa_factors(w, 2, 2.0)
        >>> A.shape, B.shape, bool(torch.allclose(res + 2.0 * B @ A, w, atol=1e-5))
        (torch.Size([2, 5]), torch.Size([6, 2]), True)
    """
    import torch

    positive_int("r", r)
    positive_number("scaling", scaling)
    U, S, Vh = torch.linalg.svd(weight.float(), full_matrices=False)
    root = torch.sqrt(S[:r] / scaling)
    B = U[:, :r] * root
    A = root[:, None] * Vh[:r]
    return A, B, weight.float() - scaling * B @ A


def loftq_factors(weight: Any, r: int, scaling: float, iters: int = LOFTQ_ITERS,
                  double_quant: bool = False) -> tuple[Any, Any, Any]:
    """LoftQ: ``(A, B, Q)`` where ``Q = dequant(Q(W - scaling B A))`` and ``scaling B A`` fits ``W - Q``.

    Alternate ``iters`` times: quantize what the adapter does not hold, then fit the quantization's
    error with the best rank-``r`` matrix (SVD). peft's ``loftq_init`` does the same steps (NF4 with
    one fp32 scale per block, ``double_quant=False``) and returns ``B A`` unscaled; here ``A`` and
    ``B`` are divided by ``√scaling`` so that the layer's ``scaling * B @ A`` is the fit.

    Example:
        >>> import torch
        >>> w = torch.randn(64, 64, generator=torch.Generator().manual_seed(0))
        >>> A, B, q = loftq_factors(w, 8, 2.0)
        >>> bool((w - q - 2.0 * B @ A).norm() < (w - nf4_roundtrip(w, False)).norm())
        True
    """
    import torch

    positive_int("r", r)
    positive_int("iters", iters)
    positive_number("scaling", scaling)
    w = weight.float()
    low_rank = torch.zeros_like(w)
    for _ in range(iters):
        q = nf4_roundtrip(w - low_rank, double_quant)
        U, S, Vh = torch.linalg.svd(w - q, full_matrices=False)
        B = U[:, :r] * torch.sqrt(S[:r] / scaling)
        A = torch.sqrt(S[:r] / scaling)[:, None] * Vh[:r]
        low_rank = scaling * B @ A
    return A, B, q


def dora_forward(x: Any, weight: Any, A: Any, B: Any, magnitude: Any, scaling: float) -> Any:
    """DoRA's linear layer: ``m * (W + s B A) x / ||W + s B A||`` (norm of each output row).

    As in the paper and peft, the norm is treated as a constant in backward (detached), so the
    gradient flows through ``m``, ``A`` and ``B`` but not through the norm.

    Example:
        >>> import torch
        >>> w = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
        >>> A, B, x = torch.zeros(2, 3), torch.zeros(4, 2), torch.randn(5, 3)
        >>> m = w.norm(dim=1)                        # DoRA's initial magnitude: the rows' norms
        >>> bool(torch.allclose(dora_forward(x, w, A, B, m, 2.0), x @ w.T))
        True
    """
    merged = weight + scaling * B @ A
    norm = merged.norm(dim=1).detach()
    return (x @ merged.T) * (magnitude / norm)


def lora_config(variant: str, r: int = 8, alpha: float = 16.0, targets: Any = "all-linear",
                use_rslora: bool = False, task_type: str | None = "CAUSAL_LM") -> Any:
    """The peft ``LoraConfig`` of a variant (LoftQ: plain; :func:`apply` sets its factors).

    ``task_type``: peft's (None for a model that is not a language model, e.g. a small test network).

    Example:
        >>> lora_config("dora").use_dora, lora_config("pissa").init_lora_weights
        (True, 'pissa')
    """
    from peft import LoraConfig

    check_variant(variant)
    init: Any = {"pissa": "pissa", "pissa-4bit": "pissa", "olora": "olora"}.get(variant, True)
    return LoraConfig(r=r, lora_alpha=alpha, use_rslora=use_rslora, target_modules=targets, lora_dropout=0.0,
                      use_dora=variant == "dora", init_lora_weights=init, task_type=task_type)


def lora_layers(model: Any) -> list[tuple[str, Any]]:
    """The ``(name, module)`` pairs of a peft model's LoRA linear layers.

    Example:
        >>> lora_layers(__import__("torch").nn.Linear(2, 2))
        []
    """
    from peft.tuners.lora import LoraLayer

    return [(n, m) for n, m in model.named_modules() if isinstance(m, LoraLayer)]


def apply(model: Any, variant: str, r: int = 8, alpha: float = 16.0, targets: Any = "all-linear",
          use_rslora: bool = False, task_type: str | None = "CAUSAL_LM") -> Any:
    """Wrap ``model`` (modified in place) in peft's LoRA with ``variant``'s initialisation.

    The 4-bit variants replace each targeted base weight by its NF4 round trip: of W (``qlora``),
    of PiSSA's residual (``pissa-4bit``) or LoftQ's (``loftq``, A and B from :func:`loftq_factors`).

    Example:
        >>> apply(None, "vera")
        Traceback (most recent call last):
        ...
        ValueError: variant must be one of lora, dora, pissa, olora, lora+, qlora, pissa-4bit, loftq, got 'vera'
    """
    import torch
    from peft import get_peft_model

    check_variant(variant)
    positive_int("r", r)
    peft_model = get_peft_model(model, lora_config(variant, r, alpha, targets, use_rslora, task_type))
    if variant not in FOUR_BIT:
        return peft_model
    with torch.no_grad():
        for _, layer in lora_layers(peft_model):
            base = layer.get_base_layer()
            if variant == "loftq":
                A, B, q = loftq_factors(base.weight, r, layer.scaling["default"])
                layer.lora_A["default"].weight.copy_(A)
                layer.lora_B["default"].weight.copy_(B)
                base.weight.copy_(q)
            else:
                base.weight.copy_(nf4_roundtrip(base.weight))
    return peft_model


def optimizer_groups(model: Any, lr: float, variant: str = "lora", ratio: float = LORAPLUS_RATIO) -> list[dict]:
    """AdamW parameter groups: one at ``lr``; for ``lora+`` B (and 1-D tensors) at ``ratio * lr``.

    The same split as peft's ``create_loraplus_optimizer`` (lesson 09 compares them).

    Example:
        >>> import torch
        >>> m = torch.nn.Linear(2, 2)
        >>> [len(g["params"]) for g in optimizer_groups(m, 1e-3)]
        [2]
    """
    check_variant(variant)
    positive_number("lr", lr)
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if variant != "lora+":
        return [{"params": [p for _, p in trainable], "lr": lr}]
    positive_number("ratio", ratio)
    fast = [p for n, p in trainable if "lora_B" in n or p.ndim == 1]
    slow = [p for n, p in trainable if not ("lora_B" in n or p.ndim == 1)]
    return [{"params": slow, "lr": lr}, {"params": fast, "lr": lr * ratio}]
