"""Exercise notebooks from one source: markers, the student-version generator, and self-checks.

``solutions/NN_topic.ipynb`` is the single source. Its cells are marked in their metadata, under
the key ``"lessonlib"``:

- ``{"answer": "q1"}``: a code cell the student completes. The solution lies between the lines
  ``### BEGIN SOLUTION`` and ``### END SOLUTION``; the student version gets a stub that raises
  ``NotImplementedError`` in its place. A numeric prediction is an answer cell too (``q2 = 65_536``).
- ``{"answer": "q5", "manual": 2}``: a markdown cell with a free-response answer worth 2 points,
  graded by hand. Its model answer (all of it, or the part between ``<!-- BEGIN SOLUTION -->`` and
  ``<!-- END SOLUTION -->``) becomes a placeholder for the student.
- ``{"rubric": "q5"}``: the rubric of a free-response question (markdown); removed for students.
- ``{"tests": "q1", "points": 2}``: a test cell, ``with check("q1", hint="..."): assert ...``.
  Visible test cells stay in the student version and give feedback at once; with ``"hidden": true``
  the cell is removed from the student version and runs only when the instructor grades.

:func:`build` writes ``exercises/`` from ``solutions/`` (``python -m lessonlib exercises build``);
``python -m lessonlib exercises check`` fails when ``exercises/`` is not what it would write.

Example:
    >>> strip_solution("def f():\\n    ### BEGIN SOLUTION\\n    return 1\\n    ### END SOLUTION\\n", "q1")
    'def f():\\n    raise NotImplementedError("q1: write your answer here")\\n'
"""

from __future__ import annotations

import argparse
import ast
import copy
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lessonlib.authoring.notebooks import sync_generated_cells
from lessonlib.requirements import REPO_ROOT

KEY = "lessonlib"
"""The cell-metadata key under which the exercise markers live."""

BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
MD_BEGIN, MD_END = "<!-- BEGIN SOLUTION -->", "<!-- END SOLUTION -->"
MD_PLACEHOLDER = "*Write your answer here.*"
"""What a free-response answer cell holds in the student version."""


@dataclass(frozen=True)
class Question:
    """One question of an exercise notebook, as its markers declare it."""

    name: str
    kind: str  # "auto" (code or numeric prediction, graded by tests) or "manual" (free response)
    points: int  # autograded: the sum over its test cells; manual: the points the marker gives
    hidden_points: int = 0  # autograded points that only hidden tests award


def marker(cell: dict) -> dict:
    """Return a cell's exercise marker (``{}`` for an ordinary cell).

    Example:
        >>> marker({"cell_type": "code", "metadata": {"lessonlib": {"answer": "q1"}}, "source": ""})
        {'answer': 'q1'}
    """
    value = cell.get("metadata", {}).get(KEY, {})
    if not isinstance(value, dict):
        raise ValueError(f"cell metadata '{KEY}' must be a mapping, got {value!r}")
    return dict(value)


def _source(cell: dict) -> str:
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else source


def strip_solution(source: str, question: str) -> str:
    """Replace every ``### BEGIN/END SOLUTION`` region of a code cell by a stub that raises.

    The stub keeps the region's indentation, so a function body stays a function body.
    Raises ValueError when the markers are missing or unbalanced.

    Example:
        >>> print(strip_solution("x = 1\\n### BEGIN SOLUTION\\ny = 2\\n### END SOLUTION", "q3"))
        x = 1
        raise NotImplementedError("q3: write your answer here")
    """
    out: list[str] = []
    inside = False
    regions = 0
    for line in source.splitlines(keepends=True):
        text = line.strip()
        if text == BEGIN:
            if inside:
                raise ValueError(f"{question}: '{BEGIN}' inside a solution region (expected '{END}' first)")
            inside, regions = True, regions + 1
            indent = line[: len(line) - len(line.lstrip())]
            newline = "\n" if line.endswith("\n") else ""
            out.append(f'{indent}raise NotImplementedError("{question}: write your answer here"){newline}')
        elif text == END:
            if not inside:
                raise ValueError(f"{question}: '{END}' without a '{BEGIN}' before it")
            inside = False
        elif not inside:
            out.append(line)
    if inside:
        raise ValueError(f"{question}: '{BEGIN}' is never closed by '{END}'")
    if not regions:
        raise ValueError(f"{question}: an answer cell needs a '{BEGIN}' ... '{END}' region")
    text = "".join(out)
    return text[:-1] if text.endswith("\n") and not source.endswith("\n") else text


