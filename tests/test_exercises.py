"""Tests of lessonlib.authoring.exercises: markers, the generator, and exercises/ being up to date."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from lessonlib.authoring import exercises, notebooks

from conftest import run_main
from lessonlib.authoring.exercises import BEGIN, END, questions, strip_solution, unwrap_checks

REPO = Path(__file__).resolve().parent.parent
SOLUTIONS = sorted((REPO / "solutions").glob("*.ipynb"))
IDS = [p.name for p in SOLUTIONS]


def test_every_solution_notebook_belongs_to_a_lesson():
    lessons = {p.stem for p in (REPO / "notebooks").glob("*.ipynb")}
    assert SOLUTIONS, "no solution notebooks"
    assert {p.stem for p in SOLUTIONS} <= lessons, "a solution notebook without its lesson"


def test_exercises_folder_is_what_the_generator_writes():
    assert exercises.build(check_only=True) == []


@pytest.mark.parametrize("path", SOLUTIONS, ids=IDS)
def test_solution_mixes_question_kinds_with_the_required_markers(path):
    nb = json.loads(path.read_text())
    declared = questions(nb)
    assert len(declared) >= 3
    kinds = {q.kind for q in declared.values()}
    assert kinds == {"auto", "manual"}
    predictions = [c for c in nb["cells"] if "answer" in exercises.marker(c) and c["cell_type"] == "code"
                   and "def " not in "".join(c["source"])]
    assert predictions, "at least one numeric prediction"
    assert all(q.points > 0 for q in declared.values())


@pytest.mark.parametrize("path", SOLUTIONS, ids=IDS)
def test_generated_exercise_hides_solutions_hidden_tests_and_rubrics(path):
    solution = json.loads(path.read_text())
    student = json.loads((REPO / "exercises" / path.name).read_text())
    text = json.dumps(student)
    assert BEGIN not in text and END not in text and "BEGIN SOLUTION" not in text
    marks = [exercises.marker(c) for c in student["cells"]]
    assert not any(m.get("hidden") or "rubric" in m for m in marks)
    assert all(c.get("outputs", []) == [] and c.get("execution_count") is None
               for c in student["cells"] if c["cell_type"] == "code")
    hidden = ["".join(c["source"]) for c in solution["cells"] if exercises.marker(c).get("hidden")]
    assert hidden, "each solution has hidden tests"
    for source in hidden:
        for line in source.splitlines():
            if line.strip().startswith("assert"):
                assert line.strip() not in text
    # every answer cell is still there, as a stub or a placeholder, with its marker
    answers = [m["answer"] for m in marks if "answer" in m]
    assert answers == [exercises.marker(c)["answer"] for c in solution["cells"] if "answer" in exercises.marker(c)]
    assert notebooks.problems(REPO / "exercises" / path.name, generated=True) == []
    assert notebooks.problems(REPO / "exercises" / path.name) == []  # exercises/ is recognised as generated


@pytest.mark.parametrize("path", SOLUTIONS, ids=IDS)
def test_a_prediction_names_its_variable_in_the_student_answer_cell(path):
    from lessonlib.authoring.grading import predictions

    student = json.loads((REPO / "exercises" / path.name).read_text())
    found = predictions(json.loads(path.read_text()))
    assert found, "each solution has a numeric prediction"
    for question, names in found.items():
        cell = next(c for c in student["cells"] if exercises.marker(c).get("answer") == question)
        comments = [line for line in "".join(cell["source"]).splitlines() if line.startswith("#")]
        for name in names:
            assert any(name in line for line in comments), f"{question}: the answer cell does not name {name}"


def test_strip_solution_keeps_indentation_and_code_around():
    source = f"def f(x):\n    y = 1\n    {BEGIN}\n    return x + y\n    {END}\n"
    stub = strip_solution(source, "q9")
    assert stub == 'def f(x):\n    y = 1\n    raise NotImplementedError("q9: write your answer here")\n'
    namespace: dict = {}
    exec(stub, namespace)
    with pytest.raises(NotImplementedError, match="q9"):
        namespace["f"](1)


@pytest.mark.parametrize("source, message", [
    ("x = 1", "needs a"),
    (f"{BEGIN}\nx = 1", "never closed"),
    (f"{END}\nx = 1", "without a"),
    (f"{BEGIN}\n{BEGIN}\n{END}", "inside a solution region"),
])
def test_strip_solution_rejects_broken_markers(source, message):
    with pytest.raises(ValueError, match=message):
        strip_solution(source, "q1")


def _cell(kind, source, **mark):
    cell = new_code_cell(source) if kind == "code" else new_markdown_cell(source)
    if mark:
        cell.metadata["lessonlib"] = mark
    return cell


ANSWER = _cell("code", f"{BEGIN}\nx = 1\n{END}", answer="q1")
TESTS = _cell("code", "with check('q1'):\n    assert x == 1", tests="q1", points=1)


@pytest.mark.parametrize("cells, message", [
    ([ANSWER], "no test cell"),
    ([TESTS, ANSWER], "come before any answer"),
    ([ANSWER, _cell("code", "assert x", tests="q1", points=-1)], "whole number"),
    ([_cell("markdown", "text", answer="q2", manual=2)], "no rubric"),
    ([_cell("markdown", "text", answer="q2", manual=0), _cell("markdown", "r", rubric="q2")], "positive number"),
    ([_cell("code", "x = 1", answer="q2", manual=2)], "must be a markdown cell"),
    ([_cell("markdown", "x", answer="q2")], "markdown cell"),
])
def test_questions_rejects_inconsistent_markers(cells, message):
    with pytest.raises(ValueError, match=message):
        questions(new_notebook(cells=cells))


def test_points_add_up_over_visible_and_hidden_test_cells():
    hidden = _cell("code", "with check('q1'):\n    assert x", tests="q1", points=2, hidden=True)
    manual = [_cell("markdown", "because", answer="q2", manual=3), _cell("markdown", "- 3 points if", rubric="q2")]
    found = questions(new_notebook(cells=[ANSWER, TESTS, hidden, *manual]))
    assert found["q1"] == exercises.Question("q1", "auto", 3, 2)
    assert found["q2"] == exercises.Question("q2", "manual", 3, 0)


def test_unwrap_checks_makes_a_failing_assert_fail_the_cell():
    code = unwrap_checks("with check('q1', hint='h'):\n    assert x == 1\nwith open('f') as f:\n    pass")
    assert code.splitlines()[0] == "assert x == 1" and "with open('f') as f:" in code
    with pytest.raises(AssertionError):
        exec(code, {"x": 2})
    with pytest.raises(ValueError, match="not valid Python"):
        unwrap_checks("with check('q1'):\nassert")
    assert exercises.check_hint("with check('q1', hint='h'):\n    pass") == "h"


def test_generator_cli_builds_and_detects_stale_or_extra_files(tmp_path):
    solutions, student = tmp_path / "solutions", tmp_path / "exercises"
    solutions.mkdir()
    nb = new_notebook(cells=[_cell("code", notebooks.setup_cell_source()), ANSWER, TESTS])
    nbformat.write(nb, solutions / "09_x.ipynb")

    def cli(action):
        return run_main(exercises.main, [action, "--solutions", str(solutions), "--exercises", str(student)])

    assert cli("check").returncode == 1                       # missing
    assert cli("build").returncode == 0
    generated = json.loads((student / "09_x.ipynb").read_text())
    assert "".join(generated["cells"][0]["source"]) == notebooks.colab_link_source("exercises/09_x.ipynb")
    assert "".join(generated["cells"][2]["source"]) == 'raise NotImplementedError("q1: write your answer here")'
    result = cli("check")
    assert result.returncode == 0 and "up to date" in result.stdout
    (student / "09_x.ipynb").write_text((student / "09_x.ipynb").read_text().replace("NotImplementedError", "Oops"))
    (student / "10_extra.ipynb").write_text("{}")
    result = cli("check")
    assert result.returncode == 1 and "out of date" in result.stdout and "10_extra" in result.stdout
    assert cli("build").returncode == 0 and not (student / "10_extra.ipynb").exists()
    assert cli("check").returncode == 0
    nbformat.write(new_notebook(cells=[ANSWER]), solutions / "09_x.ipynb")  # no test cell
    result = cli("build")
    assert result.returncode == 2 and "no test cell" in result.stderr
