"""The course's visible training loop, validation loss, greedy generation and held-out evaluation.

The loop is plain PyTorch (AdamW over the parameters that require gradients), so the same function
trains a full model, a LoRA model or a QLoRA model: it is how lessons 06 and 07 show what training
does. Fine-tuning as practitioners run it (TRL's ``SFTTrainer``: checkpoints, gradient
accumulation, several processes) is :mod:`lessonlib.finetune`.

Example:
    >>> r = TrainResult(loss_history=[2.0, 1.0], seconds=3.0, steps=2, batch_size=4, examples_seen=8)
    >>> r.seconds_per_step
    1.5
"""

from __future__ import annotations

import math
import os
import random
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

from lessonlib.data import Example, Scores, answer_of, chat_prompt, collate, encode, score
from lessonlib.validation import non_empty, positive_number

MiB = 2**20


@dataclass
class TrainResult:
    """What :func:`train` measured."""

    loss_history: list[float]
    """Training loss of every step (mean over the answer tokens of this process's batch)."""
    seconds: float
    """Wall time of the training steps (not of loading or evaluation)."""
    steps: int
    batch_size: int
    examples_seen: int
    """Examples used by this process (a process sees ``steps * batch_size``)."""
    peak_memory_mib: float = float("nan")
    """See :func:`peak_memory_mib`, read at the end of training."""
    step_seconds: list[float] = field(default_factory=list)
    """Wall time of each step (forward, backward, optimizer step)."""
    step_tokens: list[int] = field(default_factory=list)
    """Tokens of each step's batch, padding excluded."""
    eval_steps: list[int] = field(default_factory=list)
    """Steps after which the validation loss was computed (0: before the first step)."""
    eval_losses: list[float] = field(default_factory=list)
    """Validation loss (mean over the answer tokens of all validation examples) at ``eval_steps``."""

    @property
    def seconds_per_step(self) -> float:
        """Mean wall time of one step."""
        return self.seconds / max(self.steps, 1)

    @property
    def median_step_seconds(self) -> float:
        """Median wall time of one step (robust to a slow first step); NaN when steps were not timed.

        Example:
            >>> TrainResult([1.0] * 3, 9.0, 3, 2, 6, step_seconds=[5.0, 2.0, 2.5]).median_step_seconds
            2.5
        """
        return statistics.median(self.step_seconds) if self.step_seconds else float("nan")

    @property
    def tokens_per_second(self) -> float:
        """Median over steps of (tokens in the step's batch / the step's wall time); NaN when not timed.

        Example:
            >>> r = TrainResult([1.0] * 3, 9.0, 3, 2, 6, step_seconds=[5.0, 2.0, 2.5], step_tokens=[100, 100, 90])
            >>> r.tokens_per_second
            36.0
        """
        rates = [n / s for n, s in zip(self.step_tokens, self.step_seconds) if s > 0]
        return statistics.median(rates) if rates else float("nan")


@dataclass
class EvalResult:
    """What :func:`evaluate` measured on held-out examples: the scores and the generations."""

    scores: Scores
    generations: list[str] = field(repr=False)
    """The generated answers, in the order of the examples."""

    @property
    def exact_match(self) -> float:
        """Share of generations equal to the expected answer (see :func:`lessonlib.data.score`)."""
        return self.scores.exact_match

    @property
    def valid_json(self) -> float:
        """Share of generations that parse as a JSON object."""
        return self.scores.valid_json


def _check_positive(**values: Any) -> None:
    for name, value in values.items():
        positive_number(name, value)


def peak_memory_mib(device: str | None = None) -> float:
    """Return the peak memory of this process in MiB: CUDA's peak allocation on a GPU, else peak RSS.

    On a CPU the peak resident set size covers everything the process ever held (libraries,
    the model, activations), so it is an upper bound for what training needed.

    Example:
        >>> peak_memory_mib("cpu") > 0
        True
    """
    import torch

    from lessonlib.models import resolve_device

    if device is None:
        device = resolve_device()
    if str(device).startswith("cuda"):
        return torch.cuda.max_memory_allocated() / MiB
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux, bytes on macOS
    return peak * (1 if sys.platform == "darwin" else 1024) / MiB


def batch_indices(n_examples: int, steps: int, batch_size: int, seed: int) -> list[list[int]]:
    """Return the example indices of every step: shuffled epochs, seeded.

    Example:
        >>> batch_indices(4, steps=3, batch_size=2, seed=0)
        [[2, 0], [1, 3], [0, 1]]
    """
    _check_positive(n_examples=n_examples, steps=steps, batch_size=batch_size)
    rng = random.Random(seed)
    order: list[int] = []
    while len(order) < steps * batch_size:
        epoch = list(range(n_examples))
        rng.shuffle(epoch)
        order += epoch
    return [order[s * batch_size:(s + 1) * batch_size] for s in range(steps)]


