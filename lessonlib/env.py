"""Where a notebook runs: the environment report, seeding, Colab detection and set-up.

Every notebook's first code cell calls :func:`environment_report`, so a student (or an
instructor reading a bug report) sees at once which versions, which device and whether 4-bit
quantization works on this machine.

Example:
    >>> from lessonlib.env import seed_everything, in_colab
    >>> seed_everything(0)
    0
    >>> in_colab()
    False
"""

from __future__ import annotations

import importlib.metadata
import logging
import platform
import random
import subprocess
import sys
import warnings
from dataclasses import dataclass

from lessonlib.validation import non_negative_int

REPORTED_PACKAGES = ("torch", "transformers", "peft", "bitsandbytes")
"""The libraries whose versions the report shows, in this order."""


def in_colab() -> bool:
    """Return True when running inside Google Colab.

    Colab's runtime has imported ``google.colab`` before any notebook code runs, so its presence
    in ``sys.modules`` is the test (importing it would be slower and fail elsewhere).

    Example:
        >>> in_colab()
        False
    """
    return "google.colab" in sys.modules


def seed_everything(seed: int = 0) -> int:
    """Seed Python's, NumPy's and torch's random generators (CPU and CUDA); return the seed.

    Args:
        seed: a non-negative integer.

    Example:
        >>> import torch
        >>> _ = seed_everything(1); a = torch.randn(3)
        >>> _ = seed_everything(1); torch.equal(a, torch.randn(3))
        True
    """
    non_negative_int("seed", seed)
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # seeds CUDA too, when present
    return seed


