"""Start the course's JupyterLab exactly as ``make lab`` does, headless, and stop it reliably.

Used by tests/test_lab.py (HTTP API) and tests/test_browser.py (a real browser).
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def free_port() -> int:
    """A TCP port on localhost that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str, token: str) -> tuple[int, bytes]:
    """GET ``url`` with the server token; return (status, body)."""
    request = urllib.request.Request(url, headers={"Authorization": f"token {token}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, b""


def stop(process: subprocess.Popen) -> None:
    """Stop make and the JupyterLab it started (one process group), politely first."""
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break  # already gone
        try:
            process.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue
    process.wait(timeout=10)


@contextmanager
def running_lab(repo: Path, startup_s: float = 90, extra_args: str = "") -> Iterator[tuple[str, str]]:
    """Run ``make lab`` headless on a free port; yield (base URL, token); always stop it afterwards.

    ``extra_args`` are more JupyterLab options, passed through ``LAB_ARGS`` like the port.
    """
    port, token = free_port(), secrets.token_hex(16)
    args = f"--no-browser --ip=127.0.0.1 --port={port} --IdentityProvider.token={token} {extra_args}".strip()
    process = subprocess.Popen(["make", "-s", "lab", f"LAB_ARGS={args}"], cwd=repo, start_new_session=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + startup_s
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"make lab exited early:\n{process.stdout.read().decode()}")
            try:
                if get(f"{base}/api/status", token)[0] == 200:
                    break
            except OSError:
                pass
            time.sleep(0.5)
        else:
            raise RuntimeError(f"JupyterLab did not answer within {startup_s:.0f} s")
        yield base, token
    finally:
        stop(process)
