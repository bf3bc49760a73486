"""Command line: ``python -m lessonlib COMMAND [ARGS]``.

Every command is a module's own ``main(argv) -> int`` (see ``COMMANDS`` below), with its own
``--help``; this file only dispatches. Bad usage: one line on stderr and exit status 2.

Example:
    $ python -m lessonlib notebooks execute notebooks/01_lora_increment.ipynb
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module whose main(argv) runs the command, one-line help). A module is imported only
# when its command runs, so ``python -m lessonlib env`` stays fast.
COMMANDS: dict[str, tuple[str, str]] = {
    "env": ("lessonlib.env", "print the environment report (versions, device, 4-bit support)"),
    "prepare": ("lessonlib.prepare", "prepare the base model and caches the lessons need (make setup runs it)"),
    "notebooks": ("lessonlib.authoring.notebooks", "execute, check or sync the stored notebooks"),
    "params": ("lessonlib.params", "parameter counts for LoRA on a model"),
    "finetune": ("lessonlib.finetune",
                 "QLoRA / LoRA fine-tune with TRL's SFTTrainer, on the booking task or your own JSONL (also under torchrun)"),
    "memory": ("lessonlib.memory", "training memory of full fine-tuning, LoRA or QLoRA, estimated"),
    "route": ("lessonlib.route", "choose full fine-tuning, LoRA or QLoRA for a GPU, with numbers"),
    "exercises": ("lessonlib.authoring.exercises", "generate exercises/ from solutions/, or check that it is up to date"),
    "grade": ("lessonlib.authoring.grading", "grade a folder of submitted exercise notebooks into a CSV"),
}


def _parser() -> argparse.ArgumentParser:
    from lessonlib.params import CommandLineParser

    parser = CommandLineParser(prog="python -m lessonlib", description="Tools of the LoRA & QLoRA course.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_module, summary) in COMMANDS.items():
        commands.add_parser(name, help=summary, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``COMMAND``'s ``main`` with the rest of the arguments; return its exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in COMMANDS:
        return importlib.import_module(COMMANDS[argv[0]][0]).main(argv[1:])
    _parser().parse_args(argv)  # --help, or an unknown or missing command: argparse's message, status 2
    return 2


if __name__ == "__main__":
    sys.exit(main())
