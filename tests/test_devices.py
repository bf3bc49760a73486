"""Tests of lessonlib.devices: the device rules, exercised on a CPU with kernels that behave like the GPU's.

No GPU is needed: the CUDA kernels' rounding is reproduced here from bitsandbytes' source
(``csrc/kernels.cu``: ``dQuantizeNF4``'s thresholds, ``dQuantize<0>``'s binary search, and
``1 / absmax`` computed with an approximate reciprocal because the CUDA build uses
``--use_fast_math``), so the branches a GPU takes are run and can fail here.
"""

from __future__ import annotations

import math

import pytest
import torch

from lessonlib import devices as d

bnbf = pytest.importorskip("bitsandbytes.functional")

NF4 = bnbf.get_4bit_type("nf4", device="cpu")
DYNAMIC = bnbf.create_dynamic_map(signed=True)

# dQuantizeNF4 in bitsandbytes' csrc/kernels.cu: "x > t" picks the upper code, in this order of codes.
CUDA_NF4_THRESHOLDS = [
    -0.8480964004993439, -0.6106329262256622, -0.4599952697753906, -0.33967943489551544,
    -0.23460740596055984, -0.13791173323988914, -0.045525018125772476, 0.03979014977812767,
    0.1202552504837513, 0.2035212516784668, 0.2920137718319893, 0.3893125355243683,
    0.5016634166240692, 0.6427869200706482, 0.8614784181118011,
]


def _approximate_reciprocal(absmax: torch.Tensor) -> torch.Tensor:
    """1 / absmax, then moved by -1, 0 or +1 ulp from block to block: what --use_fast_math allows."""
    exact = 1.0 / absmax
    step = torch.arange(absmax.numel()) % 3 - 1
    up, down = torch.nextafter(exact, torch.tensor(math.inf)), torch.nextafter(exact, torch.tensor(-math.inf))
    return torch.where(step > 0, up, torch.where(step < 0, down, exact))


def _cuda_like_nf4(x: torch.Tensor, blocksize: int = 64, approximate: bool = True) -> torch.Tensor:
    """Packed NF4 bytes as kQuantizeBlockwise<NF4> makes them: x * (1 / absmax), then dQuantizeNF4."""
    flat = x.reshape(-1).float()
    n, blocks = flat.numel(), math.ceil(flat.numel() / blocksize)
    padded = torch.zeros(blocks * blocksize)
    padded[:n] = flat
    absmax = padded.reshape(blocks, blocksize).abs().max(dim=1).values
    inverse = _approximate_reciprocal(absmax) if approximate else 1.0 / absmax
    scaled = (padded.reshape(blocks, blocksize) * inverse[:, None]).reshape(-1)[: 2 * math.ceil(n / 2)]
    codes = (scaled[:, None] > torch.tensor(CUDA_NF4_THRESHOLDS)[None, :]).sum(dim=1).to(torch.uint8)
    return (codes[0::2] << 4) | codes[1::2]


