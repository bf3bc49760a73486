"""Colab, simulated: lesson 01 runs from its set-up cell in a runtime that holds only what Colab provides.

A new virtual environment gets exactly the packages the course declares as provided by Colab
(``[tool.lessonlib] colab-provided`` in pyproject.toml), at the course's pins, and a stand-in
``google.colab`` module that the kernel imports at start, as Colab's runtime does. The set-up cell
then clones the course from a local clone (``LESSONLIB_REPOSITORY``; nothing comes from the
internet but packages) and installs what is missing. Checked: every missing requirement is then
installed at its pin, nothing that was there before changed (torch above all), and lesson 01 runs
top to bottom. Then the same check is shown to fail: with ``peft`` dropped from the requirements,
lesson 01 stops at its first ``import peft``.

The test takes one to three minutes (mostly pip; its wheels come from pip's cache after `make setup`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from lessonlib.authoring.notebooks import CLONE_DIR_ENV, REPOSITORY_ENV
from lessonlib.requirements import colab_provided, course_requirements, requirement_name

pytestmark = pytest.mark.slow

LESSON = "notebooks/01_lora_increment.ipynb"

# Run in the simulated runtime's own Python: execute a notebook, print its first error as JSON.
RUNNER = r"""
import json, sys
import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError
nb = nbformat.read(sys.argv[1], as_version=4)
error = None
try:
    NotebookClient(nb, timeout=600, kernel_name="python3").execute()
except CellExecutionError as exc:
    error = f"{exc.ename}: {exc.evalue}"
outputs = ["".join(o.get("text", "")) for c in nb.cells if c.cell_type == "code" for o in c.outputs
           if o.get("output_type") == "stream"]
print(json.dumps({"error": error, "stdout": outputs}))
"""


def _pip_list(python: Path) -> dict[str, str]:
    out = subprocess.run([str(python), "-m", "pip", "list", "--format=json"], check=True,
                         capture_output=True, text=True).stdout
    return {canonicalize_name(d["name"]): d["version"] for d in json.loads(out)}


def _provided_requirements() -> list[str]:
    provided = set(colab_provided())
    return [r for r in course_requirements() if requirement_name(r) in provided]


@pytest.fixture(scope="module")
def colab(tmp_path_factory, repo):
    """A runtime like Colab's: a new venv with only the provided packages, and google.colab importable."""
    root = tmp_path_factory.mktemp("colab")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", *_provided_requirements()],
                   check=True, capture_output=True, text=True)
    # Colab's runtime has imported google.colab before any cell runs: a stand-in module, imported
    # by an IPython start-up file of the kernel's own IPYTHONDIR.
    fake = root / "fake-colab" / "google" / "colab"
    fake.mkdir(parents=True)
    (fake.parent / "__init__.py").write_text("")
    (fake / "__init__.py").write_text('"""Stand-in for Colab\'s module in the simulated runtime."""\n')
    startup = root / "ipython" / "profile_default" / "startup"
    startup.mkdir(parents=True)
    (startup / "00-colab.py").write_text("import google.colab\n")
    # The course as Colab fetches it: a clone of this repository (committed state, as on GitHub).
    source = root / "origin"
    subprocess.run(["git", "clone", "--quiet", str(repo), str(source)], check=True)
    env = {
        **os.environ,
        "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(root / "fake-colab"),
        "IPYTHONDIR": str(root / "ipython"),
        "JUPYTER_DATA_DIR": str(root / "jupyter"),  # no kernel spec of this machine's user
        "VIRTUAL_ENV": str(venv),
        REPOSITORY_ENV: f"file://{source}",
        CLONE_DIR_ENV: str(root / "content" / "lora-qlora-course"),
    }
    return {"root": root, "python": python, "env": env, "source": source}


def _run_lesson(colab, repo, env=None) -> dict:
    done = subprocess.run([str(colab["python"]), "-c", RUNNER, str(repo / LESSON)],
                          env=env or colab["env"], cwd=colab["root"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_colab_setup_installs_exactly_what_is_missing_and_lesson_01_runs(colab, repo):
    before = _pip_list(colab["python"])
    provided = {requirement_name(r) for r in _provided_requirements()}
    missing = [Requirement(r) for r in course_requirements() if requirement_name(r) not in provided]
    assert missing and all(canonicalize_name(r.name) not in before for r in missing)
    assert "torch" in before and "google-colab" not in before

    result = _run_lesson(colab, repo)
    assert result["error"] is None, result["error"]
    # the seed's demo prints the same three shape lines as the stored lesson
    assert "W shape : torch.Size([8, 8])\ndelta shape : torch.Size([8, 8])\nW_new shape : torch.Size([8, 8])\n" in result["stdout"]
    assert Path(colab["env"][CLONE_DIR_ENV], "lessonlib").is_dir()  # the set-up cell cloned the course

    after = _pip_list(colab["python"])
    changed = {name: (version, after.get(name)) for name, version in before.items() if after.get(name) != version}
    assert not changed, f"the set-up changed what Colab provides: {changed}"
    for req in missing:
        name = canonicalize_name(req.name)
        assert name in after and req.specifier.contains(after[name], prereleases=True), (req, after.get(name))


def test_colab_check_fails_when_a_requirement_is_missing(colab, repo):
    """The same run, with peft taken out of the course's requirements: lesson 01 must fail."""
    subprocess.run([str(colab["python"]), "-m", "pip", "uninstall", "--quiet", "-y", "peft"], check=True)
    broken = colab["root"] / "content-without-peft"
    shutil.copytree(colab["source"], broken)
    pyproject = broken / "pyproject.toml"
    text = pyproject.read_text()
    peft_pin = next(r for r in course_requirements() if requirement_name(r) == "peft")
    assert f'"{peft_pin}",' in text
    pyproject.write_text(text.replace(f'"{peft_pin}",', "", 1))

    result = _run_lesson(colab, repo, env={**colab["env"], CLONE_DIR_ENV: str(broken)})
    assert result["error"] is not None and "peft" in result["error"], result["error"]
