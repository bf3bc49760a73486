"""Tests of lessonlib.authoring.flags: what in a student's code points the instructor at it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lessonlib.authoring.exercises import marker
from lessonlib.authoring.flags import cell_flags, code_flags

REPO = Path(__file__).resolve().parent.parent
SOLUTIONS = sorted((REPO / "solutions").glob("*.ipynb"))


@pytest.mark.parametrize("path", SOLUTIONS, ids=lambda p: p.name)
def test_honest_answers_raise_no_flag(path):
    nb = json.loads(path.read_text())
    answers = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code" and "answer" in marker(c)]
    assert answers and cell_flags(answers, {"torch", "nn", "math"}) == []


@pytest.mark.parametrize("code, category", [
    ("ip = get_ipython()", "ipython"),
    ("%time x = 1", "ipython"),
    ("import builtins\nbuiltins.abs = lambda x: 0", "builtins"),
    ("__builtins__['abs'] = None", "builtins"),
    ("class A(int):\n    def __eq__(self, other):\n        return True", "dunder"),
    ("X = type('X', (int,), {'__eq__': lambda s, o: True})", "dunder"),
    ("open('/proc/1/cmdline').read()", "proc"),
    ("p = f'/proc/{1}/cmdline'", "proc"),
    ("import os\nos.listdir('.')", "files"),
    ("from pathlib import Path", "files"),
    ("text = open('x.txt').read()", "files"),
    ("import subprocess", "processes"),
    ("import os\nos.kill(1, 9)", "processes"),
    ("import threading", "processes"),
    ("import socket", "network"),
    ("import gc\ngc.get_objects()", "introspection"),
    ("import sys\nf = sys._getframe(1)", "introspection"),
    ("import sys\nsys.modules['torch'] = None", "introspection"),
    ("exec('x = 1')", "introspection"),
    ("import functools\nf = functools.wraps(print)(lambda: 0)", "introspection"),
    ("torch.allclose = lambda *a, **k: True", "monkeypatch"),
    ("setattr(torch, 'allclose', None)", "monkeypatch"),
    ("__lessonlib_guard__ = None", "guard"),
    ("def __lessonlib_guard__(*args):\n    return ''", "guard"),
])
def test_each_kind_of_reach_is_flagged(code, category):
    found = code_flags(code, {"torch"})
    assert any(f.startswith(category + "(") for f in found), found


def test_ordinary_code_is_not_flagged():
    code = ("import math\n"
            "class Layer(nn.Module):\n"
            "    def __init__(self, n):\n"
            "        super().__init__()\n"
            "        self.w = nn.Parameter(torch.zeros(n))\n"
            "    def __repr__(self):\n"
            "        return f'Layer({len(self.w)})'\n"
            "def share(a, b, r):\n"
            "    return r * (a + b) / (a * b)\n"
            "for name, module in list(model.named_modules()):\n"
            "    setattr(model.get_submodule(name), 'x', 1)\n"
            "print(f'{share(8, 8, 2):.2f}', math.sqrt(2), abs(-1), 7 / 2)\n")
    assert code_flags(code, {"torch", "nn"}) == []


def test_flags_name_the_first_thing_found_once_per_category():
    assert cell_flags(["import os", "import os\nos.system('ls')", "import pathlib"]) == \
        ["files(os)", "processes(system)"]
    assert code_flags("this is not python (") == ["unreadable(not Python)"]
