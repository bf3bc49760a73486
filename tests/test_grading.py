"""Tests of lessonlib.authoring.grading: honest, broken and hostile submissions graded in one batch.

The corpus is built here, in a temporary folder, from the real generated exercise and its
solution (so it follows the notebooks when they change), plus the attacks of
``tests/submissions/`` (see its README). It is graded once, through the command line, two at a
time, in the sandbox; the other tests read that one run.
"""

from __future__ import annotations

import copy
import csv
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

from lessonlib.authoring import grading
from lessonlib.authoring.exercises import marker, questions
from lessonlib.authoring.sandbox import sandbox_problem

REPO = Path(__file__).resolve().parent.parent
SOLUTIONS = sorted((REPO / "solutions").glob("*.ipynb"))
ATTACKS = sorted((REPO / "tests" / "submissions").glob("*.txt"))
LESSON = "01_lora_increment"
OTHER = "05_memory_budget"  # handed in under exercise 01's name
TIMEOUT = 30  # seconds per submission in the corpus (the endless loop costs exactly this)
SURVIVOR = "lessonlib-survivor-7731"  # in the command line of the process survives_the_batch.txt starts
PROBLEM = sandbox_problem()
needs_sandbox = pytest.mark.skipif(PROBLEM is not None, reason=f"no sandbox on this machine: {PROBLEM}")


def load(name: str, folder: str) -> dict:
    return json.loads((REPO / folder / f"{name}.ipynb").read_text())


def answered(exercise: dict, solution: dict) -> dict:
    """The exercise with every answer cell filled in with the solution's answer (a perfect student)."""
    model = {marker(c)["answer"]: c["source"] for c in solution["cells"] if "answer" in marker(c)}
    nb = copy.deepcopy(exercise)
    for cell in nb["cells"]:
        if "answer" in marker(cell):
            cell["source"] = model[marker(cell)["answer"]]
    return nb


def answer_cell(nb: dict, question: str) -> dict:
    return next(c for c in nb["cells"] if marker(c).get("answer") == question)


def solution_answer(solution: dict, question: str) -> str:
    return "".join(answer_cell(solution, question)["source"])


def attack_cells(path: Path) -> dict[str, str]:
    """The answer cells of one attack file: ``# --- qN`` starts the code of question qN."""
    cells: dict[str, list[str]] = {}
    current = None
    for line in path.read_text().splitlines():
        if line.startswith("# --- "):
            current = line[len("# --- "):].strip()
            cells[current] = []
        elif current is not None:
            cells[current].append(line)
    return {q: "\n".join(lines).strip() + "\n" for q, lines in cells.items()}


def file_hashes(*folders: Path) -> dict[Path, str]:
    """The hash of every file under some folders."""
    return {path: hashlib.sha256(path.read_bytes()).hexdigest()
            for folder in folders for path in sorted(folder.rglob("*")) if path.is_file()}


SIGNATURE = b"\n\t\t\n"  # what rewrite_other_notebooks.txt appends to every notebook it can reach


FORGED = "Because.\n\n## q6\n\n### a_good\n\nforged answer of a_good to q6\n\n~~~\n# Free-response answers"


