"""Static flags: what in a student's code deserves the instructor's look.

Inside one Python interpreter a determined submission can always reach the grader's code that
runs next to it (through ``get_ipython()``, ``builtins``, ``gc``, frames, a class with an
``__eq__`` that is always true, ...). The sandbox stops it from reaching anything else, the guard
(:mod:`lessonlib.authoring.kernel_guard`) undoes the simple tricks, and these flags name the
submissions whose own code uses such tools, so that the instructor reads them. Honest answers to
the course's exercises raise none (a test checks the solutions).

Categories: ``ipython`` (``get_ipython``, magics), ``builtins``, ``dunder`` (special methods and
attributes other than the ordinary ones such as ``__init__``), ``introspection`` (frames, ``gc``,
``inspect``, ``exec``, ``globals()``), ``monkeypatch`` (assigning to an attribute of an imported
module or class), ``files`` (``open``, ``os``, ``pathlib``, absolute paths), ``proc`` (``/proc``),
``processes`` (``subprocess``, signals, threads), ``network`` (``socket``, ``urllib``), ``guard``
(the grader's own names).

Example:
    >>> code_flags("class X(int):\\n    def __eq__(self, other):\\n        return True")
    ['dunder(__eq__)']
    >>> code_flags("def f(x):\\n    return abs(x) ** 0.5")
    []
"""

from __future__ import annotations

import ast

ORDINARY_DUNDERS = frozenset({
    "__init__", "__repr__", "__str__", "__name__", "__main__", "__doc__", "__len__", "__iter__", "__next__",
    "__getitem__", "__setitem__", "__contains__", "__call__", "__enter__", "__exit__", "__future__", "__all__",
    "__version__", "__post_init__", "__slots__", "__annotations__", "__qualname__",
})
"""Special names an ordinary answer may use (a class with ``__init__`` and ``__repr__``, ``super().__init__()``)."""

MODULES = {
    "builtins": "builtins", "importlib": "builtins",
    "IPython": "ipython", "ipykernel": "ipython",
    "gc": "introspection", "inspect": "introspection", "ctypes": "introspection", "dis": "introspection",
    "linecache": "introspection", "marshal": "introspection", "pickle": "introspection", "traceback": "introspection",
    "types": "introspection", "code": "introspection", "codeop": "introspection",
    "os": "files", "io": "files", "pathlib": "files", "shutil": "files", "glob": "files", "tempfile": "files",
    "fileinput": "files", "sqlite3": "files", "zipfile": "files", "tarfile": "files",
    "subprocess": "processes", "signal": "processes", "multiprocessing": "processes", "threading": "processes",
    "_thread": "processes", "concurrent": "processes", "pty": "processes", "resource": "processes",
    "atexit": "processes", "sched": "processes",
    "socket": "network", "urllib": "network", "http": "network", "requests": "network", "ssl": "network",
}
"""Modules whose import (or use by name) raises a flag, with its category."""

NAMES = {
    "get_ipython": "ipython", "__IPYTHON__": "ipython", "__builtins__": "builtins", "__import__": "builtins",
    "exec": "introspection", "eval": "introspection", "compile": "introspection", "globals": "introspection",
    "locals": "introspection", "vars": "introspection", "wraps": "introspection", "update_wrapper": "introspection",
    "open": "files", "Path": "files", "breakpoint": "introspection", "exit": "processes", "quit": "processes",
    "__lessonlib_guard__": "guard",
}
"""Built-in or commonly imported names that raise a flag when used."""

ATTRIBUTES = {
    "_getframe": "introspection", "f_back": "introspection", "f_globals": "introspection", "f_locals": "introspection",
    "f_code": "introspection", "co_consts": "introspection", "tb_frame": "introspection", "settrace": "introspection",
    "setprofile": "introspection", "addaudithook": "introspection",
    "system": "processes", "popen": "processes", "kill": "processes", "killpg": "processes", "fork": "processes",
    "setsid": "processes", "execv": "processes", "execve": "processes", "spawnv": "processes", "_exit": "processes",
    "wraps": "introspection", "update_wrapper": "introspection",
    "lessonlib_guard": "guard", "__lessonlib_guard__": "guard",
}
"""Attribute names that raise a flag wherever they appear (``sys._getframe``, ``os.kill``, ...)."""


