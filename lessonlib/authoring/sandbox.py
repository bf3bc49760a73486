"""A Jupyter kernel for one student's submission, confined by bubblewrap, and a small client for it.

The grader runs untrusted code: a submission may try to read the solutions, rewrite other
files, signal the grader or leave processes behind. :class:`Kernel` starts an IPython kernel in
a sandbox (`bubblewrap <https://github.com/containers/bubblewrap>`_, no container daemon) that
sees only what a kernel needs, and talks to it over the ``ipc`` transport (Unix sockets in one
folder shared with the sandbox):

- **Its own namespaces**: PID (it sees only its own processes; when the kernel ends, everything it
  started ends with it, ``setsid`` or not), network (no network at all), IPC and UTS.
- **An unprivileged user**: as root the kernel drops to its own user id (:data:`SANDBOX_UID_BASE`
  plus the job slot, an id that owns no file; one per concurrent job, so that one submission's
  process count never limits another's), with no capabilities and ``no_new_privs``. As an
  ordinary user, bubblewrap maps that user to uid 65534 in a user namespace.
- **A read-only view of the course's environment, and nothing else**: ``/usr``, a few files of
  ``/etc``, the Python interpreter and the virtual environment, the lesson half of
  ``lessonlib`` (not :mod:`lessonlib.authoring`), the converted base model and matplotlib's
  font list. Not the repository (so not ``solutions/``), not the submissions, not the grader's
  output or temporary files, not the home folder.
- **Private writable space**: ``/tmp`` (the kernel's home, ``IPYTHONDIR`` and ``MPLCONFIGDIR``
  live there) and ``/dev/shm``, size-capped tmpfs that vanish with the sandbox.
- **Limits** (:class:`Limits`), set inside the sandbox before the kernel starts: address space
  (memory), processes and threads, the size of any file written; stdout and stderr of the kernel
  go nowhere, and the client never reads the kernel's output messages, so printing costs nothing.

:func:`sandbox_problem` says why no sandbox can be had on this machine (not Linux, no bwrap, or
bwrap not permitted), or ``None``.

Example:
    >>> Limits().memory_bytes // 2**30
    4
"""

from __future__ import annotations

import functools
import json
import os
import queue
import secrets
import shutil
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SANDBOX_UID_BASE = 2_000_000_000
"""First user id of sandboxed kernels when the grader runs as root (job slot ``k`` uses base + k).

Far above the ranges of login users, system users and subordinate ids, so it owns no file and
no other process anywhere."""

NOBODY = 65534
"""The user id a kernel has inside its sandbox when the grader is not root."""

ETC_FILES = ("passwd", "group", "nsswitch.conf", "hosts", "host.conf", "ld.so.cache", "ld.so.conf",
             "ld.so.conf.d", "localtime", "mime.types")
"""The only parts of ``/etc`` a kernel sees (dynamic linking, user names, time zone, file types)."""

TOP_LEVEL = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")
"""Folders of ``/`` that are links into ``/usr`` on current distributions (bound when they are not)."""


@dataclass(frozen=True)
class Limits:
    """What one sandboxed kernel may use.

    - ``memory_bytes``: address space of every process in the sandbox (``RLIMIT_AS``). A kernel
      with torch, peft, transformers and bitsandbytes imported maps under 1 GiB; 4 GiB leaves
      room for an exercise's tensors while two jobs cannot exhaust an 8 GiB machine.
    - ``processes``: processes and threads of the sandbox (``RLIMIT_NPROC``, counted for its own
      user id); a kernel needs about 10, so a fork bomb stops at this number.
    - ``file_bytes``: the largest file it may write (``RLIMIT_FSIZE``).
    - ``tmp_bytes``: the size of each private tmpfs (``/tmp`` with the home folder, ``/dev/shm``);
      tmpfs pages are memory, so this caps what files can take.

    Example:
        >>> Limits(memory_bytes=2**31).memory_bytes
        2147483648
    """

    memory_bytes: int = 4 * 2**30
    processes: int = 128
    file_bytes: int = 64 * 2**20
    tmp_bytes: int = 256 * 2**20


