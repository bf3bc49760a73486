"""Compare a lesson's own result with a library's, on the device the notebook runs on.

The lessons check their from-scratch code against the real libraries, bit for bit where the
arithmetic allows. Run the library where the notebook runs (``env.device`` of the set-up cell, or
:func:`lessonlib.models.resolve_device`), bring its result to the CPU, and assert what holds on that
device. On a CPU, ``bitsandbytes``' 4-bit quantizer is lesson 04's formula and every code agrees. On a
GPU the same call runs ``bitsandbytes``' CUDA kernels, which are compiled with ``--use_fast_math``:
``1 / absmax`` is then an approximate reciprocal (within one unit in the last place, ulp), so a value
that lies within a few ulp of a midpoint between two codes can get the neighbouring code; and
``torch`` sums a tensor on CUDA in another order than on a CPU. Maxima, and a code value times its
scale, are exact on every device.

- :func:`tolerance` says, for one kind of operation (:data:`KERNELS`) on one device (:data:`DEVICES`),
  how far the library's result may stray from exact arithmetic, and why (a :class:`Tolerance`);
- :func:`compare_codes` compares our choice of codes with the library's under such a tolerance: each
  differing code must be one that the nearest-code rule gives for a value within the tolerance of
  ours, and differing codes must be rare;
- :func:`compare_nf4_codes` does that for packed NF4 bytes (``bitsandbytes.functional.quantize_4bit``);
- :func:`blockwise_scaled` gives the values a blockwise quantizer rounds (``x * (1 / absmax)``);
- :func:`values_agree` compares two float tensors under a tolerance (``torch.equal`` when exact).

Example:
    >>> import torch
    >>> table = torch.tensor([-1.0, 0.0, 1.0])                    # midpoints -0.5 and 0.5
    >>> scaled = torch.tensor([0.5 + 2**-24, 0.9])                # the first lies 1 ulp above a midpoint
    >>> ours, theirs = torch.tensor([2, 2]), torch.tensor([1, 2])  # the library took the lower code there
    >>> compare_codes(ours, theirs, scaled, table, tolerance("nf4", "cpu")).holds
    False
    >>> compare_codes(ours, theirs, scaled, table, tolerance("nf4", "cuda")).holds
    True
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from lessonlib.validation import one_of, positive_int

KERNELS = ("nf4", "dynamic8", "mean")
"""The operations :func:`tolerance` knows: ``nf4`` (which NF4 code ``bitsandbytes.functional.quantize_4bit``
gives each value), ``dynamic8`` (which 8-bit code ``quantize_blockwise`` gives each value with the signed
dynamic map, as double quantization uses it) and ``mean`` (``torch``'s mean of a float32 tensor, double
quantization's offset)."""

DEVICES = ("cpu", "cuda")
"""The devices :func:`tolerance` knows (those :func:`lessonlib.models.resolve_device` returns)."""

ULP_OF_ONE = 2.0**-23
"""The gap between 1.0 and the next float32. A float32 ``v`` has an ulp of at most ``ULP_OF_ONE * |v|``."""

LUT_BINS = 65_536
"""Bins of ``bitsandbytes``' CPU lookup table for 8-bit codes (0.50): evenly spaced over -1 … 1."""


@dataclass(frozen=True)
class Tolerance:
    """How far a library's result may stray from exact arithmetic on one device.

    A value ``v`` may be taken as any value within ``atol + rtol * |v|`` of it; at most
    ``max_share`` of the codes may differ (at least one, when ``max_share`` is above 0).

    Example:
        >>> Tolerance().exact, Tolerance(rtol=1e-6).exact
        (True, False)
    """

    rtol: float = 0.0
    atol: float = 0.0
    max_share: float = 0.0
    reason: str = ""

    @property
    def exact(self) -> bool:
        """True when nothing may differ."""
        return self.rtol == 0 and self.atol == 0 and self.max_share == 0

    def allowed(self, total: int) -> int:
        """How many of ``total`` codes may differ.

        Example:
            >>> rare = Tolerance(max_share=1e-3)
            >>> rare.allowed(13_824), rare.allowed(64), Tolerance().allowed(64)
            (13, 1, 0)
        """
        if self.max_share <= 0:
            return 0
        return max(1, math.floor(self.max_share * total))


_TOLERANCES = {
    ("nf4", "cpu"): Tolerance(reason=(
        "bitsandbytes' CPU path is lesson 04's formula: x * (1 / absmax), then the nearest of the 16 codes "
        "by their float32 midpoints, ties to the lower one (in a partial last block it divides by the absmax, "
        "which can differ from x * (1 / absmax) in the last bit)")),
    ("nf4", "cuda"): Tolerance(rtol=4 * ULP_OF_ONE, max_share=1e-4, reason=(
        "the CUDA kernel is compiled with --use_fast_math, so 1 / absmax is an approximate reciprocal "
        "(CUDA documents 1 ulp for 1/x without -prec-div=true, 2 for x/y) and x * (1 / absmax) can differ "
        "from ours by up to about 3.5 ulp; its thresholds "
        "are the float32 midpoints, ties to the lower code, so only a value that close to a midpoint can "
        "get the neighbouring code")),
    ("dynamic8", "cpu"): Tolerance(atol=1.6e-5, max_share=1e-2, reason=(
        "the CPU kernel maps x * (1 / absmax) to one of 65,536 evenly spaced bins of -1 ... 1 and takes "
        "the code nearest to the bin's centre: a value within half a bin (1 / 65,535) of a midpoint can get "
        "the neighbouring code (near 0, where the codes are closer together than the bins, one a few "
        "codes away)")),
    ("dynamic8", "cuda"): Tolerance(rtol=4 * ULP_OF_ONE, max_share=1e-3, reason=(
        "the CUDA kernel finds the nearest code exactly (a binary search, then the midpoints), but 1 / absmax "
        "is an approximate reciprocal (--use_fast_math): a value within a few ulp of a midpoint can get "
        "the neighbouring code")),
    ("mean", "cpu"): Tolerance(reason="the same torch reduction of the same tensor on the same device"),
    ("mean", "cuda"): Tolerance(rtol=1e-5, reason=(
        "torch sums on CUDA in another order than on a CPU; for the lessons' tensors (up to about 10^5 "
        "positive float32 values) each sum is within a few 1e-6 of the exact one")),
}


def tolerance(kernel: str, device: str) -> Tolerance:
    """Return what a library's ``kernel`` (one of :data:`KERNELS`) may do differently on ``device``.

    Raises:
        ValueError: an unknown kernel or device (the message lists the accepted ones).

    Example:
        >>> tolerance("nf4", "cpu").exact
        True
        >>> tolerance("nf4", "cuda").rtol == 4 * ULP_OF_ONE
        True
        >>> tolerance("nf4", "mps")
        Traceback (most recent call last):
        ...
        ValueError: device must be one of cpu, cuda, got 'mps'
    """
    return _TOLERANCES[one_of("kernel", kernel, KERNELS), one_of("device", device, DEVICES)]


@dataclass(frozen=True)
class CodeComparison:
    """Our codes next to a library's, for the same values (see :func:`compare_codes`).

    ``explained``: every differing code is one that the nearest-code rule gives for a value within
    the tolerance of ours. ``neighbours``: every differing code is next to ours in the table.
    ``ours_nearer``: at every difference, our code is at least as near to the value as the library's.
    ``holds``: explained, and no more codes differ than the tolerance allows.

    Example:
        >>> c = CodeComparison(total=100, differing=1, allowed=1, explained=True, neighbours=True, ours_nearer=True)
        >>> c.holds, c.identical, str(c)
        (True, 99, '99 of 100 identical; 1 differs: the neighbouring code, ours the nearer')
    """

    total: int
    differing: int
    allowed: int
    explained: bool
    neighbours: bool
    ours_nearer: bool

    @property
    def identical(self) -> int:
        """How many codes are the same."""
        return self.total - self.differing

    @property
    def holds(self) -> bool:
        """Every difference is explained by the tolerance, and there are no more than it allows."""
        return self.explained and self.differing <= self.allowed

    def __str__(self) -> str:
        text = f"{self.identical:,} of {self.total:,} identical"
        if not self.differing:
            return text
        how = ("the neighbouring code" if self.neighbours else "not all the neighbouring code") + (
            ", ours the nearer" if self.ours_nearer else ", ours not always the nearer")
        return f"{text}; {self.differing:,} {'differs' if self.differing == 1 else 'differ'}: {how}"


def _flat_cpu(t: Any, name: str) -> Any:
    import torch

    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch tensor, got {type(t).__name__}")
    return t.detach().reshape(-1).cpu()


def compare_codes(ours: Any, theirs: Any, scaled: Any, code: Any, tol: Tolerance) -> CodeComparison:
    """Compare our code indices with a library's for the same scaled values, under ``tol``.

    Args:
        ours, theirs: code indices (any integer dtype, any device, any shape; compared flattened).
        scaled: the values that were rounded to a code, in the code table's units (float32).
        code: the sorted code table (e.g. NF4's 16 values, the 256 of the dynamic map).
        tol: what the library may do differently (:func:`tolerance`).

    Raises:
        ValueError: sizes that do not match, a code table that is not sorted, indices outside it.

    Example:
        >>> import torch
        >>> table = torch.tensor([-1.0, 0.0, 1.0])
        >>> on_gpu = tolerance("nf4", "cuda")
        >>> far = compare_codes(torch.tensor([2]), torch.tensor([1]), torch.tensor([0.9]), table, on_gpu)
        >>> far.differing, far.explained, far.holds     # 0.9 is far from the midpoint 0.5: a real error
        (1, False, False)
    """
    import torch

    ours, theirs = _flat_cpu(ours, "ours").long(), _flat_cpu(theirs, "theirs").long()
    scaled, code = _flat_cpu(scaled, "scaled").float(), _flat_cpu(code, "code").float()
    if not ours.numel() == theirs.numel() == scaled.numel():
        raise ValueError(f"ours, theirs and scaled must hold as many values, got {ours.numel()}, {theirs.numel()} "
                         f"and {scaled.numel()}")
    if code.numel() < 2 or not bool((code[1:] > code[:-1]).all()):
        raise ValueError("code must be a table of at least 2 values in increasing order")
    for name, idx in (("ours", ours), ("theirs", theirs)):
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= code.numel()):
            raise ValueError(f"{name} holds indices outside the code table (0 … {code.numel() - 1})")
    midpoints = (code[:-1] + code[1:]) / 2
    differ = ours != theirs
    o, t, s = ours[differ], theirs[differ], scaled[differ]
    width = tol.atol + tol.rtol * s.abs()
    lowest, highest = torch.bucketize(s - width, midpoints), torch.bucketize(s + width, midpoints)
    return CodeComparison(
        total=ours.numel(),
        differing=int(differ.sum()),
        allowed=tol.allowed(ours.numel()),
        explained=bool(((lowest <= t) & (t <= highest)).all()),
        neighbours=bool(((o - t).abs() == 1).all()),
        ours_nearer=bool(((s - code[o]).abs() <= (s - code[t]).abs()).all()),
    )