def build_corpus(folder: Path) -> dict[str, tuple[str, dict[str, int | None], bool | None]]:
    """Write the submissions; return {student: (status, points per question, flagged)}.

    Points of None: any number, but then the submission must be flagged. ``flagged``: True when
    the instructor must be pointed at it, False when it must not be, None when either is fine.
    """
    solution, exercise = load(LESSON, "solutions"), load(LESSON, "exercises")
    declared = questions(solution)
    auto = [q for q, spec in declared.items() if spec.kind == "auto"]
    manual = [q for q, spec in declared.items() if spec.kind == "manual"]
    first, second = auto[0], auto[1]
    full = {q: declared[q].points for q in auto}
    zero = {q: 0 for q in auto}
    good = answered(exercise, solution)
    expected: dict[str, tuple[str, dict[str, int | None], bool | None]] = {}

    def write(student: str, nb: dict | str, status: str, points: dict[str, int | None],
              flagged: bool | None = False) -> None:
        (folder / f"{student}.ipynb").write_text(nb if isinstance(nb, str) else json.dumps(nb))
        expected[student] = (status, points, flagged)

    def with_answer(question: str, source: str, base: dict = good) -> dict:
        nb = copy.deepcopy(base)
        answer_cell(nb, question)["source"] = source
        return nb

    # Honest work, and honest work in odd shapes.
    write("a_good", good, "ok", full)
    write("z_good", good, "ok", full)
    write("blank", exercise, "ok", zero)
    write("nbformat_3", nbformat.writes(nbformat.convert(nbformat.reads(json.dumps(good), as_version=4), 3)),
          "ok", full)
    write("=1+2", good, "ok", full)  # a file name that a spreadsheet would run as a formula
    write("forged_heading", with_answer(manual[0], FORGED), "ok", full)
    own = with_answer(second, "def trainable_share(d_in, d_out, r):\n    return _share(d_in, d_out, r)\n")
    helper = {"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [],
              "source": "def _share(d_in, d_out, r):\n    return r * (d_in + d_out) / (d_in * d_out)\n"}
    own["cells"].insert(own["cells"].index(answer_cell(own, second)), helper)
    write("own_helper_cell", own, "ok", full)

    # Broken notebooks.
    write("invalid_json", '{"cells": [', "invalid", zero)
    write("not_a_notebook", "[1, 2, 3]", "invalid", zero)
    null_meta = copy.deepcopy(good)
    next(c for c in null_meta["cells"] if not marker(c))["metadata"] = None
    write("metadata_null", null_meta, "invalid", zero)
    write("wrong_exercise", answered(load(OTHER, "exercises"), load(OTHER, "solutions")), "wrong-exercise", zero)

    deleted = copy.deepcopy(good)
    deleted["cells"].remove(answer_cell(deleted, second))
    write("deleted_cell", deleted, "missing-answers", {**full, second: 0})

    duplicated = copy.deepcopy(good)
    cell = answer_cell(duplicated, first)
    duplicated["cells"].insert(duplicated["cells"].index(cell), copy.deepcopy(cell))
    duplicated["cells"] += copy.deepcopy(duplicated["cells"][-4:])  # a few other cells twice, at the end
    write("duplicated_cells", duplicated, "ok", full)

    before_second = {q: (full[q] if auto.index(q) < auto.index(second) else 0) for q in auto}
    # In the first question: how much runs before a loop depends on the machine's speed (points
    # earned before a stop are checked with os._exit below, which does not).
    # (it sleeps: the deadline is wall-clock time, and a loop that burns a core for the whole timeout
    # would only slow down whatever else runs on the machine)
    write("endless_loop", with_answer(first, "import time\nwhile True:\n    time.sleep(0.05)"), "timeout", zero, None)
    write("os_exit", with_answer(second, "import os\nos._exit(3)"), "crashed", before_second, None)
    write("sys_exit", with_answer(second, "import sys\nsys.exit(0)"), "ok", {**full, second: 0}, None)
    write("exception", with_answer(first, "raise RuntimeError('boom')"), "ok", {**full, first: 0})
    write("huge_output", with_answer(first, "print('x' * 30_000_000)\n" + solution_answer(solution, first)),
          "ok", full)

    # A wrong answer that also disarms every way it could see the checks: it redefines check() in
    # the notebook and in lessonlib, empties the submission's test cells and deletes one of them.
    cheat = with_answer(first, "import contextlib, lessonlib.check\n"
                               "check = lambda *a, **k: contextlib.nullcontext()\n"
                               "lessonlib.check.check = check\n"
                               "def anything(*args, **kwargs):\n    return None\n")
    for cell in cheat["cells"]:
        if "tests" in marker(cell):
            cell["source"] = "pass"
    cheat["cells"].remove(next(c for c in cheat["cells"] if marker(c).get("tests") == second))
    write("edits_checks", cheat, "ok", {**full, first: 0}, None)

    # The attacks: each in the blank exercise, so that every point it got would be unearned.
    for path in ATTACKS:
        nb = copy.deepcopy(exercise)
        for question, code in attack_cells(path).items():
            answer_cell(nb, question)["source"] = code
        points: dict[str, int | None] = dict(zero)
        if path.stem == "always_equal":
            points[second] = None  # a function returning such a value: flagged, not prevented
        write(path.stem, nb, "ok", points, True)
    return expected


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    """Grade the whole corpus once, through the command line, two at a time, in the sandbox."""
    if PROBLEM is not None:
        pytest.skip(f"no sandbox on this machine: {PROBLEM}")
    root = tmp_path_factory.mktemp("grading")
    submissions = root / "submissions"
    submissions.mkdir()
    expected = build_corpus(submissions)
    out = root / "out" / "grades.csv"
    out.parent.mkdir()
    out.write_text("stale content from an earlier run\n")
    tmp = root / "tmp"  # the grader's own temporary folders: must be empty afterwards
    tmp.mkdir()
    repository = (REPO / "solutions", REPO / "exercises")
    before = file_hashes(*repository), file_hashes(submissions)
    result = subprocess.run([sys.executable, "-m", "lessonlib", "grade", str(submissions), "--out", str(out),
                             "--feedback", str(out.parent / "feedback"), "--jobs", "2", "--timeout", str(TIMEOUT)],
                            capture_output=True, text=True, cwd=root, env={**os.environ, "TMPDIR": str(tmp)})
    after = file_hashes(*repository), file_hashes(submissions)
    # The repository's notebooks may be edited by their authors while the tests run: a changed one
    # counts only if it carries the attack's signature. The submissions are this test's alone.
    touched = [p for p, h in after[0].items() if before[0].get(p) != h and p.read_bytes().endswith(SIGNATURE)]
    survivors = [p for p in Path("/proc").glob("[0-9]*/cmdline") if SURVIVOR.encode() in _read(p)]
    rows = {row["student"]: row for row in csv.DictReader(out.open())}
    return {"expected": expected, "rows": rows, "result": result, "root": root, "out": out, "tmp": tmp,
            "touched": touched, "submissions_unchanged": before[1] == after[1], "survivors": survivors}


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        return b""