def lr_factor(step: int, steps: int) -> float:
    """The learning rate of step ``step`` (0-based) of ``steps``, as a fraction of the peak rate.

    A linear warm-up over the first 10% of the steps (at least one), then a linear decay that
    reaches 1 / (steps - warm-up + 1) at the last step: the shape of transformers' default
    ``"linear"`` schedule, without its first step at rate 0.

    Example:
        >>> [round(lr_factor(s, 10), 2) for s in range(10)]
        [1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1]
        >>> [round(lr_factor(s, 20), 2) for s in (0, 1, 2, 19)]
        [0.5, 1.0, 0.95, 0.05]
    """
    warmup = max(1, math.ceil(0.1 * steps))
    return min((step + 1) / warmup, (steps - step) / (steps - warmup + 1))


def keep_4bit_weights_unpacked(model: Any) -> int:
    """Switch off bitsandbytes' CPU inference repacking of 4-bit weights; return how many layers.

    On CPUs with AVX-512 BF16, bitsandbytes (0.50) repacks a ``Linear4bit`` weight into another
    layout the first time the layer runs in eval mode without gradients, and keeps it so. Measured
    on this course's model: the packed path computes differently (so outputs would depend on the
    CPU), training on a packed model makes the loss climb, and unpacking does not restore the
    weights. :func:`train`, :func:`validation_loss` and :func:`generate` therefore call this first,
    and :mod:`lessonlib.finetune` calls it when the trainer starts. Elsewhere it does nothing.

    Raises:
        ValueError: a weight is already packed (the model ran inference outside these functions);
            reload the model.

    Example:
        >>> import torch
        >>> keep_4bit_weights_unpacked(torch.nn.Linear(2, 2))
        0
    """
    count = 0
    for name, module in model.named_modules():
        state = getattr(getattr(module, "weight", None), "quant_state", None)
        if getattr(state, "packing_format_for_cpu", False):
            raise ValueError(f"{name}: its 4-bit weight was repacked by bitsandbytes' CPU inference path, "
                             "which this model cannot be trained or compared on; reload the model and "
                             "generate with lessonlib.train.generate")
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
            count += 1
    return count


def _device_of(model: Any) -> Any:
    return next(model.parameters()).device


def _batches(model: Any, tokenizer: Any, items: Sequence[Any], batch_size: int) -> Any:
    device = _device_of(model)
    encoded = [encode(tokenizer, e) for e in items]
    for i in range(0, len(encoded), batch_size):
        batch = collate(encoded[i:i + batch_size], tokenizer.pad_token_id)
        yield {k: v.to(device) for k, v in batch.items()}


def validation_loss(model: Any, tokenizer: Any, examples: Sequence[Example | dict[str, Any]], batch_size: int = 16) -> float:
    """Return the loss on ``examples``: the mean over all their answer tokens, without gradients.

    Every answer token counts once, whatever batch it falls in (a mean of batch means would
    weigh the tokens of a small last batch more).

    Example:
        >>> validation_loss(None, None, [])
        Traceback (most recent call last):
        ...
        ValueError: validation_loss needs at least one example, got none
    """
    non_empty("validation_loss", examples)
    import torch
    import torch.nn.functional as F

    keep_4bit_weights_unpacked(model)
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        with torch.no_grad():
            for batch in _batches(model, tokenizer, examples, batch_size):
                logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
                labels = batch["labels"][:, 1:]
                total += F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels.flatten(),
                                         ignore_index=-100, reduction="sum").item()
                count += int((labels != -100).sum())
    finally:
        model.train(was_training)
    return total / count


