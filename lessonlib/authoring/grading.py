"""The instructor's grader: a folder of submitted exercise notebooks in, points per question out.

``python -m lessonlib grade SUBMISSIONS_DIR --out grades.csv [--feedback DIR] [--jobs N] [--timeout S]``

Each submission is graded from its *answer cells* only (found by their markers, see
:mod:`lessonlib.authoring.exercises`). Every other cell, the tests included, comes from the source in
``solutions/``: editing or deleting a check cell in a submission changes nothing. Each submission
runs in its own process, with its own kernel and a time limit, so one broken notebook never stops
the batch. Statuses:

- ``ok``: every cell ran (an answer that raises just fails its own tests);
- ``missing-answers``: some answer cells were deleted; the others are graded;
- ``timeout``: the time limit was reached; points earned before it are kept;
- ``crashed``: the kernel died (``os._exit``, a segfault, out of memory); points earned before are kept;
- ``invalid``: the file is not a readable notebook; 0 points.

Submission layouts: ``DIR/STUDENT.ipynb``, or ``DIR/STUDENT/NN_topic.ipynb`` (one folder per
student). The exercise is found from the file names or the notebooks' metadata, or given with
``--exercise NN_topic``.

Example:
    >>> parse_submissions_layout(["alice.ipynb", "bob.ipynb"])
    {'alice': 'alice.ipynb', 'bob': 'bob.ipynb'}
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lessonlib.authoring.exercises import MD_PLACEHOLDER, Question, check_hint, marker, questions, unwrap_checks
from lessonlib.authoring.notebooks import setup_cell_source
from lessonlib.requirements import REPO_ROOT

STATUSES = ("ok", "timeout", "crashed", "invalid", "missing-answers")
"""Every status a graded submission can have."""

KERNEL_START_S = 60
"""Seconds allowed for a kernel to start, on top of the submission's own time limit."""


@dataclass
class Result:
    """The grade of one submission: points per autograded question, a status, feedback lines."""

    student: str
    status: str
    points: dict[str, int] = field(default_factory=dict)
    feedback: list[str] = field(default_factory=list)
    answers: dict[str, str] = field(default_factory=dict)  # free-response text, for the instructor

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


