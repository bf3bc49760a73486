"""GPU check: every lesson and solution on CUDA, as a Colab student runs them, plus the fine-tune command.

One command, a few minutes on a GPU:

    .venv/bin/python benchmarks/gpu_check.py                      # everything, report on the terminal
    .venv/bin/python benchmarks/gpu_check.py --save               # ... and into benchmarks/gpu_check-<GPU>.txt
    .venv/bin/python benchmarks/gpu_check.py --report benchmarks/gpu_report.txt
    .venv/bin/python benchmarks/gpu_check.py notebooks/04_quantization.ipynb   # some notebooks only
    .venv/bin/python benchmarks/gpu_check.py --plan               # what it would run (on any machine)

What it runs, in this order, each in a fresh process or kernel:

1. every stored notebook (``notebooks/`` and ``solutions/``), on a copy in a temporary folder, in a
   fresh kernel, as nbclient runs it: the stored outputs are *not* compared (timings, devices and
   kernel rounding differ on a GPU); what counts is that every cell, asserts included, runs;
2. ``python -m lessonlib finetune`` for a few steps, 4-bit base, with bf16 compute and bf16 autocast,
   then with fp16 compute and fp16 autocast: the recipe for a T4, which has no native bf16, run on
   whatever GPU this is (``--compute-dtype float16 --precision fp16``);
3. the memory calculator against ``torch.cuda.max_memory_allocated``
   (``benchmarks/gpu_memory.py``), when that script is present.

It prints one line per item (pass / FAIL, seconds, the first error line) and the GPU's name; with
``--report`` (or ``--save``) it also writes that table to a file, to be committed under ``benchmarks/``.
On a machine without CUDA it prints one line saying so and exits 0: there is nothing to check
(``--plan`` lists what would run, anywhere). Where a lesson compares its own result with a library
run on the GPU, it asserts what holds there (``lessonlib.devices`` states the rounding each kernel may do).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

MEMORY_SCRIPT = REPO / "benchmarks" / "gpu_memory.py"
"""The memory calculator's GPU comparison, run last when it is present."""

SKIP_MESSAGE = "No CUDA GPU here: the GPU check has nothing to run (it executes every notebook on CUDA)."


@dataclass
class Outcome:
    """One line of the report."""

    name: str
    passed: bool
    seconds: float
    detail: str = ""

    def line(self) -> str:
        status = "pass" if self.passed else "FAIL"
        return f"{self.name:<44} {status:<5} {self.seconds:7.1f} s  {self.detail}"


