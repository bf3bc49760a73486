"""Former home of ``check``; kept so that ``from lessonlib.exercises import check`` still works.

Notebooks import the self-check from :mod:`lessonlib.check`; the exercise generator lives in
:mod:`lessonlib.authoring.exercises`. This module only re-exports :class:`lessonlib.check.check`
(it imports nothing from the authoring half) and goes away once no notebook imports it.

Example:
    >>> from lessonlib.exercises import check
    >>> check.__module__
    'lessonlib.check'
"""

from lessonlib.check import check

__all__ = ["check"]
