"""The authoring and grading half of lessonlib: what instructors, authors and CI use.

- :mod:`lessonlib.authoring.notebooks`: the shared set-up cell, re-execution in place, hygiene checks;
- :mod:`lessonlib.authoring.exercises`: exercise markers and the student-version generator;
- :mod:`lessonlib.authoring.grading`: the grader of a folder of submitted notebooks, with
  :mod:`lessonlib.authoring.sandbox` (each submission's kernel in a bubblewrap sandbox),
  :mod:`lessonlib.authoring.kernel_guard` (the grader's code inside that kernel) and
  :mod:`lessonlib.authoring.flags` (what in a submission deserves the instructor's look).

The lesson half of the package (what notebooks import, the students' ``lessonlib.check``
included) never imports this one, so a student's notebook needs none of it, and a sandboxed
grading kernel does not even see it; this half may import the lesson half.

Example:
    >>> from lessonlib.authoring.notebooks import IGNORE_OUTPUT
    >>> IGNORE_OUTPUT
    '# NBVAL_IGNORE_OUTPUT'
"""
