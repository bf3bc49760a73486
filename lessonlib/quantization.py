"""What a weight costs in storage: bits per parameter of 4-bit NF4 (with or without double
quantization) and bytes of a model's weights in the usual formats.

Lesson 04 derives these numbers from the tensors ``bitsandbytes`` really produces; lessons 01, 04
and 06 and :mod:`lessonlib.diagrams` quote :func:`bits_per_parameter`, and :mod:`lessonlib.memory`
counts a 4-bit model's bytes with :func:`packed_bytes` and :func:`tensor_state_bytes`. The formats:

- ``fp32``, ``bf16``, ``fp16``: 32 or 16 bits per weight;
- ``int8``: 8 bits per weight (the per-row or per-block scales of 8-bit schemes are left out);
- ``nf4``: a 4-bit code per weight plus one fp32 absmax per block of ``blocksize`` weights;
- ``nf4-dq``: NF4 with double quantization (QLoRA): the absmaxes themselves stored as 8-bit codes,
  with one fp32 scale per ``nested_blocksize`` of them;
- ``fp4``: stored exactly like ``nf4`` (only the 16 code values differ).

The per-tensor constants (the 16- and 256-entry code tables, the one fp32 mean of double
quantization) are left out: they cost bytes per tensor, not per weight.

The course's words for them are defined here once and used by every module that names a format
(``models``, ``params``, ``memory``, ``finetune``, ``diagrams``): :data:`DTYPES` for the plain number formats and :data:`QUANTIZATIONS` for
how a model's linear weights are stored. :func:`tensor_state_bytes` gives the exact bytes of one
4-bit tensor's quantization state, as bitsandbytes keeps them.

Example:
    >>> bits_per_parameter()
    4.5
    >>> round(bits_per_parameter(double_quant=True), 3)
    4.127
    >>> weight_bytes(1_000_000, "nf4")
    562500.0
"""

from __future__ import annotations

from lessonlib.validation import non_negative_int, one_of, positive_int

DTYPES = ("fp32", "bf16", "fp16")
"""The course's names of the plain number formats (weights, activations, compute)."""

DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
"""Bytes per number of each of :data:`DTYPES`."""

TORCH_DTYPE_NAMES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
"""The ``torch`` attribute behind each of :data:`DTYPES` (``torch.bfloat16`` for ``"bf16"``)."""

QUANTIZATIONS = ("none", "nf4", "nf4-dq", "fp4")
"""How the linear weights are stored: unquantized, NF4, NF4 with double quantization (QLoRA's
default), or FP4 (stored like NF4, other code values)."""

FOUR_BIT = ("nf4", "nf4-dq", "fp4")
"""The 4-bit entries of :data:`QUANTIZATIONS`."""

FORMATS = ("fp32", "bf16", "fp16", "int8", "nf4", "nf4-dq", "fp4")
"""Accepted values of ``fmt`` in :func:`format_bits` and :func:`weight_bytes`."""

BLOCKSIZES = (32, 64, 128, 256, 512, 1024, 2048, 4096)
"""Block sizes that ``bitsandbytes.functional.quantize_4bit`` accepts."""

_PLAIN_BITS = {"fp32": 32, "bf16": 16, "fp16": 16, "int8": 8}


def bits_per_parameter(blocksize: int = 64, double_quant: bool = False, nested_blocksize: int = 256) -> float:
    """Return the storage of one 4-bit weight in bits, scales included.

    Without double quantization every block of ``blocksize`` weights adds one fp32 absmax:
    ``4 + 32 / blocksize``. With it, the absmax is an 8-bit code and every ``nested_blocksize``
    absmaxes share one fp32 scale: ``4 + 8 / blocksize + 32 / (blocksize * nested_blocksize)``.

    Args:
        blocksize: weights per block (bitsandbytes accepts the values in :data:`BLOCKSIZES`;
            any positive integer is accepted here, for what-if questions).
        double_quant: whether the absmaxes are quantized again (QLoRA's double quantization).
        nested_blocksize: absmaxes per block of the second quantization (bitsandbytes uses 256).

    Raises:
        ValueError: a block size that is not a positive integer.

    Example:
        >>> bits_per_parameter(64), bits_per_parameter(4096)
        (4.5, 4.0078125)
        >>> bits_per_parameter(64, double_quant=True)
        4.126953125
        >>> bits_per_parameter(0)
        Traceback (most recent call last):
        ...
        ValueError: blocksize must be a positive integer, got 0
    """
    positive_int("blocksize", blocksize)
    positive_int("nested_blocksize", nested_blocksize)
    if not double_quant:
        return 4 + 32 / blocksize
    return 4 + 8 / blocksize + 32 / (blocksize * nested_blocksize)


