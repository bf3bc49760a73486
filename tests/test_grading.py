"""Tests of lessonlib.authoring.grading: a corpus of bad submissions graded in one batch next to good ones.

The corpus is built here, in a temporary folder, from the real generated exercise and its solution,
so it follows the notebooks when they change.
"""

from __future__ import annotations

import copy
import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from lessonlib.authoring import grading
from lessonlib.authoring.exercises import marker, questions

REPO = Path(__file__).resolve().parent.parent
SOLUTIONS = sorted((REPO / "solutions").glob("*.ipynb"))
LESSON = "01_lora_increment"
TIMEOUT = 30  # seconds per submission in the corpus (the endless loop costs exactly this)


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


def build_corpus(folder: Path) -> dict[str, tuple[str, dict[str, int]]]:
    """Write the submissions; return {student: (expected status, expected points per question)}."""
    solution, exercise = load(LESSON, "solutions"), load(LESSON, "exercises")
    declared = questions(solution)
    auto = [q for q, spec in declared.items() if spec.kind == "auto"]
    first, second = auto[0], auto[1]
    full = {q: declared[q].points for q in auto}
    zero = {q: 0 for q in auto}
    good = answered(exercise, solution)
    expected: dict[str, tuple[str, dict[str, int]]] = {}

    def write(student: str, nb: dict | str, status: str, points: dict[str, int]) -> None:
        (folder / f"{student}.ipynb").write_text(nb if isinstance(nb, str) else json.dumps(nb))
        expected[student] = (status, points)

    def with_answer(question: str, source: str) -> dict:
        nb = copy.deepcopy(good)
        answer_cell(nb, question)["source"] = source
        return nb

    write("a_good", good, "ok", full)
    write("z_good", good, "ok", full)
    write("blank", exercise, "ok", zero)
    write("invalid_json", '{"cells": [', "invalid", zero)
    write("not_a_notebook", "[1, 2, 3]", "invalid", zero)

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
    write("endless_loop", with_answer(first, "while True:\n    pass"), "timeout", zero)
    write("os_exit", with_answer(second, "import os\nos._exit(3)"), "crashed", before_second)
    write("sys_exit", with_answer(second, "import sys\nsys.exit(0)"), "ok", {**full, second: 0})
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
    write("edits_checks", cheat, "ok", {**full, first: 0})
    return expected


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    """Grade the whole corpus once, through the command line, two at a time."""
    root = tmp_path_factory.mktemp("grading")
    submissions = root / "submissions"
    submissions.mkdir()
    expected = build_corpus(submissions)
    out = root / "out" / "grades.csv"
    out.parent.mkdir()
    out.write_text("stale content from an earlier run\n")
    result = subprocess.run([sys.executable, "-m", "lessonlib", "grade", str(submissions), "--out", str(out),
                             "--feedback", str(root / "feedback"), "--jobs", "2", "--timeout", str(TIMEOUT)],
                            capture_output=True, text=True, cwd=root)
    rows = {row["student"]: row for row in csv.DictReader(out.open())}
    return {"expected": expected, "rows": rows, "result": result, "root": root, "out": out}


def test_the_command_succeeds_with_a_progress_bar(graded):
    result = graded["result"]
    assert result.returncode == 0, result.stderr[-2000:]
    n = len(graded["expected"])
    assert "grading" in result.stderr and f"{n}/{n}" in result.stderr
    assert f"{n} submission(s) graded" in result.stdout


def test_csv_columns_and_one_row_per_submission(graded):
    solution = load(LESSON, "solutions")
    declared = questions(solution)
    header = next(csv.reader(graded["out"].open()))
    assert header == ["student", *declared, "total", "max", "status"]
    assert set(graded["rows"]) == set(graded["expected"])
    leftovers = [p.name for p in graded["out"].parent.iterdir() if p.name.startswith(".")]
    assert leftovers == []  # written through a temporary file, then renamed


