"""Tests of lessonlib.data: disjoint pools and splits, chat formatting and label masking (equal to TRL's),
the scorer, the confidence interval, and the reader of a student's own JSONL data."""

from __future__ import annotations

import json
import math
import random
import re

import pytest

from lessonlib import data
from lessonlib.models import load_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer()


def test_splits_are_deterministic_sized_and_never_repeat_a_booking():
    a = data.booking_splits(200, 30, 40, seed=3)
    assert a == data.booking_splits(200, 30, 40, seed=3)
    assert a != data.booking_splits(200, 30, 40, seed=4)
    assert [len(s) for s in a] == [200, 30, 40]
    answers = [e.answer for s in a for e in s]
    assert len(set(answers)) == len(answers)


def _template_of(text, pool):
    """Which template of ``pool`` produced ``text`` (matching it as a pattern), or None."""
    for t in pool.templates:
        pattern = re.escape(t)
        for slot in ("name", "people", "date", "time"):
            pattern = pattern.replace(re.escape("{" + slot + "}"), ".+?")
        if re.match(pattern + "(" + "|".join(re.escape(c).replace(re.escape("{note}"), ".+") for c in pool.note_clauses) + ")?$", text):
            return t
    return None


def test_held_out_examples_share_no_template_and_no_value_with_training():
    splits = data.booking_splits(400, 50, 100, seed=0)
    train_values = {k: {e.fields[k] for e in splits.train} for k in data.KEYS}
    for e in splits.val + splits.test:
        for k in data.KEYS:
            if e.fields[k] != "":
                assert e.fields[k] not in train_values[k], (k, e.fields[k])
        assert _template_of(e.text, data.HELD_OUT_POOL) and not _template_of(e.text, data.TRAIN_POOL), e.text
    for e in splits.train:
        assert _template_of(e.text, data.TRAIN_POOL), e.text
    # the pools are disjoint in every part (templates, clauses, names, sizes, dates, times, notes)
    for name in ("templates", "note_clauses", "names", "people", "dates", "times", "notes"):
        assert not set(getattr(data.TRAIN_POOL, name)) & set(getattr(data.HELD_OUT_POOL, name)), name
    # the training split covers its templates, and notes appear and are absent
    assert len({_template_of(e.text, data.TRAIN_POOL) for e in splits.train}) == len(data.TRAIN_POOL.templates)
    assert 0.3 < sum(e.fields["note"] != "" for e in splits.train) / len(splits.train) < 0.7


def test_answers_hold_the_facts_of_the_sentence():
    for e in data.booking_splits(100, 0, 50, seed=1).train + data.booking_splits(0, 0, 50, seed=1).test:
        f = e.fields
        assert list(f) == list(data.KEYS)
        assert f["name"] in e.text and f["time"] in e.text and f["note"] in e.text
        assert re.search(rf"\b{f['people']}\b", e.text)
        month, day = (int(x) for x in f["date"].split("-"))
        assert re.search(rf"\b{day} {data.MONTHS[month - 1]}\b|\b{data.MONTHS[month - 1]} {day}\b", e.text), e.text


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
    assert data.chat_prompt(tokenizer, data.to_record(e)) == prompt == data.chat_prompt(tokenizer, data.chat_messages(e))


def test_labels_are_masked_to_the_answer_end_token_and_newline(tokenizer):
    e = data.booking_splits(1, 0, 0).train[0]
    enc = data.encode(tokenizer, e)
    kept = [t for t in enc["labels"] if t != data.IGNORE_INDEX]
    assert tokenizer.decode(kept) == e.answer + tokenizer.eos_token + "\n"
    n_prompt = len(enc["labels"]) - len(kept)
    assert enc["labels"][:n_prompt] == [data.IGNORE_INDEX] * n_prompt
    assert tokenizer.decode(enc["input_ids"][:n_prompt]) == data.chat_prompt(tokenizer, e)
    lengths = [len(data.encode(tokenizer, x)["input_ids"]) for x in data.booking_splits(50, 0, 0).train]
    assert max(lengths) < 100  # short sequences keep CPU steps cheap


