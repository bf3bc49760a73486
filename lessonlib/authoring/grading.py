"""The instructor's grader: a folder of submitted exercise notebooks in, points per question out.

``python -m lessonlib grade SUBMISSIONS_DIR --out grades.csv [--feedback DIR] [--jobs N] [--timeout S]``

Each submission is graded from its *answer cells* (found by their markers, see
:mod:`lessonlib.authoring.exercises`) and the cells of the student's own that sit among them;
every other cell, the tests included, comes from the source in ``solutions/``: editing or
deleting a check cell in a submission changes nothing.

**Untrusted code is confined.** Each submission runs in its own process with its own kernel,
sandboxed by bubblewrap (:mod:`lessonlib.authoring.sandbox`: its own user, PID, network and IPC
namespaces, a read-only view of the course's environment only, capped memory, processes and
output). Where no sandbox can be had the grader refuses, unless told ``--no-sandbox``. Inside the
kernel, the course's cells and tests run through a guard (:mod:`lessonlib.authoring.kernel_guard`)
that keeps them out of the history and restores what they rely on; the tests of a question are sent
only when they run. Results come back to the grader over a pipe, never through a file the
submission could write, and are appended to a journal next to ``--out`` as they complete: a
killed grader continues with ``--resume``. What one interpreter cannot prevent is flagged
(:mod:`lessonlib.authoring.flags`) in the CSV's ``flags`` column.

Statuses:

- ``ok``: every cell ran (an answer that raises just fails its own tests);
- ``missing-answers``: some answer cells were deleted; the others are graded;
- ``timeout``: the time limit was reached; points earned before it are kept;
- ``crashed``: the kernel died (``os._exit``, a segfault, out of memory); points earned before are kept;
- ``invalid``: the file is not a readable notebook (nbformat 3 is upgraded first); 0 points;
- ``wrong-exercise``: the notebook's metadata says it is another exercise; 0 points.

Submission layouts: ``DIR/STUDENT.ipynb``, or ``DIR/STUDENT/NN_topic.ipynb`` (one folder per
student). The exercise is found from the file names or the notebooks' metadata, or given with
``--exercise NN_topic``.

Example:
    >>> parse_submissions_layout(["alice.ipynb", "bob.ipynb"])
    {'alice': 'alice.ipynb', 'bob': 'bob.ipynb'}
"""

from __future__ import annotations

import argparse
import ast
import csv
import hashlib
import io
import json
import math
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lessonlib.authoring.exercises import MD_PLACEHOLDER, Question, check_hint, marker, questions, unwrap_checks
from lessonlib.authoring.flags import cell_flags
from lessonlib.authoring.kernel_guard import outcome
from lessonlib.authoring.notebooks import IGNORE_OUTPUT, setup_cell_source
from lessonlib.authoring.sandbox import Kernel, KernelDied, KernelTimeout, Limits, sandbox_problem
from lessonlib.requirements import REPO_ROOT
from lessonlib.validation import positive_int, positive_number

STATUSES = ("ok", "timeout", "crashed", "invalid", "missing-answers", "wrong-exercise")
"""Every status a graded submission can have."""

KERNEL_START_S = 60
"""Seconds allowed for a kernel to start and import what the course's cells import, on top of
the submission's own time limit."""

MESSAGE_CHARS = 120
"""The most of an exception message that reaches a student's feedback (its first line only)."""

FREE_RESPONSE_CHARS = 20_000
"""The most of one free-response answer that is copied for the instructor."""

RESULT_PREFIX = "lessonlib-grading-result "
"""How the grading process marks its one line of result on its stdout."""

GUARD_SOURCE = Path(__file__).with_name("kernel_guard.py")


class SandboxUnavailable(RuntimeError):
    """No sandbox can be had on this machine and grading was not told to run without one."""


@dataclass
class Result:
    """The grade of one submission: points per autograded question, a status, feedback, flags."""

    student: str
    status: str
    points: dict[str, int] = field(default_factory=dict)
    feedback: list[str] = field(default_factory=list)
    answers: dict[str, str] = field(default_factory=dict)  # free-response text, for the instructor
    flags: list[str] = field(default_factory=list)  # what the instructor should look at

    @property
    def total(self) -> int:
        return sum(self.points.values())


def parse_submissions_layout(names: list[str]) -> dict[str, str]:
    """Map each student to their submission, from paths relative to the submissions folder.

    ``STUDENT.ipynb`` or ``STUDENT/ANY.ipynb``; a student with several notebooks is an error.

    Example:
        >>> parse_submissions_layout(["ann/01_lora_increment.ipynb", "ben/01_lora_increment.ipynb"])
        {'ann': 'ann/01_lora_increment.ipynb', 'ben': 'ben/01_lora_increment.ipynb'}
    """
    found: dict[str, str] = {}
    for name in sorted(names):
        parts = Path(name).parts
        if len(parts) > 2 or any(p.startswith(".") for p in parts):
            continue  # checkpoints and deeper folders are not submissions
        student = Path(name).stem if len(parts) == 1 else parts[0]
        if student in found:
            raise ValueError(f"student {student!r} has two submissions ({found[student]}, {name}); keep one")
        found[student] = name
    return found


