"""Benchmark: how long does `import lessonlib` take, next to the heavy libraries it keeps lazy?

Each import runs in a fresh interpreter, 5 times; the median wall time is printed side by side.
Run: .venv/bin/python benchmarks/import_time.py
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time

STATEMENTS = {
    "python (nothing)": "pass",
    "import lessonlib": "import lessonlib",
    "import lessonlib.env, .authoring.notebooks": "import lessonlib.env, lessonlib.authoring.notebooks",
    "import torch": "import torch",
    "import peft": "import peft",
}


def median_seconds(statement: str, repeats: int = 5) -> float:
    """Median wall time of running `statement` in a fresh interpreter."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", statement], check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    results = {label: median_seconds(code) for label, code in STATEMENTS.items()}
    baseline = results["python (nothing)"]
    print(f"{'statement':<36} {'median s':>9} {'minus bare python':>18}")
    for label, seconds in results.items():
        print(f"{label:<36} {seconds:9.3f} {seconds - baseline:18.3f}")
    verdict = "well under" if results["import lessonlib"] < 0.5 else "NOT under"
    print(f"\n`import lessonlib` takes {results['import lessonlib']:.3f} s: {verdict} half a second.")


if __name__ == "__main__":
    main()