def _cuda_like_dynamic8(x: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
    """dQuantize<0> of csrc/kernels.cu, element by element: 7 binary-search steps, then the midpoints."""
    pivot = torch.full(x.shape, 127)
    lower_pivot, upper_pivot = torch.zeros_like(pivot), torch.full(x.shape, 255)
    lower, upper = torch.full(x.shape, -1.0), torch.full(x.shape, 1.0)
    val = code[pivot]
    for i in (64, 32, 16, 8, 4, 2, 1):
        up = x > val
        lower_pivot, lower = torch.where(up, pivot, lower_pivot), torch.where(up, val, lower)
        upper_pivot, upper = torch.where(up, upper_pivot, pivot), torch.where(up, upper, val)
        pivot = torch.where(up, pivot + i, pivot - i)
        val = code[pivot]
    upper = torch.where(upper_pivot == 255, code[255], upper)
    lower = torch.where(lower_pivot == 0, code[0], lower)
    above = torch.where(x > (upper + val) * 0.5, upper_pivot, pivot)
    below = torch.where(x < (lower + val) * 0.5, lower_pivot, pivot)
    return torch.where(x > val, above, below)


def _near_midpoints(n_blocks: int, code: torch.Tensor, blocksize: int, seed: int = 0) -> torch.Tensor:
    """Blocks whose values sit on (or within an ulp of) midpoints between codes, times a random absmax."""
    g = torch.Generator().manual_seed(seed)
    midpoints = (code[:-1] + code[1:]) / 2
    picks = midpoints[torch.randint(0, midpoints.numel(), (n_blocks, blocksize), generator=g)]
    picks = torch.nextafter(picks, picks + torch.randint(-1, 2, picks.shape, generator=g).float())
    picks[:, 0] = 1.0                                          # each block's absmax is its first value
    absmax = 0.01 + torch.rand(n_blocks, 1, generator=g)
    return (picks * absmax).reshape(-1)


# --- the rules -------------------------------------------------------------------------------------------

def test_every_kernel_and_device_has_a_rule_with_a_reason():
    for kernel in d.KERNELS:
        for device in d.DEVICES:
            assert d.tolerance(kernel, device).reason
    assert d.tolerance("nf4", "cpu").exact and d.tolerance("mean", "cpu").exact
    assert not d.tolerance("nf4", "cuda").exact and not d.tolerance("dynamic8", "cpu").exact


def test_unknown_kernels_and_devices_are_refused_with_the_accepted_names():
    with pytest.raises(ValueError, match="kernel must be one of nf4, dynamic8, mean, got 'fp4'"):
        d.tolerance("fp4", "cpu")
    with pytest.raises(ValueError, match="device must be one of cpu, cuda, got 'xpu'"):
        d.tolerance("nf4", "xpu")


def test_the_cuda_nf4_thresholds_are_the_float32_midpoints_of_the_table():
    """Why the NF4 rule on CUDA only needs to allow for the reciprocal: the comparisons are ours."""
    assert torch.equal(torch.tensor(CUDA_NF4_THRESHOLDS, dtype=torch.float32), (NF4[:-1] + NF4[1:]) / 2)


def test_allowed_differences_scale_with_the_count_and_never_fall_below_one():
    rule = d.tolerance("dynamic8", "cuda")
    assert rule.allowed(13_824) == 13 and rule.allowed(10) == 1
    assert d.tolerance("nf4", "cpu").allowed(10**6) == 0


# --- compare_codes ---------------------------------------------------------------------------------------

def test_a_code_one_ulp_past_a_midpoint_is_explained_on_cuda_not_on_cpu():
    table = torch.tensor([-1.0, 0.0, 1.0])
    scaled = torch.tensor([0.5 + 2**-24, -0.5 - 2**-24, 0.2])
    ours, theirs = torch.tensor([2, 0, 1]), torch.tensor([1, 1, 1])
    on_cuda = d.compare_codes(ours, theirs, scaled, table, d.tolerance("nf4", "cuda"))
    on_cpu = d.compare_codes(ours, theirs, scaled, table, d.tolerance("nf4", "cpu"))
    assert (on_cuda.differing, on_cuda.explained, on_cuda.neighbours, on_cuda.ours_nearer) == (2, True, True, True)
    assert not on_cuda.holds                          # 2 of 3 differ: more than the rule allows (1)
    assert on_cpu.differing == 2 and not on_cpu.explained and not on_cpu.holds


def test_a_code_far_from_any_midpoint_is_never_explained():
    table = torch.tensor([-1.0, 0.0, 1.0])
    for device in d.DEVICES:
        rule = d.tolerance("nf4", device)
        c = d.compare_codes(torch.tensor([1]), torch.tensor([2]), torch.tensor([0.1]), table, rule)
        assert c.differing == 1 and c.ours_nearer and not c.explained and not c.holds


def test_identical_codes_hold_under_every_rule():
    scaled = torch.linspace(-1, 1, 101)
    idx = torch.bucketize(scaled, (NF4[:-1] + NF4[1:]) / 2)
    for device in d.DEVICES:
        c = d.compare_codes(idx, idx.to(torch.uint8), scaled, NF4, d.tolerance("nf4", device))
        assert c.holds and c.differing == 0 and str(c) == "101 of 101 identical"


def test_compare_codes_refuses_mismatched_or_malformed_input():
    table = torch.tensor([-1.0, 0.0, 1.0])
    rule = d.tolerance("nf4", "cpu")
    with pytest.raises(ValueError, match="as many values"):
        d.compare_codes(torch.tensor([1, 2]), torch.tensor([1]), torch.tensor([0.0, 0.0]), table, rule)
    with pytest.raises(ValueError, match="increasing order"):
        d.compare_codes(torch.tensor([1]), torch.tensor([1]), torch.tensor([0.0]), table.flip(0), rule)
    with pytest.raises(ValueError, match="outside the code table"):
        d.compare_codes(torch.tensor([3]), torch.tensor([1]), torch.tensor([0.0]), table, rule)
    with pytest.raises(TypeError, match="must be a torch tensor"):
        d.compare_codes([1], torch.tensor([1]), torch.tensor([0.0]), table, rule)


# --- NF4: the real CPU kernel, and one that rounds like the CUDA kernel ---------------------------------

@pytest.mark.parametrize("shape, blocksize", [((1000,), 64), ((7, 13), 64), ((40, 50), 128), ((1,), 64)])
def test_bitsandbytes_cpu_nf4_codes_are_ours_exactly(shape, blocksize):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(3))
    lib_packed, _ = bnbf.quantize_4bit(x, blocksize=blocksize, quant_type="nf4")
    exact = _cuda_like_nf4(x, blocksize, approximate=False)   # the CUDA comparisons, exact reciprocal
    c = d.compare_nf4_codes(exact, lib_packed, x, blocksize, "cpu")
    assert c.differing == 0 and c.holds