def find_submissions(folder: str | os.PathLike) -> dict[str, Path]:
    """Return ``{student: path}`` for every notebook in a submissions folder.

    Example:
        >>> find_submissions("exercises")["01_lora_increment"]
        PosixPath('exercises/01_lora_increment.ipynb')
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"no submissions folder at {folder}")
    names = [str(p.relative_to(folder)) for p in folder.rglob("*.ipynb")]
    if not names:
        raise ValueError(f"no notebooks (*.ipynb) in {folder}")
    return {student: folder / name for student, name in parse_submissions_layout(names).items()}


def _exercise_of(nb: Any) -> str | None:
    """The ``lessonlib.exercise_of`` metadata of a notebook, if it has a usable one."""
    meta = nb.get("metadata") if isinstance(nb, dict) else None
    mark = meta.get("lessonlib") if isinstance(meta, dict) else None
    value = mark.get("exercise_of") if isinstance(mark, dict) else None
    return value if isinstance(value, str) and value else None


def find_source(submissions: dict[str, Path], exercise: str | None = None,
                solutions_dir: str | os.PathLike = REPO_ROOT / "solutions") -> Path:
    """Return the solution notebook the submissions answer.

    From ``exercise`` when given; else from the submissions' file names when they are named after
    an exercise; else from the ``lessonlib.exercise_of`` metadata that most readable ones hold.

    Example:
        >>> find_source({"ann": Path("x/ann/01_lora_increment.ipynb")}).name
        '01_lora_increment.ipynb'
    """
    solutions_dir = Path(solutions_dir)
    known = {p.stem: p for p in solutions_dir.glob("*.ipynb")}
    if exercise is None:
        stems = {p.stem for p in submissions.values()} & set(known)
        if len(stems) > 1:
            raise ValueError(f"the submissions answer several exercises ({', '.join(sorted(stems))}); "
                             "grade one at a time with --exercise")
        if not stems:
            said: list[str] = []
            for path in submissions.values():
                try:
                    found = _exercise_of(json.loads(path.read_text()))
                except (OSError, ValueError):
                    continue
                if found:
                    said.append(found)
            top = Counter(said).most_common(1)
            if top and top[0][1] * 2 > len(said):  # most say so; the others are graded as wrong-exercise
                stems.add(top[0][0])
        if len(stems) != 1:
            raise ValueError("cannot tell which exercise the submissions answer; "
                             f"pass --exercise, one of: {', '.join(sorted(known)) or '(none)'}")
        exercise = stems.pop()
    exercise = Path(exercise).stem
    if exercise not in known:
        raise ValueError(f"no solution notebook for exercise {exercise!r}; known: {', '.join(sorted(known))}")
    return known[exercise]


def read_notebook(text: str) -> dict:
    """Parse a submitted notebook; upgrade nbformat 3; raise ValueError saying what is malformed.

    Checked: a JSON object with a list of cells, each cell a mapping with a ``cell_type``, its
    ``source`` text (or list of lines) and its ``metadata`` a mapping (or absent), the
    ``lessonlib`` marker a mapping; the notebook's own metadata a mapping.

    Example:
        >>> read_notebook('{"cells": [{"cell_type": "code", "source": "x = 1", "metadata": null}]}')
        Traceback (most recent call last):
        ...
        ValueError: cell 0: its metadata is null, not a mapping
        >>> len(read_notebook('{"nbformat": 4, "metadata": {}, "cells": []}')["cells"])
        0
    """
    nb = json.loads(text)
    if not isinstance(nb, dict):
        raise ValueError(f"the file holds a JSON {type(nb).__name__}, not a notebook")
    if isinstance(nb.get("nbformat"), int) and nb["nbformat"] < 4:
        import nbformat

        try:
            nb = json.loads(nbformat.writes(nbformat.reads(text, as_version=4)))
        except Exception as exc:  # nbformat raises many kinds on a broken old notebook
            raise ValueError(f"an nbformat {nb['nbformat']} notebook that cannot be upgraded "
                             f"({type(exc).__name__})") from None
    cells = nb.get("cells")
    if not isinstance(cells, list):
        raise ValueError("no list of cells")
    if "metadata" in nb and not isinstance(nb["metadata"], dict):
        raise ValueError(f"the notebook's metadata is {json.dumps(nb['metadata'])[:40]}, not a mapping")
    for i, cell in enumerate(cells):
        if not isinstance(cell, dict):
            raise ValueError(f"cell {i} is not a mapping")
        if not isinstance(cell.get("cell_type"), str):
            raise ValueError(f"cell {i} has no cell_type")
        meta = cell.get("metadata", {})
        if not isinstance(meta, dict):
            raise ValueError(f"cell {i}: its metadata is {json.dumps(meta)[:40]}, not a mapping")
        if not isinstance(meta.get("lessonlib", {}), dict):
            raise ValueError(f"cell {i}: its 'lessonlib' marker is not a mapping")
        source = cell.get("source", "")
        if not (isinstance(source, str) or (isinstance(source, list) and all(isinstance(s, str) for s in source))):
            raise ValueError(f"cell {i}: its source is neither text nor a list of lines")
    return nb


def _text(cell: dict) -> str:
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else str(source)


def _is_setup_cell(text: str) -> bool:
    """The course's set-up cell, this version or an older one (grading needs no environment report)."""
    return text == setup_cell_source() or (text.startswith(IGNORE_OUTPUT) and "environment_report" in text)


@dataclass
class Step:
    """One cell the grader runs: what it is for, and its code."""

    role: str  # "given" (a cell of the course), "answer", "own" (a student's own cell) or "tests"
    question: str | None
    code: str
    points: int = 0
    hidden: bool = False
    hint: str = ""
    bound: list[str] = field(default_factory=list)  # names a course cell binds by import, def or class
    source: str = ""  # a test cell as written (``code`` is its unwrapped, re-formatted form)


