"""Tests of lessonlib.quantization: the formulas against the bytes bitsandbytes really stores."""

from __future__ import annotations

import pytest
import torch

from lessonlib import quantization as q

bnbf = pytest.importorskip("bitsandbytes.functional")


def _measured_bits(n: int, blocksize: int, double_quant: bool) -> float:
    """Bits per weight of the tensors bitsandbytes keeps (codes, scales, nested scales, offset)."""
    x = torch.randn(n, generator=torch.Generator().manual_seed(0))
    packed, state = bnbf.quantize_4bit(x, blocksize=blocksize, quant_type="nf4", compress_statistics=double_quant)
    tensors = [packed, state.absmax]
    if double_quant:
        tensors += [state.state2.absmax, state.offset.reshape(1)]
    return sum(t.numel() * t.element_size() for t in tensors) * 8 / n


@pytest.mark.parametrize("blocksize", [32, 64, 256, 4096])
def test_bits_per_parameter_is_what_bitsandbytes_stores(blocksize):
    assert q.bits_per_parameter(blocksize) == _measured_bits(blocksize * 8, blocksize, False)


@pytest.mark.parametrize("blocksize", [64, 128])
def test_double_quant_bits_are_what_bitsandbytes_stores(blocksize):
    n = blocksize * 256 * 2
    # The one fp32 mean per tensor is the only extra; the formula leaves per-tensor constants out.
    assert _measured_bits(n, blocksize, True) == pytest.approx(q.bits_per_parameter(blocksize, True) + 32 / n)


def test_double_quant_nests_blocks_of_256_in_bitsandbytes():
    _, state = bnbf.quantize_4bit(torch.randn(64 * 256), quant_type="nf4", compress_statistics=True)
    assert state.state2.blocksize == 256
    assert state.absmax.dtype == torch.uint8


def test_weight_bytes_per_format():
    n = 1_000_000
    assert q.weight_bytes(n, "fp32") == 4 * n
    assert q.weight_bytes(n, "bf16") == q.weight_bytes(n, "fp16") == 2 * n
    assert q.weight_bytes(n, "int8") == n
    assert q.weight_bytes(n, "nf4") == q.weight_bytes(n, "fp4") == n * 4.5 / 8
    assert q.weight_bytes(n, "nf4-dq") == n * q.bits_per_parameter(64, True) / 8
    assert q.weight_bytes(n, "nf4", blocksize=128) < q.weight_bytes(n, "nf4")
    assert q.weight_bytes(0, "nf4") == 0


def test_every_format_is_accepted():
    assert all(q.format_bits(f) > 0 for f in q.FORMATS)


@pytest.mark.parametrize("call, match", [
    (lambda: q.bits_per_parameter(0), "blocksize must be a positive integer"),
    (lambda: q.bits_per_parameter(64.0), "blocksize must be a positive integer"),
    (lambda: q.bits_per_parameter(64, True, nested_blocksize=-1), "nested_blocksize must be"),
    (lambda: q.weight_bytes(10, "int4"), "fmt must be one of fp32, bf16, fp16, int8, nf4, nf4-dq, fp4, got 'int4'"),
    (lambda: q.weight_bytes(1.5, "nf4"), "n_params must be a non-negative integer"),
    (lambda: q.weight_bytes(True, "nf4"), "n_params must be a non-negative integer"),
])
def test_bad_input_is_a_clear_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize("n", [64, 1000, 64 * 256 + 3, 300_000])
@pytest.mark.parametrize("quant_type, double", [("nf4", False), ("nf4", True), ("fp4", False)])
def test_tensor_state_and_packed_bytes_are_what_bitsandbytes_stores(n, quant_type, double):
    x = torch.randn(n, generator=torch.Generator().manual_seed(0))
    packed, state = bnbf.quantize_4bit(x, blocksize=64, quant_type=quant_type, compress_statistics=double)
    tensors = [state.absmax, state.code] + ([state.offset.reshape(1), state.state2.absmax, state.state2.code]
                                            if double else [])
    stored = sum(t.numel() * t.element_size() for t in tensors)
    name = "nf4-dq" if double else quant_type
    assert q.tensor_state_bytes(n, name) == stored
    assert q.packed_bytes(n) == packed.numel() * packed.element_size()


def test_vocabulary_is_shared():
    from lessonlib import memory, models, params

    assert models.QUANTIZATIONS == q.QUANTIZATIONS and memory.QUANTIZATIONS == q.FOUR_BIT
    assert params.DTYPE_BYTES is q.DTYPE_BYTES and tuple(memory.DTYPES) == q.DTYPES
    with pytest.raises(ValueError, match="quantization must be one of nf4, nf4-dq, fp4, got 'none'"):
        q.tensor_state_bytes(10, "none")