def test_encoding_equals_trls_tokens_and_completion_mask(tokenizer):
    """TRL's SFTTrainer prepares the same ids, and masks the same positions, as data.encode."""
    from trl import SFTConfig, SFTTrainer
    from transformers import LlamaConfig, LlamaForCausalLM

    examples = data.booking_splits(4, 0, 0, seed=5).train
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32,
                                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1))
    import tempfile

    with tempfile.TemporaryDirectory() as out:
        trainer = SFTTrainer(model=model, args=SFTConfig(output_dir=out, use_cpu=True, report_to=[], bf16=False,
                                                         activation_checkpointing=False),
                             train_dataset=data.to_dataset(examples), processing_class=tokenizer)
        prepared = trainer.train_dataset
        assert trainer.completion_only_loss
        for row, e in zip(prepared, examples):
            ours = data.encode(tokenizer, e)
            assert row["input_ids"] == ours["input_ids"]
            batch = trainer.data_collator([row])
            assert batch["labels"][0].tolist() == ours["labels"]


def test_collate_pads_right_and_masks_padding(tokenizer):
    encoded = [data.encode(tokenizer, e) for e in data.booking_splits(4, 0, 0).train]
    batch = data.collate(encoded, tokenizer.pad_token_id)
    lengths = [len(e["input_ids"]) for e in encoded]
    assert batch["input_ids"].shape == (4, max(lengths))
    assert batch["attention_mask"].sum(1).tolist() == lengths
    assert ((batch["labels"] != data.IGNORE_INDEX) <= batch["attention_mask"].bool()).all()
    with pytest.raises(ValueError, match="at least one"):
        data.collate([], 0)


def test_to_dataset_is_trls_conversational_prompt_completion():
    from trl.data_utils import is_conversational

    examples = data.booking_splits(3, 0, 0).train
    ds = data.to_dataset(examples)
    assert ds.column_names == ["prompt", "completion"] and len(ds) == 3
    assert is_conversational(ds[0])
    assert ds[1]["completion"] == [{"role": "assistant", "content": examples[1].answer}]


def test_score_counts_exact_valid_and_per_field():
    answer = data.answer_json("Jo", 2, "05-03", "12:00", "")
    gens = [answer, answer.replace("12:00", "12:30"), json.dumps(json.loads(answer)), "[1]", "Sure! {", ""]
    s = data.score(gens, [answer] * len(gens))
    assert s.n == 6 and s.exact == [True, False, False, False, False, False] and s.exact_count == 1
    assert s.exact_match == 1 / 6
    expected_valid = sum(isinstance(_try_json(g), dict) for g in gens)
    assert s.valid_json == expected_valid / 6 == 3 / 6
    assert s.fields["time"] == 2 / 6 and s.fields["name"] == 3 / 6 and list(s.fields) == list(data.KEYS)
    assert data.score(["hello"], ["hello"]).fields == {}          # free text: no fields
    with pytest.raises(ValueError, match="as many"):
        data.score(gens, [answer])


def _try_json(text):
    try:
        return json.loads(text)
    except ValueError:
        return None


def test_wilson_interval_covers_the_rate_and_shrinks_with_n():
    lo, hi = data.wilson_interval(36, 40)
    assert lo < 0.9 < hi
    lo2, hi2 = data.wilson_interval(360, 400)
    assert lo < lo2 < 0.9 < hi2 < hi
    # coverage, by simulation: about 95% of intervals hold the true rate
    rng = random.Random(0)
    hits = sum(data.wilson_interval(k, 60)[0] <= 0.8 <= data.wilson_interval(k, 60)[1]
               for k in (sum(rng.random() < 0.8 for _ in range(60)) for _ in range(400)))
    assert 0.92 < hits / 400 < 0.98
    assert data.wilson_interval(0, 10)[0] == 0 and math.isclose(data.wilson_interval(10, 10)[1], 1)
    with pytest.raises(ValueError):
        data.wilson_interval(3, 2)


def test_paired_difference_interval_holds_zero_only_when_the_rates_are_close():
    rng = random.Random(1)
    same = [rng.random() < 0.7 for _ in range(80)]
    d, lo, hi = data.paired_difference_interval(same, same)
    assert (d, lo, hi) == (0, 0, 0)                      # identical outcomes: no difference at all
    better = [True] * 70 + [False] * 10
    worse = [True] * 40 + [False] * 40
    d, lo, hi = data.paired_difference_interval(better, worse)
    assert d == pytest.approx(30 / 80) and 0 < lo < d < hi
    noisy = [rng.random() < 0.7 for _ in range(80)]
    d, lo, hi = data.paired_difference_interval(same, noisy)
    assert lo < d < hi and hi - lo > 0.1
    with pytest.raises(ValueError):
        data.paired_difference_interval([True], [True, False])


