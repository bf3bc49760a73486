"""Tests of lessonlib.authoring.notebooks: hygiene of every stored notebook, the checks themselves, re-execution."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from lessonlib.authoring import notebooks

STORED = notebooks.stored_notebooks()


def test_there_are_stored_notebooks():
    assert any(p.name == "01_lora_increment.ipynb" for p in STORED)


@pytest.mark.parametrize("path", STORED, ids=[p.name for p in STORED])
def test_stored_notebook_is_clean(path):
    """Executed, no error outputs, no machine paths, starts with the set-up cell, not too large."""
    assert notebooks.problems(path) == []


@pytest.mark.parametrize("path", STORED, ids=[p.name for p in STORED])
def test_stored_notebook_has_no_timing_metadata(path):
    nb = json.loads(path.read_text())
    for cell in nb["cells"]:
        assert "execution" not in cell.get("metadata", {})


@pytest.mark.parametrize("path", STORED, ids=[p.name for p in STORED])
def test_stored_notebook_states_its_cpu_budget(path):
    """benchmarks/notebook_times.py compares each notebook's run time with this promise."""
    budget = json.loads(path.read_text())["metadata"].get("lessonlib", {}).get("cpu_budget_s")
    assert isinstance(budget, int) and budget > 0


def _colab_link(tmp_path: Path, name: str):
    return new_markdown_cell(notebooks.colab_link_source(f"{tmp_path.name}/{name}"),
                             metadata={"lessonlib": {"generated": notebooks.COLAB_LINK_TAG}})