def strip_markdown_solution(source: str) -> str:
    """Replace a free-response model answer with :data:`MD_PLACEHOLDER`.

    With ``<!-- BEGIN SOLUTION -->`` / ``<!-- END SOLUTION -->`` only that part is replaced;
    without them, the whole cell is the model answer.

    Example:
        >>> strip_markdown_solution("**Answer:** <!-- BEGIN SOLUTION -->Because.<!-- END SOLUTION -->")
        '**Answer:** *Write your answer here.*'
    """
    if MD_BEGIN not in source:
        return MD_PLACEHOLDER
    before, rest = source.split(MD_BEGIN, 1)
    if MD_END not in rest:
        raise ValueError(f"'{MD_BEGIN}' is never closed by '{MD_END}'")
    return before + MD_PLACEHOLDER + rest.split(MD_END, 1)[1]


def questions(nb: dict) -> dict[str, Question]:
    """Return the questions a source notebook declares, in order, after checking its markers.

    Example:
        >>> cells = [{"cell_type": "code", "source": "### BEGIN SOLUTION\\nx = 1\\n### END SOLUTION",
        ...           "metadata": {"lessonlib": {"answer": "q1"}}},
        ...          {"cell_type": "code", "source": "with check('q1'):\\n    assert x == 1",
        ...           "metadata": {"lessonlib": {"tests": "q1", "points": 2}}}]
        >>> questions({"cells": cells})
        {'q1': Question(name='q1', kind='auto', points=2, hidden_points=0)}
    """
    answers: dict[str, str] = {}
    points: dict[str, int] = {}
    hidden: dict[str, int] = {}
    manual: dict[str, int] = {}
    tested: set[str] = set()
    rubrics: set[str] = set()
    for i, cell in enumerate(nb.get("cells", [])):
        mark = marker(cell)
        where = f"cell {i}"
        if "answer" in mark:
            name = str(mark["answer"])
            if "manual" in mark:
                if cell.get("cell_type") != "markdown":
                    raise ValueError(f"{where}: a free-response answer ({name}) must be a markdown cell")
                value = mark["manual"]
                if not isinstance(value, int) or value < 1:
                    raise ValueError(f"{where}: 'manual' must be a positive number of points, got {value!r}")
                manual[name] = value
                kind = "manual"
            else:
                if cell.get("cell_type") != "code":
                    raise ValueError(f"{where}: answer {name} is a markdown cell; add \"manual\": POINTS for free response")
                strip_solution(_source(cell), name)  # raises when the markers are wrong
                kind = "auto"
            if answers.setdefault(name, kind) != kind:
                raise ValueError(f"{where}: question {name} mixes code and free-response answer cells")
        elif "tests" in mark:
            name = str(mark["tests"])
            value = mark.get("points", 0)
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"{where}: 'points' must be a whole number >= 0, got {value!r}")
            if cell.get("cell_type") != "code":
                raise ValueError(f"{where}: the tests of {name} must be a code cell")
            if name not in answers:
                raise ValueError(f"{where}: tests of {name} come before any answer cell of {name}")
            tested.add(name)
            points[name] = points.get(name, 0) + value
            if mark.get("hidden"):
                hidden[name] = hidden.get(name, 0) + value
        elif "rubric" in mark:
            rubrics.add(str(mark["rubric"]))
    for name, kind in answers.items():
        if kind == "auto" and name not in tested:
            raise ValueError(f"question {name} has an answer cell but no test cell")
        if kind == "manual" and name not in rubrics:
            raise ValueError(f"free-response question {name} has no rubric cell ({{\"rubric\": \"{name}\"}})")
    return {
        name: Question(name, kind, manual[name] if kind == "manual" else points[name], hidden.get(name, 0))
        for name, kind in answers.items()
    }


def exercise_notebook(solution: Any, name: str = "") -> Any:
    """Return the student version of a solution notebook (an nbformat node; the input is unchanged).

    Solution regions become stubs, free-response answers placeholders, hidden test cells and
    rubrics are removed, outputs and execution counts cleared. Markers stay in the metadata:
    the grader finds the student's answer cells by them. ``name`` (the exercise, ``NN_topic``) is
    recorded in the notebook's metadata as ``lessonlib.exercise_of``, and the Colab link at the
    top then opens ``exercises/NAME.ipynb``.

    Example:
        >>> import nbformat
        >>> nb = nbformat.read("solutions/01_lora_increment.ipynb", as_version=4)
        >>> student = exercise_notebook(nb)
        >>> any("BEGIN SOLUTION" in c.source for c in student.cells)
        False
    """
    questions(solution)  # refuse a source with broken markers
    nb = copy.deepcopy(solution)
    cells = []
    for cell in nb.cells:
        mark = marker(cell)
        if "rubric" in mark or ("tests" in mark and mark.get("hidden")):
            continue
        if "answer" in mark:
            question = str(mark["answer"])
            cell.source = strip_markdown_solution(cell.source) if "manual" in mark else strip_solution(cell.source, question)
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
        cell.metadata.pop("execution", None)
        cells.append(cell)
    nb.cells = cells
    if name:
        nb.metadata.setdefault(KEY, {})["exercise_of"] = name
        sync_generated_cells(nb, f"exercises/{name}.ipynb")  # its Colab link opens the student version
    return nb


