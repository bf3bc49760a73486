"""The course's fine-tuning task, its scorer, and the reader for a student's own data.

**The task: a restaurant booking in free text -> a JSON record.** Each example is one or two
sentences such as ``"Table for 4 on 14 March at 19:30, name Ana. Note: window seat."`` and its
answer, a compact JSON object with five fixed keys::

    {"name":"Ana","people":4,"date":"03-14","time":"19:30","note":"window seat"}

(``note`` is ``""`` when the booking has none; the date is month-day.) The base instruction model
does not know this record, so it scores near zero; what fine-tuning teaches is measured on
held-out examples written with **phrasings (templates) and slot values (names, party sizes,
dates, times, notes) that training never saw**: the two pools are disjoint (asserted), so a
fine-tune that memorises templates or values fails the test. The validation split is drawn
from the held-out pools like the test split, with no example in common.

Pieces, reused by lessons 06-10:
    :func:`booking_splits` - train / validation / test examples (disjoint pools, asserted);
    :func:`chat_messages`, :func:`chat_prompt`, :func:`encode`, :func:`collate` - the chat
    template, token ids with the labels masked to the answer, batches;
    :func:`to_dataset` - a ``datasets.Dataset`` in TRL's conversational prompt/completion format;
    :func:`score`, :func:`wilson_interval` and :func:`paired_difference_interval` - exact match,
    valid-JSON rate, per-field accuracy, and confidence intervals for a rate and for the
    difference of two rates on the same examples;
    :func:`read_jsonl` - read and validate a student's own JSONL file (one clear
    :class:`DataError` naming the line);
    :func:`short_task_splits` - two short tasks for lesson 10's second adapter (a date in a
    sentence -> ``MM-DD``; a message -> one of four labels), with the same disjoint pools.

Example:
    >>> splits = booking_splits(4, 2, 2, seed=0)
    >>> [len(s) for s in splits]
    [4, 2, 2]
    >>> list(splits.train[0].fields)
    ['name', 'people', 'date', 'time', 'note']
"""

from __future__ import annotations

import json
import math
import os
import random
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any, Callable, NamedTuple, Sequence

from lessonlib.validation import non_empty, number_in, one_of

SYSTEM_PROMPT = "Convert the booking to JSON."
"""The system message of every booking prompt (shorter than the chat template's default one)."""

KEYS = ("name", "people", "date", "time", "note")
"""The keys of every answer, in this order."""

IGNORE_INDEX = -100
"""Label value that the loss ignores (PyTorch's ``cross_entropy`` default)."""

MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September",
          "October", "November", "December")


@dataclass(frozen=True)
class Pool:
    """Everything an example can be made of: templates and the values of each slot."""

    templates: tuple[str, ...]
    """Sentences with ``{name}``, ``{people}``, ``{date}``, ``{time}``."""
    note_clauses: tuple[str, ...]
    """What is appended when the booking has a note, with ``{note}``."""
    names: tuple[str, ...]
    people: tuple[int, ...]
    dates: tuple[tuple[int, int], ...]
    """(month, day) pairs."""
    times: tuple[str, ...]
    notes: tuple[str, ...]


def _split_off(values: Sequence[Any], every: int, seed: int) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    """A fixed, seeded partition: (kept, held out), holding out one value in ``every``."""
    shuffled = list(values)
    random.Random(seed).shuffle(shuffled)
    held = set(shuffled[::every])
    return tuple(v for v in values if v not in held), tuple(v for v in values if v in held)


_TEMPLATES = (
    "Table for {people} on {date} at {time}, name {name}.",
    "{name} here, {people} people, {date} {time} please.",
    "Book {people} seats on {date} at {time} for {name}.",
    "Hi, {name}: we are {people}, coming {date} around {time}.",
    "Reservation {name}, {date}, {time}, party of {people}.",
    "Can {name} get a table at {time} on {date}? We are {people}.",
    "Please reserve for {name}: {people} guests, {time}, {date}.",
    "{date} at {time}, {people} people, under {name}.",
    "I'd like a table for {people} at {time} on {date}. My name is {name}.",
    "Name: {name}. Guests: {people}. Date: {date}. Time: {time}.",
    "We would love to come on {date}, {people} of us, at {time}. {name}",
    "{name} booking {people} covers for {time}, {date}.",
    "Good morning, a table for {people} please, {date} at {time}, for {name}.",
    "{people} guests, {date}, {time}. Booked by {name}.",
    "Do you have a free table at {time} on {date} for {people}? Thanks, {name}",
    "Hey! {name} and friends, {people} total, {date} about {time}.",
    "Could I book for {date}? {time}, {people} persons, under the name {name}.",
    "New booking: {name} / {people} pax / {date} / {time}",
    "Dinner for {people} at {time}, {date}. It's for {name}.",
    "{name} would like to reserve a table on {date} for {people} at {time}.",
    "At {time} on {date} we will be {people}; the name is {name}.",
    "Hello, this is {name}, booking for {people} on {date}, {time}.",
    "Lunch on {date} at {time} for {people} people, please. {name}",
    "My family of {people} wants to come {date} at {time}. Regards, {name}.",
    "Hello! Could you hold a table for {people} on {date}, {time}? It's {name}.",
    "{people} people at {time} on {date}, please; the booking is for {name}.",
    "This is {name}. Is there room for {people} on {date} at {time}?",
    "Party of {people}, {date} {time}. Contact: {name}.",
    "Evening, {name} speaking, we want {people} places on {date} at {time}.",
    "Put {name} down for {date}, {time}, {people} persons.",
    "For {date} at {time}: {name}, group of {people}.",
    "Any space on {date} around {time}? {people} of us, name's {name}.",
)
_NOTE_CLAUSES = (" Note: {note}.", " Request: {note}.", " Please note: {note}.", " Extra: {note}.", " Comment: {note}.",
                 " We need: {note}.", " (note: {note})", " PS: {note}.", " One more thing: {note}.",
                 " Remark - {note}.", " Also: {note}.", " Special request: {note}.")