def test_an_approximate_reciprocal_moves_codes_only_at_midpoints_and_only_the_cuda_rule_allows_it():
    x = _near_midpoints(400, NF4, 64)                        # every value on or next to a midpoint
    ours, gpu = _cuda_like_nf4(x, approximate=False), _cuda_like_nf4(x, approximate=True)
    on_cuda, on_cpu = d.compare_nf4_codes(ours, gpu, x, 64, "cuda"), d.compare_nf4_codes(ours, gpu, x, 64, "cpu")
    assert on_cuda.differing > 0 and on_cuda.explained and on_cuda.neighbours
    assert not on_cuda.holds                                 # ... but far too many for real weights
    assert not on_cpu.explained


def test_weights_with_a_few_values_at_midpoints_hold_under_the_cuda_rule_only():
    g = torch.Generator().manual_seed(9)
    x = torch.randn(2000, 64, generator=g) * 0.02
    midpoints = (NF4[:-1] + NF4[1:]) / 2
    for row in (6, 8):                                       # blocks whose reciprocal is 1 ulp off, up and down
        x[row, 1:9] = midpoints[::2] * x[row].abs().max()    # 8 values on midpoints
    ours, gpu = _cuda_like_nf4(x, approximate=False), _cuda_like_nf4(x, approximate=True)
    on_cuda = d.compare_nf4_codes(ours, gpu, x, 64, "cuda")
    assert 0 < on_cuda.differing <= on_cuda.allowed and on_cuda.holds   # the branch a GPU takes, with differences
    assert not d.compare_nf4_codes(ours, gpu, x, 64, "cpu").holds


def test_on_ordinary_weights_an_approximate_reciprocal_changes_almost_nothing():
    x = torch.randn(576, 1536, generator=torch.Generator().manual_seed(4)) * 0.02
    c = d.compare_nf4_codes(_cuda_like_nf4(x, approximate=False), _cuda_like_nf4(x), x, 64, "cuda")
    assert c.holds and c.differing <= 1e-5 * c.total


def test_a_broken_kernel_fails_the_cuda_rule():
    x = torch.randn(4096, generator=torch.Generator().manual_seed(5))
    good = _cuda_like_nf4(x)
    swapped = (good << 4) | (good >> 4)                      # the nibbles in the wrong order
    assert not d.compare_nf4_codes(good, swapped, x, 64, "cuda").holds


def test_compare_nf4_codes_refuses_a_wrong_byte_count():
    x = torch.randn(10)
    with pytest.raises(ValueError, match="10 values pack into 5 bytes; ours has 4, the library's 5"):
        d.compare_nf4_codes(torch.zeros(4, dtype=torch.uint8), torch.zeros(5, dtype=torch.uint8), x)


