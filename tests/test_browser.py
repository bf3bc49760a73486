"""The course in a real browser: JupyterLab (started as `make lab` does) driven by Debian's Chromium.

Stored outputs cannot show a widget that fails to render ("Error displaying widget") or a
JupyterLab extension out of step with ipywidgets; a browser can. Screenshots land in
test-artifacts/browser/. The test skips, saying why, only where no Chromium is installed
(`make test` installs Debian's chromium package when it runs as root).
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from labserver import running_lab

playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (make setup installs it)")

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on this machine: install Debian's `chromium` package "
                       "(make test does so when run as root) to run the browser tests"),
]

# JupyterLab settings for the test only: no autosave (running cells must not rewrite the stored
# notebooks), no news pop-up over the page.
LAB_SETTINGS = {
    "@jupyterlab/docmanager-extension/plugin.jupyterlab-settings": {"autosave": False},
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false",
                                                                         "checkForUpdates": False},
}


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def artifacts(repo) -> Path:
    folder = repo / "test-artifacts" / "browser"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def lab(repo, tmp_path_factory) -> Iterator[tuple[str, str]]:
    """`make lab` headless with test-only user settings; the stored notebooks must come out unchanged."""
    home = tmp_path_factory.mktemp("lab")
    for name, value in LAB_SETTINGS.items():
        target = home / "settings" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(value))
    stored = {p: digest(p) for p in (repo / "notebooks").glob("*.ipynb")}
    extra = f"--LabApp.user_settings_dir={home / 'settings'} --LabApp.workspaces_dir={home / 'workspaces'}"
    with running_lab(repo, extra_args=extra) as server:
        yield server
    assert {p: digest(p) for p in stored} == stored, "the browser session changed a stored notebook"


@pytest.fixture
def page(lab, artifacts, request) -> Iterator:
    """A Chromium page; a screenshot of it is saved whether the test passes or fails."""
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            tab = browser.new_page(viewport={"width": 1400, "height": 1000})
            yield tab
            tab.screenshot(path=artifacts / f"{request.node.name}.png", full_page=False)
        finally:
            browser.close()


def open_notebook(page, lab, name: str) -> None:
    base, token = lab
    page.goto(f"{base}/lab/tree/notebooks/{name}?token={token}")
    page.locator(".jp-Notebook").first.wait_for(timeout=60_000)


def test_lesson_01_renders_its_three_shape_lines(page, lab):
    open_notebook(page, lab, "01_lora_increment.ipynb")
    output = page.locator(".jp-OutputArea-output", has_text="delta shape").first
    output.wait_for(timeout=60_000)
    lines = [line.strip() for line in output.inner_text().splitlines() if line.strip()]
    assert lines == ["W shape : torch.Size([8, 8])", "delta shape : torch.Size([8, 8])",
                     "W_new shape : torch.Size([8, 8])"]
    assert page.get_by_text("Error displaying widget").count() == 0