_NAMES = ("Ana", "Ben", "Chloe", "Dev", "Emma", "Femi", "Gus", "Hana", "Ivan", "Jo", "Kai", "Lena", "Marc", "Nina",
          "Omar", "Pia", "Raj", "Sara", "Tom", "Uma", "Vera", "Wei", "Yara", "Zoe", "Alba", "Bruno", "Carla", "Dario",
          "Elif", "Felix", "Greta", "Hugo", "Ines", "Jonas", "Karin", "Luca", "Mateo", "Nadia", "Oskar", "Petra",
          "Ravi", "Selin", "Tariq", "Ulla", "Vikram", "Wanda", "Xavi", "Yusuf", "Zara", "Ayla", "Bjorn", "Cyrus",
          "Dilan", "Enzo", "Fatima", "Goran", "Hamid", "Ilse", "Joao", "Kenji", "Aiko", "Bilal", "Cora", "Diego",
          "Esme", "Farid", "Gwen", "Hiro", "Isla", "Jamal", "Kira", "Leo", "Mila", "Noor", "Otto", "Priya", "Quinn",
          "Rosa")
_NOTES = ("window seat", "vegan menu", "high chair", "birthday cake", "quiet corner", "dog with us", "no stairs",
          "near the bar", "outside table", "two kids", "late arrival", "booth please", "shellfish allergy",
          "round table", "pram", "lactose free", "sea view", "surprise party", "wheelchair access", "gluten free",
          "terrace table", "anniversary", "nut allergy", "big table")

# Each pool is split once, by a fixed seed, into values for training and values held out: the two
# parts come from the same lists (so held-out examples are no stranger than training ones), but
# share nothing.
_TEMPLATES_TRAIN, _TEMPLATES_HELD_OUT = _split_off(_TEMPLATES, 4, seed=3)
_CLAUSES_TRAIN, _CLAUSES_HELD_OUT = _split_off(_NOTE_CLAUSES, 4, seed=4)
_NAMES_TRAIN, _NAMES_HELD_OUT = _split_off(_NAMES, 4, seed=5)
_NOTES_TRAIN, _NOTES_HELD_OUT = _split_off(_NOTES, 4, seed=6)
_PEOPLE_TRAIN, _PEOPLE_HELD_OUT = _split_off(range(2, 14), 4, seed=7)
_DATES_TRAIN, _DATES_HELD_OUT = _split_off([(m, d) for m in range(1, 13) for d in range(1, 29)], 4, seed=1)
_TIMES_TRAIN, _TIMES_HELD_OUT = _split_off([f"{h}:{m:02d}" for h in range(11, 23) for m in (0, 15, 30, 45)], 4, seed=2)

TRAIN_POOL = Pool(_TEMPLATES_TRAIN, _CLAUSES_TRAIN, _NAMES_TRAIN, _PEOPLE_TRAIN, _DATES_TRAIN, _TIMES_TRAIN,
                  _NOTES_TRAIN)
"""What training examples are made of (three quarters of every list)."""

HELD_OUT_POOL = Pool(_TEMPLATES_HELD_OUT, _CLAUSES_HELD_OUT, _NAMES_HELD_OUT, _PEOPLE_HELD_OUT, _DATES_HELD_OUT,
                     _TIMES_HELD_OUT, _NOTES_HELD_OUT)
"""What validation and test examples are made of (the other quarter): nothing in common with :data:`TRAIN_POOL`."""

NOTE_SHARE = 0.5
"""Share of bookings that carry a note."""


def _check_pools_disjoint(a: Pool, b: Pool) -> None:
    for name in ("templates", "note_clauses", "names", "people", "dates", "times", "notes"):
        common = set(getattr(a, name)) & set(getattr(b, name))
        assert not common, f"train and held-out pools share {name}: {sorted(common)[:3]}"