def bound_names(code: str) -> list[str]:
    """Return the names a cell binds at its top level with ``import``, ``def`` or ``class``.

    Example:
        >>> bound_names("import torch.nn as nn\\nfrom math import sqrt\\ndef f():\\n    import os\\nx = 1")
        ['nn', 'sqrt', 'f']
    """
    names: list[str] = []
    for node in ast.parse(code).body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names += [(a.asname or a.name).split(".")[0] for a in node.names if a.name != "*"]
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.append(node.name)
    return names


def import_lines(steps: list[Step]) -> list[str]:
    """Return every import statement of the course's cells and tests, once each, in order.

    Example:
        >>> import_lines([Step("given", None, "import torch\\nx = 1"), Step("tests", "q1", "import torch")])
        ['import torch']
    """
    found: list[str] = []
    for step in steps:
        if step.role in ("given", "tests"):
            for node in ast.walk(ast.parse(step.code)):
                if isinstance(node, ast.Import) or (isinstance(node, ast.ImportFrom) and node.level == 0):
                    line = ast.unparse(node)
                    if line not in found:
                        found.append(line)
    return found


def predictions(source: dict) -> dict[str, dict[str, str]]:
    """Return ``{question: {name: "int" or "float"}}`` for the numeric predictions of a source notebook.

    A prediction is an answer whose solution is ``name = NUMBER``; its answer must be a plain
    ``int`` (or, for a ``float``, an ``int`` or a ``float``), never a subclass or another type.

    Example:
        >>> import json
        >>> predictions(json.load(open("solutions/01_lora_increment.ipynb")))
        {'q3': {'q3_values': 'int'}, 'q4': {'q4_rank': 'int'}, 'q9': {'q9_shrink': 'float'}}
    """
    found: dict[str, dict[str, str]] = {}
    for cell in source.get("cells", []):
        name = marker(cell).get("answer")
        if name is None or cell.get("cell_type") != "code" or "manual" in marker(cell):
            continue
        text = _text(cell)
        body = [line for line in text.splitlines() if line.strip() not in ("### BEGIN SOLUTION", "### END SOLUTION")]
        try:
            tree = ast.parse("\n".join(body))
        except SyntaxError:
            continue
        for node in tree.body:
            if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                value = node.value.operand if isinstance(node.value, ast.UnaryOp) else node.value
                if isinstance(value, ast.Constant) and type(value.value) in (int, float):
                    found.setdefault(str(name), {})[node.targets[0].id] = type(value.value).__name__
    return found


def grading_plan(source: dict, submission: dict) -> tuple[list[Step], list[str], dict[str, str]]:
    """Return the cells to run, the questions whose answer cells are missing, and free-response text.

    The source's cells in order, with each answer cell replaced by the submission's answer cells
    for that question (all of them, in the submission's order, as a top-to-bottom run would
    execute them), test cells unwrapped (:func:`lessonlib.authoring.exercises.unwrap_checks`),
    the set-up cell left out (grading needs no environment report). The student's own code cells
    (cells without a marker that are not cells of the exercise) run in their notebook's order:
    each just before the answer cell that follows it, or after the last answer cell.

    Example:
        >>> import json
        >>> source = json.load(open("solutions/01_lora_increment.ipynb"))
        >>> steps, missing, _ = grading_plan(source, {"cells": []})
        >>> missing[:2], steps[0].role
        (['q1', 'q2'], 'given')
    """
    declared = questions(source)
    course = {_text(c).strip() for c in source["cells"] if c.get("cell_type") == "code" and not marker(c)}
    mine: dict[str, list[dict]] = {}
    own_before: dict[str, list[str]] = {}
    pending: list[str] = []
    last = None
    for cell in submission.get("cells", []):
        mark = marker(cell)
        text = _text(cell)
        if "answer" in mark:
            name = str(mark["answer"])
            mine.setdefault(name, []).append(cell)
            if cell.get("cell_type") == "code":
                own_before.setdefault(name, []).extend(pending)
                pending, last = [], name
        elif (cell.get("cell_type") == "code" and not mark and text.strip() and text.strip() not in course
              and not _is_setup_cell(text)):
            pending.append(text)
    own_after = {last: pending} if last is not None else {}
    missing = [q for q in declared if q not in mine]
    steps: list[Step] = []
    free: dict[str, str] = {}
    done: set[str] = set()
    for cell in source["cells"]:
        mark = marker(cell)
        text = _text(cell)
        if "answer" in mark:
            name = str(mark["answer"])
            if declared[name].kind == "manual":
                answer = "\n\n".join(_text(c).strip() for c in mine.get(name, []))
                free[name] = "" if answer in ("", MD_PLACEHOLDER) else answer[:FREE_RESPONSE_CHARS]
            elif name not in done and name in mine:
                steps += [Step("own", name, code) for code in own_before.get(name, [])]
                steps += [Step("answer", name, _text(c)) for c in mine[name] if c.get("cell_type") == "code"]
                steps += [Step("own", name, code) for code in own_after.get(name, [])]
            done.add(name)
        elif cell.get("cell_type") != "code" or "rubric" in mark:
            continue
        elif "tests" in mark:
            code = unwrap_checks(text)
            steps.append(Step("tests", str(mark["tests"]), code, int(mark.get("points", 0)),
                              bool(mark.get("hidden")), check_hint(text), bound_names(code), text))
        elif text.strip() and not _is_setup_cell(text):
            try:
                bound = bound_names(text)
            except SyntaxError as exc:
                raise ValueError(f"a cell of the exercise is not plain Python ({exc.msg}, line {exc.lineno})") from None
            steps.append(Step("given", None, text, bound=bound))
    return steps, missing, free


