"""Scoring short answers in one forward pass, and the bytes an adapter adds (lesson 10).

Greedy decoding reproduces an answer exactly when, with the prompt and the answer's previous
tokens fed in, the most likely next token is the answer's next token at every position, its
end-of-turn token included. So one teacher-forced forward pass over prompt + answer tells, for a
whole batch at once, whether ``generate`` would have produced the answer: :func:`greedy_matches`
checks that on logits, :func:`teacher_forced_exact` runs the model. Lesson 10 checks the
equivalence against real ``generate`` calls.

Example:
    >>> import torch
    >>> logits = torch.zeros(1, 3, 5); logits[0, 0, 2] = logits[0, 1, 4] = 1.0
    >>> greedy_matches(logits, torch.tensor([[-100, 2, 4]])).tolist()
    [True]
"""

from __future__ import annotations

from typing import Any, Sequence

from lessonlib.data import IGNORE_INDEX, Example, collate, encode
from lessonlib.validation import non_empty, positive_number


def greedy_matches(logits: Any, labels: Any) -> Any:
    """Per row: is every labelled token the argmax of the logits one position before it?

    ``logits``: (batch, length, vocab), ``labels``: (batch, length) with ``IGNORE_INDEX`` where
    nothing is expected (prompt, padding). A row with no labelled token is refused.

    Raises:
        ValueError: shapes that do not fit, or a row without any labelled token.

    Example:
        >>> import torch
        >>> logits = torch.tensor([[[0., 1.], [1., 0.], [0., 0.]]])
        >>> greedy_matches(logits, torch.tensor([[-100, 1, 0]])).tolist()
        [True]
        >>> greedy_matches(logits, torch.tensor([[-100, 0, 0]])).tolist()
        [False]
    """
    if logits.dim() != 3 or labels.shape != logits.shape[:2]:
        raise ValueError(f"need logits (batch, length, vocab) and labels (batch, length), got "
                         f"{tuple(logits.shape)} and {tuple(labels.shape)}")
    target = labels[:, 1:]
    expected = target != IGNORE_INDEX
    if not bool(expected.any(dim=1).all()):
        raise ValueError("every row needs at least one labelled token (the answer)")
    right = logits[:, :-1].argmax(dim=-1) == target
    return (right | ~expected).all(dim=1)


def answer_labels(tokenizer: Any, item: Example) -> dict[str, list[int]]:
    """:func:`lessonlib.data.encode`, with the label of the template's newline after the end token masked.

    Greedy generation stops at the end-of-turn token, so what it must reproduce is the answer and
    that token; the newline the chat template writes after it is never generated.

    Example:
        >>> from lessonlib.models import load_tokenizer
        >>> from lessonlib.data import short_task_splits
        >>> tok = load_tokenizer()  # doctest: +SKIP
        >>> enc = answer_labels(tok, short_task_splits("dates", 1, 0, 0).train[0])  # doctest: +SKIP
        >>> tok.decode([t for t in enc["labels"] if t != -100])  # doctest: +SKIP
        '02-21<|im_end|>'
    """
    enc = encode(tokenizer, item)
    labels = list(enc["labels"])
    last = max(i for i, t in enumerate(labels) if t != IGNORE_INDEX)
    if labels[last] != tokenizer.eos_token_id:
        labels[last] = IGNORE_INDEX
    if tokenizer.eos_token_id not in labels:
        raise ValueError("the encoded answer does not contain the end-of-turn token")
    return {"input_ids": enc["input_ids"], "labels": labels}


def teacher_forced_exact(model: Any, tokenizer: Any, items: Sequence[Example], batch_size: int = 32,
                         **forward: Any) -> list[bool]:
    """Per example: would greedy decoding reproduce its answer exactly? One forward pass per batch.

    ``**forward`` goes to the model's forward (for instance ``adapter_names=[...]``, one per
    example, for a peft model holding several adapters).

    Example:
        >>> teacher_forced_exact(None, None, [])
        Traceback (most recent call last):
        ...
        ValueError: teacher_forced_exact needs at least one example, got none
    """
    non_empty("teacher_forced_exact", items)
    positive_number("batch_size", batch_size)
    import torch

    from lessonlib.train import keep_4bit_weights_unpacked

    keep_4bit_weights_unpacked(model)
    device = next(model.parameters()).device
    names = forward.pop("adapter_names", None)
    was_training = model.training
    model.eval()
    out: list[bool] = []
    try:
        for i in range(0, len(items), batch_size):
            batch = collate([answer_labels(tokenizer, e) for e in items[i:i + batch_size]], tokenizer.pad_token_id)
            extra = dict(forward)
            if names is not None:
                extra["adapter_names"] = list(names[i:i + batch_size])
            with torch.no_grad():
                logits = model(input_ids=batch["input_ids"].to(device),
                               attention_mask=batch["attention_mask"].to(device), **extra).logits
            out += greedy_matches(logits.float().cpu(), batch["labels"]).tolist()
    finally:
        model.train(was_training)
    return out


def parameter_bytes(model: Any) -> int:
    """Bytes held by the model's parameters, each storage counted once (tied weights once).

    Example:
        >>> import torch
        >>> parameter_bytes(torch.nn.Linear(4, 2))
        40
    """
    from lessonlib.memory import storage_bytes

    return storage_bytes(model.parameters())