_check_pools_disjoint(TRAIN_POOL, HELD_OUT_POOL)


@dataclass(frozen=True)
class Example:
    """One task example: the user's text and the exact answer expected.

    Example:
        >>> e = Example("Table for 2 on 3 May at 12:00, name Jo.", '{"name":"Jo","people":2,"date":"05-03","time":"12:00","note":""}')
        >>> e.fields["people"]
        2
    """

    text: str
    answer: str
    system: str = field(default=SYSTEM_PROMPT, repr=False)
    """The system message the example is asked with (the booking task's by default)."""

    @property
    def fields(self) -> dict[str, Any]:
        """The answer parsed back into a dict."""
        return json.loads(self.answer)


class Splits(NamedTuple):
    """Train, validation and test examples (train from one pool, validation and test from the other)."""

    train: list[Example]
    val: list[Example]
    test: list[Example]


def answer_json(name: str, people: int, date: str, time: str, note: str = "") -> str:
    """Return the compact JSON answer for one booking (fixed key order, no spaces).

    Example:
        >>> answer_json("Ana", 4, "03-14", "19:30", "window seat")
        '{"name":"Ana","people":4,"date":"03-14","time":"19:30","note":"window seat"}'
    """
    return json.dumps(dict(zip(KEYS, (name, people, date, time, note))), separators=(",", ":"))


def _date_text(month: int, day: int, rng: random.Random) -> str:
    return f"{day} {MONTHS[month - 1]}" if rng.random() < 0.5 else f"{MONTHS[month - 1]} {day}"


def make_example(rng: random.Random, pool: Pool = TRAIN_POOL) -> Example:
    """Draw one booking from ``pool`` and one phrasing of it, with ``rng``.

    The date is written in one of two ways (``14 March``, ``March 14``) in every pool;
    templates, note clauses and all values come from ``pool`` only.

    Example:
        >>> e = make_example(random.Random(0), HELD_OUT_POOL)
        >>> e.fields["name"] in HELD_OUT_POOL.names
        True
    """
    name, people, time = rng.choice(pool.names), rng.choice(pool.people), rng.choice(pool.times)
    month, day = rng.choice(pool.dates)
    note = rng.choice(pool.notes) if rng.random() < NOTE_SHARE else ""
    text = rng.choice(pool.templates).format(name=name, people=people, date=_date_text(month, day, rng), time=time)
    if note:
        text += rng.choice(pool.note_clauses).format(note=note)
    return Example(text=text, answer=answer_json(name, people, f"{month:02d}-{day:02d}", time, note))


def _draw(n: int, make: Callable[[], Example], key: Callable[[Example], str], seen: set[str]) -> list[Example]:
    """``n`` examples from ``make()`` whose ``key`` is not in ``seen`` yet (each key is added to it)."""
    examples: list[Example] = []
    while len(examples) < n:
        example = make()
        if key(example) not in seen:
            seen.add(key(example))
            examples.append(example)
    return examples


def _check_sizes(n_train: int, n_val: int, n_test: int, most: int) -> None:
    sizes = (n_train, n_val, n_test)
    if any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in sizes) or sum(sizes) == 0:
        raise ValueError(f"split sizes must be non-negative integers with a positive total, got {sizes}")
    if max(sizes) > most:
        raise ValueError(f"at most {most} examples per split can be drawn, got {sizes}")


def booking_splits(n_train: int, n_val: int, n_test: int, seed: int = 0) -> Splits:
    """Return train / validation / test examples, deterministic in ``seed``.

    Training examples come from :data:`TRAIN_POOL`; validation and test examples from
    :data:`HELD_OUT_POOL`, which shares no template, note clause, name, party size, date, time or
    note with it. No booking appears twice across the three splits. Both are asserted.

    Args:
        n_train, n_val, n_test: sizes of the splits (non-negative; at least one example overall;
            at most 5,000 each).
        seed: the random seed.

    Raises:
        ValueError: a size is negative or not an integer, all are zero, or one is above 5,000.

    Example:
        >>> a = booking_splits(3, 1, 1, seed=7); b = booking_splits(3, 1, 1, seed=7)
        >>> a == b
        True
        >>> booking_splits(-1, 0, 0)
        Traceback (most recent call last):
        ...
        ValueError: split sizes must be non-negative integers with a positive total, got (-1, 0, 0)
    """
    _check_sizes(n_train, n_val, n_test, 5000)
    rng = random.Random(seed)
    seen: set[str] = set()
    answer = attrgetter("answer")
    train = _draw(n_train, lambda: make_example(rng, TRAIN_POOL), answer, seen)
    held_out = _draw(n_val + n_test, lambda: make_example(rng, HELD_OUT_POOL), answer, seen)
    val, test = held_out[:n_val], held_out[n_val:]
    train_values = {v for e in train for v in e.fields.values()} - {""}
    assert not train_values & {v for e in held_out for v in e.fields.values()}, "a held-out value was seen in training"
    assert not {e.answer for e in val} & {e.answer for e in test}
    return Splits(train, val, test)


