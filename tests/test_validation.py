"""Tests of lessonlib.validation: each check accepts what it promises and words every refusal the same way."""

from __future__ import annotations

import math
import re

import pytest

from lessonlib import validation as v


@pytest.mark.parametrize("check, args, good, bad, message", [
    (v.positive_int, (), [1, 7], [0, -1, 2.0, True, "3", None], "must be a positive integer"),
    (v.non_negative_int, (), [0, 5], [-1, 0.0, False, "0"], "must be a non-negative integer"),
    (v.int_between, (1, 256), [1, 256], [0, 257, 8.0, True], "must be an integer from 1 to 256"),
    (v.positive_number, (), [1, 0.5, 1e-9], [0, -2.5, math.inf, math.nan, True, "1"], "must be a finite number above 0"),
    (v.number_in, (0, 1), [0, 0.5, 0.999], [1, -0.1, 1.5, math.nan, True, "0.1"], r"must be a number in \[0, 1\)"),
])
def test_each_check_returns_good_values_and_refuses_bad_ones(check, args, good, bad, message):
    for value in good:
        assert check("x", value, *args) == value
    for value in bad:
        with pytest.raises(ValueError, match=rf"^x {message}, got {re.escape(repr(value))}$"):
            check("x", value, *args)


def test_number_in_writes_open_and_closed_ends():
    assert v.number_in("f", 1, 0, 1, high_open=False) == 1
    with pytest.raises(ValueError, match=r"^f must be a number in \(0, 1\), got 0$"):
        v.number_in("f", 0, 0, 1, low_open=True)
    with pytest.raises(ValueError, match=r"^gpu_gb must be a number in \[1, 1000\], got 1001$"):
        v.number_in("gpu_gb", 1001, 1, 1000, high_open=False)


def test_one_of_lists_the_accepted_values():
    assert v.one_of("method", "lora", ["full", "lora"]) == "lora"
    assert v.one_of("seq", 512, range(256, 1025, 256)) == 512
    with pytest.raises(ValueError, match=r"^method must be one of full, lora, got 'LoRA'$"):
        v.one_of("method", "LoRA", ("full", "lora"))
    with pytest.raises(ValueError, match=r"^seq must be one of 512, 1024, got '512'$"):
        v.one_of("seq", "512", (512, 1024))   # a string is not the number


def test_non_empty_names_who_needs_what():
    assert v.non_empty("train", [1]) == [1]
    with pytest.raises(ValueError, match=r"^train needs at least one example, got none$"):
        v.non_empty("train", [])
    with pytest.raises(ValueError, match=r"^collate needs at least one encoded example, got none$"):
        v.non_empty("collate", (), "encoded example")