def find_source(submissions: dict[str, Path], exercise: str | None = None,
                solutions_dir: str | os.PathLike = REPO_ROOT / "solutions") -> Path:
    """Return the solution notebook the submissions answer.

    From ``exercise`` when given; else from the submissions' file names when they are named after
    an exercise; else from the ``lessonlib.exercise_of`` metadata of the readable ones.

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
            for path in submissions.values():
                try:
                    stems.add(json.loads(path.read_text())["metadata"]["lessonlib"]["exercise_of"])
                except (OSError, ValueError, KeyError, TypeError):
                    continue
        if len(stems) != 1:
            raise ValueError("cannot tell which exercise the submissions answer; "
                             f"pass --exercise, one of: {', '.join(sorted(known)) or '(none)'}")
        exercise = stems.pop()
    exercise = Path(exercise).stem
    if exercise not in known:
        raise ValueError(f"no solution notebook for exercise {exercise!r}; known: {', '.join(sorted(known))}")
    return known[exercise]


def _answers_of(cells: list[dict]) -> dict[str, list[dict]]:
    by_question: dict[str, list[dict]] = {}
    for cell in cells:
        name = marker(cell).get("answer")
        if name is not None:
            by_question.setdefault(str(name), []).append(cell)
    return by_question


def _text(cell: dict) -> str:
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else str(source)


@dataclass
class Step:
    """One cell the grader runs: what it is for, and its code."""

    role: str  # "given", "answer" or "tests"
    question: str | None
    code: str
    points: int = 0
    hidden: bool = False
    hint: str = ""


def grading_plan(source: dict, submission: dict) -> tuple[list[Step], list[str], dict[str, str]]:
    """Return the cells to run, the questions whose answer cells are missing, and free-response text.

    The source's cells in order, with each answer cell replaced by the submission's answer cells
    for that question (all of them, in the submission's order, as a top-to-bottom run would
    execute them), test cells unwrapped (:func:`lessonlib.authoring.exercises.unwrap_checks`), the set-up
    cell left out (grading needs no environment report).

    Example:
        >>> import json
        >>> source = json.load(open("solutions/01_lora_increment.ipynb"))
        >>> steps, missing, _ = grading_plan(source, {"cells": []})
        >>> missing[:2], steps[0].role
        (['q1', 'q2'], 'given')
    """
    mine = _answers_of([c for c in submission.get("cells", []) if isinstance(c, dict)])
    declared = questions(source)
    missing = [q for q in declared if q not in mine]
    steps: list[Step] = []
    free: dict[str, str] = {}
    done: set[str] = set()
    for cell in source["cells"]:
        mark = marker(cell)
        if "answer" in mark:
            name = str(mark["answer"])
            if declared[name].kind == "manual":
                text = "\n\n".join(_text(c).strip() for c in mine.get(name, []))
                free[name] = "" if text in ("", MD_PLACEHOLDER) else text
            elif name not in done and name in mine:
                steps += [Step("answer", name, _text(c)) for c in mine[name] if c.get("cell_type") == "code"]
            done.add(name)
        elif cell.get("cell_type") != "code" or "rubric" in mark:
            continue
        elif "tests" in mark:
            steps.append(Step("tests", str(mark["tests"]), unwrap_checks(_text(cell)), int(mark.get("points", 0)),
                              bool(mark.get("hidden")), check_hint(_text(cell))))
        elif _text(cell) != setup_cell_source() and _text(cell).strip():
            steps.append(Step("given", None, _text(cell)))
    return steps, missing, free


def _client_class():
    from nbclient import NotebookClient

    class QuietClient(NotebookClient):
        """A client that keeps no outputs: a submission that prints gigabytes costs no memory here."""

        def output(self, outs, msg, display_id, cell_index):  # noqa: D102 (nbclient's hook)
            return None

    return QuietClient


def run_plan(steps: list[Step], timeout: float, cwd: str | os.PathLike) -> tuple[str, list[tuple[str, str] | None]]:
    """Run the steps in one fresh kernel; return the status and, per step, ``(error name, message)`` or None.

    Steps after a timeout or a kernel death are not run (their entry is ``("NotRun", reason)``).

    Example:
        >>> run_plan([Step("given", None, "x = 1"), Step("tests", "q1", "assert x == 2")], 30, ".")  # doctest: +SKIP
        ('ok', [None, ('AssertionError', '')])
    """
    import nbformat
    from nbclient.exceptions import CellTimeoutError, DeadKernelError

    cells = [nbformat.v4.new_code_cell(s.code) for s in steps]
    nb = nbformat.v4.new_notebook(cells=cells)
    errors: dict[int, tuple[str, str]] = {}

    def on_error(cell, cell_index, execute_reply):
        content = execute_reply["content"]
        errors[cell_index] = (str(content.get("ename", "Error")), str(content.get("evalue", "")))

    client = _client_class()(nb, timeout=int(timeout), kernel_name="python3", allow_errors=True,
                             record_timing=False, startup_timeout=KERNEL_START_S, on_cell_error=on_error,
                             resources={"metadata": {"path": str(cwd)}})
    results: list[tuple[str, str] | None] = [("NotRun", "not run")] * len(steps)
    status = "ok"
    try:
        with client.setup_kernel():
            deadline = time.monotonic() + timeout
            for i, cell in enumerate(cells):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise CellTimeoutError("time limit reached")
                client.timeout = max(1, int(left + 0.999))
                client.execute_cell(cell, i)
                results[i] = errors.get(i)
    except CellTimeoutError:
        status = "timeout"
    except DeadKernelError:
        status = "crashed"
    except RuntimeError:  # a kernel that fails to start or dies while starting
        status = "crashed"
    return status, results


def grade_notebook(source_path: str | os.PathLike, submission_path: str | os.PathLike, student: str,
                   timeout: float = 60) -> Result:
    """Grade one submission in this process (the CLI runs this in a child process per submission).

    Example:
        >>> grade_notebook("solutions/01_lora_increment.ipynb", "exercises/01_lora_increment.ipynb", "x").total  # doctest: +SKIP
        0
    """
    source = json.loads(Path(source_path).read_text())
    declared = questions(source)
    auto = [q for q, spec in declared.items() if spec.kind == "auto"]
    result = Result(student, "ok", {q: 0 for q in auto})
    try:
        submission = json.loads(Path(submission_path).read_text())
        if not isinstance(submission, dict) or not isinstance(submission.get("cells"), list):
            raise ValueError("no list of cells")
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        result.status = "invalid"
        result.feedback.append(f"Your file could not be read as a notebook ({type(exc).__name__}); "
                               "nothing was graded. Hand in the .ipynb file saved by Jupyter.")
        return result
    steps, missing, result.answers = grading_plan(source, submission)
    with tempfile.TemporaryDirectory(prefix="submission-") as workdir:  # files it writes go nowhere else
        status, outcome = run_plan(steps, timeout, workdir)
    failed: dict[str, list[str]] = {q: [] for q in auto}
    for step, error in zip(steps, outcome):
        if step.role == "answer" and error and error[0] != "NotRun":
            failed[step.question].append(f"your answer cell raised {error[0]}" + (f": {error[1]}" if error[1] else ""))
        elif step.role == "tests":
            if error is None:
                result.points[step.question] += step.points
            elif step.hidden:
                failed[step.question].append("a hidden test failed" if error[0] != "NotRun" else "hidden tests not run")
            elif error[0] == "NotRun":
                failed[step.question].append("tests not run")
            else:
                detail = f"{error[0]}: {error[1]}" if error[1] else error[0]
                failed[step.question].append(f"a visible check failed ({detail.splitlines()[0][:200]})"
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


def _child(argv: list[str]) -> int:
    source, submission, student, timeout, out = argv
    result = grade_notebook(source, submission, student, float(timeout))
    Path(out).write_text(json.dumps(asdict(result)))
    return 0


def grade_in_child(source: Path, submission: Path, student: str, timeout: float) -> Result:
    """Grade one submission in a fresh Python process, killed if it overruns its time limit.

    Example:
        >>> grade_in_child(Path("solutions/01_lora_increment.ipynb"), Path("nope.ipynb"), "x", 10).status
        'invalid'
    """
    with tempfile.TemporaryDirectory(prefix="grade-") as tmp:
        out = Path(tmp) / "result.json"
        command = [sys.executable, "-m", "lessonlib.authoring.grading", "--child", str(source), str(submission), student,
                   str(timeout), str(out)]
        log = Path(tmp) / "stderr.txt"  # a file, not a pipe: a flood of messages costs no memory here
        with log.open("wb") as err:
            process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
            try:
                process.wait(timeout=timeout + KERNEL_START_S + 30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                return Result(student, "timeout", feedback=[f"Your notebook did not finish within {timeout:g} s."])
        if process.returncode == 0 and out.is_file():
            data = json.loads(out.read_text())
            return Result(**data)
        with log.open("rb") as err:
            err.seek(max(0, log.stat().st_size - 4000))
            tail = err.read().decode(errors="replace")
        last = tail.strip().splitlines()[-1:] or ["no message"]
        return Result(student, "crashed", feedback=[f"The grader could not run your notebook ({last[0][:200]})."])


def grade(submissions: dict[str, Path], source: Path, jobs: int = 2, timeout: float = 60,
          progress: bool = True) -> list[Result]:
    """Grade every submission, ``jobs`` at a time, each in its own process; results sorted by student.

    Example:
        >>> grade({"x": Path("nope.ipynb")}, Path("solutions/01_lora_increment.ipynb"), progress=False)[0].status
        'invalid'
    """
    from tqdm.auto import tqdm

    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, got {jobs}")
    if timeout <= 0:
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout}")
    declared = questions(json.loads(Path(source).read_text()))
    auto = [q for q, spec in declared.items() if spec.kind == "auto"]
    results: list[Result] = []
    with ThreadPoolExecutor(max_workers=jobs) as pool, \
            tqdm(total=len(submissions), desc="grading", unit="nb", disable=not progress) as bar:
        futures = [pool.submit(grade_in_child, source, path, student, timeout) for student, path in submissions.items()]
        for future in futures:
            result = future.result()
            for q in auto:
                result.points.setdefault(q, 0)
            results.append(result)
            bar.set_postfix_str(f"{result.student}: {result.status}")
            bar.update()
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


def csv_text(results: list[Result], declared: dict[str, Question]) -> str:
    """Return the grades as CSV: student, each question, total, max, status.

    Free-response columns are left empty for the instructor; ``total`` and ``max`` count the
    autograded questions.

    Example:
        >>> q = {"q1": Question("q1", "auto", 2), "q2": Question("q2", "manual", 3)}
        >>> print(csv_text([Result("ann", "ok", {"q1": 2})], q), end="")
        student,q1,q2,total,max,status
        ann,2,,2,2,ok
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["student", *declared, "total", "max", "status"])
    best = sum(spec.points for spec in declared.values() if spec.kind == "auto")
    for r in results:
        cells = [r.points.get(q, 0) if spec.kind == "auto" else "" for q, spec in declared.items()]
        writer.writerow([r.student, *cells, r.total, best, r.status])
    return buffer.getvalue()


