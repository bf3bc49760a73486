"""What a fine-tune costs the model elsewhere: a fixed probe of general prompts and a general text.

The prompts and the text were written for this course and ship with it, so the probe is the same
offline, on every machine. :func:`probe` measures a model on them: its perplexity on the text
(how well it still predicts ordinary English) and its greedy answers to the prompts. Run it on
the base model and on the fine-tuned one, and compare: a fine-tune that has "forgotten" shows a
higher perplexity and answers that drifted towards the task (here: JSON records).

Example:
    >>> len(GENERAL_PROMPTS) >= 3 and len(GENERAL_TEXT.split()) > 100
    True
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

GENERAL_PROMPTS = (
    "What is the capital of France?",
    "Give me one tip for learning a new language.",
    "Why is the sky blue? Answer in one sentence.",
    "Name three fruits that are yellow.",
)
"""General questions, nothing to do with bookings."""

GENERAL_TEXT = (
    "Rivers have shaped the places where people live for thousands of years. A river brings fresh "
    "water for drinking and farming, fish for food, and a road for boats long before there were "
    "railways. Many old cities grew where a river could be crossed easily, at a ford or a bridge. "
    "Markets formed on the banks, and the towns that held them became richer than their neighbours. "
    "Rivers also bring danger. After heavy rain in the mountains, the water rises quickly and can "
    "flood the fields and streets below. Some cities built high walls along the water; others moved "
    "their houses to the hills and kept the low ground for gardens and parks. Today engineers measure "
    "the flow of a river every hour, and warnings reach people on their phones before the water "
    "arrives. A walk along a river in the evening is still one of the quiet pleasures of a city: the "
    "light on the water, the birds, and the slow boats passing under the bridges."
)
"""A short general text in plain English (about 200 tokens)."""


@dataclass
class Probe:
    """What :func:`probe` measured."""

    perplexity: float
    """exp(mean negative log-likelihood per token) of :data:`GENERAL_TEXT`."""
    answers: list[str] = field(default_factory=list)
    """Greedy answers to :data:`GENERAL_PROMPTS`, in order."""

    @property
    def json_like(self) -> int:
        """How many answers start like a JSON object (the task leaking into general use).

        Example:
            >>> Probe(10.0, ['{"name": "x"}', "Paris."]).json_like
            1
        """
        return sum(a.lstrip().startswith("{") for a in self.answers)


def perplexity(model: Any, tokenizer: Any, text: str = GENERAL_TEXT) -> float:
    """Return the model's perplexity on ``text`` (one sequence, every token after the first predicted).

    Example:
        >>> perplexity(None, None, "")
        Traceback (most recent call last):
        ...
        ValueError: perplexity needs a text of at least two tokens
    """
    if not text.strip():
        raise ValueError("perplexity needs a text of at least two tokens")
    import torch

    from lessonlib.train import keep_4bit_weights_unpacked

    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    if ids.shape[1] < 2:
        raise ValueError("perplexity needs a text of at least two tokens")
    keep_4bit_weights_unpacked(model)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            loss = model(input_ids=ids.to(next(model.parameters()).device), labels=ids.to(next(model.parameters()).device)).loss
    finally:
        model.train(was_training)
    return math.exp(loss.item())


def probe(model: Any, tokenizer: Any, max_new_tokens: int = 24) -> Probe:
    """Measure ``model`` on the general text (perplexity) and the general prompts (greedy answers).

    The prompts go through the model's chat template as a user's message, with the template's own
    default system message (not the booking task's).

    Example:
        >>> p = probe(model, tokenizer)  # doctest: +SKIP
        >>> p.perplexity > 1 and len(p.answers) == len(GENERAL_PROMPTS)  # doctest: +SKIP
        True
    """
    from lessonlib.train import generate

    conversations = [[{"role": "user", "content": q}] for q in GENERAL_PROMPTS]
    answers = generate(model, tokenizer, conversations, max_new_tokens=max_new_tokens, batch_size=len(conversations))
    return Probe(perplexity=perplexity(model, tokenizer), answers=answers)