def run_notebook(path: Path, timeout: int = 1200) -> Outcome:
    """Execute a copy of a notebook in a fresh kernel; pass when no cell raises."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        copy = Path(folder) / path.name
        shutil.copy(path, copy)
        nb = nbformat.read(copy, as_version=4)
        client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                                resources={"metadata": {"path": str(path.parent.resolve())}})
        try:
            client.execute()
            passed, detail = True, ""
        except CellExecutionError as exc:
            passed, detail = False, f"{exc.ename}: {str(exc.evalue).splitlines()[0][:120] if exc.evalue else ''}"
        except Exception as exc:  # a dead kernel, a timeout: still one line of the report
            passed, detail = False, f"{type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}"
    return Outcome(f"{path.parent.name}/{path.name}", passed, time.perf_counter() - start, detail)


def run_command(name: str, argv: list[str], timeout: int = 1200) -> Outcome:
    """Run a command in a fresh process; pass on exit status 0."""
    start = time.perf_counter()
    try:
        done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=timeout)
        passed = done.returncode == 0
        lines = (done.stderr or done.stdout).strip().splitlines()
        detail = "" if passed else (lines[-1][:160] if lines else f"exit status {done.returncode}")
    except subprocess.TimeoutExpired:
        passed, detail = False, f"timed out after {timeout} s"
    return Outcome(name, passed, time.perf_counter() - start, detail)


FINETUNE_RECIPES = (("bfloat16", "bf16"), ("float16", "fp16"))
"""(compute dtype, autocast precision) of the fine-tune runs: an A100/H100's recipe, then a T4's."""


def finetune_commands(folder: Path) -> list[tuple[str, list[str]]]:
    """The fine-tune command for a few steps, with bf16 compute and with fp16 (a T4's recipe)."""
    python = sys.executable
    runs = []
    for dtype, precision in FINETUNE_RECIPES:
        out = folder / f"finetune-{dtype}"
        runs.append((f"finetune, 4-bit base, {dtype} compute, {precision} autocast",
                     [python, "-m", "lessonlib", "finetune", "--steps", "4", "--compute-dtype", dtype,
                      "--precision", precision, "--output", str(out)]))
    return runs


def header_line(props, native_bf16: bool) -> str:
    """The report's first line: the GPU (``torch.cuda.get_device_properties``) and the library versions."""
    import torch

    from lessonlib.env import package_version

    return (f"GPU: {props.name}, {props.total_memory / 2**30:.1f} GiB, compute capability {props.major}.{props.minor}; "
            f"native bf16: {native_bf16}; torch {torch.__version__} (CUDA {torch.version.cuda}), "
            f"bitsandbytes {package_version('bitsandbytes')}")


def report_path(gpu_name: str) -> Path:
    """Where ``--save`` writes the report: ``benchmarks/gpu_check-<the GPU's name>.txt``."""
    slug = re.sub(r"[^A-Za-z0-9]+", "-", gpu_name).strip("-").lower() or "gpu"
    return REPO / "benchmarks" / f"gpu_check-{slug}.txt"


def plan(notebooks: list[Path]) -> list[str]:
    """One line per item the check would run, in order."""
    lines = [f"notebook  {path.parent.name}/{path.name}" for path in notebooks]
    lines += [f"command   {name}: python {' '.join(argv[1:])}" for name, argv in finetune_commands(Path("OUT"))]
    if MEMORY_SCRIPT.is_file():
        lines.append(f"command   memory calculator vs CUDA: python {MEMORY_SCRIPT.relative_to(REPO)}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", type=Path, help="notebooks to run (default: every lesson and solution)")
    parser.add_argument("--report", type=Path, help="also write the report to this file")
    parser.add_argument("--save", action="store_true", help="also write the report to benchmarks/gpu_check-<GPU>.txt")
    parser.add_argument("--plan", action="store_true", help="list what would run, run nothing (works without CUDA)")
    parser.add_argument("--timeout", type=int, default=1200, help="seconds allowed per cell or command (default 1200)")
    args = parser.parse_args(argv)

    import torch

    from lessonlib.authoring.notebooks import stored_notebooks
    from lessonlib.models import resolve_device

    notebooks = args.notebooks or stored_notebooks()
    missing = [str(path) for path in notebooks if not path.is_file() or path.suffix != ".ipynb"]
    if missing:
        print(f"error: not a notebook file: {', '.join(missing)}", file=sys.stderr)
        return 2
    if args.plan:
        print("\n".join(plan(notebooks)))
        return 0
    if resolve_device() == "cpu":
        print(SKIP_MESSAGE)
        return 0

    props = torch.cuda.get_device_properties(0)
    header = [header_line(props, torch.cuda.is_bf16_supported(including_emulation=False))]
    print(header[0], flush=True)
    outcomes: list[Outcome] = []
    for path in notebooks:
        outcomes.append(run_notebook(path, args.timeout))
        print(outcomes[-1].line(), flush=True)
    with tempfile.TemporaryDirectory() as folder:
        for name, command in finetune_commands(Path(folder)):
            outcomes.append(run_command(name, command, args.timeout))
            print(outcomes[-1].line(), flush=True)
    if MEMORY_SCRIPT.is_file():
        outcomes.append(run_command("memory calculator vs CUDA (gpu_memory.py)", [sys.executable, str(MEMORY_SCRIPT)],
                                    args.timeout))
        print(outcomes[-1].line(), flush=True)
    failed = sum(not o.passed for o in outcomes)
    summary = f"{len(outcomes) - failed} of {len(outcomes)} passed"
    print(summary)
    text = "\n".join(header + [o.line() for o in outcomes] + [summary]) + "\n"
    for target in ([args.report] if args.report else []) + ([report_path(props.name)] if args.save else []):
        target.write_text(text)
        print(f"report written to {target}")
    return 1 if failed else 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
