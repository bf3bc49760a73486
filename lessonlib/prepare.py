"""Prepare, once per machine and user, what the lessons need: ``python -m lessonlib prepare``.

``make setup`` runs this right after installing the course, so that no lesson, exercise or test
does anything different, or prints anything extra, the first time it runs on a new machine:

- **the offline base model**: the packaged GGUF file is converted into a safetensors copy in the
  model cache (:func:`lessonlib.models.converted_model_dir`, about 20 s); without this, the first
  lesson that loads the model would print a conversion line into its output;
- **matplotlib's font cache**: matplotlib builds it on its first import under a new HOME and logs
  "Matplotlib is building the font cache", which would land in the first plotting cell.

Each step is skipped when already done, so a second run does nothing and says so.

Example:
    >>> from lessonlib.prepare import STEPS
    >>> [name for name, _ in STEPS]
    ['base model', 'matplotlib font cache']
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path


def _font_cache_file() -> Path:
    import matplotlib

    return Path(matplotlib.get_cachedir())


def font_cache_ready() -> bool:
    """Return True when matplotlib's font cache exists (its first import will then print nothing).

    Example:
        >>> isinstance(font_cache_ready(), bool)
        True
    """
    return any(_font_cache_file().glob("fontlist-*.json"))


def prepare_font_cache() -> str:
    """Build matplotlib's font cache if it is missing; return what was done.

    Example:
        >>> prepare_font_cache()  # doctest: +ELLIPSIS
        'matplotlib font cache: ...built'
    """
    if font_cache_ready():
        return "matplotlib font cache: already built"
    import matplotlib.font_manager  # noqa: F401  (building the cache is a side effect of the import)

    return "matplotlib font cache: built"


def prepare_model() -> str:
    """Convert the packaged base model into the cache if it is not there yet; return what was done.

    Raises:
        FileNotFoundError: the offline model package is not installed (the message says how).

    Example:
        >>> prepare_model()  # doctest: +SKIP
        'base model: already in the cache (~/.cache/lora-qlora-course/models/SmolLM2-135M-Instruct)'
    """
    from lessonlib import models

    done = models.is_converted()
    where = models.converted_model_dir(progress=True)
    shown = str(where).replace(str(Path.home()), "~", 1)
    return f"base model: {'already in' if done else 'converted into'} the cache ({shown})"


STEPS: list[tuple[str, Callable[[], str]]] = [
    ("base model", prepare_model),
    ("matplotlib font cache", prepare_font_cache),
]
"""What :func:`prepare` does, in order: ``(name, function returning a one-line report)``."""


def prepare(print_progress: bool = True) -> list[str]:
    """Run every step of :data:`STEPS`; return their one-line reports.

    Example:
        >>> reports = prepare(print_progress=False)  # doctest: +SKIP
        >>> len(reports)  # doctest: +SKIP
        2
    """
    reports = []
    for _name, step in STEPS:
        line = step()
        reports.append(line)
        if print_progress:
            print(line, flush=True)
    return reports


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m lessonlib prepare``: prepare the model cache and matplotlib's font cache."""
    parser = argparse.ArgumentParser(
        prog="python -m lessonlib prepare",
        description="Prepare what the lessons need on this machine (the converted base model, "
        "matplotlib's font cache), so that their first run is like every other. Safe to run again.",
    )
    parser.parse_args(argv)
    try:
        prepare()
    except OSError as exc:
        if exc.errno is None:  # the offline model package is missing: the message says how to install it
            print(f"error: {exc}", file=sys.stderr)
        else:
            from lessonlib import models

            print(f"error: cannot write the model cache {models.cache_dir()}: {exc.strerror} ({exc.filename}); "
                  f"set {models.CACHE_ENV} to a writable folder", file=sys.stderr)
        return 2
    return 0