def _write(tmp_path: Path, cells, name="nb.ipynb", link=True) -> Path:
    nb = new_notebook(cells=([_colab_link(tmp_path, name)] if link else []) + cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = tmp_path / name
    nbformat.write(nb, path)
    return path


def _setup_cell(executed=True):
    cell = new_code_cell(notebooks.setup_cell_source(), execution_count=1 if executed else None)
    return cell


def test_a_clean_notebook_has_no_problems(tmp_path):
    cell = new_code_cell("print(1)", execution_count=2, outputs=[new_output("stream", name="stdout", text="1\n")])
    assert notebooks.problems(_write(tmp_path, [new_markdown_cell("# t"), _setup_cell(), cell])) == []


def test_a_missing_or_stale_colab_link_is_a_problem_and_sync_fixes_it(tmp_path, monkeypatch):
    path = _write(tmp_path, [new_markdown_cell("# t"), _setup_cell()], link=False)
    assert any("Colab link" in p for p in notebooks.problems(path))
    assert notebooks.sync([path]) == [path] and notebooks.problems(path) == []
    assert notebooks.sync([path]) == []
    # the address comes from pyproject.toml: another repository makes every stored link stale
    monkeypatch.setattr(notebooks, "repository_url", lambda: "https://github.com/someone/fork")
    assert any("Colab link" in p for p in notebooks.problems(path))
    assert any("Colab link" in p for p in notebooks.problems(STORED[0]))
    assert "github/someone/fork/blob/main/" in notebooks.colab_link_source("notebooks/01_lora_increment.ipynb")
    assert "https://github.com/someone/fork" in notebooks.setup_cell_source()


def test_colab_links_need_a_github_repository(monkeypatch):
    monkeypatch.setattr(notebooks, "repository_url", lambda: "https://example.org/course.git")
    with pytest.raises(ValueError, match="must be https://github.com/OWNER/NAME"):
        notebooks.colab_url("notebooks/01_lora_increment.ipynb")


def test_a_solution_storing_a_failing_self_check_is_a_problem(tmp_path):
    out = new_output("stream", name="stdout", text="q1: not yet. TypeError: f() got an unexpected keyword argument 'x'\n")
    cells = [_setup_cell(), new_code_cell("with check('q1'): f(x=1)", execution_count=2, outputs=[out])]
    folder = tmp_path / "solutions"
    folder.mkdir()
    assert any("failing self-check" in p and "unexpected keyword" in p for p in notebooks.problems(_write(folder, cells)))
    other = tmp_path / "notebooks"
    other.mkdir()
    assert notebooks.problems(_write(other, cells)) == []     # a lesson may show a failing check on purpose


def test_unexecuted_cell_is_a_problem(tmp_path):
    path = _write(tmp_path, [_setup_cell(), new_code_cell("x = 1")])
    assert any("never executed" in p for p in notebooks.problems(path))
    assert notebooks.problems(path, generated=True) == []  # student versions are stored without outputs


def test_error_output_is_a_problem_unless_expected(tmp_path):
    error = new_output("error", ename="ValueError", evalue="bad", traceback=[])
    path = _write(tmp_path, [_setup_cell(), new_code_cell("raise ValueError('bad')", execution_count=2, outputs=[error])])
    assert any("ValueError: bad" in p for p in notebooks.problems(path))
    expected = new_code_cell("# NBVAL_RAISES_EXCEPTION\nraise ValueError('bad')", execution_count=2, outputs=[error])
    assert notebooks.problems(_write(tmp_path, [_setup_cell(), expected], "ok.ipynb")) == []


@pytest.mark.parametrize("text", ["/work/main/notebooks/x.csv", "/home/alice/data", "/tmp/tmpab12/f",
                                  "<object at 0x7f3a2b4c5d60>", "lib/python3.11/site-packages/torch/nn.py",
                                  "/root/.cache/huggingface"])
def test_machine_specific_output_is_a_problem(tmp_path, text):
    out = new_output("stream", name="stderr", text=f"warning from {text}\n")
    path = _write(tmp_path, [_setup_cell(), new_code_cell("warn()", execution_count=2, outputs=[out])])
    assert any("machine-specific" in p for p in notebooks.problems(path))


def test_machine_path_in_rich_output_is_found(tmp_path):
    out = new_output("execute_result", data={"text/plain": "'/home/bob/x'"}, execution_count=2)
    path = _write(tmp_path, [_setup_cell(), new_code_cell("p", execution_count=2, outputs=[out])])
    assert any("machine-specific" in p for p in notebooks.problems(path))


def test_missing_setup_cell_is_a_problem(tmp_path):
    path = _write(tmp_path, [new_code_cell("print(1)", execution_count=1)])
    assert any("set-up cell" in p for p in notebooks.problems(path))


def test_nbval_really_ignores_the_setup_cell_output():
    from nbval.plugin import find_comment_markers

    assert ("check", False) in list(find_comment_markers(notebooks.setup_cell_source()))


def test_a_marker_that_nbval_would_not_obey_is_a_problem(tmp_path):
    cell = new_code_cell("# NBVAL_IGNORE_OUTPUT  (timings)\nprint(1)", execution_count=2)
    path = _write(tmp_path, [_setup_cell(), cell])
    assert any("which nbval ignores" in p for p in notebooks.problems(path))
    cell.source = "# NBVAL_IGNORE_OUTPUT\n# (timings)\nprint(1)"
    assert notebooks.problems(_write(tmp_path, [_setup_cell(), cell], "ok.ipynb")) == []


def test_unreadable_notebook_is_a_problem(tmp_path):
    path = tmp_path / "broken.ipynb"
    path.write_text("{not json")
    assert "cannot be read" in notebooks.problems(path)[0]


def test_setup_cell_clones_the_repository_named_in_pyproject():
    from lessonlib.requirements import repository_url

    source = notebooks.setup_cell_source()
    assert source.startswith(notebooks.IGNORE_OUTPUT)
    assert repository_url() in source and "install_colab_requirements()" in source
    compile(source, "setup", "exec")


def test_execute_writes_outputs_without_timing_metadata(tmp_path):
    path = _write(tmp_path, [_setup_cell(executed=False), new_code_cell("print(6 * 7)")])
    found = notebooks.execute([path], jobs=1)
    assert found == {"nb.ipynb": []}
    nb = json.loads(path.read_text())
    assert "".join(nb["cells"][2]["outputs"][0]["text"]) == "42\n"   # after the Colab link and the set-up
    assert all("execution" not in c["metadata"] for c in nb["cells"])


def test_execute_reports_a_failing_cell_and_keeps_the_error(tmp_path):
    path = _write(tmp_path, [_setup_cell(executed=False), new_code_cell("1 / 0"), new_code_cell("print('after')")])
    found = notebooks.execute([path], jobs=1)["nb.ipynb"]
    assert any("ZeroDivisionError" in p for p in found)
    assert any("never executed" in p for p in found)


def test_execute_rejects_missing_files_and_bad_jobs(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such notebook"):
        notebooks.execute([tmp_path / "missing.ipynb"])
    path = _write(tmp_path, [_setup_cell()])
    with pytest.raises(ValueError, match="jobs must be a positive integer, got 0"):
        notebooks.execute([path], jobs=0)
