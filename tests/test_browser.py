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
    # On a busy machine the kernel list can arrive after the notebook: JupyterLab then asks which
    # kernel to use. The notebook names python3, which the dialog offers first.
    dialog = page.locator(".jp-Dialog", has_text="Select Kernel")
    try:
        dialog.wait_for(timeout=5_000)
    except playwright_api.TimeoutError:
        pass
    else:
        dialog.get_by_role("button", name="Select").click()
    page.locator(".jp-StatusBar-TextItem", has_text="| Idle").first.wait_for(timeout=120_000)


def test_lesson_01_renders_its_three_shape_lines(page, lab):
    open_notebook(page, lab, "01_lora_increment.ipynb")
    output = page.locator(".jp-OutputArea-output", has_text="delta shape").first
    output.wait_for(timeout=60_000)
    lines = [line.strip() for line in output.inner_text().splitlines() if line.strip()]
    assert lines == ["W shape : torch.Size([8, 8])", "delta shape : torch.Size([8, 8])",
                     "W_new shape : torch.Size([8, 8])"]
    assert page.get_by_text("Error displaying widget").count() == 0


def run_all_cells(page) -> None:
    page.get_by_text("Run", exact=True).first.click()
    page.get_by_text("Run All Cells", exact=True).first.click()


def test_lesson_03_calculator_redraws_when_the_rank_slider_moves(page, lab):
    from lessonlib.params import count_parameters

    open_notebook(page, lab, "03_parameter_counts.ipynb")
    run_all_cells(page)
    trainable = page.locator(".lora-trainable")
    # The notebook shows Llama-2-7B at rank 8 on q_proj and v_proj; wait until every cell has run.
    expected_8 = f"trainable: {count_parameters('llama-2-7b', 8, ('q_proj', 'v_proj')).trainable:,}"
    trainable.first.wait_for(timeout=300_000)
    page.wait_for_function("() => !document.body.innerText.includes('[*]:')", timeout=300_000)
    # JupyterLab renders only the cells near the viewport (windowed notebook): bring the widget there.
    trainable.first.scroll_into_view_if_needed()
    playwright_api.expect(trainable.first).to_have_text(expected_8, timeout=30_000)
    assert page.get_by_text("Error displaying widget").count() == 0

    # Type a new rank into the slider's readout, as a student would.
    readout = page.locator(".widget-slider", has_text="rank").locator(".widget-readout").first
    readout.click()
    page.keyboard.press("Control+A")
    page.keyboard.type("16")
    page.keyboard.press("Enter")
    expected_16 = f"trainable: {count_parameters('llama-2-7b', 16, ('q_proj', 'v_proj')).trainable:,}"
    playwright_api.expect(trainable.first).to_have_text(expected_16, timeout=30_000)

    # And move the slider's handle one step with the keyboard.
    page.locator(".widget-slider", has_text="rank").locator(".noUi-handle").first.focus()
    page.keyboard.press("ArrowRight")
    expected_17 = f"trainable: {count_parameters('llama-2-7b', 17, ('q_proj', 'v_proj')).trainable:,}"
    playwright_api.expect(trainable.first).to_have_text(expected_17, timeout=30_000)
