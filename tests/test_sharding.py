"""Tests for lessonlib.sharding: a one-GPU estimate split over n GPUs, and the fewest GPUs that fit."""
import pytest

from lessonlib.memory import GiB, MiB, MemoryBreakdown, estimate_training_memory
from lessonlib.sharding import GATHERED_LAYERS, SHARDED, gpus_needed, gpus_needed_table, per_gpu_memory, shard


def test_shard_by_hand():
    whole = MemoryBreakdown(frozen_weights=40 * MiB, quant_state=8 * MiB, trainable_weights=4 * MiB,
                            weight_copies=16 * MiB, gradients=4 * MiB, optimizer_state=8 * MiB,
                            activations=100 * MiB)
    four = shard(whole, 4, layers=8, tokens=64, vocab=100)
    # gathered: two of eight layers of what the forward pass reads (frozen + quant state + copies = 64 MiB)
    assert four.weight_copies == 16 * MiB // 4 + 2 * 64 * MiB // 8
    assert (four.frozen_weights, four.quant_state, four.trainable_weights) == (10 * MiB, 2 * MiB, MiB)
    assert (four.gradients, four.optimizer_state, four.activations) == (MiB, 2 * MiB, 100 * MiB)
    assert four.runtime == 0                         # a CPU estimate has no runtime to recompute
    assert shard(whole, 1, layers=8, tokens=64, vocab=100) is whole


def test_without_copies_the_trainable_weights_are_gathered():
    whole = MemoryBreakdown(trainable_weights=80 * MiB, gradients=80 * MiB)
    assert shard(whole, 2, layers=10, tokens=8, vocab=8).weight_copies == GATHERED_LAYERS * 8 * MiB


def test_gpu_estimate_splits_state_keeps_activations_and_recomputes_runtime():
    whole = estimate_training_memory("llama-2-13b", "full", batch=1, seq=512)
    eight = per_gpu_memory("llama-2-13b", "full", 8, batch=1, seq=512)
    assert eight.activations == whole.activations
    for name in ("frozen_weights", "quant_state", "trainable_weights", "gradients", "optimizer_state"):
        assert abs(getattr(eight, name) - getattr(whole, name) / 8) <= 1, name
    assert 0 < eight.runtime < whole.runtime                 # less churn, same context and workspaces
    assert eight.runtime_parts["context"] == whole.runtime_parts["context"]
    assert "sharded over 8 GPUs" in eight.recipe
    assert set(SHARDED) < set(whole.as_dict())


def test_gpus_needed_is_the_fewest_that_fit():
    for method in ("full", "lora", "qlora"):
        n = gpus_needed("llama-2-13b", method, 24, batch=1, seq=512)
        assert per_gpu_memory("llama-2-13b", method, n, batch=1, seq=512).fits(24)
        if n > 1:
            assert not per_gpu_memory("llama-2-13b", method, n - 1, batch=1, seq=512).fits(24)
    counts = [gpus_needed("llama-2-13b", "full", g, batch=1, seq=512) for g in (16, 24, 48, 80)]
    assert counts == sorted(counts, reverse=True) and counts[0] > counts[-1]


def test_table_equals_one_call_per_cell():
    table = gpus_needed_table(["llama-2-13b"], ["full", "lora"], [16, 80], gradient_checkpointing=True)
    assert table == {("llama-2-13b", m): [gpus_needed("llama-2-13b", m, g, gradient_checkpointing=True)
                                          for g in (16, 80)] for m in ("full", "lora")}


def test_gpus_needed_gives_none_when_no_count_fits():
    # a 65B model's activations for one 512-token sequence alone exceed 16 GiB: no sharding helps
    assert estimate_training_memory("llama-65b", "qlora", batch=1, seq=512).activations > 16 * GiB
    assert gpus_needed("llama-65b", "qlora", 16, batch=1, seq=512) is None
    assert gpus_needed("llama-2-7b", "full", 80, max_gpus=1, batch=1, seq=512) is None


@pytest.mark.parametrize("call, message", [
    (lambda: shard(MemoryBreakdown(), 0, layers=1, tokens=1, vocab=1), "n_gpus must be a positive integer"),
    (lambda: per_gpu_memory("llama-2-7b", "lora", 2.5), "n_gpus must be a positive integer"),
    (lambda: gpus_needed("llama-2-7b", "lora", float("nan")), "gpu_memory_gib must be a finite number above 0"),
    (lambda: gpus_needed("llama-2-7b", "lora", -24), "gpu_memory_gib must be a finite number above 0"),
    (lambda: gpus_needed("llama-2-7b", "lora", 24, max_gpus=0), "max_gpus must be a positive integer"),
    (lambda: gpus_needed("llama-2-7b", "lora", True), "gpu_memory_gib must be a finite number above 0"),
    (lambda: gpus_needed_table(["llama-2-7b"], ["lora"], [24, "80"]), "gpu_memory_gib must be a finite number above 0"),
])
def test_bad_input_is_refused_clearly(call, message):
    with pytest.raises(ValueError, match=message):
        call()
