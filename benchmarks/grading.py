"""Benchmark: grade 30 submissions of one exercise in the sandbox and without, side by side.

The submissions are made from the real exercise and its solution in a temporary folder: a third
answered perfectly, a third handed in blank, a third with one wrong answer. Each is graded the way
``python -m lessonlib grade`` does it (its own process and kernel; most of the time per
submission is starting Python, a kernel and torch), once in the bubblewrap sandbox and once with
``--no-sandbox``, with the same number of jobs. The target: 30 submissions in at most 90 s on
2 cores, sandboxed.
Run: .venv/bin/python benchmarks/grading.py [--exercise 01_lora_increment] [--count 30] [--jobs 2]
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
from lessonlib.authoring.sandbox import sandbox_problem

REPO = Path(__file__).resolve().parent.parent
TARGET_S = 90


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
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=120)
    args = parser.parse_args()
    source = REPO / "solutions" / f"{args.exercise}.ipynb"
    problem = sandbox_problem()
    modes = [("sandbox", True), ("no sandbox", False)] if problem is None else [("no sandbox", False)]
    if problem is not None:
        print(f"(no sandbox on this machine: {problem}; timing the unsandboxed run only)")
    print(f"grading {args.count} submissions of {args.exercise} with {args.jobs} jobs on {os.cpu_count()} CPU core(s), "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '(unset)')}")
    print(f"{'mode':>10} | {'wall time':>9} | {'per submission':>14} | {'target':>7} | statuses")
    with tempfile.TemporaryDirectory() as folder:
        submissions = make_submissions(Path(folder), args.exercise, args.count)
        for name, sandboxed in modes:
            start = time.perf_counter()
            results = grade(submissions, source, jobs=args.jobs, timeout=args.timeout, progress=False,
                            sandboxed=sandboxed)
            wall = time.perf_counter() - start
            statuses = ", ".join(f"{n} {s}" for s, n in Counter(r.status for r in results).items())
            target = f"{TARGET_S} s" if sandboxed else ""
            print(f"{name:>10} | {wall:8.1f}s | {wall / len(results):13.2f}s | {target:>7} | {statuses}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
