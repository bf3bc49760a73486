"""lessonlib: the toolbox behind the course "LoRA & QLoRA, hands-on".

The notebooks teach; this package holds what several notebooks reuse: the environment report
(:mod:`lessonlib.env`), the course's dependency list (:mod:`lessonlib.requirements`) and the
authoring and grading half (:mod:`lessonlib.authoring`: notebook tools, exercises, grader), which
no lesson imports.

Importing the package is cheap: no module here imports torch, transformers or peft at import
time; each does so inside the function that needs it.

Example:
    >>> import lessonlib
    >>> lessonlib.__version__
    '0.1.0'
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
