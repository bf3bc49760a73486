"""The grader's code inside a submission's kernel: it runs the course's cells and tests, guarded.

This file is sent to the kernel as text (the sandbox does not show :mod:`lessonlib.authoring`)
and executed before any of the student's code. :func:`make_guard` imports what the course's
cells import, takes a snapshot of what the tests rely on, and returns the *guard*: the only way
the grader runs its own code (given cells and tests) in that kernel. The grader calls it through
a ``user_expressions`` request, so the code never passes through IPython's input or AST
transformers and never enters ``In[]`` or the history. Before each test the guard puts back:

- the ``builtins`` (``abs``, ``int``, ``isinstance``, ...) and the kernel namespace's ``__builtins__``;
- IPython's input transformers, AST transformers, input transformer manager and event callbacks;
- the functions, classes and submodules of every module the course's cells import (``torch.allclose``,
  ``torch.Tensor.__eq__``, ``math.isclose``, ...) and those modules in ``sys.modules``;
- the names that the course's cells bound by ``import``, ``def`` or ``class`` (``torch``, ``nn``, helpers);

then checks that each numeric prediction of the question is a plain ``int`` or ``float`` (a
subclass with an ``==`` that is always true gets nothing), runs the test, and checks again that
none of the above changed while it ran. Whatever it had to put back, or found changed, is
reported ("tampered"); a change during a test fails the test.

Its answer is hex text with a keyed hash (BLAKE2) over the request and the answer, with a key
that exists only in this closure and in the grader: a replaced guard cannot claim a pass
without digging the key out of the interpreter, which the grader's static flags point at.
Inside one interpreter nothing is absolute; the sandbox around the kernel is what protects files,
processes and the network.

Example:
    >>> guard = make_guard("00" * 16, ["import math"], {"q1": {"x": "int"}}, None, {})
    >>> code = "import math\\nx = 3\\nassert math.isclose(x, 3.0)"
    >>> outcome(guard("n1", "tests", code, "q1", []), "00" * 16, "n1", "tests", code)
    (None, [])
"""

from __future__ import annotations

from typing import Any, Callable


