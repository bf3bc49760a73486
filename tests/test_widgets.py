"""Tests of lessonlib.widgets: the LoRA calculator shows what count_parameters computes."""

from __future__ import annotations

import pytest

from lessonlib.params import count_parameters
from lessonlib.widgets import TRAINABLE_CLASS, lora_calculator


def test_rank_slider_redraws_the_trainable_text():
    calc = lora_calculator("llama-2-7b", rank=8)
    assert calc.rank.description == "rank"
    assert TRAINABLE_CLASS in calc.trainable._dom_classes
    assert calc.trainable_text() == f"trainable: {count_parameters('llama-2-7b', 8).trainable:,}"
    calc.rank.value = 32
    assert calc.trainable_text() == f"trainable: {count_parameters('llama-2-7b', 32).trainable:,}"
    assert f"{calc.count.total:,}" in calc.table.value


def test_targets_and_model_change_redraw_the_count():
    calc = lora_calculator("smollm2-135m", rank=8)
    calc.targets.value = tuple(calc.targets.options)
    assert calc.count.trainable == count_parameters("smollm2-135m", 8, "all-linear").trainable
    calc.model.value = "phi-3-mini"
    assert calc.targets.value == ("qkv_proj",)
    assert calc.count.trainable == count_parameters("phi-3-mini", 8).trainable
    assert bytes(calc.chart.value)[:4] == b"\x89PNG"  # the chart was redrawn as an image


def test_invalid_choice_shows_an_error_instead_of_a_count():
    calc = lora_calculator("gpt2")
    calc.targets.value = ()
    assert calc.count is None and calc.trainable_text().startswith("error: targets must name")
    assert bytes(calc.chart.value) == b""


def test_bad_arguments_are_value_errors():
    with pytest.raises(ValueError, match="model must be one of smollm2-135m, .*, got 'nope'"):
        lora_calculator("nope")
    with pytest.raises(ValueError, match="rank must be an integer from 1 to 128"):
        lora_calculator(rank=0)
