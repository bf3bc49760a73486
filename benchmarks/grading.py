"""Benchmark: grade 30 submissions of one exercise and print the wall time, per number of jobs.

The submissions are made from the real exercise and its solution in a temporary folder: a third
answered perfectly, a third handed in blank, a third with one wrong answer. Each is graded the way
``python -m lessonlib grade`` does it (its own process and kernel, so most of the time per
submission is starting Python, a kernel and torch). Compare ``--jobs 1 2`` to see the parallel gain.
Run: .venv/bin/python benchmarks/grading.py [--exercise 01_lora_increment] [--count 30] [--jobs 1 2]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import tempfile
import time
from collections import Counter
from pathlib import Path

from lessonlib.authoring.exercises import marker, questions
from lessonlib.authoring.grading import grade

REPO = Path(__file__).resolve().parent.parent


def make_submissions(folder: Path, exercise: str, count: int) -> dict[str, Path]:
    """Write ``count`` submissions (perfect, blank, one answer wrong, in turn); return them by student."""
    solution = json.loads((REPO / "solutions" / f"{exercise}.ipynb").read_text())
    blank = json.loads((REPO / "exercises" / f"{exercise}.ipynb").read_text())
    model = {marker(c)["answer"]: c["source"] for c in solution["cells"] if "answer" in marker(c)}
    perfect = copy.deepcopy(blank)
    for cell in perfect["cells"]:
        if "answer" in marker(cell):
            cell["source"] = model[marker(cell)["answer"]]
    first = next(q for q, spec in questions(solution).items() if spec.kind == "auto")
    one_wrong = copy.deepcopy(perfect)
    next(c for c in one_wrong["cells"] if marker(c).get("answer") == first)["source"] = "raise ValueError('wrong')"
    kinds = [perfect, blank, one_wrong]
    found = {}
    for i in range(count):
        path = folder / f"student_{i:02d}.ipynb"
        path.write_text(json.dumps(kinds[i % 3]))
        found[path.stem] = path
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exercise", default="01_lora_increment")
    parser.add_argument("--count", type=int, default=30)
    parser.add_argument("--jobs", type=int, nargs="+", default=[2])
    parser.add_argument("--timeout", type=float, default=120)
    args = parser.parse_args()
    source = REPO / "solutions" / f"{args.exercise}.ipynb"
    print(f"grading {args.count} submissions of {args.exercise} on {os.cpu_count()} CPU core(s)")
    print(f"{'jobs':>4} | {'wall time':>9} | {'per submission':>14} | statuses")
    with tempfile.TemporaryDirectory() as folder:
        submissions = make_submissions(Path(folder), args.exercise, args.count)
        for jobs in args.jobs:
            start = time.perf_counter()
            results = grade(submissions, source, jobs=jobs, timeout=args.timeout, progress=False)
            wall = time.perf_counter() - start
            statuses = ", ".join(f"{n} {s}" for s, n in Counter(r.status for r in results).items())
            print(f"{jobs:>4} | {wall:8.1f}s | {wall / len(results):13.2f}s | {statuses}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