def make_guard(key_hex: str, imports: list[str], predictions: dict[str, dict[str, str]], shell: Any,
               user_ns: dict | None = None) -> Any:
    """Return the guard function for a kernel (see the module docstring).

    ``imports``: the import statements of the course's cells, run first so that their modules are
    snapshot before any student code; ``predictions``: ``{question: {name: "int" or "float"}}``;
    ``shell``: the IPython shell (None outside a kernel); ``user_ns``: the namespace the cells run
    in (the shell's by default).
    """
    import builtins
    import os
    import sys
    import types
    from _blake2 import blake2b

    import warnings

    ns = shell.user_ns if user_ns is None else user_ns
    namespace_builtins = ns.setdefault("__builtins__", builtins)
    # every builtin as it is now, before any student code, except those the kernel itself swaps in
    # and out around each request (IPython's get_ipython, exit and quit; ipykernel's input)
    trap = set(getattr(getattr(shell, "builtin_trap", None), "auto_builtins", {}) or {}) | {"input"}
    real = {name: value for name, value in builtins.__dict__.items() if name not in trap}
    _exec, _compile, _type, _isinstance, _repr, _str = exec, compile, type, isinstance, repr, str
    _dict, _list, _sorted, _len, _vars, _setattr, _delattr = dict, list, sorted, len, vars, setattr, delattr
    _callable, _id, _BaseException = callable, id, BaseException
    ModuleType = types.ModuleType
    _modules = sys.modules
    key = bytes.fromhex(key_hex)
    library = tuple({os.path.realpath(p) + os.sep for p in (sys.prefix, sys.base_prefix)})
    HEAP_TYPE, IMMUTABLE_TYPE = 1 << 9, 1 << 8  # type flags: written at run time / frozen

    scratch: dict = {}
    for statement in imports:
        try:
            _exec(_compile(statement, "<grader>", "exec"), scratch)
        except _BaseException:  # a missing optional library: the test that needs it will say so
            pass

    def watched(value: Any) -> bool:
        return _isinstance(value, (_type, ModuleType)) or _callable(value)

    def snapshot() -> tuple[dict, dict]:
        """The functions, classes and submodules of the modules the course imports, and those classes' methods."""
        roots: dict[int, Any] = {}  # (builtins are kept whole above)
        for value in scratch.values():
            module = value if _isinstance(value, ModuleType) else _modules.get(getattr(value, "__module__", None) or "")
            if module is not None:
                roots[_id(module)] = module
        modules = _dict(roots)
        for module in roots.values():  # one level down: torch.linalg, torch.nn.init, ...
            for value in _list(_vars(module).values()):
                if _isinstance(value, ModuleType) and value.__name__.startswith(module.__name__ + ".") and value is not builtins:
                    modules[_id(value)] = value
        by_name = {m.__name__: (m, {k: v for k, v in _vars(m).items() if watched(v)}) for m in modules.values()}
        classes: dict[int, tuple[type, dict]] = {}
        for _module, members in by_name.values():
            for value in members.values():
                if _isinstance(value, _type) and _id(value) not in classes:
                    flags = value.__flags__
                    if not flags & HEAP_TYPE or flags & IMMUTABLE_TYPE:
                        continue  # int, float, ... cannot be changed at all
                    classes[_id(value)] = (value, {k: v for k, v in _vars(value).items() if watched(v)})
        return by_name, classes

    with warnings.catch_warnings():  # a look at every member wakes some deprecation notices
        warnings.simplefilter("ignore")
        module_snap, classes = snapshot()

    def ipython_state() -> dict[str, Any]:
        if shell is None:
            return {}
        manager = shell.input_transformer_manager
        return {"input transformers": (shell.input_transformers_cleanup, _list(shell.input_transformers_cleanup),
                                       shell.input_transformers_post, _list(shell.input_transformers_post),
                                       manager, _list(manager.cleanup_transforms), _list(manager.line_transforms),
                                       _list(manager.token_transformers)),
                "AST transformers": (shell.ast_transformers, _list(shell.ast_transformers)),
                "event callbacks": {name: _list(cbs) for name, cbs in shell.events.callbacks.items()}}

    ipython = ipython_state()
    given: dict[str, Any] = {}  # names bound by the course's import / def / class lines

    def same(items: list, saved: list) -> bool:
        return _len(items) == _len(saved) and all(a is b for a, b in zip(items, saved))

    def library_wrapper(new: Any, old: Any) -> bool:
        """A library's decorator put on the original (torch._dynamo wraps torch.manual_seed when imported)."""
        code = getattr(new, "__code__", None)
        if code is None or not code.co_filename.startswith(library):
            return False
        for _depth in range(8):
            new = getattr(new, "__wrapped__", None)
            if new is old:
                return True
            if new is None:
                return False
        return False

    def restore() -> list[str]:
        """Put everything back; return what had changed.

        A function of the snapshot that a library's own decorator now wraps (torch wraps an
        optimizer's ``step`` on first use, ``torch._dynamo`` wraps ``torch.manual_seed`` when
        imported) is accepted as the new original.
        """
        changed: list[str] = []
        current = builtins.__dict__
        for name, value in real.items():
            if current.get(name, real) is not value:
                changed.append(f"builtins.{name}")
                current[name] = value
        if ns.get("__builtins__", namespace_builtins) is not namespace_builtins:
            changed.append("__builtins__")
            ns["__builtins__"] = namespace_builtins

        def restore_members(space: dict, members: dict, label: str, put: Callable[[str, Any], None]) -> None:
            for attr, value in _list(members.items()):
                if space.get(attr, members) is not value:
                    if library_wrapper(space.get(attr), value):
                        members[attr] = space[attr]
                        continue
                    changed.append(f"{label}.{attr}")
                    put(attr, value)

        for name, (module, members) in module_snap.items():
            if _modules.get(name) is not module:
                changed.append(f"sys.modules[{name!r}]")
                _modules[name] = module
            space = _vars(module)
            restore_members(space, members, name, space.__setitem__)
        for cls, members in classes.values():
            space = _vars(cls)
            restore_members(space, members, f"{cls.__module__}.{cls.__qualname__}",
                            lambda attr, value, cls=cls: _setattr(cls, attr, value))
            for attr in _list(space):
                if attr not in members and attr.startswith("__") and attr.endswith("__") and watched(space[attr]):
                    changed.append(f"{cls.__module__}.{cls.__qualname__}.{attr}")
                    _delattr(cls, attr)
        if shell is not None:
            cleanup, cleanup_items, post, post_items, manager, m_cleanup, m_lines, m_tokens = ipython["input transformers"]
            if (shell.input_transformers_cleanup is not cleanup or not same(cleanup, cleanup_items)
                    or shell.input_transformers_post is not post or not same(post, post_items)
                    or shell.input_transformer_manager is not manager
                    or not same(manager.cleanup_transforms, m_cleanup) or not same(manager.line_transforms, m_lines)
                    or not same(manager.token_transformers, m_tokens)):
                changed.append("IPython input transformers")
                cleanup[:], post[:] = cleanup_items, post_items
                shell.input_transformers_cleanup, shell.input_transformers_post = cleanup, post
                shell.input_transformer_manager = manager
                manager.cleanup_transforms[:], manager.line_transforms[:] = m_cleanup, m_lines
                manager.token_transformers[:] = m_tokens
            ast_list, ast_items = ipython["AST transformers"]
            if shell.ast_transformers is not ast_list or not same(ast_list, ast_items):
                changed.append("IPython AST transformers")
                ast_list[:] = ast_items
                shell.ast_transformers = ast_list
            callbacks = shell.events.callbacks
            saved_callbacks = ipython["event callbacks"]
            if _sorted(callbacks) != _sorted(saved_callbacks) or not all(
                    same(callbacks[name], saved_callbacks[name]) for name in saved_callbacks):
                changed.append("IPython event callbacks")
                for name, cbs in ipython["event callbacks"].items():
                    callbacks[name] = _list(cbs)
        for name, value in given.items():
            if ns.get(name, given) is not value:
                changed.append(f"name {name}")
                ns[name] = value
        return changed

    def check_predictions(question: str | None) -> tuple[str, str] | None:
        for name, kind in (predictions.get(question or "") or {}).items():
            if name not in ns:
                continue  # the test itself raises NameError
            value = ns[name]
            exact = _type(value)
            if not (exact is int or (kind == "float" and exact is float)):
                wanted = "a whole number (int)" if kind == "int" else "a number (int or float)"
                return ("TypeError", f"{name} must be {wanted}, not {_type(value).__name__}"[:200])
        return None

    def run(code: str) -> tuple[str, str] | None:
        try:
            _exec(_compile(code, "<course>", "exec"), ns)
        except _BaseException as exc:
            name = _type(exc).__name__
            try:
                text = _str(exc)
            except _BaseException:
                text = ""
            return (_str(name)[:100], _str(text)[:1000])
        return None

    def guard(nonce: str, kind: str, code: str, question: str | None, bound: list[str]) -> str:
        tampered = restore()
        if kind == "tests":
            result = check_predictions(question) or run(code)
            during = restore()
            if during:
                tampered += during
                result = result or ("Tampered", "the test's own functions were changed while it ran")
        else:  # a cell of the course
            result = run(code)
            restore()  # (the course's own cells are trusted: nothing to report)
        for name in bound:  # remember what the course's code bound by import, def or class
            if name in ns:
                given[name] = ns[name]
        payload = _repr((result, _sorted(set(tampered))[:20])).encode()
        digest = blake2b(b"\0".join([nonce.encode(), kind.encode(), code.encode(), payload]), key=key).hexdigest()
        return payload.hex() + ":" + digest

    return guard


def outcome(answer: str, key_hex: str, nonce: str, kind: str, code: str) -> tuple[tuple[str, str] | None, list[str]]:
    """Check and decode a guard's answer (on the grader's side); raise ValueError if it is not genuine.

    Returns the error of the code (``(name, message)`` or None) and what had been tampered with.

    Example:
        >>> outcome("00:00", "00" * 16, "n", "tests", "pass")
        Traceback (most recent call last):
        ...
        ValueError: the guard's answer is not genuine
    """
    import ast
    from hashlib import blake2b

    try:
        payload_hex, digest = answer.split(":")
        payload = bytes.fromhex(payload_hex)
    except ValueError:
        raise ValueError("the guard's answer is not genuine") from None
    expected = blake2b(b"\0".join([nonce.encode(), kind.encode(), code.encode(), payload]), key=bytes.fromhex(key_hex))
    if expected.hexdigest() != digest:
        raise ValueError("the guard's answer is not genuine")
    result, tampered = ast.literal_eval(payload.decode())
    return (tuple(result) if result else None), list(tampered)
