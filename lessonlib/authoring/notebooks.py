"""Notebook tools for authors and CI: the shared set-up cell, re-execution in place, hygiene checks.

Lessons are committed *with* their outputs, and nbval compares a fresh run against them. So the
stored outputs must be produced the same way every time (a fresh kernel, no timing metadata) and
must hold nothing that belongs to one machine (its paths, memory addresses). :func:`execute`
re-runs notebooks that way, and :func:`problems` is the check that both the executor and the
test suite apply.

Example:
    >>> from lessonlib.authoring.notebooks import problems
    >>> problems("notebooks/01_lora_increment.ipynb")
    []
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Iterable
from pathlib import Path

from lessonlib.requirements import REPO_ROOT, repository_url
from lessonlib.validation import positive_int

NOTEBOOK_FOLDERS = ("notebooks", "solutions")
"""Folders whose notebooks are stored executed and checked by nbval (``exercises/`` is generated)."""

MAX_NOTEBOOK_BYTES = 5_000_000
"""A stored notebook above this size is a problem (plots should be modest PNGs)."""

IGNORE_OUTPUT = "# NBVAL_IGNORE_OUTPUT"
"""The marker of a cell whose output depends on the machine (versions, timings, memory)."""

CLONE_DIR = "/content/lora-qlora-course"
"""Where the set-up cell clones the course inside a Colab runtime."""

CLONE_DIR_ENV = "LESSONLIB_COLAB_DIR"
"""Environment variable that overrides :data:`CLONE_DIR` (the simulated-Colab test uses it)."""

REPOSITORY_ENV = "LESSONLIB_REPOSITORY"
"""Environment variable that overrides the address the set-up cell clones (e.g. a local clone)."""


COLAB_LINK_TAG = "colab-link"
"""``metadata.lessonlib.generated`` of the markdown cell, first in every notebook, that links to Colab."""


def colab_url(relpath: str) -> str:
    """Return the address that opens a notebook of the course repository in Colab.

    Args:
        relpath: the notebook's path inside the repository, e.g. ``"notebooks/01_lora_increment.ipynb"``.

    Raises:
        ValueError: the repository address in ``pyproject.toml`` is not a GitHub repository
            (Colab opens notebooks from GitHub).

    Example:
        >>> colab_url("notebooks/01_lora_increment.ipynb")  # doctest: +ELLIPSIS
        'https://colab.research.google.com/github/.../blob/main/notebooks/01_lora_increment.ipynb'
    """
    url = repository_url().rstrip("/")
    prefix = "https://github.com/"
    owner_repo = url[len(prefix):].removesuffix(".git") if url.startswith(prefix) else ""
    if owner_repo.count("/") != 1:
        raise ValueError(f"[project.urls] Repository must be https://github.com/OWNER/NAME for Colab links, got {url!r}")
    return f"https://colab.research.google.com/github/{owner_repo}/blob/main/{relpath}"


def colab_link_source(relpath: str) -> str:
    """Return the markdown of the "Open in Colab" cell at the top of a notebook.

    Example:
        >>> colab_link_source("exercises/03_parameter_counts.ipynb").startswith("[Open in Colab](https://colab")
        True
    """
    return (f"[Open in Colab]({colab_url(relpath)}) (the same cells on Colab's GPU; "
            "on your own machine, `make lab` opens them)")


def _relpath(path: Path) -> str:
    """A stored notebook's path inside the repository: its folder's name and its own."""
    return f"{path.parent.name}/{path.name}"


def setup_cell_source() -> str:
    """Return the source of the first code cell that every notebook starts with.

    In Colab it clones the course (from ``[project.urls] Repository`` in ``pyproject.toml``, or
    ``$LESSONLIB_REPOSITORY``) and installs the requirements Colab lacks (Colab's torch is kept);
    anywhere else it installs nothing. Then it prints the environment report. Its output depends
    on the machine, so nbval ignores it; the assert after the report holds everywhere.

    Example:
        >>> setup_cell_source().splitlines()[:2]
        ['# NBVAL_IGNORE_OUTPUT', '# (versions and device differ between machines)']
        >>> repository_url() in setup_cell_source()
        True
    """
    return "\n".join(
        [
            IGNORE_OUTPUT,  # nbval knows the marker only when the comment is exactly this
            "# (versions and device differ between machines)",
            "# Set-up. In Colab: fetch the course and install what Colab lacks (Colab's torch is kept).",
            "# Anywhere else there is nothing to install. Then: what is this notebook running on?",
            "import os, sys",
            'if "google.colab" in sys.modules:',
            "    import subprocess",
            f'    course = os.environ.get("{CLONE_DIR_ENV}", "{CLONE_DIR}")',
            "    if not os.path.isdir(course):",
            f'        repository = os.environ.get("{REPOSITORY_ENV}", "{repository_url()}")',
            '        subprocess.run(["git", "clone", "--quiet", "--depth=1", repository, course], check=True)',
            "    sys.path.insert(0, course)",
            "    from lessonlib.env import install_colab_requirements",
            "    install_colab_requirements()",
            "",
            "from lessonlib.env import environment_report",
            "env = environment_report()",
            'assert env.device in ("cpu", "cuda")',
        ]
    )


def stored_notebooks(root: Path = REPO_ROOT) -> list[Path]:
    """Return every notebook stored with outputs (lessons and solutions), sorted.

    Example:
        >>> [p.name for p in stored_notebooks()][0]
        '01_lora_increment.ipynb'
    """
    found: list[Path] = []
    for folder in NOTEBOOK_FOLDERS:
        found += sorted((Path(root) / folder).glob("*.ipynb"))
    return found


def _machine_pattern() -> re.Pattern[str]:
    """A pattern for strings that belong to this machine or to one run of a program."""
    literal = {str(REPO_ROOT), sys.prefix, str(Path.home())}
    parts = [re.escape(p) for p in sorted(literal, key=len, reverse=True) if len(p) > 1]
    parts += [
        r"/(?:work|root|tmp|Users)/",
        r"/home/\w+/",
        r"site-packages",
        r"[A-Za-z]:\\\\",  # Windows drive paths
        r"\b0x[0-9a-fA-F]{8,}\b",  # memory addresses, e.g. '<object at 0x7f...>'
    ]
    return re.compile("|".join(parts))


def _output_text(output: dict) -> str:
    chunks = [output.get("text", ""), output.get("evalue", "")]
    for key, value in output.get("data", {}).items():
        if key.startswith("text/") or key.endswith("json"):
            chunks.append(value if isinstance(value, str) else json.dumps(value))
    return "".join("".join(c) if isinstance(c, list) else str(c) for c in chunks)


def unrecognised_nbval_markers(source: str) -> list[str]:
    """Return the comment lines of a cell that mention ``NBVAL_`` but that nbval will not obey.

    nbval acts on a comment only when, without its ``#``, it is exactly a marker name; anything
    after the name (an explanation, say) silently turns the marker off.

    Example:
        >>> unrecognised_nbval_markers("# NBVAL_IGNORE_OUTPUT\\nx = 1")
        []
        >>> unrecognised_nbval_markers("# NBVAL_IGNORE_OUTPUT (timings)")
        ['# NBVAL_IGNORE_OUTPUT (timings)']
    """
    from nbval.plugin import comment_markers

    bad = []
    for line in source.splitlines():
        line = line.strip()
        if line.startswith("#") and "NBVAL_" in line and line.lstrip("#").strip() not in comment_markers:
            bad.append(line)
    return bad


def problems(path: str | os.PathLike, *, generated: bool | None = None) -> list[str]:
    """Return what is wrong with a stored notebook (an empty list when it is clean).

    Checked: valid JSON; not larger than :data:`MAX_NOTEBOOK_BYTES`; the first cell is the Colab
    link of :func:`colab_link_source` for this notebook; the first code cell is
    :func:`setup_cell_source`; every code cell executed (unless ``generated``, for student
    versions stored without outputs); no error outputs (except cells marked
    ``NBVAL_RAISES_EXCEPTION``); in ``solutions/``, no self-check that says "not yet" (a solution
    must pass its own tests); no machine-specific strings in outputs.
    ``generated`` defaults to whether the notebook lies in an ``exercises/`` folder.

    Example:
        >>> problems("notebooks/01_lora_increment.ipynb")
        []
    """
    path = Path(path)
    if generated is None:
        generated = path.parent.name == "exercises"
    try:
        nb = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        return [f"{path.name}: cannot be read as a notebook ({exc})"]
    found: list[str] = []
    size = path.stat().st_size
    if size > MAX_NOTEBOOK_BYTES:
        found.append(f"{path.name}: {size / 1e6:.1f} MB is over {MAX_NOTEBOOK_BYTES / 1e6:.0f} MB (use smaller plots)")
    cells = nb.get("cells", [])
    if not cells or not _is_colab_link(cells[0]) or "".join(cells[0].get("source", "")) != colab_link_source(_relpath(path)):
        found.append(f"{path.name}: the first cell is not the Colab link for {_relpath(path)} "
                     "(python -m lessonlib notebooks sync writes it from pyproject.toml)")
    code = [(i, c) for i, c in enumerate(cells) if c.get("cell_type") == "code"]
    if not code or "".join(code[0][1].get("source", "")) != setup_cell_source():
        found.append(f"{path.name}: the first code cell is not the course set-up cell (lessonlib.authoring.notebooks.setup_cell_source)")
    leak = _machine_pattern()
    for i, cell in code:
        source = "".join(cell.get("source", ""))
        if not source.strip():
            continue
        for marker in unrecognised_nbval_markers(source):
            found.append(f"{path.name}: cell {i} has {marker!r}, which nbval ignores: "
                         "a marker must be a comment line of its own, e.g. '# NBVAL_IGNORE_OUTPUT'")
        if not generated and cell.get("execution_count") is None:
            found.append(f"{path.name}: cell {i} was never executed")
        for output in cell.get("outputs", []):
            failing = re.search(r"^\S+: not yet\. .*$", _output_text(output), re.M)
            if failing and path.parent.name == "solutions":
                found.append(f"{path.name}: cell {i} stores a failing self-check of the solution "
                             f"({failing.group(0)[:120]})")
            if output.get("output_type") == "error" and "NBVAL_RAISES_EXCEPTION" not in source:
                found.append(f"{path.name}: cell {i} stores an error ({output.get('ename')}: {output.get('evalue')})")
            match = leak.search(_output_text(output))
            if match:
                found.append(f"{path.name}: cell {i} output holds a machine-specific string {match.group(0)!r}")
    return found


def _normalise(nb) -> None:
    """Drop what differs from run to run without meaning anything: timing metadata."""
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
        if cell.cell_type == "code":
            for output in cell.get("outputs", []):
                output.get("metadata", {}).pop("execution", None)


def _is_colab_link(cell: dict) -> bool:
    return ((cell.get("metadata") or {}).get("lessonlib") or {}).get("generated") == COLAB_LINK_TAG


def sync_generated_cells(nb: dict, relpath: str) -> bool:
    """Make the cells generated from ``pyproject.toml`` current in a notebook; return True if changed.

    Two cells come from ``[project.urls] Repository``: the first cell, a markdown link that opens
    this notebook (``relpath`` in the repository) in Colab (:func:`colab_link_source`), inserted
    when missing; and the set-up cell, the first code cell (:func:`setup_cell_source`). Outputs are
    kept: nbval ignores the set-up cell's output. A notebook without a code cell gets no set-up
    cell (:func:`problems` reports it).

    Example:
        >>> nb = {"cells": [{"cell_type": "code", "source": "print(1)", "outputs": [], "metadata": {}}]}
        >>> sync_generated_cells(nb, "notebooks/x.ipynb"), nb["cells"][1]["source"] == setup_cell_source()
        (True, True)
        >>> nb["cells"][0]["source"] == colab_link_source("notebooks/x.ipynb")
        True
        >>> sync_generated_cells(nb, "notebooks/x.ipynb")
        False
    """
    changed = False
    cells = nb.setdefault("cells", [])
    link = colab_link_source(relpath)
    if not cells or not _is_colab_link(cells[0]):
        import uuid

        from nbformat import from_dict

        cells.insert(0, from_dict({"cell_type": "markdown", "id": uuid.uuid5(uuid.NAMESPACE_URL, relpath).hex[:8],
                                   "metadata": {"lessonlib": {"generated": COLAB_LINK_TAG}}, "source": link}))
        changed = True
    elif "".join(cells[0].get("source", "")) != link:
        cells[0]["source"] = link
        changed = True
    code = [cell for cell in cells if cell.get("cell_type") == "code"]
    if code and "".join(code[0].get("source", "")) != setup_cell_source():
        code[0]["source"] = setup_cell_source()
        changed = True
    return changed


def sync(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Apply :func:`sync_generated_cells` to notebook files in place; return the ones changed.

    Example:
        >>> sync(["notebooks/01_lora_increment.ipynb"])
        []
    """
    import nbformat

    changed = []
    for path in map(Path, paths):
        nb = nbformat.read(path, as_version=4)
        if sync_generated_cells(nb, _relpath(path.resolve())):
            nbformat.write(nb, path)
            changed.append(path)
    return changed


def execute_one(path: str | os.PathLike, timeout: int = 900) -> list[str]:
    """Execute one notebook in place in a fresh kernel; return its :func:`problems` afterwards.

    The generated cells are made current first (:func:`sync_generated_cells`).
    The kernel starts in the notebook's folder with this Python environment, as nbval's does.
    If a cell raises, the notebook is still written (so the error can be read in it) and the
    error is among the returned problems.

    Example:
        >>> execute_one("notebooks/01_lora_increment.ipynb")  # doctest: +SKIP
        []
    """
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    path = Path(path).resolve()
    nb = nbformat.read(path, as_version=4)
    sync_generated_cells(nb, _relpath(path))
    client = NotebookClient(
        nb,
        timeout=timeout,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
        record_timing=False,
    )
    try:
        client.execute()
    except CellExecutionError:
        pass  # the error output is in the notebook; problems() reports it below
    _normalise(nb)
    nbformat.write(nb, path)
    return problems(path)


def execute(paths: Iterable[str | os.PathLike], jobs: int = 2, timeout: int = 900) -> dict[str, list[str]]:
    """Execute notebooks in place, ``jobs`` at a time, with a progress bar; return problems by name.

    Example:
        >>> execute(["notebooks/01_lora_increment.ipynb"], jobs=1)  # doctest: +SKIP
        {'01_lora_increment.ipynb': []}
    """
    from concurrent.futures import ProcessPoolExecutor, as_completed

    from tqdm.auto import tqdm

    paths = [Path(p) for p in paths]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"no such notebook: {', '.join(missing)}")
    positive_int("jobs", jobs)
    results: dict[str, list[str]] = {}
    with ProcessPoolExecutor(max_workers=min(jobs, max(len(paths), 1))) as pool:
        futures = {pool.submit(execute_one, p, timeout): p for p in paths}
        with tqdm(total=len(futures), desc="executing notebooks", unit="nb") as bar:
            for future in as_completed(futures):
                results[futures[future].name] = future.result()
                bar.set_postfix_str(futures[future].name)
                bar.update()
    return results


