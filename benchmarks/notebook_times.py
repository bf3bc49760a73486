"""Benchmark: run every stored notebook in a fresh kernel and compare its wall time with its budget.

Each lesson states the CPU time it promises (notebook metadata ``lessonlib.cpu_budget_s``, e.g.
30 s for lesson 01 on 2 cores). The notebooks run one at a time on copies in a temporary folder
(the stored files are not touched), so the times are not disturbed by each other.
Run: .venv/bin/python benchmarks/notebook_times.py [NOTEBOOK ...]
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from lessonlib.authoring.notebooks import execute_one, stored_notebooks


def main(paths: list[Path]) -> int:
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for path in paths:
            copy = Path(folder) / path.name
            shutil.copy(path, copy)
            budget = json.loads(path.read_text()).get("metadata", {}).get("lessonlib", {}).get("cpu_budget_s")
            start = time.perf_counter()
            problems = execute_one(copy)
            seconds = time.perf_counter() - start
            rows.append((path.name, seconds, budget, problems))
    print(f"{'notebook':<32} {'wall s':>7} {'budget s':>9}  verdict")
    failed = 0
    for name, seconds, budget, problems in rows:
        verdict = "no budget set" if budget is None else ("within" if seconds <= budget else "OVER")
        if problems:
            verdict = f"FAILED ({len(problems)} problem(s))"
        failed += verdict not in ("within", "no budget set")
        print(f"{name:<32} {seconds:7.1f} {budget if budget is not None else '-':>9}  {verdict}")
    print("(wall time includes starting the kernel; measured on this machine, in this run)")
    return 1 if failed else 0


if __name__ == "__main__":
    chosen = [Path(p) for p in sys.argv[1:]] or stored_notebooks()
    sys.exit(main(chosen))
