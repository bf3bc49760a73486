"""nbval really compares: a stored output that no longer matches a fresh run fails the test run."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_notebook, new_output


def nbval(repo: Path, *paths: Path) -> subprocess.CompletedProcess:
    """Run nbval the way `make test` does, on the given notebooks."""
    args = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "--nbval", "--nbval-current-env",
            "--nbval-sanitize-with", str(repo / "tests" / "nbval_sanitize.cfg"), *map(str, paths)]
    return subprocess.run(args, capture_output=True, text=True, cwd=paths[0].parent)


def small_notebook(path: Path, stored: str) -> Path:
    cell = new_code_cell("print(6 * 7)", execution_count=1,
                         outputs=[new_output("stream", name="stdout", text=stored)])
    nb = new_notebook(cells=[cell])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


def test_matching_output_passes_and_changed_output_fails(tmp_path, repo):
    good = small_notebook(tmp_path / "good.ipynb", "42\n")
    result = nbval(repo, good)
    assert result.returncode == 0, result.stdout
    bad = small_notebook(tmp_path / "bad.ipynb", "43\n")
    result = nbval(repo, bad)
    assert result.returncode == 1
    assert "mismatch 'stdout'" in result.stdout and "43" in result.stdout  # nbval shows the difference


def test_a_changed_output_of_lesson_01_fails(tmp_path, repo):
    lesson = tmp_path / "01_lora_increment.ipynb"
    shutil.copy(repo / "notebooks" / lesson.name, lesson)
    nb = json.loads(lesson.read_text())
    changed = 0
    for cell in nb["cells"]:
        for output in cell.get("outputs", []):
            text = "".join(output.get("text", ""))
            if "delta shape : torch.Size([8, 8])" in text:
                output["text"] = text.replace("delta shape : torch.Size([8, 8])", "delta shape : torch.Size([8, 9])")
                changed += 1
    assert changed == 1
    lesson.write_text(json.dumps(nb))
    result = nbval(repo, lesson)
    assert result.returncode == 1
    assert "mismatch 'stdout'" in result.stdout and "Size([8, 9])" in result.stdout, result.stdout[-3000:]
