"""Checks of arguments, each raising a ``ValueError`` that says what was wrong and what is accepted.

One function per kind of check, so that every module words the same mistake the same way:
``"<name> must be <what is accepted>, got <the value>"``. Each returns the value it checked, so a
check can sit inside an assignment. ``bool`` is never taken for a number (``True`` is not a rank).

Example:
    >>> from lessonlib.validation import one_of, positive_int
    >>> positive_int("rank", 8)
    8
    >>> one_of("method", "prefix", ("full", "lora", "qlora"))
    Traceback (most recent call last):
    ...
    ValueError: method must be one of full, lora, qlora, got 'prefix'
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Iterable
from typing import Any, TypeVar

T = TypeVar("T")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def positive_int(name: str, value: Any) -> int:
    """Return ``value`` if it is an integer of at least 1, else raise ``ValueError``.

    Example:
        >>> positive_int("batch", 0)
        Traceback (most recent call last):
        ...
        ValueError: batch must be a positive integer, got 0
    """
    if not _is_int(value) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def non_negative_int(name: str, value: Any) -> int:
    """Return ``value`` if it is an integer of at least 0, else raise ``ValueError``.

    Example:
        >>> non_negative_int("seed", -1)
        Traceback (most recent call last):
        ...
        ValueError: seed must be a non-negative integer, got -1
    """
    if not _is_int(value) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return value


def int_between(name: str, value: Any, low: int, high: int) -> int:
    """Return ``value`` if it is an integer from ``low`` to ``high`` (both included), else raise ``ValueError``.

    Example:
        >>> int_between("rank", 300, 1, 256)
        Traceback (most recent call last):
        ...
        ValueError: rank must be an integer from 1 to 256, got 300
    """
    if not _is_int(value) or not low <= value <= high:
        raise ValueError(f"{name} must be an integer from {low} to {high}, got {value!r}")
    return value


def positive_number(name: str, value: Any) -> float:
    """Return ``value`` if it is a finite number above 0 (an int or a float), else raise ``ValueError``.

    Example:
        >>> positive_number("lr", 1e-4)
        0.0001
        >>> positive_number("lr", float("nan"))
        Traceback (most recent call last):
        ...
        ValueError: lr must be a finite number above 0, got nan
    """
    if not _is_number(value) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number above 0, got {value!r}")
    return value


def number_in(name: str, value: Any, low: float, high: float, *, low_open: bool = False,
              high_open: bool = True) -> float:
    """Return ``value`` if it is a number in the interval from ``low`` to ``high``, else raise ``ValueError``.

    The interval includes ``low`` and excludes ``high`` by default (``[0, 1)``, a dropout rate);
    ``low_open`` and ``high_open`` say whether each end is excluded. The message writes the
    interval in the usual brackets.

    Example:
        >>> number_in("dropout", 0.1, 0, 1)
        0.1
        >>> number_in("dropout", 1.0, 0, 1)
        Traceback (most recent call last):
        ...
        ValueError: dropout must be a number in [0, 1), got 1.0
        >>> number_in("eval_fraction", 0, 0, 1, low_open=True)
        Traceback (most recent call last):
        ...
        ValueError: eval_fraction must be a number in (0, 1), got 0
    """
    inside = _is_number(value) and (value > low if low_open else value >= low) and (
        value < high if high_open else value <= high)
    if not inside:
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise ValueError(f"{name} must be a number in {interval}, got {value!r}")
    return value


def one_of(name: str, value: T, choices: Iterable[Any]) -> T:
    """Return ``value`` if it is one of ``choices``, else raise ``ValueError`` listing them.

    Example:
        >>> one_of("device", "cpu", ("cpu", "cuda"))
        'cpu'
        >>> one_of("seq", 1000, (512, 1024))
        Traceback (most recent call last):
        ...
        ValueError: seq must be one of 512, 1024, got 1000
        >>> one_of("convention", "x @ W.T", ("x @ W", "peft"))
        Traceback (most recent call last):
        ...
        ValueError: convention must be one of 'x @ W', 'peft', got 'x @ W.T'
    """
    choices = tuple(choices)
    if value not in choices:
        # quoted when a space or a comma in one of them would blur the list
        quote = any(isinstance(c, str) and (not c or " " in c or "," in c) for c in choices)
        shown = ", ".join(repr(c) if quote and isinstance(c, str) else str(c) for c in choices)
        raise ValueError(f"{name} must be one of {shown}, got {value!r}")
    return value


def non_empty(name: str, items: Any, what: str = "example") -> Any:
    """Return ``items`` if it holds at least one element, else raise ``ValueError`` (``name``: who needs it).

    Example:
        >>> non_empty("evaluate", [])
        Traceback (most recent call last):
        ...
        ValueError: evaluate needs at least one example, got none
    """
    if not items:
        raise ValueError(f"{name} needs at least one {what}, got none")
    return items


# Command-line values: argparse types, whose message argparse prefixes with the flag's name.


def positive_int_arg(text: str) -> int:
    """Parse a command-line value that must be a whole number of at least 1.

    Example:
        >>> positive_int_arg("16")
        16
        >>> positive_int_arg("1e9")
        Traceback (most recent call last):
        ...
        argparse.ArgumentTypeError: must be a whole number of at least 1, got '1e9'
    """
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, got {text!r}")
    return value


def positive_number_arg(text: str) -> float:
    """Parse a command-line value that must be a finite number above 0 (e.g. a GPU's memory).

    Example:
        >>> positive_number_arg("24")
        24.0
        >>> positive_number_arg("inf")
        Traceback (most recent call last):
        ...
        argparse.ArgumentTypeError: must be a finite number above 0, got 'inf'
    """
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number above 0, got {text!r}")
    return value