def quoted_test_lines(steps: list[Step]) -> list[str]:
    """Return the lines of the course's tests that a student's feedback must never quote.

    Each line as written, without its comment, and as the grader runs it (re-formatted); lines
    shorter than 12 characters (``pass``, ``else:``) are too common to withhold a message for.

    Example:
        >>> quoted_test_lines([Step("tests", "q1", "assert f(A) == 8\\npass", source="assert f(A) == 8  # one")])
        ['assert f(A) == 8', 'assert f(A) == 8  # one']
    """
    found: set[str] = set()
    for step in steps:
        if step.role == "tests":
            for line in (step.code + "\n" + step.source).splitlines():
                found |= {line.strip(), line.split("#")[0].strip()}
    return sorted(line for line in found if len(line) >= 12)


def short_message(error: tuple[str, str], quoted: list[str]) -> str:
    """Return ``Name: first line of the message`` for feedback: short, and never quoting a test.

    Example:
        >>> short_message(("ValueError", "bad\\nmore"), [])
        'ValueError: bad'
        >>> print(short_message(("AssertionError", "assert q3 == 65_536 is what it does"), ["assert q3 == 65_536"]))
        AssertionError (its message is withheld: it quotes the course's tests)
    """
    name, message = error
    name = "".join(ch for ch in str(name) if ch.isprintable())[:40] or "Error"
    if any(line in message for line in quoted):
        return f"{name} (its message is withheld: it quotes the course's tests)"
    first = next((line.strip() for line in str(message).splitlines() if line.strip()), "")
    first = "".join(ch for ch in first if ch.isprintable())
    if len(first) > MESSAGE_CHARS:
        first = first[: MESSAGE_CHARS - 3] + "..."
    return f"{name}: {first}" if first else name


def _course_names(steps: list[Step]) -> set[str]:
    return {name for step in steps if step.role == "given" for name in step.bound}


def run_plan(steps: list[Step], timeout: float, folder: str | os.PathLike, *, sandboxed: bool = True,
             limits: Limits = Limits(), slot: int = 0,
             expected_types: dict[str, dict[str, str]] | None = None) -> tuple[str, list[tuple[str, str] | None], list[str]]:
    """Run the steps in one fresh kernel; return the status, per step ``(error name, message)`` or None,
    and what the guard found tampered with.

    Steps after a timeout or a kernel death are not run (their entry is ``("NotRun", reason)``).
    The course's cells and tests run through the guard (:mod:`lessonlib.authoring.kernel_guard`);
    the student's cells run as cells.

    Example:
        >>> run_plan([Step("given", None, "x = 1"), Step("tests", "q1", "assert x == 2")], 30, tmp)  # doctest: +SKIP
        ('ok', [None, ('AssertionError', '')], [])
    """
    results: list[tuple[str, str] | None] = [("NotRun", "not run")] * len(steps)
    tampered: list[str] = []
    key = secrets.token_hex(32)
    status = "ok"
    with Kernel(Path(folder), limits, sandboxed=sandboxed, slot=slot) as kernel:
        try:
            kernel.start(time.monotonic() + KERNEL_START_S)
            boot = (f"__lessonlib_boot = {{'__name__': 'lessonlib_guard'}}\n"
                    f"exec(compile({GUARD_SOURCE.read_text()!r}, '<grader>', 'exec'), __lessonlib_boot)\n"
                    f"__lessonlib_guard__ = __lessonlib_boot['make_guard']({key!r}, {import_lines(steps)!r}, "
                    f"{expected_types or {}!r}, get_ipython())\n"
                    "del __lessonlib_boot")
            reply = kernel.execute(boot, time.monotonic() + KERNEL_START_S)
            if reply.get("status") != "ok":
                raise KernelDied(f"the grader's code could not start in the kernel ({reply.get('ename')}: "
                                 f"{str(reply.get('evalue'))[:100]})")
            deadline = time.monotonic() + timeout
            for i, step in enumerate(steps):
                if step.role in ("answer", "own"):
                    reply = kernel.execute(step.code, deadline, store_history=True)
                    if reply.get("status") == "error":
                        results[i] = (str(reply.get("ename", "Error")), str(reply.get("evalue", "")))
                    elif reply.get("status") != "ok":
                        results[i] = ("Aborted", "")
                    else:
                        results[i] = None
                    continue
                nonce = secrets.token_hex(8)
                call = f"__lessonlib_guard__({nonce!r}, {step.role!r}, {step.code!r}, {step.question!r}, {step.bound!r})"
                reply = kernel.execute("", deadline, user_expressions={"r": call})
                answer = reply.get("user_expressions", {}).get("r", {})
                try:
                    text = ast.literal_eval(answer["data"]["text/plain"])
                    if not isinstance(text, str):
                        raise ValueError("not an answer of the guard")
                    results[i], found = outcome(text, key, nonce, step.role, step.code)
                except (KeyError, TypeError, ValueError, SyntaxError, MemoryError, RecursionError):
                    results[i], found = ("GuardError", "the grader's check could not run (was it replaced?)"), ["guard"]
                tampered += [f for f in found if f not in tampered]
        except KernelTimeout:
            status = "timeout"
        except KernelDied:
            status = "crashed"
    return status, results, tampered