def train(
    model: Any,
    tokenizer: Any,
    examples: Sequence[Example],
    steps: int,
    batch_size: int = 8,
    lr: float = 1e-3,
    seed: int = 0,
    progress: bool = True,
    weight_decay: float = 0.0,
    val_examples: Sequence[Example] = (),
    eval_every: int = 4,
    param_groups: Sequence[dict[str, Any]] | None = None,
) -> TrainResult:
    """Train ``model`` on ``examples`` for ``steps`` AdamW steps; return the loss history and timing.

    Only parameters with ``requires_grad`` are optimized (all of them for full fine-tuning, the
    adapters for LoRA / QLoRA). The loss is the model's own causal-LM loss on the answer tokens
    (:func:`lessonlib.data.encode` masks the prompt). The learning rate follows :func:`lr_factor`:
    a linear warm-up over the first 10% of the steps, then a linear decay. With ``val_examples``, the validation loss is
    computed before the first step, every ``eval_every`` steps and after the last. The model is
    left in eval mode.

    Args:
        model: a causal LM (plain or peft).
        tokenizer: its tokenizer (for the chat template and the pad token).
        examples: training examples.
        steps, batch_size, lr: the optimization budget.
        seed: seeds the batch order and torch (dropout, if any).
        progress: show a tqdm progress bar with the running loss.
        weight_decay: AdamW weight decay.
        val_examples: validation examples (none: no validation loss).
        eval_every: steps between two validation losses.
        param_groups: AdamW parameter groups, each with its own ``lr`` (LoRA+ gives B a larger one,
            :func:`lessonlib.variants.optimizer_groups`); None: one group of every trainable parameter at ``lr``.

    Raises:
        ValueError: no trainable parameter, no examples, or a non-positive budget.

    Example:
        >>> train(object(), None, [], steps=0)
        Traceback (most recent call last):
        ...
        ValueError: steps must be a finite number above 0, got 0
    """
    _check_positive(steps=steps, batch_size=batch_size, lr=lr, eval_every=eval_every)
    non_empty("train", examples)
    import torch
    from tqdm.auto import tqdm

    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no parameter with requires_grad=True: nothing to train")
    if param_groups is not None:
        grouped = [id(p) for group in param_groups for p in group["params"]]
        if len(grouped) != len(set(grouped)) or set(grouped) != {id(p) for p in params}:
            raise ValueError(f"param_groups must hold each of the model's {len(params)} parameters with "
                             f"requires_grad=True exactly once, got {len(grouped)} entries "
                             f"({len(set(grouped) & {id(p) for p in params})} of them trainable, distinct)")
    torch.manual_seed(seed)
    keep_4bit_weights_unpacked(model)
    device = _device_of(model)
    encoded = [encode(tokenizer, e) for e in examples]
    plan = batch_indices(len(encoded), steps, batch_size, seed)
    optimizer = torch.optim.AdamW(params if param_groups is None else param_groups, lr=lr, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, steps))

    result = TrainResult(loss_history=[], seconds=0.0, steps=steps, batch_size=batch_size,
                         examples_seen=steps * batch_size)

    def validate(step: int) -> None:
        if val_examples:
            result.eval_steps.append(step)
            result.eval_losses.append(validation_loss(model, tokenizer, val_examples))

    validate(0)
    model.train()
    bar = tqdm(total=steps, desc="training", disable=not progress, file=sys.stderr)
    for step, indices in enumerate(plan, 1):
        step_start = time.perf_counter()
        batch = collate([encoded[i] for i in indices], tokenizer.pad_token_id)
        batch = {k: v.to(device) for k, v in batch.items()}
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        result.loss_history.append(loss.item())  # .item() waits for the device, so the step time is complete
        result.step_seconds.append(time.perf_counter() - step_start)
        result.step_tokens.append(int(batch["attention_mask"].sum()))
        if step % eval_every == 0 or step == steps:
            validate(step)
        bar.set_postfix(loss=f"{result.loss_history[-1]:.3f}")
        bar.update()
    bar.close()
    model.eval()
    result.seconds = sum(result.step_seconds)
    result.peak_memory_mib = peak_memory_mib(str(device))
    return result


def generate(
    model: Any,
    tokenizer: Any,
    items: Sequence[Any],
    max_new_tokens: int = 40,
    batch_size: int = 20,
) -> list[str]:
    """Greedy answers to ``items`` (batched, left-padded), decoded without special tokens.

    ``items``: booking :class:`~lessonlib.data.Example` or texts (prompted with the task's system
    message), lists of chat messages, or records with a ``"prompt"`` (see :func:`lessonlib.data.chat_prompt`).

    Example:
        >>> generate(None, None, [], max_new_tokens=0)
        Traceback (most recent call last):
        ...
        ValueError: max_new_tokens must be a finite number above 0, got 0
    """
    _check_positive(max_new_tokens=max_new_tokens, batch_size=batch_size)
    import torch

    if not items:
        return []
    keep_4bit_weights_unpacked(model)
    device = _device_of(model)
    prompts = [chat_prompt(tokenizer, e) for e in items]
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    answers: list[str] = []
    was_training = model.training
    model.eval()
    try:
        for i in range(0, len(prompts), batch_size):
            inputs = tokenizer(prompts[i:i + batch_size], return_tensors="pt", padding=True,
                               add_special_tokens=False).to(device)
            with torch.no_grad():
                out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                     pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
            new = out[:, inputs["input_ids"].shape[1]:]
            answers += [t.strip() for t in tokenizer.batch_decode(new, skip_special_tokens=True)]
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return answers


def evaluate(
    model: Any,
    tokenizer: Any,
    items: Sequence[Example | dict[str, Any]],
    max_new_tokens: int = 40,
    batch_size: int = 20,
) -> EvalResult:
    """Generate greedily for held-out ``items``; score them with :func:`lessonlib.data.score`.

    Example:
        >>> evaluate(None, None, [])
        Traceback (most recent call last):
        ...
        ValueError: evaluate needs at least one example, got none
    """
    non_empty("evaluate", items)
    generations = generate(model, tokenizer, items, max_new_tokens, batch_size)
    return EvalResult(scores=score(generations, [answer_of(e) for e in items]), generations=generations)


def directory_size_mib(path: str | os.PathLike) -> float:
    """Return the total size of the files under ``path`` in MiB (e.g. a saved adapter).

    Example:
        >>> directory_size_mib(".") > 0
        True
    """
    total = 0
    for root, _dirs, files in os.walk(path):
        total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
    return total / MiB