def exercise_text(solution_path: str | os.PathLike) -> str:
    """Return the exact text that :func:`build` writes for one solution notebook.

    Example:
        >>> exercise_text("solutions/01_lora_increment.ipynb").startswith("{")
        True
    """
    import nbformat

    path = Path(solution_path)
    return nbformat.writes(exercise_notebook(nbformat.read(path, as_version=4), path.stem)) + "\n"


def build(
    solutions_dir: str | os.PathLike = REPO_ROOT / "solutions",
    exercises_dir: str | os.PathLike = REPO_ROOT / "exercises",
    *,
    check_only: bool = False,
) -> list[str]:
    """Write (or, with ``check_only``, compare) every student version; return what differed.

    Each entry says which file was (or would be) written or removed. An empty list means
    ``exercises/`` already was exactly what the generator writes.

    Example:
        >>> build(check_only=True)
        []
    """
    solutions_dir, exercises_dir = Path(solutions_dir), Path(exercises_dir)
    if not solutions_dir.is_dir():
        raise ValueError(f"no solutions folder at {solutions_dir}")
    changed: list[str] = []
    expected = {p.name: exercise_text(p) for p in sorted(solutions_dir.glob("*.ipynb"))}
    for name, text in expected.items():
        target = exercises_dir / name
        if not target.is_file() or target.read_text() != text:
            changed.append(f"exercises/{name}: {'out of date' if target.is_file() else 'missing'}")
            if not check_only:
                exercises_dir.mkdir(parents=True, exist_ok=True)
                target.write_text(text)
    for extra in sorted(exercises_dir.glob("*.ipynb")):
        if extra.name not in expected:
            changed.append(f"exercises/{extra.name}: has no solution notebook")
            if not check_only:
                extra.unlink()
    return changed


def check_hint(source: str) -> str:
    """Return the ``hint=`` text of the ``check(...)`` call in a test cell (``""`` if none).

    Example:
        >>> check_hint('with check("q1", hint="count A and B"):\\n    assert True')
        'count A and B'
    """
    call = _check_call(source)
    for keyword in call.keywords if call is not None else []:
        if keyword.arg == "hint" and isinstance(keyword.value, ast.Constant):
            return str(keyword.value.value)
    return ""


def _check_call(source: str) -> ast.Call | None:
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.With):
            for item in node.items:
                call = item.context_expr
                if isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == "check":
                    return call
    return None


def unwrap_checks(source: str) -> str:
    """Return a test cell's code with every ``with check(...):`` replaced by its plain body.

    The grader runs this form, so a failing ``assert`` fails the cell whatever the submission did
    to :class:`lessonlib.check.check`. Raises ValueError when the cell is not valid Python.

    Example:
        >>> print(unwrap_checks('with check("q1"):\\n    assert x == 1'))
        assert x == 1
    """
    try:
        tree = ast.parse(source)
    except SyntaxError as exc:
        raise ValueError(f"a test cell is not valid Python: {exc}") from exc

    class Unwrap(ast.NodeTransformer):
        def visit_With(self, node: ast.With) -> Any:
            self.generic_visit(node)
            calls = [i.context_expr for i in node.items]
            if len(calls) == 1 and isinstance(calls[0], ast.Call) and getattr(calls[0].func, "id", None) == "check":
                return node.body
            return node

    return ast.unparse(ast.fix_missing_locations(Unwrap().visit(tree)))


def main(argv: list[str] | None = None) -> int:
    """``python -m lessonlib exercises build|check``: write or verify ``exercises/``.

    Example:
        >>> main(["check"])  # doctest: +ELLIPSIS
        exercises/ is up to date (... notebook(s))
        0
    """
    parser = argparse.ArgumentParser(prog="python -m lessonlib exercises",
                                     description="Generate the student exercise notebooks from solutions/.")
    parser.add_argument("action", choices=["build", "check"],
                        help="build: write exercises/; check: exit 1 if exercises/ is not what build writes")
    parser.add_argument("--solutions", default=str(REPO_ROOT / "solutions"), help="source folder (default solutions/)")
    parser.add_argument("--exercises", default=str(REPO_ROOT / "exercises"), help="target folder (default exercises/)")
    args = parser.parse_args(argv)
    try:
        changed = build(args.solutions, args.exercises, check_only=args.action == "check")
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    count = len(list(Path(args.solutions).glob("*.ipynb")))
    for line in changed:
        print(line)
    if args.action == "check":
        if changed:
            print("exercises/ is not what the generator writes: run `make exercises` and commit the result")
            return 1
        print(f"exercises/ is up to date ({count} notebook(s))")
    else:
        print(f"{count} exercise notebook(s) generated, {len(changed)} changed")
    return 0
