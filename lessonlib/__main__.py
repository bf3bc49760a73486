"""Command line: ``python -m lessonlib COMMAND``.

Commands:
    env                          print the environment report (versions, device, 4-bit support)
    notebooks execute [NB ...]   re-execute notebooks in place in fresh kernels (default: all stored)
    notebooks check [NB ...]     list hygiene problems of stored notebooks; exit 1 if any
    notebooks sync [NB ...]      rewrite the cells generated from pyproject.toml (the set-up cell)

More commands live in the module they belong to; each has its own ``--help``
(see ``MODULE_COMMANDS`` below).

Example:
    $ python -m lessonlib notebooks execute notebooks/01_lora_increment.ipynb
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# Commands implemented by a module's own ``main(argv) -> int``: name -> (module, one-line help).
# The module is imported only when its command runs, so ``python -m lessonlib env`` stays fast.
MODULE_COMMANDS: dict[str, tuple[str, str]] = {
    "prepare": ("lessonlib.prepare", "prepare the base model and caches the lessons need (make setup runs it)"),
    "params": ("lessonlib.params", "parameter counts for LoRA on a model"),
    "finetune": ("lessonlib.finetune",
                 "QLoRA / LoRA fine-tune with TRL's SFTTrainer, on the booking task or your own JSONL (also under torchrun)"),
    "memory": ("lessonlib.memory", "training memory of full fine-tuning, LoRA or QLoRA, estimated"),
    "route": ("lessonlib.route", "choose full fine-tuning, LoRA or QLoRA for a GPU, with numbers"),
    "exercises": ("lessonlib.authoring.exercises", "generate exercises/ from solutions/, or check that it is up to date"),
    "grade": ("lessonlib.authoring.grading", "grade a folder of submitted exercise notebooks into a CSV"),
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m lessonlib", description="Tools of the LoRA & QLoRA course.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser("env", help="print the environment report")

    nb = commands.add_parser("notebooks", help="execute or check the stored notebooks")
    nb_commands = nb.add_subparsers(dest="action", required=True, metavar="ACTION")
    run = nb_commands.add_parser("execute", help="re-execute notebooks in place in fresh kernels")
    run.add_argument("paths", nargs="*", help="notebooks (default: every lesson and solution)")
    run.add_argument("--jobs", type=int, default=2, help="notebooks run at once (default 2)")
    run.add_argument("--timeout", type=int, default=900, help="seconds allowed per cell (default 900)")
    check = nb_commands.add_parser("check", help="list hygiene problems of stored notebooks")
    check.add_argument("paths", nargs="*", help="notebooks (default: every lesson and solution)")
    sync = nb_commands.add_parser("sync", help="rewrite the set-up cell from pyproject.toml, outputs kept")
    sync.add_argument("paths", nargs="*", help="notebooks (default: every lesson and solution)")

    for name, (_module, summary) in MODULE_COMMANDS.items():
        commands.add_parser(name, help=summary, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in MODULE_COMMANDS:
        module = importlib.import_module(MODULE_COMMANDS[argv[0]][0])
        return module.main(argv[1:])
    args = _parser().parse_args(argv)
    if args.command == "env":
        from lessonlib.env import environment_report

        environment_report()
        return 0

    from lessonlib.authoring import notebooks

    paths = args.paths or notebooks.stored_notebooks()
    missing = [str(p) for p in paths if not os.path.isfile(p)]
    if missing:
        print(f"error: no such notebook: {', '.join(missing)}", file=sys.stderr)
        return 2
    if args.action == "sync":
        changed = notebooks.sync(paths)
        for path in changed:
            print(f"updated the set-up cell of {path}")
        print(f"{len(paths)} notebook(s), {len(changed)} updated")
        return 0
    if args.action == "execute":
        if args.jobs < 1:
            print(f"error: --jobs must be at least 1, got {args.jobs}", file=sys.stderr)
            return 2
        try:
            found = notebooks.execute(paths, jobs=args.jobs, timeout=args.timeout)
        except FileNotFoundError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        issues = [line for lines in found.values() for line in lines]
    else:
        issues = [line for p in paths for line in notebooks.problems(p)]
    for line in issues:
        print(line)
    print(f"{len(paths)} notebook(s), {len(issues)} problem(s)")
    return 1 if issues else 0


if __name__ == "__main__":
    sys.exit(main())
