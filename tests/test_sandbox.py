"""Tests of lessonlib.authoring.sandbox: what a sandboxed kernel can see and do, tried as an attacker would.

One kernel is started in the sandbox and probed from inside (file system, /proc, network,
writes, signals, limits); the probes run as student code would. Without bubblewrap (not Linux,
not installed, not permitted) these tests skip and say why; the command-line refusal is tested
in test_grading.py.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lessonlib.authoring import sandbox
from lessonlib.authoring.sandbox import Kernel, KernelDied, Limits

REPO = Path(__file__).resolve().parent.parent
PROBLEM = sandbox.sandbox_problem()
needs_sandbox = pytest.mark.skipif(PROBLEM is not None, reason=f"no sandbox on this machine: {PROBLEM}")
LIMITS = Limits(memory_bytes=3 * 2**30, processes=64, file_bytes=8 * 2**20, tmp_bytes=64 * 2**20)
SLOT = 7  # user ids of their own: the grading tests, which may run at the same time, use slots 0 and 1


def evaluate(kernel: Kernel, code: str, expression: str, seconds: float = 60):
    """Run code in the kernel, then return the value of an expression (a Python literal)."""
    reply = kernel.execute(code, time.monotonic() + seconds, user_expressions={"r": expression})
    assert reply["status"] == "ok", (reply.get("ename"), reply.get("evalue"))
    value = reply["user_expressions"]["r"]
    assert value["status"] == "ok", value
    return ast.literal_eval(value["data"]["text/plain"])


@pytest.fixture(scope="module")
def kernel(tmp_path_factory):
    if PROBLEM is not None:
        pytest.skip(f"no sandbox on this machine: {PROBLEM}")
    with Kernel(tmp_path_factory.mktemp("sandbox"), LIMITS, sandboxed=True, slot=SLOT) as k:
        k.start(time.monotonic() + 60)
        yield k


def test_the_command_line_binds_nothing_of_the_repository_but_the_lessons():
    args = sandbox.bwrap_args(Path("/tmp/x/kernel"), Limits())
    binds = [args[i + 1] for i, a in enumerate(args) if a in ("--ro-bind", "--bind")]
    package, results = REPO / "lessonlib", REPO / "benchmarks" / "results"
    for path in map(Path, binds):
        allowed = path in (package, results) or path.is_relative_to(REPO / ".venv")
        assert not (path == REPO or (REPO in path.parents and not allowed))
        assert "solutions" not in path.parts and "exercises" not in path.parts
    assert args[args.index(str(package / "authoring")) - 1] == "--tmpfs"
    assert "--unshare-net" in args and "--unshare-pid" in args and "--die-with-parent" in args
    assert "/" not in binds  # no view of the whole file system


def test_sandbox_problem_says_why_without_bubblewrap(monkeypatch):
    monkeypatch.setattr(sandbox.shutil, "which", lambda name: None)
    assert sandbox.sandbox_problem.__wrapped__() == "bubblewrap (bwrap) is not installed"
    monkeypatch.setattr(sandbox.sys, "platform", "darwin")
    assert "needs Linux" in sandbox.sandbox_problem.__wrapped__()


@needs_sandbox
def test_it_runs_as_an_unprivileged_user_with_its_own_processes_only(kernel):
    uid, gid, groups, pids, caps = evaluate(
        kernel, "import os\npids = sorted(int(p) for p in os.listdir('/proc') if p.isdigit())\n"
                "caps = [l for l in open('/proc/self/status') if l.startswith(('CapEff', 'CapPrm', 'NoNewPrivs'))]",
        "(os.getuid(), os.getgid(), os.getgroups(), pids, caps)")
    expected = sandbox.SANDBOX_UID_BASE + SLOT if os.geteuid() == 0 else sandbox.NOBODY
    assert (uid, gid, groups) == (expected, expected, [])
    assert len(pids) <= 3 and os.getpid() not in pids  # bwrap's init and the kernel, not the grader
    assert "CapEff:\t0000000000000000\n" in caps and "NoNewPrivs:\t1\n" in caps


@needs_sandbox
def test_no_solution_anywhere_on_its_file_system(kernel):
    """Walk everything it can read: no notebook, no solution marker, no repository but the lessons."""
    code = """
import os
notebooks, marked, unreadable = [], [], 0
for top, dirs, files in os.walk('/'):
    dirs[:] = [d for d in dirs if os.path.join(top, d) not in ('/proc', '/sys', '/dev')]
    for name in files:
        path = os.path.join(top, name)
        if name.endswith('.ipynb'):
            notebooks.append(path)
        if name.endswith(('.py', '.ipynb', '.json', '.md', '.txt')):
            try:
                if '### BEGIN SOLUTION' in open(path, errors='ignore').read(2_000_000):
                    marked.append(path)
            except OSError:
                unreadable += 1
"""
    notebooks, marked, tops, repo = evaluate(kernel, code, f"(notebooks, marked, sorted(os.listdir('/')), "
                                                           f"sorted(os.listdir({str(REPO)!r})))", 300)
    assert notebooks == [] and marked == []
    readable = sandbox.readable_paths()
    # lessonlib, benchmarks (holding only results/) and .venv when it lies there
    assert repo == sorted({p.relative_to(REPO).parts[0] for p in readable if p.is_relative_to(REPO)})
    system = {"usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32", "etc", "proc", "dev", "tmp", "run"}
    assert set(tops) <= system | {p.parts[1] for p in readable}


@needs_sandbox
def test_it_cannot_write_outside_its_tmp_reach_the_network_or_signal_the_grader(kernel):
    code = f"""