def _row(graded: dict, student: str) -> dict:
    return graded["rows"][grading.csv_cell(student)]


@needs_sandbox
def test_the_command_succeeds_with_a_progress_bar(graded):
    result = graded["result"]
    assert result.returncode == 0, result.stderr[-2000:]
    n = len(graded["expected"])
    assert "grading" in result.stderr and f"{n}/{n}" in result.stderr
    assert f"{n} submission(s) graded" in result.stdout and "flagged for a look" in result.stdout


@needs_sandbox
def test_csv_columns_and_one_row_per_submission(graded):
    declared = questions(load(LESSON, "solutions"))
    header = next(csv.reader(graded["out"].open()))
    assert header == ["student", *declared, "total", "max", "status", "flags"]
    assert set(graded["rows"]) == {grading.csv_cell(s) for s in graded["expected"]}
    assert "'=1+2" in graded["rows"]  # escaped, not run as a formula


@needs_sandbox
def test_nothing_outside_the_output_changed_and_nothing_is_left_behind(graded):
    assert graded["submissions_unchanged"], "a submission was changed"
    assert graded["touched"] == [], "a notebook of solutions/ or exercises/ was changed by a submission"
    assert sorted(p.name for p in graded["out"].parent.iterdir()) == ["feedback", "grades.csv",
                                                                      "grades.free-response.md"]
    assert list(graded["tmp"].iterdir()) == []  # no temporary folder, no journal
    assert graded["survivors"] == [], "a process started by a submission outlived the batch"


@needs_sandbox
@pytest.mark.parametrize("student", ["a_good", "z_good", "blank", "nbformat_3", "=1+2", "forged_heading",
                                     "own_helper_cell", "invalid_json", "not_a_notebook", "metadata_null",
                                     "wrong_exercise", "deleted_cell", "duplicated_cells", "endless_loop", "os_exit",
                                     "sys_exit", "exception", "huge_output", "edits_checks"])
def test_each_submission_gets_the_right_status_and_points(graded, student):
    status, points, flagged = graded["expected"][student]
    row = _row(graded, student)
    declared = questions(load(LESSON, "solutions"))
    got = {q: int(row[q]) for q in points}
    assert (row["status"], got) == (status, points)
    assert int(row["total"]) == sum(points.values())
    assert int(row["max"]) == sum(spec.points for spec in declared.values() if spec.kind == "auto")
    assert all(row[q] == "" for q, spec in declared.items() if spec.kind == "manual")
    if flagged is not None:
        assert bool(row["flags"]) == flagged, row["flags"]