def blockwise_scaled(x: Any, blocksize: int) -> Any:
    """Return ``x * (1 / absmax of its block)``, clamped to -1 … 1: the values a blockwise quantizer rounds.

    ``x`` is flattened row-major and cut into blocks of ``blocksize`` (the last may be shorter); an
    all-zero block is scaled by ``1 / 1e-38`` (it stays zero). Returned flat, float32, on the CPU.

    Example:
        >>> import torch
        >>> blockwise_scaled(torch.tensor([1.0, -2.0, 0.5, 4.0]), 2).tolist()
        [0.5, -1.0, 0.125, 1.0]
    """
    import torch

    positive_int("blocksize", blocksize)
    flat = _flat_cpu(x, "x").float()
    n = flat.numel()
    blocks = math.ceil(n / blocksize)
    padded = torch.zeros(blocks * blocksize)
    padded[:n] = flat
    absmax = padded.reshape(blocks, blocksize).abs().max(dim=1).values
    inverse = 1.0 / absmax.clamp(min=1e-38)
    return (padded.reshape(blocks, blocksize) * inverse[:, None]).clamp(-1, 1).reshape(-1)[:n]


def _unpack_nibbles(packed: Any) -> Any:
    import torch

    packed = _flat_cpu(packed, "packed")
    if packed.dtype != torch.uint8:
        raise ValueError(f"packed NF4 codes must be uint8 bytes, got {packed.dtype}")
    return torch.stack([packed >> 4, packed & 0xF], dim=1).reshape(-1)


