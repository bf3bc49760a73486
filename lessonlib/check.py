"""The self-check of exercise notebooks: ``with check("q1", hint="..."):`` around a few asserts.

This is the only part of the exercise machinery a student's notebook imports
(``from lessonlib.check import check``). It prints how the checks went and never stops the
notebook. Grading does not rely on it: the grader runs the test code itself
(:mod:`lessonlib.authoring.grading`), so changing or replacing this function changes no grade.

Example:
    >>> with check("q1"):
    ...     assert 1 + 1 == 2
    q1: the checks in this cell pass. More tests run when your notebook is graded.
"""

from __future__ import annotations

from types import TracebackType

GRADING_NOTE = "More tests run when your notebook is graded."


def failure_line(exc: BaseException) -> str:
    """Return the first line of ``ExceptionName: message`` (the name alone when there is no message).

    Example:
        >>> failure_line(ValueError("bad value\\nmore detail"))
        'ValueError: bad value'
        >>> failure_line(AssertionError())
        'AssertionError'
    """
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return text.splitlines()[0] if text.strip() else type(exc).__name__


class check:
    """Run a block of tests for one question and say how it went, with a hint when it fails.

    Use it as ``with check("q1", hint="..."):`` around ``assert`` lines. A failure never stops
    the notebook: the message names the check that failed and the hint. When the grader runs,
    it executes the test code itself, so changing this function changes no grade.

    Example:
        >>> with check("q1", hint="count both A and B"):
        ...     assert 2 + 2 == 4
        q1: the checks in this cell pass. More tests run when your notebook is graded.
        >>> with check("q1", hint="count both A and B"):
        ...     assert 2 + 2 == 5, "2 + 2 should be 5"
        q1: not yet. AssertionError: 2 + 2 should be 5
            hint: count both A and B
    """

    def __init__(self, question: str, hint: str = "") -> None:
        if not isinstance(question, str) or not question:
            raise ValueError(f"check needs a question name such as 'q1', got {question!r}")
        self.question, self.hint = question, hint

    def __enter__(self) -> check:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> bool:
        if exc is None:
            print(f"{self.question}: the checks in this cell pass. {GRADING_NOTE}")
            return True
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            return False
        if isinstance(exc, (NotImplementedError, NameError)):
            print(f"{self.question}: not answered yet ({failure_line(exc)}). Write your answer, run its cell, then this one.")
        else:
            print(f"{self.question}: not yet. {failure_line(exc)}")
        if self.hint:
            print(f"    hint: {self.hint}")
        return True  # the failure is reported; the notebook goes on