def test_read_jsonl_accepts_both_formats(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join([
        json.dumps({"prompt": "2+2?", "completion": "4"}),
        "",
        json.dumps({"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"},
                                 {"role": "assistant", "content": "hello"}, {"role": "user", "content": "3+3?"},
                                 {"role": "assistant", "content": "6"}]}),
        json.dumps({"prompt": [{"role": "user", "content": "1+1?"}], "completion": [{"role": "assistant", "content": "2"}]}),
    ]) + "\n")
    records = data.read_jsonl(path)
    assert len(records) == 3
    assert records[0] == {"prompt": [{"role": "user", "content": "2+2?"}], "completion": [{"role": "assistant", "content": "4"}]}
    assert [m["role"] for m in records[1]["prompt"]] == ["system", "user", "assistant", "user"]
    assert records[1]["completion"] == [{"role": "assistant", "content": "6"}]
    assert data.answer_of(records[2]) == "2"


@pytest.mark.parametrize("line, message", [
    ('{"prompt": "a", ', "not JSON"),
    ('[1, 2]', "not a JSON object"),
    ('{"prompt": "a"}', "missing key 'completion'"),
    ('{"completion": "a"}', "missing key 'prompt'"),
    ('{"prompt": "a", "completion": ""}', "empty completion"),
    ('{"prompt": "a", "completion": [{"role": "assistant", "content": "b"}]}', "both be strings"),
    ('{"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}', "wrong role order"),
    ('{"messages": [{"role": "user", "content": "a"}]}', "wrong role order"),
    ('{"messages": [{"role": "bot", "content": "a"}]}', "must be one of system, user, assistant, got 'bot'"),
    ('{"messages": [{"role": "user", "text": "a"}]}', '"role" and "content"'),
])
def test_read_jsonl_names_the_line_and_the_problem(tmp_path, line, message):
    path = tmp_path / "train.jsonl"
    path.write_text('{"prompt": "x", "completion": "y"}\n' + line + "\n")
    with pytest.raises(data.DataError) as info:
        data.read_jsonl(path)
    assert info.value.line == 2 and isinstance(info.value, ValueError)
    assert str(info.value).startswith("train.jsonl, line 2: ") and message in str(info.value)
    assert "\n" not in str(info.value)


def test_read_jsonl_refuses_bytes_that_are_not_utf8_and_accepts_a_byte_order_mark(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_bytes(b'{"prompt": "x", "completion": "y"}\n\x00\x01\xff\n')
    with pytest.raises(data.DataError) as info:
        data.read_jsonl(path)
    assert info.value.line == 2 and str(info.value) == (
        "train.jsonl, line 2: not UTF-8 text (byte 0xff at column 3); save the file as UTF-8")
    path.write_bytes(b'\xef\xbb\xbf{"prompt": "x", "completion": "y"}\r\n')   # a BOM and Windows line ends
    assert data.answer_of(data.read_jsonl(path)[0]) == "y"
    (tmp_path / "blank.jsonl").write_text("\n  \n")
    with pytest.raises(data.DataError) as info:
        data.read_jsonl(tmp_path / "blank.jsonl")
    assert info.value.line is None and str(info.value) == "blank.jsonl: no example in the file (every line is blank)"


def test_read_jsonl_refuses_an_example_longer_than_max_length(tmp_path, tokenizer):
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps({"prompt": "short", "completion": "ok"}) + "\n" +
                    json.dumps({"prompt": "word " * 100, "completion": "ok"}) + "\n")
    n = len(data.encode(tokenizer, data.read_jsonl(path)[1])["input_ids"])
    assert len(data.read_jsonl(path, tokenizer, max_length=n)) == 2
    with pytest.raises(data.DataError, match=rf"line 2: too long: {n} tokens .* max_length {n - 1}"):
        data.read_jsonl(path, tokenizer, max_length=n - 1)
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(data.DataError, match="no example"):
        data.read_jsonl(tmp_path / "empty.jsonl")