# --- the 8-bit codes of double quantization ---------------------------------------------------------------

def test_the_cuda_8bit_search_finds_the_nearest_code():
    """dQuantize<0> is exact nearest (ties aside), so only the reciprocal can move a CUDA code."""
    g = torch.Generator().manual_seed(6)
    x = torch.cat([torch.rand(20_000, generator=g) * 2 - 1, (torch.rand(5_000, generator=g) * 2 - 1) * 1e-4,
                   torch.tensor([-1.0, 1.0, 0.0])])
    nearest = torch.bucketize(x, (DYNAMIC[:-1] + DYNAMIC[1:]) / 2)
    assert torch.equal(_cuda_like_dynamic8(x, DYNAMIC), nearest)


def test_cuda_like_8bit_codes_with_an_approximate_reciprocal_hold_under_the_cuda_rule():
    values = _near_midpoints(54, DYNAMIC, 256, seed=7)
    blocks = values.reshape(-1, 256)
    absmax = blocks.abs().max(dim=1).values
    scaled = d.blockwise_scaled(values, 256)
    approximate = (blocks * _approximate_reciprocal(absmax)[:, None]).reshape(-1)
    ours = torch.bucketize(scaled, (DYNAMIC[:-1] + DYNAMIC[1:]) / 2)
    theirs = _cuda_like_dynamic8(approximate, DYNAMIC)
    c = d.compare_codes(ours, theirs, scaled, DYNAMIC, d.tolerance("dynamic8", "cuda"))
    assert c.differing > 0 and c.explained and c.neighbours
    assert not d.compare_codes(ours, theirs, scaled, DYNAMIC, d.Tolerance()).explained


def test_bitsandbytes_cpu_8bit_codes_differ_only_within_half_a_lookup_bin():
    """The CPU kernel's 65,536-bin lookup table: some codes differ from the nearest, all within the rule."""
    absmax = torch.rand(13_824, generator=torch.Generator().manual_seed(8)) * 0.05 + 0.01
    centred = absmax - absmax.mean()
    codes, state = bnbf.quantize_blockwise(centred, code=DYNAMIC, blocksize=256)
    scaled = d.blockwise_scaled(centred, 256)
    assert torch.equal(state.absmax, centred.reshape(-1, 256).abs().max(dim=1).values)
    ours = torch.bucketize(scaled, (DYNAMIC[:-1] + DYNAMIC[1:]) / 2)
    c = d.compare_codes(ours, codes, scaled, DYNAMIC, d.tolerance("dynamic8", "cpu"))
    assert c.differing > 0 and c.holds and c.ours_nearer
    assert not d.compare_codes(ours, codes, scaled, DYNAMIC, d.Tolerance(max_share=1.0)).explained


# --- blockwise_scaled and values_agree --------------------------------------------------------------------

def test_blockwise_scaled_is_what_the_lesson_and_the_library_scale_by():
    x = torch.tensor([2.0, -4.0, 1.0, 0.0, 0.0, 3.0, -0.5])
    assert d.blockwise_scaled(x, 3).tolist() == [0.5, -1.0, 0.25, 0.0, 0.0, 1.0, -1.0]
    assert d.blockwise_scaled(torch.zeros(4), 2).tolist() == [0.0] * 4
    with pytest.raises(ValueError, match="blocksize must be a positive integer, got 0"):
        d.blockwise_scaled(x, 0)


def test_values_agree_is_exact_on_cpu_and_within_the_rule_on_cuda():
    a = torch.tensor(0.0537)
    close = a * (1 + 3e-6)
    assert d.values_agree(a, a.clone(), d.tolerance("mean", "cpu"))
    assert not d.values_agree(a, close, d.tolerance("mean", "cpu"))
    assert d.values_agree(a, close, d.tolerance("mean", "cuda"))
    assert not d.values_agree(a, a * 1.001, d.tolerance("mean", "cuda"))
    assert not d.values_agree(torch.zeros(2), torch.zeros(1, 2), d.tolerance("mean", "cuda"))
