"""lessonlib: the toolbox behind the course "LoRA & QLoRA, hands-on".

The notebooks teach; this package holds what several notebooks reuse, one module per job:

- where a lesson runs: :mod:`~lessonlib.env` (environment report, seeding, Colab set-up),
  :mod:`~lessonlib.requirements` (the pinned dependencies), :mod:`~lessonlib.prepare` (the
  one-off set-up command);
- the model and the task: :mod:`~lessonlib.models` (loading the base model; ``build_model`` for
  full fine-tuning, LoRA and QLoRA), :mod:`~lessonlib.data` (the booking task, its scorer, your own
  data), :mod:`~lessonlib.train` (the visible training loop and evaluation),
  :mod:`~lessonlib.finetune` (the same with TRL's ``SFTTrainer``, as a command),
  :mod:`~lessonlib.forgetting` (what a fine-tune costs elsewhere), :mod:`~lessonlib.sweep`
  (hyperparameter sweeps), :mod:`~lessonlib.variants` (DoRA, PiSSA, OLoRA, LoftQ, LoRA+),
  :mod:`~lessonlib.adapters` (scoring short answers in one forward pass, the bytes an adapter adds);
- the numbers: :mod:`~lessonlib.params` (parameter counts), :mod:`~lessonlib.quantization`
  (bits and bytes of the number formats), :mod:`~lessonlib.memory` (training memory, measured and
  estimated), :mod:`~lessonlib.route` (choosing a route for a GPU), :mod:`~lessonlib.sharding`
  (memory split across GPUs), :mod:`~lessonlib.devices` (comparing results across devices);
- the pictures: :mod:`~lessonlib.diagrams`, :mod:`~lessonlib.memory_calculator`,
  :mod:`~lessonlib.widgets`;
- the exercises: :mod:`~lessonlib.check` (the self-check students run);
- shared checks: :mod:`~lessonlib.validation` (argument checks with one wording).

:mod:`lessonlib.authoring` is the authoring and grading half (notebook tools, exercise generator,
grader), which no lesson imports. ``python -m lessonlib`` lists the commands.

Importing the package is cheap: no module here imports torch, transformers or peft at import
time; each does so inside the function that needs it.

Example:
    >>> import lessonlib
    >>> lessonlib.__version__
    '0.1.0'
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