@pytest.mark.parametrize("student", ["a_good", "z_good", "blank", "invalid_json", "not_a_notebook",
                                     "deleted_cell", "duplicated_cells", "endless_loop", "os_exit", "sys_exit",
                                     "exception", "huge_output", "edits_checks"])
def test_each_submission_gets_the_right_status_and_points(graded, student):
    status, points = graded["expected"][student]
    row = graded["rows"][student]
    declared = questions(load(LESSON, "solutions"))
    got = {q: int(row[q]) for q in points}
    assert (row["status"], got) == (status, points)
    assert int(row["total"]) == sum(points.values())
    assert int(row["max"]) == sum(spec.points for spec in declared.values() if spec.kind == "auto")
    assert all(row[q] == "" for q, spec in declared.items() if spec.kind == "manual")


def test_feedback_explains_without_revealing_hidden_tests(graded):
    feedback = graded["root"] / "feedback"
    texts = {p.stem: p.read_text() for p in feedback.glob("*.md")}
    assert set(texts) == set(graded["expected"])
    solution = load(LESSON, "solutions")
    hidden_lines = [line.strip() for c in solution["cells"] if marker(c).get("hidden")
                    for line in "".join(c["source"]).splitlines() if line.strip() and "check(" not in line]
    assert hidden_lines
    for text in texts.values():
        assert not any(line in text for line in hidden_lines)
    assert "a hidden test failed" in texts["blank"]
    assert "hint:" in texts["blank"]
    assert "did not finish" in texts["endless_loop"]
    assert "stopped the Python kernel" in texts["os_exit"]
    assert "could not be read" in texts["invalid_json"]
    assert "missing" in texts["deleted_cell"]
    assert "graded by your instructor" in texts["a_good"] and "no answer written" in texts["blank"]


def test_free_response_answers_are_collected_with_their_rubrics(graded):
    text = graded["out"].with_suffix(".free-response.md").read_text()
    solution = load(LESSON, "solutions")
    manual = [q for q, spec in questions(solution).items() if spec.kind == "manual"]
    model = "".join(answer_cell(solution, manual[0])["source"]).strip()
    assert f"## {manual[0]}" in text and "Rubric" in text
    assert model in text  # a_good handed in the model answer
    assert "### blank\n\n(no answer)" in text


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


def test_grading_plan_takes_tests_from_the_source_and_answers_from_the_submission():
    solution, exercise = load(LESSON, "solutions"), load(LESSON, "exercises")
    steps, missing, free = grading.grading_plan(solution, exercise)
    assert missing == []
    assert all("NotImplementedError" in s.code for s in steps if s.role == "answer")
    assert [s.code for s in steps if s.role == "tests"] == [
        grading.unwrap_checks("".join(c["source"])) for c in solution["cells"] if "tests" in marker(c)]
    assert any(s.hidden for s in steps) and not any("check(" in s.code for s in steps if s.role == "tests")
    assert set(free.values()) == {""}  # the placeholders count as no answer


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
    (tmp_path / "ann.ipynb").write_text("{}")
    with pytest.raises(ValueError, match="pass --exercise"):
        grading.find_source(grading.find_submissions(tmp_path))
    with pytest.raises(ValueError, match="no solution notebook"):
        grading.find_source({}, "99_nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no notebooks"):
        grading.find_submissions(tmp_path / "empty")
    with pytest.raises(ValueError, match="no submissions folder"):
        grading.find_submissions(tmp_path / "missing")


@pytest.mark.parametrize("args, message", [
    (["--jobs", "0"], "--jobs must be at least 1"),
    (["--timeout", "0"], "--timeout must be a positive"),
])
def test_cli_rejects_bad_options(tmp_path, args, message):
    (tmp_path / "ann.ipynb").write_text("{}")
    result = subprocess.run([sys.executable, "-m", "lessonlib", "grade", str(tmp_path), *args],
                            capture_output=True, text=True)
    assert result.returncode == 2 and message in result.stderr