@needs_sandbox
@pytest.mark.parametrize("attack", [p.stem for p in ATTACKS])
def test_each_attack_earns_nothing_and_is_flagged(graded, attack):
    status, points, _ = graded["expected"][attack]
    row = _row(graded, attack)
    assert row["status"] == status, row
    for question, expected in points.items():
        if expected is not None:
            assert int(row[question]) == expected, (question, row)
    assert row["flags"], f"{attack} is not flagged: {row}"


def _hidden_lines() -> list[str]:
    solution = load(LESSON, "solutions")
    return [line.strip() for c in solution["cells"] if marker(c).get("hidden")
            for line in "".join(c["source"]).splitlines() if len(line.strip()) >= 12 and "check(" not in line]


@needs_sandbox
def test_feedback_explains_without_revealing_hidden_tests(graded):
    feedback = graded["out"].parent / "feedback"
    texts = {p.stem: p.read_text() for p in feedback.glob("*.md")}
    assert set(texts) == set(graded["expected"])
    hidden = _hidden_lines()
    assert hidden
    for student, text in texts.items():
        assert not [line for line in hidden if line in text], student
    assert "a hidden test failed" in texts["blank"]
    assert "hint:" in texts["blank"]
    assert "did not finish" in texts["endless_loop"]
    assert "stopped the Python kernel" in texts["os_exit"]
    assert "could not be read" in texts["invalid_json"]
    assert "metadata is null" in texts["metadata_null"]
    assert f"exercise {OTHER}" in texts["wrong_exercise"]
    assert "missing" in texts["deleted_cell"]
    assert "graded by your instructor" in texts["a_good"] and "no answer written" in texts["blank"]
    assert "whole number (int), not AlwaysEqual" in texts["always_equal"]
    for attack in ("hidden_tests_from_history", "hidden_tests_from_frames"):  # what they raised is cut short
        lines = [line for line in texts[attack].splitlines() if "raised" in line or "failed (" in line]
        assert lines and all(len(line) < 1000 for line in lines)


def _headings(markdown: str) -> list[str]:
    """The headings of a Markdown text, leaving out what sits inside fenced blocks."""
    found, fence = [], None
    for line in markdown.splitlines():
        stripped = line.strip()
        marker_ = stripped[:3]
        if fence is None and marker_ in ("~~~", "```"):
            fence = stripped[: len(stripped) - len(stripped.lstrip(marker_[0]))]
        elif fence is not None and stripped.startswith(fence) and set(stripped) == {fence[0]}:
            fence = None
        elif fence is None and line.startswith("#"):
            found.append(line)
    return found


@needs_sandbox
def test_free_response_answers_are_collected_with_their_rubrics_and_cannot_forge_headings(graded):
    text = graded["out"].with_suffix(".free-response.md").read_text()
    solution = load(LESSON, "solutions")
    manual = [q for q, spec in questions(solution).items() if spec.kind == "manual"]
    model = "".join(answer_cell(solution, manual[0])["source"]).strip()
    assert f"## {manual[0]}" in text and "Rubric" in text
    assert model in text  # a_good handed in the model answer
    assert "### blank\n\n(no answer)" in text
    assert "forged answer of a_good to q6" in text
    students = sorted(grading._inline(s) for s in graded["expected"])
    expected = ["# Free-response answers"] + [h for q in manual for h in [f"## {q}"]
                                              + [f"### {s}" for s in students]]
    assert [h for h in _headings(text) if h.startswith(("# ", "## ", "### "))] == expected