class KernelDied(RuntimeError):
    """The kernel process ended (``os._exit``, a crash, out of memory) or never became ready."""


class KernelTimeout(RuntimeError):
    """The kernel did not answer before the deadline."""


# Runs first inside the sandbox, with -I -S: set the limits (they apply to everything started from
# here and cannot be raised again), drop to the sandbox's user when started as root, then become the
# kernel. argv: uid (-1: keep), memory, processes, file size, then the kernel's command.
LAUNCHER = """\
import os, resource, sys
uid, memory, processes, file_size = (int(a) for a in sys.argv[1:5])
for limit, value in ((resource.RLIMIT_AS, memory), (resource.RLIMIT_NPROC, processes),
                     (resource.RLIMIT_FSIZE, file_size), (resource.RLIMIT_CORE, 0)):
    resource.setrlimit(limit, (value, value))
if uid >= 0:
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)
os.execv(sys.argv[5], sys.argv[5:])
"""

HOME = "/tmp/home"
"""The kernel's home folder inside the sandbox (on its private /tmp)."""

INSIDE = "/run/kernel"
"""Where the kernel's connection folder appears inside the sandbox (short: socket paths are limited)."""


def _package_dir() -> Path:
    import lessonlib

    return Path(lessonlib.__file__).resolve().parent


def _model_cache() -> Path | None:
    from lessonlib.models import cache_dir

    path = cache_dir().resolve()
    return path if path.is_dir() else None


def _stored_results() -> Path | None:
    """The course's stored benchmark results (lesson 08 and its exercise plot the sweep from them)."""
    from lessonlib.sweep import results_path

    path = Path(results_path("")).resolve()
    return path if path.is_dir() else None


def _font_list() -> Path | None:
    """matplotlib's font cache of this user, so that a kernel does not rebuild it (seconds) on every start."""
    folders = [os.environ.get("MPLCONFIGDIR"), os.environ.get("XDG_CACHE_HOME") and Path(os.environ["XDG_CACHE_HOME"]) / "matplotlib",
               Path.home() / ".cache" / "matplotlib", Path.home() / ".matplotlib"]
    for folder in folders:
        if folder:
            found = sorted(Path(folder).glob("fontlist-v*.json"))
            if found:
                return found[-1].resolve()
    return None


def readable_paths() -> list[Path]:
    """Return the folders and files a sandboxed kernel may read, besides ``/usr`` and :data:`ETC_FILES`.

    The interpreter's prefix, the virtual environment, the lesson half of ``lessonlib`` (when it
    is not inside the environment already), the converted base model and the stored benchmark
    results (``benchmarks/results``: measured data the lessons plot, no solutions).

    Example:
        >>> import sys
        >>> Path(sys.prefix).resolve() in readable_paths()
        True
    """
    wanted = [Path(sys.base_prefix), Path(sys.prefix), Path(sys.executable).resolve().parent.parent,
              _package_dir(), _model_cache(), _stored_results()]
    found: list[Path] = []
    for path in wanted:
        if path is None:
            continue
        path = path.resolve()
        if path.exists() and path not in found and not any(path.is_relative_to(p) for p in found) \
                and not path.is_relative_to("/usr"):
            found = [p for p in found if not p.is_relative_to(path)] + [path]
    return found


def _dirs_for(path: Path, made: set[Path]) -> list[str]:
    """bwrap arguments that create the folders above ``path`` as world-readable (bwrap makes them 0700)."""
    args: list[str] = []
    for parent in reversed(path.parents):
        if parent == Path("/") or parent in made:
            continue
        made.add(parent)
        args += ["--perms", "0755", "--dir", str(parent)]
    return args