def format_bits(fmt: str, blocksize: int = 64, nested_blocksize: int = 256) -> float:
    """Return the bits one weight costs in format ``fmt`` (one of :data:`FORMATS`).

    Example:
        >>> [format_bits(f) for f in ("fp32", "bf16", "int8", "nf4")]
        [32, 16, 8, 4.5]
        >>> format_bits("nf4-dq", blocksize=128)
        4.0634765625
        >>> format_bits("int4")
        Traceback (most recent call last):
        ...
        ValueError: fmt must be one of fp32, bf16, fp16, int8, nf4, nf4-dq, fp4, got 'int4'
    """
    if fmt in _PLAIN_BITS:
        return _PLAIN_BITS[fmt]
    if fmt in ("nf4", "fp4"):
        return bits_per_parameter(blocksize)
    if fmt == "nf4-dq":
        return bits_per_parameter(blocksize, double_quant=True, nested_blocksize=nested_blocksize)
    raise ValueError(f"fmt must be one of {', '.join(FORMATS)}, got {fmt!r}")


def weight_bytes(n_params: int, fmt: str, blocksize: int = 64, nested_blocksize: int = 256) -> float:
    """Return the bytes that ``n_params`` weights take in format ``fmt`` (see :data:`FORMATS`).

    For the 4-bit formats this is the large-tensor figure (``n_params * bits / 8``); a real
    tensor rounds its block count up and adds a few per-tensor bytes.

    Raises:
        ValueError: a negative or non-integer ``n_params``, or an unknown format.

    Example:
        >>> weight_bytes(7_000_000_000, "bf16") / 1e9
        14.0
        >>> round(weight_bytes(7_000_000_000, "nf4-dq") / 1e9, 2)
        3.61
        >>> weight_bytes(-1, "fp32")
        Traceback (most recent call last):
        ...
        ValueError: n_params must be a non-negative integer, got -1
    """
    non_negative_int("n_params", n_params)
    return n_params * format_bits(fmt, blocksize, nested_blocksize) / 8


def packed_bytes(n_weights: int) -> int:
    """Return the bytes of the packed 4-bit codes of one tensor: two weights per byte, rounded up.

    Example:
        >>> packed_bytes(64), packed_bytes(65)
        (32, 33)
    """
    return -(-n_weights // 2)


def tensor_state_bytes(n_weights: int, quantization: str = "nf4-dq", blocksize: int = 64,
                       nested_blocksize: int = 256) -> int:
    """Return the bytes of one 4-bit tensor's quantization state, exactly as bitsandbytes stores it.

    Besides the packed codes (:func:`packed_bytes`) a 4-bit tensor keeps its code table (16 fp32
    values) and one absmax per block: fp32 for ``nf4`` and ``fp4``; for ``nf4-dq`` an 8-bit code
    per block, plus the fp32 offset (the absmaxes' mean), one fp32 scale per ``nested_blocksize``
    absmaxes and the 256-entry fp32 table of those 8-bit codes.

    Raises:
        ValueError: an unknown or non-4-bit quantization, or bad sizes.

    Example:
        >>> tensor_state_bytes(4096, "nf4")                  # 64 fp32 absmaxes + the 16-entry table
        320
        >>> tensor_state_bytes(4096, "nf4-dq")               # 64 bytes + offset + 1 scale + 2 tables
        1160
        >>> tensor_state_bytes(4096, "int4")
        Traceback (most recent call last):
        ...
        ValueError: quantization must be one of nf4, nf4-dq, fp4, got 'int4'
    """
    one_of("quantization", quantization, FOUR_BIT)
    positive_int("blocksize", blocksize)
    positive_int("nested_blocksize", nested_blocksize)
    non_negative_int("n_weights", n_weights)
    blocks = -(-n_weights // blocksize)
    code_table = 16 * 4
    if quantization != "nf4-dq":
        return blocks * 4 + code_table
    nested = -(-blocks // nested_blocksize)
    return blocks + 4 + nested * 4 + 256 * 4 + code_table