# --- two short tasks: dates and message labels ---------------------------------------------------
# Lesson 10 needs two adapters for two different jobs, each trained in seconds: short prompts,
# answers of a few tokens. Like the booking task, each is drawn from a training pool and a disjoint
# held-out pool (asserted), so the held-out score measures what was learnt, not what was memorised.

DATE_SYSTEM_PROMPT = "Write the date as MM-DD."
"""The system message of the date task."""

LABEL_SYSTEM_PROMPT = "Label the message."
"""The system message of the label task."""

LABELS = ("booking", "cancel", "complaint", "question")
"""The answers of the label task."""

WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")

# Date formats are the skill and appear in both pools (as the booking task's do); the sentences
# around them and the dates themselves are split.
_DATE_FORMATS = ("{day} {month}", "{month} {day}", "{mon} {day}", "the {nth} of {month}")
_DATE_SENTENCES = ("See you on {date}.", "The party is on {date}.", "Deadline: {date}", "{date} works for me.",
                   "Can we meet on {date}?", "It opens on {date}.", "Born {date}.", "Due {date}",
                   "Let's say {date} then.", "The flight leaves on {date}.", "{date}, please.", "Is {date} free?")
_LABEL_SENTENCES = {
    "booking": ("Table for {people} on {day}, please.", "Can {name} reserve for {day}?",
                "We'd like to come on {day}, {people} of us.", "Book us in for {day} evening. {name}",
                "Is there room for {people} on {day}? {name}", "{name} here, I want a table on {day}.",
                "Please hold {people} seats for {day}.", "Reserve a table for {name} on {day}."),
    "cancel": ("{name} can't make it on {day}, please cancel.", "Cancel my table for {day}. {name}",
               "We won't come on {day} after all. {name}", "Please drop the booking under {name}.",
               "Sorry, call off {day}'s reservation.", "{name} cancelling the table for {people}.",
               "No longer need the table on {day}.", "Scrap our booking for {day}, thanks."),
    "complaint": ("The soup was cold on {day}.", "{name} here: we waited an hour on {day}.",
                  "Our waiter was rude on {day}.", "The bill for {people} was wrong. {name}",
                  "Too noisy on {day}, very disappointed.", "{name}: the fish was not fresh.",
                  "We were {people} and got one menu. Awful.", "The table was dirty on {day}."),
    "question": ("Do you open on {day}?", "Is there parking? {name}", "What time do you close on {day}?",
                 "Do you have a vegan menu? {name}", "Can {people} people sit outside?",
                 "{name} asking: do you take cards?", "Is the kitchen open late on {day}?", "Are dogs allowed?"),
}
_DATE_SENTENCES_TRAIN, _DATE_SENTENCES_HELD_OUT = _split_off(_DATE_SENTENCES, 4, seed=8)
_LABEL_SENTENCES_SPLIT = {label: _split_off(t, 4, seed=9 + i) for i, (label, t) in enumerate(_LABEL_SENTENCES.items())}
_WEEKDAYS_TRAIN, _WEEKDAYS_HELD_OUT = _split_off(WEEKDAYS, 4, seed=13)
for _a, _b in [(_DATE_SENTENCES_TRAIN, _DATE_SENTENCES_HELD_OUT), (_WEEKDAYS_TRAIN, _WEEKDAYS_HELD_OUT),
               *_LABEL_SENTENCES_SPLIT.values()]:
    assert _a and _b and not set(_a) & set(_b), "a short task's train and held-out pools overlap"


def _nth(day: int) -> str:
    return f"{day}{'th' if 10 < day % 100 < 14 else {1: 'st', 2: 'nd', 3: 'rd'}.get(day % 10, 'th')}"


def date_example(rng: random.Random, held_out: bool = False) -> Example:
    """Draw one example of the date task: a short sentence holding a date -> the date as ``MM-DD``.

    Dates and sentences come from the training pool, or with ``held_out`` from the disjoint
    held-out pool (the same dates as the booking task's pools); the four date formats appear in both.

    Example:
        >>> e = date_example(random.Random(1))
        >>> e.text, e.answer
        ('It opens on 21 February.', '02-21')
        >>> e.system
        'Write the date as MM-DD.'
    """
    month, day = rng.choice(_DATES_HELD_OUT if held_out else _DATES_TRAIN)
    name = MONTHS[month - 1]
    date = rng.choice(_DATE_FORMATS).format(day=day, month=name, mon=name[:3], nth=_nth(day))
    sentence = rng.choice(_DATE_SENTENCES_HELD_OUT if held_out else _DATE_SENTENCES_TRAIN).format(date=date)
    return Example(text=sentence[0].upper() + sentence[1:], answer=f"{month:02d}-{day:02d}", system=DATE_SYSTEM_PROMPT)


