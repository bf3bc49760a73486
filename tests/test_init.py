"""Tests of the lessonlib package itself: its docstring names every module it holds."""

from __future__ import annotations

from pathlib import Path

import lessonlib


def test_the_package_docstring_names_every_module():
    folder = Path(lessonlib.__file__).parent
    modules = sorted(p.stem for p in folder.glob("*.py") if not p.stem.startswith("_"))
    missing = [m for m in modules if f":mod:`~lessonlib.{m}`" not in lessonlib.__doc__]
    assert modules and not missing, f"lessonlib/__init__.py does not describe: {', '.join(missing)}"
    assert ":mod:`lessonlib.authoring`" in lessonlib.__doc__
