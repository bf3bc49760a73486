"""Tests of lessonlib.sweep and of benchmarks/hyperparameter_sweep.py's --quick mode."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest

from lessonlib import sweep
from tests.conftest import REPO


def test_scaling_follows_peft_and_the_schemes_meet_at_rank_8():
    assert [sweep.scaling(s, 8) for s in sweep.SCHEMES] == [2.0, 2.0, 2.0]
    assert sweep.scaling("alpha16", 1) == 16 and sweep.scaling("alpha16", 64) == 0.25
    assert sweep.scaling("alpha2r", 1) == sweep.scaling("alpha2r", 64) == 2
    assert math.isclose(sweep.scaling("rslora", 64), 2 * math.sqrt(8) / 8)


def test_peft_uses_the_scaling_we_compute():
    torch = pytest.importorskip("torch")
    from peft import LoraConfig, get_peft_model

    for scheme in sweep.SCHEMES:
        base = torch.nn.Sequential(torch.nn.Linear(16, 16))
        alpha, rs = sweep.lora_alpha(scheme, 4)
        model = get_peft_model(base, LoraConfig(r=4, lora_alpha=alpha, use_rslora=rs, target_modules=["0"]))
        assert math.isclose(model.base_model.model[0].scaling["default"], sweep.scaling(scheme, 4))


@pytest.mark.parametrize("bad", [0, -1, 2.0, True])
def test_bad_rank_is_refused(bad):
    with pytest.raises(ValueError, match="r must be a positive integer"):
        sweep.lora_alpha("alpha16", bad)


def test_bad_names_are_refused_with_what_is_accepted():
    with pytest.raises(ValueError, match="accepted: alpha16, alpha2r, rslora"):
        sweep.scaling("alpha=2r", 8)
    with pytest.raises(ValueError, match="accepted: q,v, attention, mlp, all-linear"):
        sweep.target_modules("qv")
    with pytest.raises(ValueError, match="unknown method"):
        sweep.build(None, sweep.Point(method="dora"))


def test_equal_budget_ranks_are_within_2_percent():
    from lessonlib.params import count_parameters

    budget = count_parameters("smollm2-135m", 8, "all-linear").trainable
    for targets in ("q,v", "attention", "mlp"):
        r = sweep.equal_budget_rank(targets, budget)
        n = count_parameters("smollm2-135m", r, sweep.target_modules(targets)).trainable
        assert abs(n - budget) <= 0.02 * budget, targets


def test_summaries_and_best_rate():
    s = sweep.summarize([0.2, 0.4])
    assert s.n == 2 and math.isclose(s.mean, 0.3) and s.low == 0.2 and s.high == 0.4
    assert sweep.summarize([0.5]).std == 0.0
    rows = [{"lr": 1e-3, "val_loss": 0.9}, {"lr": 4e-3, "val_loss": 0.5}, {"lr": 4e-3, "val_loss": 0.7},
            {"lr": 1.6e-2, "val_loss": 0.55}]
    assert sweep.best_lr(rows) == (1.6e-2, True)     # 0.55 beats the mean of 0.5 and 0.7 (0.6)
    assert sweep.best_lr(rows[:3]) == (4e-3, True)
    with pytest.raises(ValueError):
        sweep.best_lr([])


def test_energy_captured_is_eckart_young():
    torch = pytest.importorskip("torch")
    g = torch.Generator().manual_seed(0)
    m = torch.randn(12, 7, generator=g, dtype=torch.float64)
    sv = torch.linalg.svdvals(m).tolist()
    u, s, vh = torch.linalg.svd(m, full_matrices=False)
    best3 = u[:, :3] @ torch.diag(s[:3]) @ vh[:3]
    kept = 1 - float((m - best3).pow(2).sum() / m.pow(2).sum())
    assert math.isclose(sweep.energy_captured(sv, 3), kept, rel_tol=1e-9)
    assert sweep.energy_captured(sv, 7) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="zero"):
        sweep.energy_captured([0.0, 0.0], 1)


def test_rows_round_trip(tmp_path):
    path = tmp_path / "s.csv"
    sweep.write_row(path, sweep.Point(r=4, lr=1.6e-2, seed=2), sweep.Outcome(100, 500, 0.25, 0.3, 1.5),
                    header=["command: x", "commit: y"])
    sweep.write_row(path, sweep.Point(method="full", lr=1e-4), sweep.Outcome(1000, 4000, 0.5, 0.6, 3.0),
                    header=["ignored: the file exists"])
    rows = sweep.read_rows(path)
    assert [r["r"] for r in rows] == [4, 0] and rows[0]["lr"] == 1.6e-2 and rows[1]["targets"] == "-"
    assert sweep.read_comments(path) == ["command: x", "commit: y"]
    assert sweep.select(rows, method="lora", lr=0.016) == rows[:1]


def test_quick_sweep_writes_rows_and_update_rank(tmp_path):
    out, svd = tmp_path / "s.csv", tmp_path / "u.csv"
    cmd = [sys.executable, str(REPO / "benchmarks" / "hyperparameter_sweep.py"), "--quick",
           "--out", str(out), "--svd-out", str(svd)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = sweep.read_rows(out)
    assert len(rows) == 5 and all(r["val_loss"] > 0 for r in rows)
    assert any(c.startswith("commit: ") for c in sweep.read_comments(out))
    update = sweep.read_rows(svd)
    assert {r["layer_type"] for r in update} >= {"q_proj", "down_proj"}


def test_bad_minutes_is_one_line_and_status_2():
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "hyperparameter_sweep.py"), "--minutes", "nan"],
                          capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_variant_is_a_column_and_an_old_file_keeps_its_columns(tmp_path):
    from lessonlib.sweep import COLUMNS, Outcome, Point, read_rows, write_row

    outcome = Outcome(10, 40, 0.5, 0.4, 1.0)
    new = tmp_path / "variants.csv"
    write_row(new, Point(variant="dora"), outcome)
    assert [r["variant"] for r in read_rows(new)] == ["dora"]
    assert Point(variant="dora").key() != Point().key()
    old = tmp_path / "old.csv"                       # lesson 08's file: no variant column
    old.write_text(",".join(c for c in COLUMNS if c != "variant") + "\n")
    write_row(old, Point(r=2), outcome)
    assert read_rows(old)[0]["r"] == 2 and "variant" not in read_rows(old)[0]
    with pytest.raises(ValueError, match="has no variant column"):
        write_row(old, Point(variant="pissa"), outcome)