def label_example(rng: random.Random, held_out: bool = False) -> Example:
    """Draw one example of the label task: a message to a restaurant -> one of :data:`LABELS`.

    Sentences, names, party sizes and weekdays come from the training pool, or with ``held_out``
    from the disjoint held-out pool; every label has sentences in both.

    Example:
        >>> e = label_example(random.Random(0), held_out=True)
        >>> e.answer in LABELS, e.system
        (True, 'Label the message.')
    """
    label = rng.choice(LABELS)
    sentences = _LABEL_SENTENCES_SPLIT[label][1 if held_out else 0]
    names, people, days = ((_NAMES_HELD_OUT, _PEOPLE_HELD_OUT, _WEEKDAYS_HELD_OUT) if held_out
                           else (_NAMES_TRAIN, _PEOPLE_TRAIN, _WEEKDAYS_TRAIN))
    text = rng.choice(sentences).format(name=rng.choice(names), people=rng.choice(people), day=rng.choice(days))
    return Example(text=text, answer=label, system=LABEL_SYSTEM_PROMPT)


SHORT_TASKS = {"dates": date_example, "labels": label_example}
"""The short tasks by name, each a function ``(rng, held_out) -> Example``."""


def short_task_splits(task: str, n_train: int, n_val: int, n_test: int, seed: int = 0) -> Splits:
    """Return train / validation / test examples of a short task (``"dates"`` or ``"labels"``).

    Training examples come from the task's training pool, validation and test from its held-out
    pool (no sentence template, date, name, party size or weekday in common, asserted); no text
    appears twice across the splits. Deterministic in ``seed``.

    Raises:
        ValueError: an unknown task, or sizes as :func:`booking_splits` refuses them (at most 500 each).

    Example:
        >>> s = short_task_splits("dates", 3, 1, 2, seed=0)
        >>> [len(x) for x in s], s.test[0].answer
        ([3, 1, 2], '05-06')
        >>> short_task_splits("sums", 1, 1, 1)
        Traceback (most recent call last):
        ...
        ValueError: task must be one of dates, labels, got 'sums'
    """
    one_of("task", task, tuple(SHORT_TASKS))
    _check_sizes(n_train, n_val, n_test, 500)
    make, rng, seen = SHORT_TASKS[task], random.Random(seed), set()

    text = attrgetter("text")
    train = _draw(n_train, lambda: make(rng, False), text, seen)
    held = _draw(n_val + n_test, lambda: make(rng, True), text, seen)
    if task == "dates":
        assert not {e.answer for e in train} & {e.answer for e in held}, "a held-out date was seen in training"
    return Splits(train, held[:n_val], held[n_val:])


Messages = list[dict[str, str]]


def chat_messages(example: Example | str, with_answer: bool = False) -> Messages:
    """Return the conversation: the example's short system message, the user's text (and the answer).

    A text is asked with the booking task's system message.

    Example:
        >>> [m["role"] for m in chat_messages("Table for 2 on 3 May at 12:00, name Jo.")]
        ['system', 'user']
        >>> chat_messages(Example("hi", "{}"), with_answer=True)[-1]
        {'role': 'assistant', 'content': '{}'}
    """
    text = example.text if isinstance(example, Example) else example
    system = example.system if isinstance(example, Example) else SYSTEM_PROMPT
    messages = [{"role": "system", "content": system}, {"role": "user", "content": text}]
    if with_answer:
        if not isinstance(example, Example):
            raise ValueError("with_answer=True needs an Example (a text has no answer)")
        messages.append({"role": "assistant", "content": example.answer})
    return messages


def to_record(item: Example | dict[str, Any]) -> dict[str, Messages]:
    """Return ``{"prompt": messages, "completion": [assistant message]}`` (TRL's conversational format).

    A record (as :func:`read_jsonl` returns) is returned unchanged.

    Example:
        >>> r = to_record(Example("hi", "{}"))
        >>> [m["role"] for m in r["prompt"]], r["completion"]
        (['system', 'user'], [{'role': 'assistant', 'content': '{}'}])
    """
    if isinstance(item, Example):
        return {"prompt": chat_messages(item), "completion": [{"role": "assistant", "content": item.answer}]}
    return item