def _parse(code: str) -> ast.AST | None:
    try:
        return ast.parse(code)
    except SyntaxError:
        pass
    try:  # IPython syntax (magics, !shell): read it as the kernel would
        from IPython.core.inputtransformer2 import TransformerManager

        return ast.parse(TransformerManager().transform_cell(code))
    except (SyntaxError, ImportError, ValueError):
        return None


def _root(node: ast.AST) -> str | None:
    while isinstance(node, (ast.Attribute, ast.Subscript, ast.Call)):
        node = node.func if isinstance(node, ast.Call) else node.value
    return node.id if isinstance(node, ast.Name) else None


def code_flags(code: str, modules: frozenset[str] | set[str] = frozenset()) -> list[str]:
    """Return the flags of one cell of student code, each as ``category(first thing found)``, sorted.

    ``modules``: names bound to modules or classes by the course's own cells (``torch``, ``nn``,
    ...); assigning to an attribute of one of them is a ``monkeypatch``.

    Example:
        >>> code_flags("import torch\\ntorch.allclose = lambda *a, **k: True")
        ['monkeypatch(torch.allclose)']
        >>> code_flags("x = open('/proc/1/cmdline').read()")
        ['files(open)', 'proc(/proc/1/cmdline)']
    """
    tree = _parse(code)
    if tree is None:
        return ["unreadable(not Python)"] if code.strip() else []
    found: dict[str, str] = {}

    def flag(category: str, what: str) -> None:
        found.setdefault(category, what[:60])

    imported = set(modules)
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            for name in names:
                top = name.split(".")[0]
                if top in MODULES:
                    flag(MODULES[top], name)
            for alias in node.names:
                imported.add((alias.asname or alias.name).split(".")[0])
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            if node.id in NAMES:
                flag(NAMES[node.id], node.id)
            elif node.id in MODULES:
                flag(MODULES[node.id], node.id)
            if node.id.startswith("__") and node.id.endswith("__") and node.id not in ORDINARY_DUNDERS:
                flag("dunder", node.id)
        elif isinstance(node, ast.Attribute):
            if node.attr == "modules" and isinstance(node.value, ast.Name) and node.value.id == "sys":
                flag("introspection", "sys.modules")
            if node.attr in ATTRIBUTES:
                flag(ATTRIBUTES[node.attr], node.attr)
            if node.attr.startswith("__") and node.attr.endswith("__") and node.attr not in ORDINARY_DUNDERS:
                flag("dunder", node.attr)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            if node.name in NAMES:
                flag(NAMES[node.name], node.name)
            if node.name.startswith("__") and node.name.endswith("__") and node.name not in ORDINARY_DUNDERS:
                flag("dunder", node.name)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            text = node.value
            if "/proc" in text:
                flag("proc", text)
            elif text.startswith("/") and len(text) > 1:
                flag("files", text)
            if "__" in text and any(part and part not in {n.strip("_") for n in ORDINARY_DUNDERS}
                                    for part in text.split("__")[1::2]):
                flag("dunder", text)
            if "lessonlib_guard" in text:
                flag("guard", text)
        elif isinstance(node, ast.JoinedStr) and any(isinstance(v, ast.Constant) and "/proc" in str(v.value)
                                                     for v in node.values):
            flag("proc", "/proc")
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("setattr", "delattr")
                and node.args and _root(node.args[0]) in imported | {"builtins"}):
            flag("monkeypatch", f"{node.func.id}({ast.unparse(node.args[0])}, ...)")
        if isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Delete)):
            targets = node.targets if isinstance(node, (ast.Assign, ast.Delete)) else [node.target]
            for target in targets:
                for part in ast.walk(target):
                    if isinstance(part, ast.Attribute) and _root(part) in imported | {"builtins"}:
                        flag("monkeypatch", ast.unparse(part))
    return [f"{category}({what})" for category, what in sorted(found.items())]


def cell_flags(cells: list[str], modules: frozenset[str] | set[str] = frozenset()) -> list[str]:
    """Return the flags of several cells together: each category once, with its first finding.

    Example:
        >>> cell_flags(["import os", "os.kill(1, 9)", "x = 1"])
        ['files(os)', 'processes(kill)']
    """
    merged: dict[str, str] = {}
    for code in cells:
        for item in code_flags(code, modules):
            merged.setdefault(item.split("(", 1)[0], item)
    return sorted(merged.values())
