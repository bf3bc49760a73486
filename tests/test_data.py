"""Tests of lessonlib.data: deterministic disjoint splits, chat formatting, label masking, padding."""

from __future__ import annotations

import json

import pytest

from lessonlib import data
from lessonlib.models import load_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer()


def test_splits_are_deterministic_disjoint_and_sized():
    a = data.booking_splits(200, 30, 40, seed=3)
    assert a == data.booking_splits(200, 30, 40, seed=3)
    assert a != data.booking_splits(200, 30, 40, seed=4)
    assert [len(s) for s in a] == [200, 30, 40]
    answers = [e.answer for s in a for e in s]
    assert len(set(answers)) == len(answers)  # no booking twice, across all splits


def test_answers_hold_the_facts_of_the_sentence():
    for e in data.booking_splits(60, 0, 0, seed=1).train:
        fields = json.loads(e.answer)
        assert list(fields) == list(data.KEYS)
        assert fields["name"] in e.text and fields["time"] in e.text
        assert str(fields["n"]) in e.text and data.DAY_WORDS[fields["day"]] in e.text
    assert len({e.text.split(" ")[0] for e in data.booking_splits(60, 0, 0, seed=1).train}) > 3  # varied phrasings


@pytest.mark.parametrize("sizes", [(-1, 1, 1), (0, 0, 0), (1.5, 1, 1), (10**6, 0, 0)])
def test_bad_sizes_are_refused(sizes):
    with pytest.raises(ValueError, match="at most|non-negative"):
        data.booking_splits(*sizes)


def test_chat_prompt_uses_the_short_system_message(tokenizer):
    e = data.booking_splits(1, 0, 0).train[0]
    prompt = data.chat_prompt(tokenizer, e)
    assert data.SYSTEM_PROMPT in prompt and e.text in prompt
    default = tokenizer.apply_chat_template([{"role": "user", "content": e.text}], tokenize=False, add_generation_prompt=True)
    assert len(tokenizer(prompt)["input_ids"]) < len(tokenizer(default)["input_ids"])
    assert prompt.endswith(default[default.rindex("<|im_start|>assistant"):])


def test_labels_are_masked_to_the_answer_and_end_token(tokenizer):
    e = data.booking_splits(1, 0, 0).train[0]
    enc = data.encode(tokenizer, e)
    kept = [t for t in enc["labels"] if t != data.IGNORE_INDEX]
    assert tokenizer.decode(kept[:-1]) == e.answer and kept[-1] == tokenizer.eos_token_id
    n_prompt = len(enc["labels"]) - len(kept)
    assert enc["labels"][:n_prompt] == [data.IGNORE_INDEX] * n_prompt
    assert tokenizer.decode(enc["input_ids"][:n_prompt]) == data.chat_prompt(tokenizer, e)
    assert len(enc["input_ids"]) < 80  # short sequences keep CPU steps cheap


def test_collate_pads_right_and_masks_padding(tokenizer):
    encoded = [data.encode(tokenizer, e) for e in data.booking_splits(4, 0, 0).train]
    batch = data.collate(encoded, tokenizer.pad_token_id)
    lengths = [len(e["input_ids"]) for e in encoded]
    assert batch["input_ids"].shape == (4, max(lengths))
    assert batch["attention_mask"].sum(1).tolist() == lengths
    assert ((batch["labels"] != data.IGNORE_INDEX) <= batch["attention_mask"].bool()).all()
    with pytest.raises(ValueError, match="at least one"):
        data.collate([], 0)