def chat_prompt(tokenizer: Any, item: Example | str | Messages | dict[str, Any]) -> str:
    """Return the prompt text in the model's chat template, ready for the answer.

    ``item``: a booking :class:`Example` or text (with the short system message), a list of chat
    messages, or a record with a ``"prompt"``.

    Example:
        >>> from lessonlib.models import load_tokenizer
        >>> tok = load_tokenizer()  # doctest: +SKIP
        >>> chat_prompt(tok, "Table for 2 on 3 May at 12:00, name Jo.").endswith("assistant\\n")  # doctest: +SKIP
        True
    """
    if isinstance(item, dict):
        messages = item["prompt"]
    elif isinstance(item, list):
        messages = item
    else:
        messages = chat_messages(item)
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def encode(tokenizer: Any, item: Example | dict[str, Any]) -> dict[str, list[int]]:
    """Tokenize the whole conversation in the chat template; labels are ``IGNORE_INDEX`` except on the answer.

    The answer part is what the template puts after the prompt: the answer, the end-of-turn
    token and the template's newline. These are the same tokens and the same mask as TRL's
    ``SFTTrainer`` builds for a conversational prompt/completion example (tests/test_data.py
    checks it), so the loss is computed only on what the model must produce.

    Example:
        >>> from lessonlib.models import load_tokenizer
        >>> ids = encode(load_tokenizer(), booking_splits(1, 0, 0).train[0])  # doctest: +SKIP
        >>> len(ids["input_ids"]) == len(ids["labels"])  # doctest: +SKIP
        True
    """
    record = to_record(item)
    prompt_ids = tokenizer(chat_prompt(tokenizer, record), add_special_tokens=False)["input_ids"]
    full_text = tokenizer.apply_chat_template(record["prompt"] + record["completion"], tokenize=False)
    full_ids = tokenizer(full_text, add_special_tokens=False)["input_ids"]
    if full_ids[:len(prompt_ids)] != prompt_ids:
        raise ValueError("the tokenized prompt is not a prefix of the tokenized conversation")
    return {"input_ids": full_ids, "labels": [IGNORE_INDEX] * len(prompt_ids) + full_ids[len(prompt_ids):]}


def collate(encoded: Sequence[dict[str, list[int]]], pad_token_id: int) -> dict[str, Any]:
    """Pad encoded examples on the right into tensors ``input_ids``, ``attention_mask``, ``labels``.

    Padding positions get attention 0 and label ``IGNORE_INDEX``.

    Example:
        >>> batch = collate([{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]},
        ...                  {"input_ids": [8], "labels": [8]}], pad_token_id=0)
        >>> batch["input_ids"].tolist(), batch["attention_mask"].tolist()
        ([[5, 6, 7], [8, 0, 0]], [[1, 1, 1], [1, 0, 0]])
        >>> batch["labels"].tolist()
        [[-100, 6, 7], [8, -100, -100]]
    """
    non_empty("collate", encoded, "encoded example")
    import torch

    width = max(len(e["input_ids"]) for e in encoded)
    ids, mask, labels = [], [], []
    for e in encoded:
        pad = width - len(e["input_ids"])
        ids.append(e["input_ids"] + [pad_token_id] * pad)
        mask.append([1] * len(e["input_ids"]) + [0] * pad)
        labels.append(e["labels"] + [IGNORE_INDEX] * pad)
    return {
        "input_ids": torch.tensor(ids),
        "attention_mask": torch.tensor(mask),
        "labels": torch.tensor(labels),
    }


def to_dataset(items: Sequence[Example | dict[str, Any]]) -> Any:
    """Return a ``datasets.Dataset`` with ``prompt`` and ``completion`` columns of chat messages.

    This is TRL's conversational prompt/completion format: ``SFTTrainer`` applies the chat template
    and, by default, computes the loss on the completion only.

    Example:
        >>> ds = to_dataset(booking_splits(2, 0, 0).train)
        >>> ds.column_names, len(ds)
        (['prompt', 'completion'], 2)
    """
    non_empty("to_dataset", items)
    from datasets import Dataset

    records = [to_record(i) for i in items]
    return Dataset.from_dict({"prompt": [r["prompt"] for r in records],
                              "completion": [r["completion"] for r in records]})


def answer_of(item: Example | dict[str, Any]) -> str:
    """The expected answer text: an Example's answer, or a record's completion.

    Example:
        >>> answer_of({"prompt": [], "completion": [{"role": "assistant", "content": "42"}]})
        '42'
    """
    return item.answer if isinstance(item, Example) else item["completion"][-1]["content"]


# --- scoring -------------------------------------------------------------------------------------

@dataclass
class Scores:
    """Exact match, valid-JSON rate and per-field accuracy of generations against answers."""

    exact_match: float
    """Share of generations equal to the expected answer (after stripping white space)."""
    valid_json: float
    """Share of generations that parse as a JSON object."""
    fields: dict[str, float]
    """For each key of the expected JSON objects: share of generations with that key and the right value."""
    n: int
    """Number of examples scored."""
    exact: list[bool] = field(default_factory=list, repr=False)
    """Per example: exact match or not (for paired comparisons)."""

    @property
    def exact_count(self) -> int:
        """Number of exact matches."""
        return sum(self.exact)


