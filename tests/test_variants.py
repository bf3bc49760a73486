"""Tests of lessonlib.variants: each variant's written-out core equals peft's on small layers."""

from __future__ import annotations

import pytest
import torch

from lessonlib import variants
from lessonlib.env import quiet_library_logs

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")


def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(64, 48), torch.nn.ReLU(), torch.nn.Linear(48, 64))


def _peft(variant: str, r: int = 4, alpha: float = 8.0):
    quiet_library_logs()
    return variants.apply(_model(), variant, r=r, alpha=alpha, targets=["0", "2"], task_type=None)


def test_pissa_factors_equal_peft():
    model, w = _peft("pissa"), _model()[0].weight.detach()
    layer = dict(variants.lora_layers(model))["base_model.model.0"]
    A, B, res = variants.pissa_factors(w, 4, 2.0)
    # singular vectors are defined up to a sign per pair: compare the products, and the residual
    assert torch.allclose(B @ A, layer.lora_B["default"].weight @ layer.lora_A["default"].weight, atol=1e-5)
    assert torch.allclose(res, layer.get_base_layer().weight, atol=1e-5)


def test_dora_forward_equals_peft_after_a_change_of_every_part():
    model = _peft("dora")
    layer = dict(variants.lora_layers(model))["base_model.model.0"]
    with torch.no_grad():
        layer.lora_B["default"].weight.normal_(0, 0.1)
        layer.lora_magnitude_vector["default"].weight.mul_(1.5)
    x = torch.randn(5, 64, generator=torch.Generator().manual_seed(1))
    ours = variants.dora_forward(x, layer.get_base_layer().weight, layer.lora_A["default"].weight,
                                 layer.lora_B["default"].weight, layer.lora_magnitude_vector["default"].weight,
                                 layer.scaling["default"]) + layer.get_base_layer().bias
    assert torch.allclose(ours, layer(x), atol=1e-5)


def test_four_bit_variants_replace_the_base_by_its_round_trip():
    w = _model()[0].weight.detach()
    q = dict(variants.lora_layers(_peft("qlora")))["base_model.model.0"]
    assert torch.equal(q.get_base_layer().weight, variants.nf4_roundtrip(w))
    loftq = dict(variants.lora_layers(_peft("loftq")))["base_model.model.0"]
    fit = loftq.get_base_layer().weight + loftq.scaling["default"] * (
        loftq.lora_B["default"].weight @ loftq.lora_A["default"].weight)
    assert (w - fit).norm() < 0.9 * (w - variants.nf4_roundtrip(w)).norm()   # LoftQ starts nearer W


def test_loraplus_groups_equal_peft_optimizer():
    from peft.optimizers import create_loraplus_optimizer

    model = _peft("lora+")
    ours = variants.optimizer_groups(model, 1e-3, "lora+")
    theirs = create_loraplus_optimizer(model, torch.optim.AdamW, lr=1e-3, loraplus_lr_ratio=variants.LORAPLUS_RATIO)
    by_lr = lambda groups: {g["lr"]: {id(p) for p in g["params"]} for g in groups if g["params"]}  # noqa: E731
    assert by_lr(ours) == by_lr(theirs.param_groups)
    assert len(variants.optimizer_groups(model, 1e-3, "lora")) == 1


def test_bad_input_is_a_clear_value_error():
    with pytest.raises(ValueError, match="variant must be one of lora, dora"):
        variants.lora_config("adalora")
    with pytest.raises(ValueError, match="r must be a positive integer"):
        variants.pissa_factors(torch.zeros(2, 2), 0, 1.0)
    with pytest.raises(ValueError, match="iters must be a positive integer"):
        variants.loftq_factors(torch.zeros(2, 64), 1, 1.0, iters=0)