def main(argv: list[str] | None = None) -> int:
    """``python -m lessonlib notebooks execute|check|sync [NB ...]``; return the exit status.

    ``execute`` re-runs notebooks in place in fresh kernels, ``check`` lists their hygiene problems
    (status 1 if any), ``sync`` rewrites the set-up cell from ``pyproject.toml``. Without paths:
    every stored lesson and solution. Bad usage: one line on stderr, status 2.

    Example:
        >>> main(["check", "notebooks/01_lora_increment.ipynb"])
        1 notebook(s), 0 problem(s)
        0
    """
    from lessonlib.params import CommandLineParser
    from lessonlib.validation import positive_int_arg

    parser = CommandLineParser(prog="python -m lessonlib notebooks",
                               description="Execute, check or sync the stored notebooks.")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    run = actions.add_parser("execute", help="re-execute notebooks in place in fresh kernels")
    run.add_argument("--jobs", type=positive_int_arg, default=2, help="notebooks run at once (default 2)")
    run.add_argument("--timeout", type=positive_int_arg, default=900, help="seconds allowed per cell (default 900)")
    actions.add_parser("check", help="list hygiene problems of stored notebooks (status 1 if any)")
    actions.add_parser("sync", help="rewrite the set-up cell from pyproject.toml, outputs kept")
    for action in actions.choices.values():
        action.add_argument("paths", nargs="*", help="notebooks (default: every lesson and solution)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)

    paths = args.paths or stored_notebooks()
    missing = [str(p) for p in paths if not os.path.isfile(p)]
    if missing:
        print(f"error: no such notebook: {', '.join(missing)}", file=sys.stderr)
        return 2
    if args.action == "sync":
        changed = sync(paths)
        for path in changed:
            print(f"updated the set-up cell of {path}")
        print(f"{len(paths)} notebook(s), {len(changed)} updated")
        return 0
    if args.action == "execute":
        issues = [line for lines in execute(paths, jobs=args.jobs, timeout=args.timeout).values() for line in lines]
    else:
        issues = [line for p in paths for line in problems(p)]
    for line in issues:
        print(line)
    print(f"{len(paths)} notebook(s), {len(issues)} problem(s)")
    return 1 if issues else 0