@needs_sandbox
def test_a_killed_grader_resumes_and_gives_the_same_csv(graded, tmp_path):
    """SIGKILL the grader after its first result; its processes clean up; --resume finishes the same CSV."""
    students = ["a_good", "blank", "exception", "own_helper_cell", "z_good"]
    folder = tmp_path / "submissions"
    folder.mkdir()
    for student in students:
        (folder / f"{student}.ipynb").write_bytes((graded["root"] / "submissions" / f"{student}.ipynb").read_bytes())
    out, tmp = tmp_path / "out" / "grades.csv", tmp_path / "tmp"
    tmp.mkdir()
    journal = grading.journal_path(out)
    command = [sys.executable, "-m", "lessonlib", "grade", str(folder), "--out", str(out), "--jobs", "2",
               "--timeout", str(TIMEOUT), "--no-progress"]
    env = {**os.environ, "TMPDIR": str(tmp)}
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        if journal.is_file() and len(journal.read_text().splitlines()) >= 2:  # the header and one result
            break
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait()
    written = journal.read_text()
    kept = len(written.splitlines()) - 1
    assert 1 <= kept < len(students), "kill the grader in the middle of the batch"
    assert '"status": "ok"' in written, written[-3000:]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and list(tmp.iterdir()):  # its grading processes stop and clean up
        time.sleep(0.2)
    # (killed between two submissions, with none running, it may leave its empty batch folder: the next run
    # removes it)
    assert [p for p in tmp.rglob("*") if not p.is_dir()] == [] and len(list(tmp.rglob("*"))) <= 1
    assert not out.exists()
    again = subprocess.run(command, capture_output=True, text=True, env=env)
    assert again.returncode == 2 and "--resume" in again.stderr  # an unfinished run is not overwritten by accident
    resumed = subprocess.run([*command, "--resume"], capture_output=True, text=True, env=env)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "from the journal" in resumed.stdout
    reference = graded["out"].read_text().splitlines()
    assert out.read_text().splitlines() == [reference[0]] + [line for line in reference[1:]
                                                             if line.split(",")[0] in students]
    assert not journal.exists() and list(tmp.iterdir()) == []


def test_resume_refuses_a_journal_of_another_exercise_version(tmp_path):
    (tmp_path / "ann.ipynb").write_text(json.dumps(load(LESSON, "exercises")))
    out = tmp_path / "grades.csv"
    grading.journal_path(out).write_text(json.dumps({"journal": 1, "source_sha256": "0" * 64}) + "\n")
    result = subprocess.run([sys.executable, "-m", "lessonlib", "grade", str(tmp_path), "--out", str(out),
                             "--resume"], capture_output=True, text=True)
    assert result.returncode == 2 and "another version" in result.stderr