def _json_object(text: str) -> dict[str, Any] | None:
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def score(generations: Sequence[str], answers: Sequence[str]) -> Scores:
    """Score generations against expected answers.

    A generation counts as an exact match when it equals the answer character for character
    (white space around it stripped); as valid JSON when it parses as a JSON object. A field is
    right when the generation parses, has the key and the same value (so ``4`` and ``"4"`` differ).
    Fields are those of the expected answers that are JSON objects (none for free-text answers).

    Example:
        >>> s = score(['{"a":1,"b":2}', '{"a": 1, "b": 3}', 'no'], ['{"a":1,"b":2}'] * 3)
        >>> round(s.exact_match, 3), round(s.valid_json, 3), {k: round(v, 3) for k, v in s.fields.items()}
        (0.333, 0.667, {'a': 0.667, 'b': 0.333})
    """
    if len(generations) != len(answers) or not answers:
        raise ValueError(f"need as many generations as answers (at least one), got {len(generations)} and {len(answers)}")
    exact = [g.strip() == a.strip() for g, a in zip(generations, answers)]
    parsed = [_json_object(g) for g in generations]
    expected = [_json_object(a) for a in answers]
    keys: list[str] = []
    for e in expected:
        keys += [k for k in (e or {}) if k not in keys]
    fields = {k: sum(p is not None and e is not None and k in e and k in p and p[k] == e[k]
                     for p, e in zip(parsed, expected)) / len(answers) for k in keys}
    return Scores(exact_match=sum(exact) / len(answers), valid_json=sum(p is not None for p in parsed) / len(answers),
                  fields=fields, n=len(answers), exact=exact)


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Return the Wilson score interval of a rate ``successes / n`` (95% for ``z = 1.96``).

    Unlike ``p ± z·sqrt(p(1-p)/n)`` it stays inside [0, 1] and is not empty at 0% or 100%.

    Example:
        >>> [round(x, 3) for x in wilson_interval(36, 40)]
        [0.769, 0.96]
        >>> [round(x, 3) for x in wilson_interval(0, 40)]
        [0.0, 0.088]
    """
    if n < 1 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n and n >= 1, got {successes} of {n}")
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def paired_difference_interval(a: Sequence[bool], b: Sequence[bool], resamples: int = 4000,
                               seed: int = 0) -> tuple[float, float, float]:
    """Return (difference, low, high): the rate of ``a`` minus the rate of ``b`` on the same examples,
    with a 95% paired bootstrap interval (examples resampled with replacement, seeded).

    When the interval holds 0, the test cannot tell the two apart: the difference is within its noise.

    Example:
        >>> a = [True] * 30 + [False] * 10; b = [True] * 20 + [False] * 20
        >>> [round(x, 3) for x in paired_difference_interval(a, b)]
        [0.25, 0.125, 0.4]
    """
    if len(a) != len(b) or not a:
        raise ValueError(f"need two equally long, non-empty lists of outcomes, got {len(a)} and {len(b)}")
    rng = random.Random(seed)
    n = len(a)
    pairs = [int(x) - int(y) for x, y in zip(a, b)]
    diffs = sorted(sum(pairs[rng.randrange(n)] for _ in range(n)) / n for _ in range(resamples))
    return sum(pairs) / n, diffs[int(0.025 * resamples)], diffs[int(0.975 * resamples) - 1]


# --- the student's own data ----------------------------------------------------------------------

class DataError(ValueError):
    """A JSONL data file is not usable; ``line`` is the number (1-based) of the bad line, or None
    when the problem is the file as a whole (e.g. no example in it)."""

    def __init__(self, path: str | os.PathLike, line: int | None, problem: str) -> None:
        self.path, self.line, self.problem = os.fspath(path), line, problem
        where = os.path.basename(self.path) + ("" if line is None else f", line {line}")
        super().__init__(f"{where}: {problem}")


_FORMATS = ('each line must be a JSON object with "prompt" and "completion" (strings, or lists of chat '
            'messages) or with "messages" (a list of {"role": ..., "content": ...})')


def _check_messages(messages: Any, what: str) -> list[dict[str, str]]:
    if not isinstance(messages, list) or not messages:
        raise ValueError(f'"{what}" must be a non-empty list of messages')
    out = []
    for i, m in enumerate(messages, 1):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise ValueError(f'message {i} of "{what}" must be an object with string "role" and "content"')
        one_of(f'the role of message {i} of "{what}"', m["role"], ("system", "user", "assistant"))
        out.append({"role": m["role"], "content": m["content"]})
    return out


def _check_role_order(roles: list[str], what: str) -> None:
    """system (optional, first), then user, assistant, user, ... ending with assistant."""
    expected = "user"
    for i, role in enumerate(roles, 1):
        if i == 1 and role == "system":
            continue
        if role != expected:
            raise ValueError(f'wrong role order in "{what}": message {i} is {role!r}, expected {expected!r} '
                             "(optional system first, then user and assistant taking turns, ending with assistant)")
        expected = "assistant" if role == "user" else "user"
    if roles[-1] != "assistant":
        raise ValueError(f'wrong role order in "{what}": the last message must be the assistant\'s, got {roles[-1]!r}')


def _record_of(value: Any) -> dict[str, Messages]:
    """Normalise one parsed line into a conversational prompt/completion record, or raise ValueError."""
    if not isinstance(value, dict):
        raise ValueError(f"not a JSON object but {type(value).__name__}; {_FORMATS}")
    if "messages" in value:
        messages = _check_messages(value["messages"], "messages")
        _check_role_order([m["role"] for m in messages], "messages")
        prompt, completion = messages[:-1], messages[-1:]
    else:
        missing = [k for k in ("prompt", "completion") if k not in value]
        if missing:
            raise ValueError(f"missing key {missing[0]!r}; {_FORMATS}")
        p, c = value["prompt"], value["completion"]
        if isinstance(p, str) != isinstance(c, str):
            raise ValueError('"prompt" and "completion" must both be strings or both be lists of messages')
        if isinstance(p, str):
            if not p.strip():
                raise ValueError("empty prompt")
            prompt = [{"role": "user", "content": p}]
            completion = [{"role": "assistant", "content": c}]
        else:
            prompt, completion = _check_messages(p, "prompt"), _check_messages(c, "completion")
            if len(completion) != 1:
                raise ValueError(f'"completion" must hold exactly one assistant message, got {len(completion)}')
            _check_role_order([m["role"] for m in prompt + completion], "prompt + completion")
    if not completion[0]["content"].strip():
        raise ValueError("empty completion: there is nothing to learn from this line")
    return {"prompt": prompt, "completion": completion}


def read_jsonl(path: str | os.PathLike, tokenizer: Any = None, max_length: int | None = None) -> list[dict[str, Messages]]:
    """Read a JSONL file of examples in TRL's conventional formats; return conversational records.

    Each non-blank line is one JSON object, either ``{"prompt": ..., "completion": ...}`` (two
    strings: the prompt becomes the user's message; or two lists of chat messages) or
    ``{"messages": [...]}`` (optional system message, then user and assistant taking turns, ending
    with the assistant: the last assistant message is the completion, everything before it the
    prompt). Each becomes ``{"prompt": [...], "completion": [{"role": "assistant", ...}]}``, the
    format of :func:`to_dataset`. With ``tokenizer`` and ``max_length``, an example whose
    tokenized conversation is longer than ``max_length`` is refused (it would be cut).

    Raises:
        DataError: at the first bad line, naming the file, the line number and what is wrong (not
            UTF-8 text, not JSON, not an object, missing key, empty completion, wrong role order, too
            long); or no example at all. Nothing is returned in part.
        OSError: the file cannot be read.

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "d.jsonl"
        >>> _ = p.write_text('{"prompt": "2+2?", "completion": "4"}\\n{"prompt": "3+3?"}\\n')
        >>> read_jsonl(p)
        Traceback (most recent call last):
        ...
        lessonlib.data.DataError: d.jsonl, line 2: missing key 'completion'; each line must be a JSON object with "prompt" and "completion" (strings, or lists of chat messages) or with "messages" (a list of {"role": ..., "content": ...})
    """
    if max_length is not None and tokenizer is None:
        raise ValueError("max_length needs a tokenizer to count tokens")
    records = []
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            try:  # a byte-order mark at the start (some editors write one) is not part of the JSON
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(path, number, f"not UTF-8 text (byte 0x{raw[exc.start]:02x} at column "
                                              f"{exc.start + 1}); save the file as UTF-8") from None
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except ValueError as exc:
                raise DataError(path, number, f"not JSON ({exc.msg} at column {exc.colno})") from None
            try:
                record = _record_of(value)
            except ValueError as exc:
                raise DataError(path, number, str(exc)) from None
            if max_length is not None:
                length = len(encode(tokenizer, record)["input_ids"])
                if length > max_length:
                    raise DataError(path, number, f"too long: {length} tokens in the chat template, "
                                                  f"more than max_length {max_length}")
            records.append(record)
    if not records:
        raise DataError(path, None, "no example in the file (every line is blank)")
    return records


def split_off(items: Sequence[Any], fraction: float, seed: int = 0) -> tuple[list[Any], list[Any]]:
    """Split ``items`` into (train, eval), holding out ``fraction`` of them (at least one), seeded.

    Example:
        >>> train, held = split_off(list(range(10)), 0.2, seed=0)
        >>> len(train), len(held), sorted(train + held) == list(range(10))
        (8, 2, True)
    """
    number_in("the eval fraction", fraction, 0, 1, low_open=True)
    if len(items) < 2:
        raise ValueError(f"need at least 2 examples to hold some out, got {len(items)}")
    n_eval = min(len(items) - 1, max(1, round(fraction * len(items))))
    held = set(random.Random(seed).sample(range(len(items)), n_eval))
    return [x for i, x in enumerate(items) if i not in held], [x for i, x in enumerate(items) if i in held]
