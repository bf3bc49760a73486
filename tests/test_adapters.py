"""Tests of lessonlib.adapters: teacher-forced greedy matching equals real greedy generation, and
the parameter bytes an adapter adds."""

from __future__ import annotations

import pytest
import torch

from lessonlib import adapters, data
from lessonlib.models import load_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer()


def test_greedy_matches_needs_every_labelled_token_to_be_the_argmax():
    logits = torch.zeros(2, 4, 3)
    logits[:, 0, 1] = logits[:, 1, 2] = logits[:, 2, 0] = 1.0
    labels = torch.tensor([[-100, 1, 2, 0], [-100, 1, 0, -100]])
    assert adapters.greedy_matches(logits, labels).tolist() == [True, False]
    logits[0, 2, 0] = 0.0        # a tie goes to the first index (argmax), as greedy decoding does
    assert adapters.greedy_matches(logits, labels).tolist() == [True, False]
    logits[0, 2, 2] = 5.0
    assert adapters.greedy_matches(logits, labels).tolist() == [False, False]
    with pytest.raises(ValueError, match="at least one labelled"):
        adapters.greedy_matches(logits, torch.full((2, 4), -100))
    with pytest.raises(ValueError, match=r"\(batch, length, vocab\)"):
        adapters.greedy_matches(logits[0], labels)


def test_answer_labels_keep_the_answer_and_the_end_token_only(tokenizer):
    for task in data.SHORT_TASKS:
        e = data.short_task_splits(task, 1, 0, 0).train[0]
        enc = adapters.answer_labels(tokenizer, e)
        assert tokenizer.decode([t for t in enc["labels"] if t != -100]) == e.answer + tokenizer.eos_token


class _Scripted(torch.nn.Module):
    """A 'model' whose next-token choice depends on the position only: at position i it picks script[i]."""

    def __init__(self, script, vocab):
        super().__init__()
        self.script, self.vocab = script, vocab
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, attention_mask=None, **kwargs):
        nxt = torch.tensor(self.script[:input_ids.shape[1]]).expand(input_ids.shape[0], -1)
        return type("Out", (), {"logits": torch.nn.functional.one_hot(nxt, self.vocab).float()})()


def _greedy(script, n_prompt, eos, most=10):
    """The greedy loop, token by token, up to the end token: what generate() would produce."""
    out = []
    while len(out) < most:
        out.append(script[n_prompt - 1 + len(out)])
        if out[-1] == eos:
            break
    return out


def test_teacher_forced_exact_equals_a_greedy_loop_on_a_scripted_model(tokenizer):
    e = data.short_task_splits("dates", 1, 0, 0).train[0]
    enc = adapters.answer_labels(tokenizer, e)
    ids, vocab, eos = enc["input_ids"], len(tokenizer), tokenizer.eos_token_id
    n_prompt = next(i for i, t in enumerate(enc["labels"]) if t != -100)
    right = ids[1:] + [0] * 5                   # predicts the conversation itself
    wrong_digit = list(right); wrong_digit[n_prompt] = ids[n_prompt + 2]   # the second answer token wrong
    no_end = list(right); no_end[len(ids) - 3] = ids[n_prompt]             # the end token replaced
    newline_wrong = list(right); newline_wrong[len(ids) - 2] = 0           # after the end token: not generated
    for script, expected in ((right, True), (wrong_digit, False), (no_end, False), (newline_wrong, True)):
        greedy_right = tokenizer.decode(_greedy(script, n_prompt, eos)) == e.answer + tokenizer.eos_token
        assert greedy_right == expected
        assert adapters.teacher_forced_exact(_Scripted(script, vocab), tokenizer, [e, e]) == [expected] * 2
    with pytest.raises(ValueError, match="at least one example"):
        adapters.teacher_forced_exact(_Scripted(right, vocab), tokenizer, [])


def test_parameter_bytes_counts_each_storage_once():
    lin = torch.nn.Linear(3, 2)
    tied = torch.nn.Sequential(lin, torch.nn.Linear(3, 2))
    tied[1].weight = lin.weight
    assert adapters.parameter_bytes(lin) == (6 + 2) * 4
    assert adapters.parameter_bytes(tied) == (6 + 2 + 2) * 4