def bwrap_args(shared: Path, limits: Limits, slot: int = 0, *, as_root: bool | None = None) -> list[str]:
    """Return the bubblewrap command line (up to the command it runs) for one sandboxed kernel.

    ``shared`` is the one host folder the kernel may write (its connection file and sockets).

    Example:
        >>> args = bwrap_args(Path("/tmp/grade/kernel"), Limits())
        >>> args[0], "--unshare-net" in args, "--bind" in args
        ('bwrap', True, True)
    """
    as_root = os.geteuid() == 0 if as_root is None else as_root
    args = ["bwrap", "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
            "--die-with-parent", "--new-session"]
    if as_root:  # no user namespace: the launcher drops to a real, unprivileged user id
        args += ["--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    else:
        args += ["--unshare-user", "--uid", str(NOBODY), "--gid", str(NOBODY), "--disable-userns"]
    args += ["--ro-bind", "/usr", "/usr"]
    for name in TOP_LEVEL:
        top = Path("/") / name
        if top.is_symlink():
            args += ["--symlink", os.readlink(top), str(top)]
        elif top.is_dir():
            args += ["--ro-bind", str(top), str(top)]
    for name in ETC_FILES:
        if (Path("/etc") / name).exists():
            args += ["--ro-bind", f"/etc/{name}", f"/etc/{name}"]
    size = str(limits.tmp_bytes)
    args += ["--proc", "/proc", "--dev", "/dev",
             "--perms", "1777", "--size", size, "--tmpfs", "/tmp",
             "--perms", "1777", "--size", size, "--tmpfs", "/dev/shm",
             "--perms", "1777", "--dir", HOME, "--perms", "1777", "--dir", f"{HOME}/.matplotlib"]
    made: set[Path] = {Path("/tmp"), Path(HOME)}
    for path in readable_paths():
        args += _dirs_for(path, made) + ["--ro-bind", str(path), str(path)]
    authoring = _package_dir() / "authoring"
    if authoring.is_dir():
        args += ["--tmpfs", str(authoring)]  # the grader's own code is not the lessons'
    fonts = _font_list()
    if fonts is not None:
        args += ["--ro-bind", str(fonts), f"{HOME}/.matplotlib/{fonts.name}"]
    args += _dirs_for(Path(INSIDE), made) + ["--bind", str(shared), INSIDE, "--chdir", HOME, "--clearenv"]
    for name, value in kernel_env(sandboxed=True).items():
        args += ["--setenv", name, value]
    return args


def kernel_env(sandboxed: bool, home: str = HOME) -> dict[str, str]:
    """Return the environment of a grading kernel: a private home, offline, this machine's thread count.

    Example:
        >>> kernel_env(True)["HF_HUB_OFFLINE"]
        '1'
    """
    env = {"HOME": home, "IPYTHONDIR": f"{home}/.ipython", "MPLCONFIGDIR": f"{home}/.matplotlib",
           "PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8",
           "USER": "student", "LOGNAME": "student", "TMPDIR": "/tmp" if sandboxed else home,
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HOME": f"{home}/.cache/huggingface",
           "PYDEVD_DISABLE_FILE_VALIDATION": "1", "JUPYTER_PLATFORM_DIRS": "1"}
    cache = _model_cache()
    if cache is not None:
        env["LESSONLIB_MODEL_CACHE"] = str(cache)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        if os.environ.get(name):
            env[name] = os.environ[name]
    return env


def launch_command(shared: Path, connection_file: Path, limits: Limits, *, sandboxed: bool,
                   slot: int = 0) -> list[str]:
    """Return the full command that starts one kernel (in a sandbox or not), limits applied.

    Example:
        >>> cmd = launch_command(Path("/tmp/k"), Path("/tmp/k/kernel.json"), Limits(), sandboxed=False)
        >>> cmd[-3:]
        ['ipykernel_launcher', '-f', '/tmp/k/kernel.json']
    """
    as_root = os.geteuid() == 0
    uid = SANDBOX_UID_BASE + slot if sandboxed and as_root else -1
    python = sys.executable
    kernel = [python, "-m", "ipykernel_launcher", "-f", str(connection_file)]
    launcher = [python, "-I", "-S", "-c", LAUNCHER, str(uid), str(limits.memory_bytes), str(limits.processes),
                str(limits.file_bytes)]
    prefix = bwrap_args(shared, limits, slot, as_root=as_root) if sandboxed else []
    return prefix + launcher + kernel


@functools.lru_cache(maxsize=1)
def sandbox_problem() -> str | None:
    """Return why no sandbox can be had here (one sentence), or None when bubblewrap works.

    Tried for real: a sandboxed Python with the grader's limits must start and exit cleanly.

    Example:
        >>> sandbox_problem() is None or isinstance(sandbox_problem(), str)
        True
    """
    if not sys.platform.startswith("linux"):
        return f"the sandbox needs Linux (this is {sys.platform})"
    if shutil.which("bwrap") is None:
        return "bubblewrap (bwrap) is not installed"
    import tempfile

    with tempfile.TemporaryDirectory(prefix="lessonlib-sandbox-") as folder:
        shared = Path(folder) / "kernel"
        shared.mkdir()
        command = launch_command(shared, shared / "none.json", Limits(), sandboxed=True)
        command = command[: command.index("ipykernel_launcher") - 1] + ["-c", "pass"]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"bwrap could not start a sandbox ({type(exc).__name__}: {exc})"
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        return f"bwrap could not start a sandbox ({last[:200]})"
    cache = _model_cache()
    if os.geteuid() == 0 and cache is not None and unreadable(cache):
        return (f"the sandboxed kernels run as another user and cannot read the converted base model in {cache} "
                f"(make it readable: chmod -R a+rX {cache})")
    return None


def unreadable(folder: Path) -> list[Path]:
    """Return the entries of a folder (and the folder) that another user could not read.

    Example:
        >>> unreadable(Path(sys.prefix) / "bin")
        []
    """
    import stat

    found = []
    for path in [folder, *folder.iterdir()]:
        mode = path.stat().st_mode
        wanted = stat.S_IROTH | (stat.S_IXOTH if path.is_dir() else 0)
        if mode & wanted != wanted:
            found.append(path)
    return found


class Kernel:
    """One IPython kernel for one submission, sandboxed or not, driven over the ipc transport.

    ``folder`` must be an empty folder of the grader's; the kernel's connection file and sockets
    go into ``folder/kernel``, the only host folder the sandbox can write (and only until the
    kernel is ready: then it is made read-only).

    Example:
        >>> with Kernel(Path(tempfile.mkdtemp()), sandboxed=False) as k:  # doctest: +SKIP
        ...     k.start(time.monotonic() + 60)
        ...     k.execute("x = 1", time.monotonic() + 10)["status"]
        'ok'
    """

    def __init__(self, folder: Path, limits: Limits = Limits(), *, sandboxed: bool = True, slot: int = 0) -> None:
        self.folder, self.limits, self.sandboxed, self.slot = Path(folder), limits, sandboxed, slot
        self.process: subprocess.Popen | None = None
        self.client: Any = None
        self._stderr: deque[bytes] = deque(maxlen=64)

    def __enter__(self) -> Kernel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _write_connection_file(self, shared: Path, ip: str) -> Path:
        info = {"transport": "ipc", "ip": ip, "key": secrets.token_hex(32),
                "signature_scheme": "hmac-sha256", "kernel_name": "",
                "shell_port": 1, "iopub_port": 2, "stdin_port": 3, "control_port": 4, "hb_port": 5}
        path = shared / "kernel.json"
        path.write_text(json.dumps(info))
        path.chmod(0o644)  # the sandbox's user must read it; nobody else can reach the folder
        return path

    def _drain_stderr(self) -> None:
        assert self.process is not None and self.process.stderr is not None
        for chunk in iter(lambda: self.process.stderr.read(4096), b""):
            self._stderr.append(chunk)

    def stderr_tail(self) -> str:
        """The last line the kernel (or bwrap) wrote to stderr, for error messages."""
        lines = b"".join(self._stderr).decode(errors="replace").strip().splitlines()
        return lines[-1][:200] if lines else ""

    def start(self, deadline: float) -> None:
        """Start the kernel and wait until it answers; raise KernelDied or KernelTimeout."""
        from jupyter_client.blocking import BlockingKernelClient

        shared = self.folder / "kernel"
        shared.mkdir(mode=0o777)
        shared.chmod(0o777)  # writable by the sandbox's user until the kernel has made its sockets
        # A socket's path is limited to about 100 bytes, and a grading folder may lie deep: inside the
        # sandbox the folder is bound at a short path; outside, the shorter of its absolute and
        # relative paths is used (the grading process works in the submission's folder).
        here = min(str(shared / "k"), os.path.relpath(shared / "k"), key=len)
        if len(here) > 90:
            raise KernelDied(f"the grading folder's path is too long for a socket ({len(here)} characters): "
                             "set TMPDIR to a shorter folder")
        if self.sandboxed:
            kernel_ip = f"{INSIDE}/k"
        else:
            kernel_ip = os.path.relpath(shared / "k", self.folder)  # the kernel starts in self.folder
        connection = self._write_connection_file(shared, kernel_ip)
        inside = Path(INSIDE) / connection.name if self.sandboxed else connection
        command = launch_command(shared, inside, self.limits, sandboxed=self.sandboxed, slot=self.slot)
        env = None
        if not self.sandboxed:
            home = self.folder / "home"
            home.mkdir()
            env = kernel_env(False, str(home))
        self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.PIPE, env=env, cwd=str(self.folder), start_new_session=True)
        threading.Thread(target=self._drain_stderr, daemon=True).start()
        self.client = BlockingKernelClient(connection_file=str(connection))
        self.client.load_connection_file()
        self.client.ip = here
        self.client.start_channels(shell=True, iopub=False, stdin=False, hb=False, control=False)
        self._reply(self.client.kernel_info(), deadline)
        shared.chmod(0o555)  # sockets exist now: the kernel can write nothing more on the host

    def alive(self) -> bool:
        """Whether the kernel process is still running."""
        return self.process is not None and self.process.poll() is None

    def _reply(self, msg_id: str, deadline: float) -> dict:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise KernelTimeout("time limit reached")
            try:
                msg = self.client.get_shell_msg(timeout=min(left, 0.25))
            except queue.Empty:
                if not self.alive():
                    raise KernelDied(self.stderr_tail() or "the kernel exited") from None
                continue
            if msg.get("parent_header", {}).get("msg_id") == msg_id:
                return msg["content"]

    def execute(self, code: str, deadline: float, *, store_history: bool = False,
                user_expressions: dict[str, str] | None = None) -> dict:
        """Run code in the kernel and return the ``execute_reply`` content (status, ename, evalue, ...)."""
        msg_id = self.client.execute(code, silent=False, store_history=store_history,
                                     user_expressions=user_expressions or {}, allow_stdin=False, stop_on_error=False)
        return self._reply(msg_id, deadline)

    def close(self) -> None:
        """Stop the kernel and everything it started (idempotent)."""
        if self.client is not None:
            self.client.stop_channels()
            self.client = None
        if self.process is not None:
            if self.process.poll() is None:
                try:
                    os.killpg(self.process.pid, 9)
                except OSError:
                    self.process.kill()
            self.process.wait()
            self.process = None
        shared = self.folder / "kernel"
        if shared.is_dir():
            shared.chmod(0o700)  # made read-only while the kernel ran: let its owner remove it