def test_the_grader_refuses_without_a_sandbox_unless_told(tmp_path):
    """No bwrap on PATH: one line, exit status 2, naming --no-sandbox."""
    (tmp_path / "subs").mkdir()
    (tmp_path / "subs" / "ann.ipynb").write_text("{}")
    command = [sys.executable, "-m", "lessonlib", "grade", str(tmp_path / "subs"), "--out", str(tmp_path / "g.csv"),
               "--exercise", LESSON, "--no-progress"]
    env = {**os.environ, "PATH": str(tmp_path)}  # nothing to run there
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "bubblewrap" in result.stderr and "--no-sandbox" in result.stderr
    result = subprocess.run([*command, "--no-sandbox"], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "1 invalid" in result.stdout  # graded (no code of it ran: it is not a notebook)


@needs_sandbox
@pytest.mark.parametrize("path", [p for p in SOLUTIONS if p.stem != LESSON], ids=lambda p: p.name)
def test_solution_gets_full_marks_and_blank_exercise_zero(path):
    """Lesson 01 is covered by the corpus above; every other exercise gets the same two checks."""
    declared = questions(json.loads(path.read_text()))
    results = grading.grade({"solution": path, "blank": REPO / "exercises" / path.name}, path, jobs=2,
                            timeout=120, progress=False)
    by_student = {r.student: r for r in results}
    best = {q: spec.points for q, spec in declared.items() if spec.kind == "auto"}
    assert (by_student["solution"].status, by_student["solution"].points) == ("ok", best)
    assert (by_student["blank"].status, by_student["blank"].total) == ("ok", 0)
    assert by_student["solution"].flags == [] and by_student["blank"].flags == []


def test_grading_plan_takes_tests_from_the_source_and_answers_from_the_submission():
    solution, exercise = load(LESSON, "solutions"), load(LESSON, "exercises")
    steps, missing, free = grading.grading_plan(solution, exercise)
    assert missing == []
    assert all("NotImplementedError" in s.code for s in steps if s.role == "answer")
    assert [s.code for s in steps if s.role == "tests"] == [
        grading.unwrap_checks("".join(c["source"])) for c in solution["cells"] if "tests" in marker(c)]
    assert any(s.hidden for s in steps) and not any("check(" in s.code for s in steps if s.role == "tests")
    assert set(free.values()) == {""}  # the placeholders count as no answer
    assert not any(s.role == "own" for s in steps) and "import torch" in steps[0].code
    assert "torch" in steps[0].bound


def test_own_cells_run_in_order_just_before_the_answer_that_follows_them():
    solution, exercise = load(LESSON, "solutions"), load(LESSON, "exercises")
    nb = copy.deepcopy(exercise)
    cells = nb["cells"]
    q2 = cells.index(answer_cell(nb, "q2"))
    own = [{"cell_type": "code", "metadata": {}, "source": f"helper_{i} = {i}"} for i in range(3)]
    cells[q2:q2] = own[:2]  # two cells of the student's own before q2's answer
    cells.append(own[2])  # and one at the very end
    cells.insert(q2, copy.deepcopy(cells[next(i for i, c in enumerate(cells) if not marker(c)
                                              and "import torch" in "".join(c["source"]))]))  # a copy: not "own"
    steps, _, _ = grading.grading_plan(solution, nb)
    roles = [(s.role, s.question, s.code) for s in steps if s.role in ("own", "answer")]
    q2_at = next(i for i, r in enumerate(roles) if r[:2] == ("answer", "q2"))
    assert roles[q2_at - 2: q2_at] == [("own", "q2", "helper_0 = 0"), ("own", "q2", "helper_1 = 1")]
    last = [marker(c)["answer"] for c in solution["cells"] if "answer" in marker(c) and c["cell_type"] == "code"][-1]
    assert roles[-1] == ("own", last, "helper_2 = 2")  # after the last answer cell
    assert sum(r[0] == "own" for r in roles) == 3


def test_predictions_are_found_in_the_solutions():
    assert grading.predictions(load(LESSON, "solutions")) == {"q3": {"q3_values": "int"}, "q4": {"q4_rank": "int"},
                                                              "q9": {"q9_shrink": "float"}}
    assert grading.predictions({"cells": [{"cell_type": "code", "metadata": {"lessonlib": {"answer": "q9"}},
                                           "source": "### BEGIN SOLUTION\nx = -2.5\n### END SOLUTION"}]}) \
        == {"q9": {"x": "float"}}


@pytest.mark.parametrize("text, message", [
    ("[1]", "not a notebook"),
    ('{"cells": {}}', "no list of cells"),
    ('{"metadata": null, "cells": []}', "notebook's metadata is null"),
    ('{"cells": [7]}', "cell 0 is not a mapping"),
    ('{"cells": [{"source": "x"}]}', "cell 0 has no cell_type"),
    ('{"cells": [{"cell_type": "code", "metadata": null}]}', "cell 0: its metadata is null"),
    ('{"cells": [{"cell_type": "code", "metadata": {"lessonlib": 3}}]}', "marker is not a mapping"),
    ('{"cells": [{"cell_type": "code", "source": 5}]}', "neither text nor a list"),
])
def test_read_notebook_says_what_is_malformed(text, message):
    with pytest.raises(ValueError, match=message):
        grading.read_notebook(text)


def test_read_notebook_upgrades_nbformat_3():
    good = answered(load(LESSON, "exercises"), load(LESSON, "solutions"))
    old = nbformat.writes(nbformat.convert(nbformat.reads(json.dumps(good), as_version=4), 3))
    assert json.loads(old)["nbformat"] == 3
    nb = grading.read_notebook(old)
    assert [marker(c) for c in nb["cells"]] == [marker(c) for c in good["cells"]]
    assert grading.grading_plan(load(LESSON, "solutions"), nb)[1] == []  # every answer cell is found


def test_a_notebook_of_another_exercise_is_reported_as_such_without_running_it(tmp_path):
    other = tmp_path / f"{LESSON}.ipynb"
    other.write_text(json.dumps(load(OTHER, "exercises")))
    result = grading.grade_notebook(REPO / "solutions" / f"{LESSON}.ipynb", other, "ann", sandboxed=False)
    assert (result.status, result.total) == ("wrong-exercise", 0)
    assert f"exercise {OTHER}" in result.feedback[0]


def test_short_messages_never_quote_a_test_line():
    steps, _, _ = grading.grading_plan(load(LESSON, "solutions"), {"cells": []})
    quoted = grading.quoted_test_lines(steps)
    hidden = _hidden_lines()
    assert hidden and set(hidden) <= set(quoted)
    leak = ("AssertionError", f"look: {hidden[0]} and more")
    assert hidden[0] not in grading.short_message(leak, quoted)
    long = grading.short_message(("ValueError", "x" * 5000 + "\nsecond line"), quoted)
    assert len(long) <= grading.MESSAGE_CHARS + 20 and "second" not in long


def test_csv_escapes_formulas_and_free_response_fences_answers():
    assert [grading.csv_cell(v) for v in ["=1", "+1", "-1", "@x", "\tx", "ok", 3]] == \
        ["'=1", "'+1", "'-1", "'@x", "'\tx", "ok", 3]
    text = grading.manual_text([grading.Result("ann", "ok", answers={"q5": FORGED})],
                               {"cells": [{"cell_type": "markdown", "metadata": {"lessonlib": {"rubric": "q5"}},
                                           "source": "Rubric: 2 points if ..."}]})
    assert _headings(text) == ["# Free-response answers", "## q5", "### ann"]


def test_layouts_and_which_exercise(tmp_path):
    for student in ("ann", "ben"):
        (tmp_path / student).mkdir()
        (tmp_path / student / f"{LESSON}.ipynb").write_text("{}")
    (tmp_path / "ann" / ".ipynb_checkpoints").mkdir()
    (tmp_path / "ann" / ".ipynb_checkpoints" / "x.ipynb").write_text("{}")
    found = grading.find_submissions(tmp_path)
    assert list(found) == ["ann", "ben"]
    assert grading.find_source(found).name == f"{LESSON}.ipynb"
    (tmp_path / "ben" / "other.ipynb").write_text("{}")
    with pytest.raises(ValueError, match="two submissions"):
        grading.find_submissions(tmp_path)


def test_which_exercise_from_metadata_or_a_clear_error(tmp_path):
    exercise = (REPO / "exercises" / f"{LESSON}.ipynb").read_text()
    (tmp_path / "ann.ipynb").write_text(exercise)
    (tmp_path / "ben.ipynb").write_text("{broken")
    assert grading.find_source(grading.find_submissions(tmp_path)).stem == LESSON
    (tmp_path / "cid.ipynb").write_text(json.dumps(load(OTHER, "exercises")))  # 1 of 2 say 05: no majority
    with pytest.raises(ValueError, match="pass --exercise"):
        grading.find_source(grading.find_submissions(tmp_path))
    (tmp_path / "dan.ipynb").write_text(exercise)  # 2 of 3 say 01
    assert grading.find_source(grading.find_submissions(tmp_path)).stem == LESSON
    with pytest.raises(ValueError, match="no solution notebook"):
        grading.find_source({}, "99_nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no notebooks"):
        grading.find_submissions(tmp_path / "empty")
    with pytest.raises(ValueError, match="no submissions folder"):
        grading.find_submissions(tmp_path / "missing")


@pytest.mark.parametrize("args, message", [
    (["--jobs", "0"], "--jobs must be a positive integer, got 0"),
    (["--timeout", "0"], "--timeout (seconds) must be a finite number above 0, got 0.0"),
    (["--timeout", "nan"], "--timeout (seconds) must be a finite number above 0, got nan"),
    (["--timeout", "inf"], "--timeout (seconds) must be a finite number above 0, got inf"),
    (["--memory", "0"], "--memory must be at least"),
    (["--memory", "nan"], "--memory must be at least"),
])
def test_cli_rejects_bad_options(tmp_path, args, message):
    (tmp_path / "ann.ipynb").write_text("{}")
    result = subprocess.run([sys.executable, "-m", "lessonlib", "grade", str(tmp_path), *args],
                            capture_output=True, text=True)
    assert result.returncode == 2 and message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ann.ipynb"]     # no journal, no CSV left behind