def compare_nf4_codes(ours_packed: Any, lib_packed: Any, x: Any, blocksize: int = 64,
                      device: str = "cpu") -> CodeComparison:
    """Compare our packed NF4 bytes of ``x`` with ``bitsandbytes``' (from ``quantize_4bit`` on ``device``).

    Both are unpacked (two codes per byte, the first in the high nibble, the padding nibble of an odd
    count included, which codes 0.0) and compared under ``tolerance("nf4", device)``, with the values
    scaled by :func:`blockwise_scaled`. On a CPU no code may differ; on a GPU a rare code just at a
    midpoint may be the neighbour.

    Raises:
        ValueError: byte counts that do not match ``x`` (``ceil(n / 2)`` bytes for ``n`` values).

    Example:
        >>> import torch, bitsandbytes.functional as bnbf
        >>> x = torch.randn(100, generator=torch.Generator().manual_seed(0))
        >>> lib_packed, _ = bnbf.quantize_4bit(x, blocksize=64, quant_type="nf4")
        >>> compare_nf4_codes(lib_packed, lib_packed, x).differing   # the library against itself
        0
    """
    import torch
    from bitsandbytes.functional import get_4bit_type

    n = _flat_cpu(x, "x").numel()
    ours, theirs = _unpack_nibbles(ours_packed), _unpack_nibbles(lib_packed)
    expected = 2 * math.ceil(n / 2)
    if ours.numel() != expected or theirs.numel() != expected:
        raise ValueError(f"{n} values pack into {expected // 2} bytes; ours has {ours.numel() // 2}, "
                         f"the library's {theirs.numel() // 2}")
    scaled = torch.cat([blockwise_scaled(x, blocksize), torch.zeros(expected - n)])   # the padding value is 0
    return compare_codes(ours, theirs, scaled, get_4bit_type("nf4", device="cpu"), tolerance("nf4", device))


def values_agree(ours: Any, theirs: Any, tol: Tolerance) -> bool:
    """True when two float tensors agree under ``tol``: ``torch.equal`` if it is exact, else within
    ``atol + rtol * |theirs|`` (``torch.allclose``). Either may sit on any device.

    Example:
        >>> import torch
        >>> a = torch.tensor([0.1]); b = torch.nextafter(a, torch.tensor([1.0]))   # one ulp apart
        >>> values_agree(a, b, tolerance("mean", "cpu")), values_agree(a, b, tolerance("mean", "cuda"))
        (False, True)
    """
    import torch

    same_shape = getattr(ours, "shape", None) == getattr(theirs, "shape", None)
    ours, theirs = _flat_cpu(ours, "ours").float(), _flat_cpu(theirs, "theirs").float()
    if not same_shape:
        return False
    if tol.rtol == 0 and tol.atol == 0:
        return torch.equal(ours, theirs)
    return torch.allclose(ours, theirs, rtol=tol.rtol, atol=tol.atol)