def feedback_text(result: Result, source_name: str) -> str:
    """Return the feedback a student may read: points per question, no hidden test code.

    Example:
        >>> print(feedback_text(Result("ann", "ok", {"q1": 1}, ["q1: 1 / 2 (a hidden test failed)"]), "01_x"))
        # Feedback for ann: 01_x
        <BLANKLINE>
        Status: ok. Autograded points: 1.
        <BLANKLINE>
        - q1: 1 / 2 (a hidden test failed)
        <BLANKLINE>
    """
    lines = [f"# Feedback for {result.student}: {source_name}", "",
             f"Status: {result.status}. Autograded points: {result.total}.", ""]
    lines += [f"- {line}" for line in result.feedback]
    return "\n".join(lines) + "\n"


def manual_text(results: list[Result], source: dict) -> str:
    """Return the free-response answers of every student next to each rubric (for the instructor).

    Example:
        >>> print(manual_text([], {"cells": []}), end="")
        # Free-response answers
    """
    rubrics = {str(marker(c)["rubric"]): _text(c) for c in source["cells"] if "rubric" in marker(c)}
    lines = ["# Free-response answers"]
    for q, rubric in rubrics.items():
        lines += ["", f"## {q}", "", rubric.strip(), ""]
        for r in results:
            answer = r.answers.get(q) or "(no answer)"
            lines += [f"### {r.student}", "", answer, ""]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """``python -m lessonlib grade SUBMISSIONS_DIR --out grades.csv``: grade a folder of notebooks.

    Example:
        >>> main(["no-such-folder"])
        2
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--child"]:
        return _child(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m lessonlib grade",
                                     description="Grade a folder of submitted exercise notebooks.")
    parser.add_argument("submissions", help="folder of STUDENT.ipynb files or STUDENT/ folders")
    parser.add_argument("--out", default="grades.csv", help="CSV of points per question (default grades.csv)")
    parser.add_argument("--feedback", help="folder for one STUDENT.md feedback file per student")
    parser.add_argument("--exercise", help="which exercise (NN_topic) when the files do not say")
    parser.add_argument("--jobs", type=int, default=2, help="submissions graded at once (default 2)")
    parser.add_argument("--timeout", type=float, default=60, help="seconds allowed per submission (default 60)")
    parser.add_argument("--solutions", default=str(REPO_ROOT / "solutions"), help=argparse.SUPPRESS)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    try:
        if args.jobs < 1:
            raise ValueError(f"--jobs must be at least 1, got {args.jobs}")
        if args.timeout <= 0:
            raise ValueError(f"--timeout must be a positive number of seconds, got {args.timeout:g}")
        submissions = find_submissions(args.submissions)
        source = find_source(submissions, args.exercise, args.solutions)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    source_nb = json.loads(source.read_text())
    declared = questions(source_nb)
    results = grade(submissions, source, args.jobs, args.timeout, progress=not args.no_progress)
    out = Path(args.out)
    _atomic_write(out, csv_text(results, declared))
    if any(spec.kind == "manual" for spec in declared.values()):
        _atomic_write(out.with_suffix(".free-response.md"), manual_text(results, source_nb))
    if args.feedback:
        for result in results:
            _atomic_write(Path(args.feedback) / f"{result.student}.md", feedback_text(result, source.stem))
    counts = {s: sum(r.status == s for r in results) for s in STATUSES}
    print(f"{len(results)} submission(s) graded against {source.name}: "
          + ", ".join(f"{n} {s}" for s, n in counts.items() if n) + f"; grades in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