def grade_notebook(source_path: str | os.PathLike, submission_path: str | os.PathLike, student: str,
                   timeout: float = 60, *, sandboxed: bool = True, limits: Limits = Limits(), slot: int = 0,
                   folder: str | os.PathLike | None = None) -> Result:
    """Grade one submission in this process (the CLI runs this in a child process per submission).

    ``folder``: an empty folder for the kernel's files (a temporary one by default).

    Example:
        >>> grade_notebook("solutions/01_lora_increment.ipynb", "exercises/01_lora_increment.ipynb", "x").total  # doctest: +SKIP
        0
    """
    source_path = Path(source_path)
    source = json.loads(source_path.read_text())
    declared = questions(source)
    auto = [q for q, spec in declared.items() if spec.kind == "auto"]
    result = Result(student, "ok", {q: 0 for q in auto})
    try:
        submission = read_notebook(Path(submission_path).read_text())
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        result.status = "invalid"
        if isinstance(exc, json.JSONDecodeError):
            detail = f"not valid JSON: {exc.msg}, line {exc.lineno}"
        elif isinstance(exc, ValueError) and not isinstance(exc, UnicodeDecodeError):
            detail = str(exc)[:MESSAGE_CHARS]
        else:
            detail = type(exc).__name__
        result.feedback.append(f"Your file could not be read as a notebook ({detail}); "
                               "nothing was graded. Hand in the .ipynb file saved by Jupyter.")
        return result
    other = _exercise_of(submission)
    if other is not None and other != source_path.stem:
        result.status = "wrong-exercise"
        result.feedback.append(f"This notebook is exercise {other[:60]} (its metadata says so), not {source_path.stem}: "
                               f"nothing was graded. Hand in your {source_path.stem}.ipynb.")
        return result
    steps, missing, result.answers = grading_plan(source, submission)
    result.flags = cell_flags([s.code for s in steps if s.role in ("answer", "own")], _course_names(steps))
    if folder is None:
        with tempfile.TemporaryDirectory(prefix="lessonlib-submission-") as workdir:
            status, outcomes, tampered = run_plan(steps, timeout, workdir, sandboxed=sandboxed, limits=limits,
                                                  slot=slot, expected_types=predictions(source))
    else:
        status, outcomes, tampered = run_plan(steps, timeout, folder, sandboxed=sandboxed, limits=limits, slot=slot,
                                              expected_types=predictions(source))
    if tampered:
        result.flags = sorted(result.flags + [f"tampered({tampered[0][:60]})"])
    quoted = quoted_test_lines(steps)
    failed: dict[str, list[str]] = {q: [] for q in auto}
    for step, error in zip(steps, outcomes):
        if step.role in ("answer", "own") and error and error[0] != "NotRun" and step.question in failed:
            whose = "your answer cell" if step.role == "answer" else "a cell of your own"
            failed[step.question].append(f"{whose} raised {short_message(error, quoted)}")
        elif step.role == "tests" and step.question in failed:
            if error is None:
                result.points[step.question] += step.points
            elif step.hidden:
                failed[step.question].append("a hidden test failed" if error[0] != "NotRun" else "hidden tests not run")
            elif error[0] == "NotRun":
                failed[step.question].append("tests not run")
            else:
                failed[step.question].append(f"a visible check failed ({short_message(error, quoted)})"
                                             + (f"; hint: {step.hint}" if step.hint else ""))
    if missing:
        result.status = "missing-answers"
        result.feedback.append("Answer cells missing from your notebook (deleted?): " + ", ".join(missing)
                               + ". Those questions got no points.")
    if status != "ok":
        result.status = status
        result.feedback.append({"timeout": f"Your notebook did not finish within {timeout:g} s (an endless loop?); "
                                           "points earned before that are kept.",
                                "crashed": "Your notebook stopped the Python kernel (os._exit, a crash or out of memory); "
                                           "points earned before that are kept."}[status])
    for q in auto:
        line = f"{q}: {result.points[q]} / {declared[q].points}"
        if failed[q] and q not in missing:
            line += " (" + "; ".join(dict.fromkeys(failed[q])) + ")"
        result.feedback.append(line)
    for q, spec in declared.items():
        if spec.kind == "manual":
            said = "graded by your instructor" if result.answers.get(q) else "no answer written"
            result.feedback.append(f"{q}: {said} ({spec.points} points)")
    return result


def _die_with_parent(parent: int) -> None:
    """Ask Linux to send SIGTERM to this process when the grader that started it dies."""
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:  # the grader is already gone
        raise SystemExit(143)