import errno, os, socket
results = {{}}
for path in ({str(REPO / 'lessonlib' / 'x.txt')!r}, '/usr/x', {str(Path(sys.prefix) / 'x')!r}, {str(REPO / 'x')!r},
             '/etc/passwd', '/x'):
    try:
        open(path, 'w').write('x')
        results[path] = 'written'
    except OSError as exc:
        results[path] = errno.errorcode[exc.errno]
try:
    socket.create_connection(('1.1.1.1', 53), timeout=3)
    results['net'] = 'connected'
except OSError as exc:
    results['net'] = type(exc).__name__
try:
    os.kill({os.getpid()}, 0)
    results['grader'] = 'reachable'
except OSError as exc:
    results['grader'] = type(exc).__name__
open('/tmp/mine.txt', 'w').write('mine')
results['tmp'] = open('/tmp/mine.txt').read()
results['home'] = os.path.expanduser('~')
"""
    results = evaluate(kernel, code, "results")
    assert all(v in ("EROFS", "EACCES", "EPERM", "ENOENT") for k, v in results.items()
               if k.startswith("/")), results
    assert results["net"] != "connected" and results["grader"] == "ProcessLookupError"
    assert results["tmp"] == "mine" and results["home"] == sandbox.HOME
    kernel_dir = kernel.folder / "kernel"
    assert [p.name for p in kernel_dir.iterdir() if not p.name.startswith("k-")] == ["kernel.json"]


@needs_sandbox
def test_limits_hold(kernel):
    code = """
import resource, threading
limits = {name: resource.getrlimit(getattr(resource, name))[0] for name in ('RLIMIT_AS', 'RLIMIT_NPROC', 'RLIMIT_FSIZE')}
try:
    block = bytearray(4 * 2**30)
    memory = 'allocated'
except MemoryError:
    memory = 'MemoryError'
try:
    with open('/tmp/big', 'wb') as f:
        f.write(b'x' * (16 * 2**20))
    big = 'written'
except OSError as exc:
    big = type(exc).__name__
import os
os.remove('/tmp/big') if os.path.exists('/tmp/big') else None
threads = []
try:
    for _ in range(500):
        t = threading.Thread(target=threading.Event().wait, daemon=True)
        t.start()
        threads.append(t)
except RuntimeError:
    pass
started = len(threads)
"""
    limits, memory, big, started = evaluate(kernel, code, "(limits, memory, big, started)")
    assert limits == {"RLIMIT_AS": LIMITS.memory_bytes, "RLIMIT_NPROC": LIMITS.processes,
                      "RLIMIT_FSIZE": LIMITS.file_bytes}
    assert memory == "MemoryError" and big == "OSError"
    assert started < LIMITS.processes


@needs_sandbox
def test_everything_it_started_ends_with_it(tmp_path):
    marker = f"lessonlib-sandbox-test-{os.getpid()}"
    with Kernel(tmp_path, LIMITS, sandboxed=True, slot=SLOT + 1) as k:
        k.start(time.monotonic() + 60)
        code = (f"import subprocess, sys\nsubprocess.Popen(['setsid', sys.executable, '-c', "
                f"'import time; time.sleep(300)  # {marker}'], start_new_session=True)\n"
                "import time; time.sleep(0.5)")
        k.execute(code, time.monotonic() + 30)
        assert _processes_with(marker), "the test should see the process while the kernel runs"
    deadline = time.monotonic() + 10
    while _processes_with(marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _processes_with(marker) == []


def _processes_with(text: str) -> list[str]:
    found = []
    for path in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if text.encode() in path.read_bytes() and int(path.parent.name) != os.getpid():
                found.append(path.parent.name)
        except OSError:
            continue
    return found


@needs_sandbox
def test_a_kernel_that_exits_is_reported_dead(tmp_path):
    with Kernel(tmp_path, LIMITS, sandboxed=True, slot=SLOT + 2) as k:
        k.start(time.monotonic() + 60)
        with pytest.raises(KernelDied):
            k.execute("import os; os._exit(3)", time.monotonic() + 30)


def test_unreadable_files_are_found(tmp_path):
    folder = tmp_path / "cache"
    folder.mkdir()
    folder.chmod(0o755)
    (folder / "config.json").write_text("{}")
    (folder / "config.json").chmod(0o644)
    (folder / "model.safetensors").write_text("x")
    (folder / "model.safetensors").chmod(0o600)
    assert sandbox.unreadable(folder) == [folder / "model.safetensors"]


def test_the_launcher_applies_the_limits_without_a_sandbox(tmp_path):
    """The same launcher runs unsandboxed kernels (--no-sandbox): the limits hold there too."""
    command = sandbox.launch_command(tmp_path, tmp_path / "k.json", LIMITS, sandboxed=False)
    probe = command[: command.index("ipykernel_launcher") - 1] + [
        "-c", "import resource; print(resource.getrlimit(resource.RLIMIT_AS)[0])"]
    out = subprocess.run(probe, capture_output=True, text=True, check=True).stdout
    assert int(out) == LIMITS.memory_bytes
    assert sys.executable in command