class _DropMessage(logging.Filter):
    """A logging filter that drops records whose message contains a given text."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


_QUIET_DONE = False


def quiet_library_logs() -> None:
    """Silence library messages that say nothing useful to a student and differ between machines.

    bitsandbytes, on CPUs with AVX-512 BF16, warns at import that an optional hub kernel
    (``kernels-community``) is missing; the course never downloads kernels, and the built-in
    CPU path is used instead. peft 0.21 with transformers 5 warns that ``is_gradient_checkpointing``
    is deprecated (a notice for library authors, and it names a file path of the machine). Only
    those two messages are dropped; every other warning still shows. Calling this twice is harmless.

    Example:
        >>> quiet_library_logs()
    """
    global _QUIET_DONE
    if _QUIET_DONE:
        return
    logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_DropMessage("kernels-community"))
    warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
    _QUIET_DONE = True


def package_version(name: str) -> str:
    """Return an installed distribution's version without importing it, or ``"not installed"``.

    Example:
        >>> package_version("surely-not-a-real-package")
        'not installed'
    """
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def check_bitsandbytes_4bit(device: str | None = None) -> tuple[bool, str]:
    """Try a real NF4 round trip with bitsandbytes on ``device``; return ``(works, detail)``.

    A 256-value tensor is quantized to 4 bits and back. It "works" when the round trip runs and
    every value comes back within half of NF4's widest gap between neighbouring codes (0.152 of
    its block's absmax, the gap between -1.0 and -0.696), which a broken kernel would exceed.

    Example:
        >>> works, detail = check_bitsandbytes_4bit("cpu")
        >>> works
        True
    """
    from lessonlib.models import resolve_device

    device = resolve_device(device or "auto")
    quiet_library_logs()
    try:
        import torch
        import bitsandbytes.functional as bnbf
    except Exception as exc:  # a missing or broken install is a finding, not a crash
        return False, f"bitsandbytes cannot be imported ({type(exc).__name__}: {exc})"
    try:
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(256, generator=gen).to(device)
        packed, state = bnbf.quantize_4bit(x, quant_type="nf4", blocksize=64)
        back = bnbf.dequantize_4bit(packed, state).flatten()
        absmax = x.view(-1, 64).abs().amax(dim=1).repeat_interleave(64)
        worst = float(((back - x).abs() / absmax).max())
    except Exception as exc:
        return False, f"NF4 round trip failed on {device} ({type(exc).__name__}: {exc})"
    if packed.numel() != 128 or worst > 0.153:
        return False, f"NF4 round trip on {device} gave wrong values (relative error {worst:.3f})"
    return True, f"NF4 round trip on {device} ok"


@dataclass
class EnvironmentReport:
    """What :func:`environment_report` found. ``str(report)`` is the printed table.

    Example:
        >>> report = environment_report(print_report=False)
        >>> report.device in ("cpu", "cuda")
        True
    """

    python: str
    versions: dict[str, str]
    device: str
    gpu_name: str | None = None
    gpu_memory_gib: float | None = None
    bnb_4bit: bool = False
    bnb_detail: str = ""
    colab: bool = False
    cpu_threads: int = 1

    def rows(self) -> list[tuple[str, str]]:
        """Return the report as ``(label, value)`` rows, in display order."""
        rows = [("python", self.python)]
        rows += [(name, self.versions[name]) for name in self.versions]
        if self.device == "cuda":
            rows.append(("device", f"cuda: {self.gpu_name}, {self.gpu_memory_gib:.1f} GiB"))
        else:
            threads = f"{self.cpu_threads} thread" + ("" if self.cpu_threads == 1 else "s")
            rows.append(("device", f"cpu only ({threads})"))
        rows.append(("4-bit (bitsandbytes)", ("works" if self.bnb_4bit else "NOT available") + f": {self.bnb_detail}"))
        rows.append(("running in", "Google Colab" if self.colab else "local Jupyter / Python"))
        return rows

    def __str__(self) -> str:
        rows = self.rows()
        width = max(len(label) for label, _ in rows)
        return "\n".join(f"{label:<{width}} : {value}" for label, value in rows)


def environment_report(print_report: bool = True) -> EnvironmentReport:
    """Collect (and by default print) versions, device, GPU memory and whether 4-bit works here.

    Args:
        print_report: print the table (the notebooks' first cell does); False only returns it.

    Example:
        >>> report = environment_report(print_report=False)
        >>> sorted(report.versions) == sorted(["lessonlib", *REPORTED_PACKAGES])
        True
    """
    import torch

    from lessonlib import __version__
    from lessonlib.models import resolve_device

    quiet_library_logs()
    versions = {"lessonlib": __version__}
    versions.update({name: package_version(name) for name in REPORTED_PACKAGES})
    device = resolve_device()
    gpu_name = gpu_memory = None
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        gpu_name, gpu_memory = props.name, props.total_memory / 2**30
    works, detail = check_bitsandbytes_4bit(device)
    report = EnvironmentReport(
        python=platform.python_version(),
        versions=versions,
        device=device,
        gpu_name=gpu_name,
        gpu_memory_gib=gpu_memory,
        bnb_4bit=works,
        bnb_detail=detail,
        colab=in_colab(),
        cpu_threads=torch.get_num_threads(),
    )
    if print_report:
        print(report)
    return report


def colab_install_command(requirements: list[str], provided: list[str]) -> list[str]:
    """Return the pip command that installs the course requirements in Colab.

    Colab ships its own CUDA build of torch, its numpy and its Jupyter stack; replacing them would
    download gigabytes or break the runtime, so the ``provided`` names are left out.

    Example:
        >>> colab_install_command(["torch==2.13.0", "peft>=0.21,<0.22"], ["torch"])[-1]
        'peft>=0.21,<0.22'
    """
    from lessonlib.requirements import requirement_name

    keep = [r for r in requirements if requirement_name(r) not in provided]
    return [sys.executable, "-m", "pip", "install", "--quiet", *keep]


def install_colab_requirements() -> None:
    """Install the course's requirements into a Colab runtime (does nothing elsewhere).

    The notebooks' first cell calls this after cloning the course, so the same notebook runs
    unchanged locally and in Colab.

    Example:
        >>> install_colab_requirements()  # not in Colab: returns at once
    """
    if not in_colab():
        return
    from lessonlib.requirements import colab_provided, course_requirements

    subprocess.run(colab_install_command(course_requirements(), colab_provided()), check=True)


def main(argv: list[str] | None = None) -> int:
    """``python -m lessonlib env``: print the environment report; return the exit status.

    Example:
        >>> main(["--verbose"])   # prints "error: unrecognized arguments: --verbose" on stderr
        Traceback (most recent call last):
        ...
        SystemExit: 2
    """
    from lessonlib.params import CommandLineParser

    parser = CommandLineParser(prog="python -m lessonlib env",
                               description="Print the environment report: versions, device, 4-bit support.")
    parser.parse_args(sys.argv[1:] if argv is None else argv)
    environment_report()
    return 0