def _child(folder: Path, parent: int) -> int:
    """The grading process of one submission: a job (JSON) on stdin, the result on stdout.

    ``folder`` (its working folder) and ``parent`` (the grader's pid) come first, on the command
    line, so that it cleans up after itself whenever it stops, even before it has read its job.
    """

    def stop(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    try:
        _die_with_parent(parent)
        folder.mkdir()
        os.chdir(folder)  # the kernel's socket paths are short relative to it
        job = json.loads(sys.stdin.read())
        result = grade_notebook(job["source"], job["submission"], job["student"], job["timeout"],
                                sandboxed=job["sandboxed"], limits=Limits(**job["limits"]), slot=job["slot"],
                                folder=folder)
        sys.stdout.write(RESULT_PREFIX + json.dumps(asdict(result)) + "\n")
        sys.stdout.flush()
    finally:
        _remove(folder)
        if os.getppid() != parent:  # the grader was killed: leave nothing of this batch behind
            try:
                folder.parent.rmdir()  # succeeds for the last grading process to stop
            except OSError:
                pass
    return 0


def _remove(folder: Path) -> None:
    """Remove a grading folder, also when the kernel left it read-only."""
    for path in [folder, *folder.rglob("*")] if folder.exists() else []:
        try:
            if path.is_dir() and not path.is_symlink():
                path.chmod(0o700)
        except OSError:
            pass
    shutil.rmtree(folder, ignore_errors=True)


_RUNNING: set[subprocess.Popen] = set()
_RUNNING_LOCK = threading.Lock()


def grade_in_child(source: Path, submission: Path, student: str, timeout: float, *, sandboxed: bool = True,
                   limits: Limits = Limits(), slot: int = 0, folder: Path | None = None) -> Result:
    """Grade one submission in a fresh Python process, killed if it overruns its time limit.

    The result comes back on the process's stdout (the kernel's own output goes nowhere), never
    through a file. ``folder``: a folder that does not exist yet, in an existing one, that the
    process works in and removes (a temporary one by default).

    Example:
        >>> grade_in_child(Path("solutions/01_lora_increment.ipynb"), Path("nope.ipynb"), "x", 10).status
        'invalid'
    """
    own = folder is None
    folder = Path(tempfile.mkdtemp(prefix=f"{BATCH_PREFIX}{os.getpid()}-")) / "submission" if own else Path(folder)
    job = {"source": str(Path(source).resolve()), "submission": str(Path(submission).resolve()), "student": student,
           "timeout": timeout, "sandboxed": sandboxed, "limits": asdict(limits), "slot": slot}
    try:
        process = subprocess.Popen([sys.executable, "-m", "lessonlib.authoring.grading", "--child", str(folder),
                                    str(os.getpid())],
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   start_new_session=True)
        with _RUNNING_LOCK:
            _RUNNING.add(process)
        try:
            # (the grading process's own output: the kernel's goes nowhere, so this stays small)
            out, err = process.communicate(json.dumps(job).encode(), timeout=timeout + 2 * KERNEL_START_S + 30)
        except subprocess.TimeoutExpired:
            _kill(process)
            return Result(student, "timeout", feedback=[f"Your notebook did not finish within {timeout:g} s."])
        finally:
            with _RUNNING_LOCK:
                _RUNNING.discard(process)
        lines = [line for line in out.decode(errors="replace").splitlines() if line.startswith(RESULT_PREFIX)]
        if process.returncode == 0 and lines:
            return Result(**json.loads(lines[-1][len(RESULT_PREFIX):]))
        last = err.decode(errors="replace").strip().splitlines()[-1:] or [f"exit status {process.returncode}"]
        return Result(student, "crashed", feedback=[f"The grader could not run your notebook ({last[0][:200]})."])
    finally:
        _remove(folder)
        if own:
            _remove(folder.parent)


def _kill(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except OSError:
        process.kill()
    process.wait()


def file_hash(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes (what the journal remembers of each submission and of the source).

    Example:
        >>> len(file_hash("solutions/01_lora_increment.ipynb"))
        64
    """
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


class Journal:
    """Results as they complete, one JSON line each, next to the CSV: what ``--resume`` continues from.

    The first line names the source and its hash; each later line is one student's result with
    the hash of the submission graded. A result whose submission changed since is graded again.

    Example:
        >>> journal_path(Path("out/grades.csv"))
        PosixPath('out/grades.journal.jsonl')
    """

    def __init__(self, path: Path, source: Path) -> None:
        self.path, self.source = Path(path), Path(source)
        self._lock = threading.Lock()

    def load(self, submissions: dict[str, Path]) -> dict[str, Result]:
        """Return the results already recorded for these submissions, unchanged since; ValueError if foreign."""
        if not self.path.is_file():
            return {}
        lines = self.path.read_text().splitlines()
        try:
            head = json.loads(lines[0]) if lines else {}
        except ValueError:
            head = {}
        if head.get("source_sha256") != file_hash(self.source):
            raise ValueError(f"the journal {self.path} was written for another version of {self.source.name}: "
                             "delete it to start over")
        done: dict[str, Result] = {}
        for line in lines[1:]:
            try:
                entry = json.loads(line)
                result = Result(**entry["result"])
            except (ValueError, KeyError, TypeError):
                continue  # the line being written when the grader was killed
            path = submissions.get(result.student)
            if path is not None and path.is_file() and file_hash(path) == entry.get("submission_sha256"):
                done[result.student] = result
        return done

    def start(self, kept: list[tuple[Result, str]]) -> None:
        """(Re)write the journal with its header and the results kept from before."""
        head = {"journal": 1, "source": self.source.name, "source_sha256": file_hash(self.source)}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("w") as handle:
            handle.write(json.dumps(head) + "\n")
            for result, digest in kept:
                handle.write(json.dumps({"submission_sha256": digest, "result": asdict(result)}) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def append(self, result: Result, digest: str) -> None:
        """Record one result durably."""
        with self._lock, self.path.open("a") as handle:
            handle.write(json.dumps({"submission_sha256": digest, "result": asdict(result)}) + "\n")
            handle.flush()
            os.fsync(handle.fileno())


def journal_path(out: Path) -> Path:
    """Where the journal of a run writing ``out`` lives."""
    return out.with_suffix(".journal.jsonl")


BATCH_PREFIX = "lessonlib-grading-"
"""Temporary folders of a batch are named BATCH_PREFIX + the grader's pid + a random part."""


def _sweep() -> None:
    """Remove the temporary folders of graders that were killed before they could (their pid is gone)."""
    for folder in Path(tempfile.gettempdir()).glob(f"{BATCH_PREFIX}*-*"):
        pid = folder.name[len(BATCH_PREFIX):].split("-")[0]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            _remove(folder)
        except OSError:
            pass


def grade(submissions: dict[str, Path], source: Path, jobs: int = 2, timeout: float = 60, progress: bool = True,
          *, sandboxed: bool = True, limits: Limits = Limits(), journal: Journal | None = None,
          resume: bool = False) -> list[Result]:
    """Grade every submission, ``jobs`` at a time, each in its own process; results sorted by student.

    With ``journal``, each result is recorded as it completes; with ``resume`` too, the results
    it already holds (for unchanged submissions) are kept and only the others are graded.
    Raises SandboxUnavailable when ``sandboxed`` and no sandbox can be had here.

    Example:
        >>> grade({"x": Path("nope.ipynb")}, Path("solutions/01_lora_increment.ipynb"), progress=False,
        ...       sandboxed=False)[0].status
        'invalid'
    """
    from tqdm.auto import tqdm

    positive_int("jobs", jobs)
    positive_number("timeout (seconds)", timeout)
    if sandboxed and (problem := sandbox_problem()):
        raise SandboxUnavailable(problem)
    declared = questions(json.loads(Path(source).read_text()))
    auto = [q for q, spec in declared.items() if spec.kind == "auto"]
    done = journal.load(submissions) if journal is not None and resume else {}
    digests = {student: file_hash(path) if path.is_file() else "" for student, path in submissions.items()}
    if journal is not None:
        journal.start([(result, digests[student]) for student, result in done.items()])
    todo = {student: path for student, path in submissions.items() if student not in done}
    slots = list(range(jobs))
    slots_lock = threading.Lock()
    _sweep()
    batch = Path(tempfile.mkdtemp(prefix=f"{BATCH_PREFIX}{os.getpid()}-"))

    def one(index: int, student: str, path: Path) -> Result:
        with slots_lock:
            slot = slots.pop()
        try:
            return grade_in_child(source, path, student, timeout, sandboxed=sandboxed, limits=limits, slot=slot,
                                  folder=batch / f"{index:04d}")
        finally:
            with slots_lock:
                slots.append(slot)

    results = list(done.values())
    pool = ThreadPoolExecutor(max_workers=jobs)
    try:
        with tqdm(total=len(submissions), initial=len(done), desc="grading", unit="nb", disable=not progress) as bar:
            futures = {pool.submit(one, i, student, path): student for i, (student, path) in enumerate(todo.items())}
            for future in as_completed(futures):
                result = future.result()
                for q in auto:
                    result.points.setdefault(q, 0)
                if journal is not None:
                    journal.append(result, digests[futures[future]])
                results.append(result)
                bar.set_postfix_str(f"{result.student}: {result.status}")
                bar.update()
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        with _RUNNING_LOCK:
            running = list(_RUNNING)
        for process in running:
            _kill(process)
        raise
    finally:
        pool.shutdown(wait=True)
        _remove(batch)
    return sorted(results, key=lambda r: r.student)


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", newline="") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def csv_cell(value: Any) -> Any:
    """Escape a text cell that a spreadsheet would run as a formula (``=``, ``+``, ``-``, ``@``, tab, CR).

    Example:
        >>> csv_cell("=1+2"), csv_cell("ann"), csv_cell(3)
        ("'=1+2", 'ann', 3)
    """
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def csv_text(results: list[Result], declared: dict[str, Question]) -> str:
    """Return the grades as CSV: student, each question, total, max, status, flags.

    Free-response columns are left empty for the instructor; ``total`` and ``max`` count the
    autograded questions; ``flags`` lists what deserves a look (see :mod:`lessonlib.authoring.flags`).

    Example:
        >>> q = {"q1": Question("q1", "auto", 2), "q2": Question("q2", "manual", 3)}
        >>> print(csv_text([Result("ann", "ok", {"q1": 2}), Result("=2+3", "ok", {"q1": 0}, flags=["files(os)"])], q), end="")
        student,q1,q2,total,max,status,flags
        ann,2,,2,2,ok,
        '=2+3,0,,0,2,ok,files(os)
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["student", *declared, "total", "max", "status", "flags"])
    best = sum(spec.points for spec in declared.values() if spec.kind == "auto")
    for r in results:
        cells = [r.points.get(q, 0) if spec.kind == "auto" else "" for q, spec in declared.items()]
        writer.writerow([csv_cell(c) for c in [r.student, *cells, r.total, best, r.status, "; ".join(r.flags)]])
    return buffer.getvalue()


def _inline(text: str) -> str:
    """Text safe inside one Markdown line: printable, Markdown punctuation escaped."""
    text = "".join(ch if ch.isprintable() else "?" for ch in text)
    return "".join("\\" + ch if ch in "\\`*_{}[]()#+-.!<>|~" else ch for ch in text)


def feedback_text(result: Result, source_name: str) -> str:
    """Return the feedback a student may read: points per question, no hidden test code.

    Example:
        >>> print(feedback_text(Result("ann", "ok", {"q1": 1}, ["q1: 1 / 2 (a hidden test failed)"]), "01_x"))
        # Feedback for ann: 01\\_x
        <BLANKLINE>
        Status: ok. Autograded points: 1.
        <BLANKLINE>
        - q1: 1 / 2 (a hidden test failed)
        <BLANKLINE>
    """
    lines = [f"# Feedback for {_inline(result.student)}: {_inline(source_name)}", "",
             f"Status: {result.status}. Autograded points: {result.total}.", ""]
    lines += [f"- {line}" for line in result.feedback]
    return "\n".join(lines) + "\n"


def _fenced(text: str) -> str:
    """A Markdown block that shows the text as it is: no heading or other markup inside it takes effect.

    Example:
        >>> print(_fenced("## q9\\n~~~"))
        ~~~~text
        ## q9
        ~~~
        ~~~~
    """
    runs = [len(run) for run in "".join(ch if ch == "~" else " " for ch in text).split()]
    fence = "~" * max(3, max(runs, default=0) + 1)
    return f"{fence}text\n{text}\n{fence}"


def manual_text(results: list[Result], source: dict) -> str:
    """Return the free-response answers of every student next to each rubric (for the instructor).

    Each answer is shown verbatim inside a fenced block, so that nothing a student writes can
    pass for a heading of this file (another student, another question, a rubric).

    Example:
        >>> print(manual_text([], {"cells": []}), end="")
        # Free-response answers
    """
    rubrics = {str(marker(c)["rubric"]): _text(c) for c in source["cells"] if "rubric" in marker(c)}
    lines = ["# Free-response answers"]
    for q, rubric in rubrics.items():
        lines += ["", f"## {q}", "", rubric.strip(), ""]
        for r in results:
            answer = r.answers.get(q)
            lines += [f"### {_inline(r.student)}", "", _fenced(answer) if answer else "(no answer)", ""]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """``python -m lessonlib grade SUBMISSIONS_DIR --out grades.csv``: grade a folder of notebooks.

    Example:
        >>> main(["no-such-folder"])
        2
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--child"]:
        return _child(Path(argv[1]), int(argv[2]))
    parser = argparse.ArgumentParser(prog="python -m lessonlib grade",
                                     description="Grade a folder of submitted exercise notebooks, each in a sandbox.")
    parser.add_argument("submissions", help="folder of STUDENT.ipynb files or STUDENT/ folders")
    parser.add_argument("--out", default="grades.csv", help="CSV of points per question (default grades.csv)")
    parser.add_argument("--feedback", help="folder for one STUDENT.md feedback file per student")
    parser.add_argument("--exercise", help="which exercise (NN_topic) when the files do not say")
    parser.add_argument("--jobs", type=int, default=2, help="submissions graded at once (default 2)")
    parser.add_argument("--timeout", type=float, default=60, help="seconds allowed per submission (default 60)")
    parser.add_argument("--memory", type=float, default=Limits().memory_bytes / 2**30,
                        help="GiB of address space per submission (default 4)")
    parser.add_argument("--resume", action="store_true",
                        help="continue an interrupted run from its journal (OUT with .journal.jsonl)")
    parser.add_argument("--no-sandbox", action="store_true",
                        help="run the submissions' code unconfined (only where no sandbox can be had, for trusted code)")
    parser.add_argument("--solutions", default=str(REPO_ROOT / "solutions"), help=argparse.SUPPRESS)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    out = Path(args.out)
    try:
        positive_int("--jobs", args.jobs)
        positive_number("--timeout (seconds)", args.timeout)
        if not math.isfinite(args.memory) or args.memory < 0.25:
            raise ValueError(f"--memory must be at least 0.25 GiB, got {args.memory:g}")
        submissions = find_submissions(args.submissions)
        source = find_source(submissions, args.exercise, args.solutions)
        journal = Journal(journal_path(out), source)
        if journal.path.exists() and not args.resume:
            raise ValueError(f"an interrupted run left {journal.path}: pass --resume to continue it, "
                             "or delete it to start over")
        kept = len(journal.load(submissions)) if args.resume else 0  # refuses a foreign journal first
        if not args.no_sandbox and (problem := sandbox_problem()):
            raise SandboxUnavailable(f"no sandbox for the students' code on this machine: {problem}; install "
                                     "bubblewrap (apt-get install bubblewrap, as root), or pass --no-sandbox "
                                     "to run it unconfined")
    except (ValueError, SandboxUnavailable) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    source_nb = json.loads(source.read_text())
    declared = questions(source_nb)
    limits = Limits(memory_bytes=int(args.memory * 2**30))
    try:
        results = grade(submissions, source, args.jobs, args.timeout, progress=not args.no_progress,
                        sandboxed=not args.no_sandbox, limits=limits, journal=journal, resume=args.resume)
    except KeyboardInterrupt:
        print(f"\ninterrupted: the results so far are in {journal.path}; run the same command with --resume "
              "to grade the rest", file=sys.stderr)
        return 130
    _atomic_write(out, csv_text(results, declared))
    if any(spec.kind == "manual" for spec in declared.values()):
        _atomic_write(out.with_suffix(".free-response.md"), manual_text(results, source_nb))
    if args.feedback:
        for result in results:
            _atomic_write(Path(args.feedback) / f"{result.student}.md", feedback_text(result, source.stem))
    journal.path.unlink(missing_ok=True)
    counts = {s: sum(r.status == s for r in results) for s in STATUSES}
    flagged = sum(bool(r.flags) for r in results)
    print(f"{len(results)} submission(s) graded against {source.name}: "
          + ", ".join(f"{n} {s}" for s, n in counts.items() if n)
          + (f"; {flagged} flagged for a look" if flagged else "")
          + (f"; {kept} from the journal" if args.resume else "") + f"; grades in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
