"""A small training loop, greedy generation and held-out evaluation for the course's task.

The loop is plain PyTorch (AdamW over the parameters that require gradients), so the same function
trains a full model, a LoRA model or a QLoRA model, and runs unchanged inside
``torch.nn.parallel.DistributedDataParallel`` (pass ``shard=(rank, world_size)``: every process
then takes its own slice of each global batch).

Example:
    >>> r = TrainResult(loss_history=[2.0, 1.0], seconds=3.0, steps=2, batch_size=4, examples_seen=8)
    >>> r.seconds_per_step
    1.5
    >>> exact_match_and_valid_json(['{"a":1}', '{"a":2}', 'no'], ['{"a":1}', '{"a":1}', '{"a":1}'])
    (0.3333333333333333, 0.6666666666666666)
"""

from __future__ import annotations

import json
import math
import os
import random
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

from lessonlib.data import Example, chat_prompt, collate, encode


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
    peak_memory_mb: float = float("nan")
    """See :func:`peak_memory_mb`, read at the end of training."""
    step_seconds: list[float] = field(default_factory=list)
    """Wall time of each step (forward, backward, optimizer step)."""
    step_tokens: list[int] = field(default_factory=list)
    """Tokens of each step's batch on this process, padding excluded."""

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
    """What :func:`evaluate` measured on held-out examples."""

    exact_match: float
    """Share of generations equal to the expected JSON (after stripping white space)."""
    valid_json: float
    """Share of generations that parse as a JSON object."""
    generations: list[str] = field(repr=False)
    """The generated answers, in the order of the examples."""


def _check_positive(**values: Any) -> None:
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ValueError(f"{name} must be a positive number, got {value!r}")


def peak_memory_mb(device: str | None = None) -> float:
    """Return the peak memory of this process in MB: CUDA's peak allocation on a GPU, else peak RSS.

    On a CPU the peak resident set size covers everything the process ever held (libraries,
    the model, activations), so it is an upper bound for what training needed.

    Example:
        >>> peak_memory_mb("cpu") > 0
        True
    """
    import torch

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if str(device).startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 1e6
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux, bytes on macOS
    return peak * (1 if sys.platform == "darwin" else 1024) / 1e6


def batch_indices(n_examples: int, steps: int, batch_size: int, seed: int, shard: tuple[int, int] = (0, 1)) -> list[list[int]]:
    """Return the example indices of every step for one process: shuffled epochs, seeded.

    All processes draw the same global order; process ``rank`` of ``world`` takes the ``rank``-th
    slice of ``batch_size`` from each global batch of ``batch_size * world``.

    Example:
        >>> batch_indices(4, steps=3, batch_size=2, seed=0)
        [[2, 0], [1, 3], [0, 1]]
        >>> a = batch_indices(8, 2, 2, 0, shard=(0, 2)); b = batch_indices(8, 2, 2, 0, shard=(1, 2))
        >>> sorted(a[0] + b[0]) == sorted(set(a[0] + b[0]))   # the two ranks take different examples
        True
    """
    rank, world = shard
    if not 0 <= rank < world:
        raise ValueError(f"shard must be (rank, world_size) with 0 <= rank < world_size, got {shard!r}")
    _check_positive(n_examples=n_examples, steps=steps, batch_size=batch_size)
    rng = random.Random(seed)
    needed = steps * batch_size * world
    order: list[int] = []
    while len(order) < needed:
        epoch = list(range(n_examples))
        rng.shuffle(epoch)
        order += epoch
    size = batch_size * world
    return [order[s * size + rank * batch_size: s * size + (rank + 1) * batch_size] for s in range(steps)]