def test_split_off_holds_out_a_seeded_share():
    train, held = data.split_off(list(range(20)), 0.1, seed=1)
    assert len(held) == 2 and sorted(train + held) == list(range(20))
    assert (train, held) == data.split_off(list(range(20)), 0.1, seed=1)
    with pytest.raises(ValueError):
        data.split_off([1], 0.5)


# --- the short tasks (lesson 10) ---

@pytest.mark.parametrize("task", sorted(data.SHORT_TASKS))
def test_short_task_splits_are_deterministic_and_never_repeat_a_text(task):
    a = data.short_task_splits(task, 120, 20, 40, seed=2)
    assert a == data.short_task_splits(task, 120, 20, 40, seed=2)
    assert a != data.short_task_splits(task, 120, 20, 40, seed=3)
    assert [len(s) for s in a] == [120, 20, 40]
    texts = [e.text for s in a for e in s]
    assert len(set(texts)) == len(texts)


def test_date_task_holds_out_dates_and_sentences_and_answers_the_date_in_the_text():
    splits = data.short_task_splits("dates", 300, 0, 100, seed=0)
    assert not {e.answer for e in splits.train} & {e.answer for e in splits.test}
    for part, held_out in ((splits.train, False), (splits.test, True)):
        own = data._DATE_SENTENCES_HELD_OUT if held_out else data._DATE_SENTENCES_TRAIN
        for e in part:
            assert e.system == data.DATE_SYSTEM_PROMPT and re.fullmatch(r"\d\d-\d\d", e.answer)
            month, day = (int(x) for x in e.answer.split("-"))
            name = data.MONTHS[month - 1]
            assert re.search(rf"\b{day}\b|\b{data._nth(day)}\b", e.text) and name[:3] in e.text, e
            pattern = "|".join(re.escape(t).replace(re.escape("{date}"), ".+") for t in own)
            assert re.fullmatch(pattern, e.text, flags=re.IGNORECASE), e.text
    # all four date formats appear in training, ordinals are right
    assert [data._nth(d) for d in (1, 2, 3, 4, 11, 12, 13, 21, 22, 23)] == \
        ["1st", "2nd", "3rd", "4th", "11th", "12th", "13th", "21st", "22nd", "23rd"]


def test_label_task_holds_out_sentences_names_and_weekdays_and_covers_every_label():
    splits = data.short_task_splits("labels", 300, 0, 100, seed=0)
    for part, side in ((splits.train, 0), (splits.test, 1)):
        assert {e.answer for e in part} == set(data.LABELS)
        for e in part:
            own = data._LABEL_SENTENCES_SPLIT[e.answer][side]
            other = data._LABEL_SENTENCES_SPLIT[e.answer][1 - side]
            slots = {"{name}": r"[A-Za-z]+", "{people}": r"\d+", "{day}": r"[A-Za-z]+"}

            def matches(templates):
                for t in templates:
                    p = re.escape(t)
                    for slot, rx in slots.items():
                        p = p.replace(re.escape(slot), rx)
                    if re.fullmatch(p, e.text):
                        return True
                return False
            assert matches(own) and not matches(other), e.text
            days = data._WEEKDAYS_HELD_OUT if side else data._WEEKDAYS_TRAIN
            assert not any(d in e.text for d in set(data.WEEKDAYS) - set(days)), e.text


def test_short_tasks_use_their_own_system_message(tokenizer):
    e = data.short_task_splits("labels", 1, 0, 0).train[0]
    assert data.chat_messages(e)[0]["content"] == data.LABEL_SYSTEM_PROMPT
    assert data.LABEL_SYSTEM_PROMPT in data.chat_prompt(tokenizer, e)
    enc = data.encode(tokenizer, e)
    assert tokenizer.decode([t for t in enc["labels"] if t != data.IGNORE_INDEX]) == e.answer + tokenizer.eos_token + "\n"
    assert max(len(data.encode(tokenizer, x)["input_ids"]) for t in data.SHORT_TASKS
               for x in data.short_task_splits(t, 50, 0, 0).train) < 45  # short: cheap CPU steps


@pytest.mark.parametrize("args, message", [(("sums", 1, 1, 1), "task must be one of dates, labels"),
                                           (("dates", 501, 0, 0), "at most 500"),
                                           (("labels", 0, 0, 0), "positive total")])
def test_short_task_splits_refuse_bad_arguments(args, message):
    with pytest.raises(ValueError, match=message):
        data.short_task_splits(*args)
