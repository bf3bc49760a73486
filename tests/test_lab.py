"""`make lab` serves JupyterLab on localhost with lesson 01: started headless, asked over HTTP, stopped."""

from __future__ import annotations

import json

import pytest

from labserver import get, running_lab


@pytest.fixture
def lab(repo):
    """`make lab` headless on a free port, stopped afterwards."""
    with running_lab(repo) as server:
        yield server


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