def keep_4bit_weights_unpacked(model: Any) -> int:
    """Switch off bitsandbytes' CPU inference repacking of 4-bit weights; return how many layers.

    On CPUs with AVX-512 BF16, bitsandbytes (0.50) repacks a ``Linear4bit`` weight into another
    layout the first time the layer runs in eval mode without gradients, and keeps it so. Measured
    on this course's model: the packed path computes differently (so outputs would depend on the
    CPU), training on a packed model makes the loss climb, and unpacking does not restore the
    weights. :func:`train` and :func:`generate` therefore call this first. Elsewhere it does nothing.

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


def train(
    model: Any,
    tokenizer: Any,
    examples: Sequence[Example],
    steps: int,
    batch_size: int = 8,
    lr: float = 1e-3,
    seed: int = 0,
    progress: bool = True,
    shard: tuple[int, int] = (0, 1),
    weight_decay: float = 0.0,
) -> TrainResult:
    """Train ``model`` on ``examples`` for ``steps`` AdamW steps; return the loss history and timing.

    Only parameters with ``requires_grad`` are optimized (all of them for full fine-tuning, the
    adapters for LoRA / QLoRA). The loss is the model's own causal-LM loss on the answer tokens
    (:func:`lessonlib.data.encode` masks the prompt). The learning rate warms up linearly over the
    first 10% of the steps, then stays constant. The model is left in eval mode.

    Args:
        model: a causal LM (plain, peft, or wrapped in DistributedDataParallel).
        tokenizer: its tokenizer (for the chat template and the pad token).
        examples: training examples.
        steps, batch_size, lr: the optimization budget (``batch_size`` per process).
        seed: seeds the batch order and torch (dropout, if any).
        progress: show a tqdm progress bar with the running loss.
        shard: ``(rank, world_size)`` under data parallelism; ``(0, 1)`` otherwise.
        weight_decay: AdamW weight decay.

    Raises:
        ValueError: no trainable parameter, no examples, or a non-positive budget.

    Example:
        >>> train(object(), None, [], steps=0)
        Traceback (most recent call last):
        ...
        ValueError: steps must be a positive number, got 0
    """
    _check_positive(steps=steps, batch_size=batch_size, lr=lr)
    if not examples:
        raise ValueError("train needs at least one example, got none")
    import torch
    from tqdm.auto import tqdm

    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no parameter with requires_grad=True: nothing to train")
    torch.manual_seed(seed)
    keep_4bit_weights_unpacked(model)
    device = _device_of(model)
    encoded = [encode(tokenizer, e) for e in examples]
    plan = batch_indices(len(encoded), steps, batch_size, seed, shard)
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    warmup = max(1, math.ceil(0.1 * steps))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup))

    model.train()
    losses: list[float] = []
    step_seconds: list[float] = []
    step_tokens: list[int] = []
    bar = tqdm(total=steps, desc="training", disable=not progress, file=sys.stderr)
    start = time.perf_counter()
    for indices in plan:
        step_start = time.perf_counter()
        batch = collate([encoded[i] for i in indices], tokenizer.pad_token_id)
        batch = {k: v.to(device) for k, v in batch.items()}
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())  # .item() waits for the device, so the step time below is complete
        step_seconds.append(time.perf_counter() - step_start)
        step_tokens.append(int(batch["attention_mask"].sum()))
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
        bar.update()
    seconds = time.perf_counter() - start
    bar.close()
    model.eval()
    return TrainResult(
        loss_history=losses,
        seconds=seconds,
        steps=steps,
        batch_size=batch_size,
        examples_seen=steps * batch_size,
        peak_memory_mb=peak_memory_mb(str(device)),
        step_seconds=step_seconds,
        step_tokens=step_tokens,
    )


def generate(
    model: Any,
    tokenizer: Any,
    examples: Sequence[Example | str],
    max_new_tokens: int = 32,
    batch_size: int = 20,
) -> list[str]:
    """Greedy answers to ``examples`` (batched, left-padded), decoded without special tokens.

    Example:
        >>> generate(None, None, [], max_new_tokens=0)
        Traceback (most recent call last):
        ...
        ValueError: max_new_tokens must be a positive number, got 0
    """
    _check_positive(max_new_tokens=max_new_tokens, batch_size=batch_size)
    import torch

    if not examples:
        return []
    keep_4bit_weights_unpacked(model)
    device = _device_of(model)
    prompts = [chat_prompt(tokenizer, e) for e in examples]
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


def exact_match_and_valid_json(generations: Sequence[str], answers: Sequence[str]) -> tuple[float, float]:
    """Return (share equal to the answer, share that parses as a JSON object).

    Example:
        >>> exact_match_and_valid_json(['{"a": 1}'], ['{"a":1}'])   # same JSON, other spacing: no match
        (0.0, 1.0)
    """
    if len(generations) != len(answers) or not answers:
        raise ValueError(f"need as many generations as answers (at least one), got {len(generations)} and {len(answers)}")
    exact = sum(g.strip() == a.strip() for g, a in zip(generations, answers))
    valid = 0
    for g in generations:
        try:
            valid += isinstance(json.loads(g), dict)
        except ValueError:
            pass
    return exact / len(answers), valid / len(answers)


def evaluate(
    model: Any,
    tokenizer: Any,
    examples: Sequence[Example],
    max_new_tokens: int = 32,
    batch_size: int = 20,
) -> EvalResult:
    """Generate greedily for held-out ``examples``; return exact match, valid-JSON rate, generations.

    Example:
        >>> evaluate(None, None, [])
        Traceback (most recent call last):
        ...
        ValueError: evaluate needs at least one example, got none
    """
    if not examples:
        raise ValueError("evaluate needs at least one example, got none")
    generations = generate(model, tokenizer, examples, max_new_tokens, batch_size)
    exact, valid = exact_match_and_valid_json(generations, [e.answer for e in examples])
    return EvalResult(exact_match=exact, valid_json=valid, generations=generations)


def directory_size_mb(path: str | os.PathLike) -> float:
    """Return the total size of the files under ``path`` in MB (e.g. a saved adapter).

    Example:
        >>> directory_size_mb(".") > 0
        True
    """
    total = 0
    for root, _dirs, files in os.walk(path):
        total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
    return total / 1e6
