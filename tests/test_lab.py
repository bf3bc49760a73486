"""`make lab` serves JupyterLab on localhost with lesson 01: started headless, asked over HTTP, stopped."""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str, token: str) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers={"Authorization": f"token {token}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, b""


@pytest.fixture
def lab(repo):
    """Start `make lab` headless on a free port; stop it (and all it started) afterwards."""
    port, token = free_port(), secrets.token_hex(16)
    args = f"--no-browser --ip=127.0.0.1 --port={port} --IdentityProvider.token={token}"
    process = subprocess.Popen(["make", "-s", "lab", f"LAB_ARGS={args}"], cwd=repo, start_new_session=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if process.poll() is not None:
                pytest.fail(f"make lab exited early:\n{process.stdout.read().decode()}")
            try:
                if get(f"{base}/api/status", token)[0] == 200:
                    break
            except OSError:
                pass
            time.sleep(0.5)
        else:
            pytest.fail("JupyterLab did not answer within 90 s")
        yield base, token
    finally:
        stop(process)


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


def test_make_lab_serves_lesson_01(lab):
    base, token = lab
    status, body = get(f"{base}/api/contents/notebooks/01_lora_increment.ipynb", token)
    assert status == 200
    model = json.loads(body)
    assert model["type"] == "notebook"
    sources = ["".join(cell["source"]) for cell in model["content"]["cells"]]
    assert any("delta = A @ B" in s for s in sources)
    status, body = get(f"{base}/lab", token)
    assert status == 200 and b"JupyterLab" in body
    status, _ = get(f"{base}/api/contents/notebooks/01_lora_increment.ipynb", "wrong-token")
    assert status == 403
