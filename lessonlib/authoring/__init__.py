"""The authoring and grading half of lessonlib: what instructors, authors and CI use.

- :mod:`lessonlib.authoring.notebooks`: the shared set-up cell, re-execution in place, hygiene checks;
- :mod:`lessonlib.authoring.exercises`: exercise markers and the student-version generator;
- :mod:`lessonlib.authoring.grading`: the grader of a folder of submitted notebooks.

The lesson half of the package (what notebooks import) never imports this one, so a student's
notebook needs none of it; this half may import the lesson half.

Example:
    >>> from lessonlib.authoring.notebooks import IGNORE_OUTPUT
    >>> IGNORE_OUTPUT
    '# NBVAL_IGNORE_OUTPUT'
"""
