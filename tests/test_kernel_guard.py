"""Tests of lessonlib.authoring.kernel_guard, in this process (no kernel): what the guard restores and refuses.

The same code runs inside every grading kernel; here it guards a plain namespace, and each test
does to it what a submission's cell would do between the grader's steps.
"""

from __future__ import annotations

import builtins
import math
import secrets

import pytest

from lessonlib.authoring.kernel_guard import make_guard, outcome


@pytest.fixture
def guarded():
    """A guard over a fresh namespace in which the course's cell ``import math`` ran."""
    key = secrets.token_hex(16)
    ns: dict = {}
    guard = make_guard(key, ["import math"], {"q3": {"q3_values": "int"}, "q4": {"q4_ratio": "float"}}, None, ns)

    def run(kind: str, code: str, question: str | None = None, bound: list[str] | None = None):
        nonce = secrets.token_hex(4)
        return outcome(guard(nonce, kind, code, question, bound or []), key, nonce, kind, code)

    saved_isclose, saved_abs = math.isclose, builtins.abs
    run("given", "import math", bound=["math"])
    yield ns, run
    math.isclose, builtins.abs = saved_isclose, saved_abs


def test_a_passing_and_a_failing_test(guarded):
    ns, run = guarded
    assert run("tests", "assert math.isclose(1.0, 1.0)") == (None, [])
    error, tampered = run("tests", "assert math.isclose(1.0, 2.0), 'not close'")
    assert error == ("AssertionError", "not close") and tampered == []


def test_patched_functions_and_builtins_are_put_back_before_the_test(guarded):
    ns, run = guarded
    math.isclose = lambda *a, **k: True  # what a student's cell would do
    builtins.abs = lambda x: 0
    error, tampered = run("tests", "assert not math.isclose(1.0, 2.0)\nassert abs(-3) == 3")
    assert error is None and tampered == ["builtins.abs", "math.isclose"]
    assert math.isclose is not None and abs(-3) == 3


def test_a_name_of_the_course_rebound_by_the_student_is_put_back(guarded):
    ns, run = guarded
    ns["math"] = None
    assert run("tests", "assert math.sqrt(4) == 2") == (None, ["name math"])


def test_a_patch_made_while_the_test_runs_fails_the_test(guarded):
    ns, run = guarded
    exec("def answer():\n    import math\n    math.isclose = lambda *a, **k: True\n    return 1", ns)
    error, tampered = run("tests", "answer()\nassert math.isclose(1.0, 2.0)")
    assert error[0] == "Tampered" and tampered == ["math.isclose"]
    assert not math.isclose(1.0, 2.0)  # put back after the test too


def test_predictions_must_be_plain_numbers(guarded):
    ns, run = guarded
    exec("class AlwaysEqual(int):\n    def __eq__(self, other):\n        return True\nq3_values = AlwaysEqual(1)", ns)
    error, _ = run("tests", "assert q3_values == 65536", "q3")
    assert error == ("TypeError", "q3_values must be a whole number (int), not AlwaysEqual")
    ns["q3_values"], ns["q4_ratio"] = 65536, 2  # an int is a fine float prediction
    assert run("tests", "assert q3_values == 65536", "q3") == (None, [])
    assert run("tests", "assert q4_ratio == 2.0", "q4") == (None, [])
    ns["q4_ratio"] = True  # bool is not a number here
    assert run("tests", "assert q4_ratio", "q4")[0][0] == "TypeError"


def test_a_forged_answer_is_refused():
    key = secrets.token_hex(16)
    guard = make_guard(key, [], {}, None, {})
    genuine = guard("n1", "tests", "assert False", None, [])
    with pytest.raises(ValueError, match="not genuine"):
        outcome(genuine, key, "n1", "tests", "assert True")  # the answer to another test
    with pytest.raises(ValueError, match="not genuine"):
        outcome(genuine, key, "n2", "tests", "assert False")  # replayed
    forged = "(None, [])".encode().hex() + ":" + "0" * 128
    with pytest.raises(ValueError, match="not genuine"):
        outcome(forged, key, "n1", "tests", "assert False")


def test_a_library_wrapping_its_own_function_is_not_tampering(guarded):
    ns, run = guarded
    import functools

    original = math.isclose

    @functools.wraps(original)
    def wrapped(*args, **kwargs):  # defined in this test file, not a library: refused
        return original(*args, **kwargs)

    math.isclose = wrapped
    assert run("tests", "pass")[1] == ["math.isclose"]
    assert math.isclose is original
