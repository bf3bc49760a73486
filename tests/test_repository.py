"""The repository's layout and entry points, as the course design lays them out."""

from __future__ import annotations

import subprocess


def test_layout(repo):
    for folder in ("notebooks", "lessonlib", "exercises", "solutions", "tests"):
        assert (repo / folder).is_dir(), folder
    for name in ("README.md", "environment.yml", "pyproject.toml", "Makefile", ".ci/run"):
        assert (repo / name).is_file(), name


def test_ci_runs_the_readme_test_command(repo):
    ci = (repo / ".ci" / "run").read_text()
    assert "make test" in ci
    assert "make test" in (repo / "README.md").read_text()


def test_readme_course_map_lists_every_lesson(repo):
    readme = (repo / "README.md").read_text()
    for notebook in sorted((repo / "notebooks").glob("*.ipynb")):
        assert notebook.name in readme, f"README's course map misses {notebook.name}"


def test_setup_is_idempotent(repo):
    """After `make setup`, make finds nothing to do: a second `make lab` or `make test` installs nothing."""
    subprocess.run(["make", "-s", "setup"], cwd=repo, check=True, capture_output=True)
    assert subprocess.run(["make", "--question", "setup"], cwd=repo).returncode == 0
