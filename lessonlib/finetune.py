"""The lesson-06 fine-tune as a command: QLoRA (or LoRA) on the booking task, on 1 or N processes.

Run it alone, under ``torchrun`` or under ``accelerate launch``; with more than one process it uses
DistributedDataParallel (gloo on CPU, NCCL on GPUs): every process takes its own slice of each
global batch, gradients of the adapter are averaged, and all processes end with the same adapter.

    python -m lessonlib.finetune --steps 40 --output runs/qlora
    python -m lessonlib.finetune --config cfg.json            # a JSON object with the same keys
    torchrun --nproc-per-node 2 -m lessonlib.finetune --config cfg.json
    accelerate launch --cpu --num_processes 2 -m lessonlib.finetune --config cfg.json

Writes into the output folder: ``adapter/`` (``save_pretrained``, written by rank 0),
``rank{R}.json`` per process (a SHA-256 of its adapter weights, its loss history, timing, peak
memory) and, when ``eval_examples`` > 0, ``eval.json`` (held-out exact match and valid-JSON rate).

Example:
    >>> cfg = FinetuneConfig(steps=3, r=4)
    >>> cfg.r, cfg.alpha, cfg.quantization
    (4, 16, 'nf4-dq')
    >>> FinetuneConfig(quantization="int3")
    Traceback (most recent call last):
    ...
    ValueError: quantization must be one of none, nf4, nf4-dq, fp4, got 'int3'
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from lessonlib.models import QUANTIZATIONS


@dataclass
class FinetuneConfig:
    """Everything one fine-tuning run needs (the keys of ``--config``)."""

    model: str | None = None
    """Model folder or hub id; None: the course's SmolLM2-135M-Instruct (offline copy first)."""
    quantization: str = "nf4-dq"
    compute_dtype: str | None = None
    """dtype of the 4-bit matrix products: None (bf16 on a GPU, fp32 on a CPU), or float16 / bfloat16 / float32."""
    r: int = 8
    alpha: int = 16
    targets: str | list[str] = "all-linear"
    dropout: float = 0.0
    steps: int = 40
    batch_size: int = 8
    """Per process; the global batch is ``batch_size * world_size``."""
    lr: float = 2e-3
    seed: int = 0
    n_train: int = 320
    eval_examples: int = 40
    gradient_checkpointing: bool = False
    output: str = "runs/finetune"
    progress: bool = True

    def __post_init__(self) -> None:
        if self.quantization not in QUANTIZATIONS:
            raise ValueError(f"quantization must be one of {', '.join(QUANTIZATIONS)}, got {self.quantization!r}")
        if self.compute_dtype not in (None, "float32", "bfloat16", "float16"):
            raise ValueError(f"compute_dtype must be float32, bfloat16, float16 or None, got {self.compute_dtype!r}")
        for name in ("r", "alpha", "steps", "batch_size", "n_train"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr!r}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        if isinstance(self.eval_examples, bool) or not isinstance(self.eval_examples, int) or self.eval_examples < 0:
            raise ValueError(f"eval_examples must be a non-negative integer, got {self.eval_examples!r}")

    @classmethod
    def from_json(cls, path: str | os.PathLike, **overrides: Any) -> "FinetuneConfig":
        """Read a JSON object of config keys; ``overrides`` (not None) win.

        Example:
            >>> import tempfile, pathlib
            >>> p = pathlib.Path(tempfile.mkdtemp()) / "c.json"; _ = p.write_text('{"steps": 5}')
            >>> FinetuneConfig.from_json(p, r=2).steps, FinetuneConfig.from_json(p, r=2).r
            (5, 2)
        """
        values = json.loads(Path(path).read_text())
        if not isinstance(values, dict):
            raise ValueError(f"{path}: the config must be a JSON object, got {type(values).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"{path}: unknown config keys {unknown}; accepted: {sorted(known)}")
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


def adapter_hash(model: Any) -> str:
    """Return a SHA-256 over the names and values of the model's trainable parameters.

    Example:
        >>> import torch
        >>> a = torch.nn.Linear(2, 2); b = torch.nn.Linear(2, 2); b.load_state_dict(a.state_dict())
        <All keys matched successfully>
        >>> adapter_hash(a) == adapter_hash(b)
        True
    """
    digest = hashlib.sha256()
    for name, p in sorted(model.named_parameters()):
        if p.requires_grad:
            digest.update(name.removeprefix("module.").encode())
            digest.update(p.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _distributed() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from the launcher's environment variables."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    return rank, world, local


def run(cfg: FinetuneConfig) -> dict[str, Any]:
    """Fine-tune as ``cfg`` says on this process (joining the process group if launched with >1).

    Returns this process's report (also written to ``rank{R}.json``).

    Example:
        >>> run(FinetuneConfig(steps=2, eval_examples=0, output="/tmp/x"))  # doctest: +SKIP
    """
    import torch
    import torch.distributed as dist

    from lessonlib import data, train
    from lessonlib.env import quiet_library_logs, seed_everything
    from lessonlib.models import load_model, load_tokenizer

    quiet_library_logs()
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    rank, world, local_rank = _distributed()
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(local_rank)
    if world > 1:
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    # With CUDA, torch.cuda.set_device above makes "cuda" mean this process's GPU.
    device = "cuda" if cuda else "cpu"
    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    try:
        if cuda is False and world > 1:
            # Two processes on a small CPU: one thread each avoids oversubscribing the cores.
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
        tokenizer = load_tokenizer(cfg.model)
        model = load_model(cfg.model, quantization=cfg.quantization, compute_dtype=cfg.compute_dtype, device=device)
        if cfg.quantization != "none":
            # Non-reentrant checkpointing works under DistributedDataParallel (the reentrant kind does not).
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing,
                                                    gradient_checkpointing_kwargs={"use_reentrant": False})
        elif cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        seed_everything(cfg.seed)  # the same adapter initialization on every process
        lora = LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, target_modules=cfg.targets,
                          lora_dropout=cfg.dropout, task_type="CAUSAL_LM")
        model = get_peft_model(model, lora)
        initial_hash = adapter_hash(model)
        trained = model
        if world > 1:
            from torch.nn.parallel import DistributedDataParallel

            # Only the adapter is trained: the frozen (4-bit) weights are neither broadcast nor reduced.
            frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
            DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, frozen)
            trained = DistributedDataParallel(model, device_ids=[local_rank] if cuda else None)
        splits = data.booking_splits(cfg.n_train, 0, cfg.eval_examples, seed=cfg.seed)
        result = train.train(trained, tokenizer, splits.train, steps=cfg.steps, batch_size=cfg.batch_size,
                             lr=cfg.lr, seed=cfg.seed, progress=cfg.progress and rank == 0, shard=(rank, world))
        report = {
            "rank": rank,
            "world_size": world,
            "initial_adapter_sha256": initial_hash,
            "adapter_sha256": adapter_hash(model),
            "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "loss_history": result.loss_history,
            "train_seconds": result.seconds,
            "seconds_per_step": result.seconds_per_step,
            "peak_memory_mb": result.peak_memory_mb,
            "config": dataclasses.asdict(cfg),
        }
        (out / f"rank{rank}.json").write_text(json.dumps(report, indent=1))
        if rank == 0:
            model.save_pretrained(out / "adapter")
            if cfg.eval_examples:
                ev = train.evaluate(model, tokenizer, splits.test)
                (out / "eval.json").write_text(json.dumps(
                    {"exact_match": ev.exact_match, "valid_json": ev.valid_json, "generations": ev.generations}, indent=1))
                report["exact_match"] = ev.exact_match
            print(f"{world} process(es), {cfg.steps} steps of {cfg.batch_size * world} examples: "
                  f"loss {result.loss_history[0]:.3f} -> {result.loss_history[-1]:.3f} in {result.seconds:.0f} s "
                  f"({result.seconds_per_step:.2f} s/step), peak memory {result.peak_memory_mb:.0f} MB"
                  + (f", held-out exact match {report['exact_match']:.0%}" if cfg.eval_examples else "")
                  + f"; adapter in {out / 'adapter'}")
        if world > 1:
            dist.barrier()
        return report
    finally:
        if world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lessonlib.finetune",
                                description="QLoRA / LoRA fine-tune of the course model on the booking task "
                                            "(runs under torchrun and accelerate launch too).")
    p.add_argument("--config", help="JSON file with any of the keys below; flags given win")
    p.add_argument("--model", help="model folder or hub id (default: the course's SmolLM2-135M-Instruct)")
    p.add_argument("--quantization", choices=QUANTIZATIONS, help="default nf4-dq (QLoRA); none = plain LoRA")
    p.add_argument("--compute-dtype", dest="compute_dtype", choices=("float32", "bfloat16", "float16"),
                   help="dtype of the 4-bit matrix products (default bf16 on a GPU, fp32 on a CPU)")
    p.add_argument("--r", type=int, help="LoRA rank (default 8)")
    p.add_argument("--alpha", type=int, help="LoRA alpha (default 16)")
    p.add_argument("--targets", help="'all-linear' (default) or comma-separated module names, e.g. q_proj,v_proj")
    p.add_argument("--steps", type=int, help="optimizer steps (default 40)")
    p.add_argument("--batch-size", dest="batch_size", type=int, help="examples per step per process (default 8)")
    p.add_argument("--lr", type=float, help="learning rate (default 2e-3)")
    p.add_argument("--seed", type=int)
    p.add_argument("--n-train", dest="n_train", type=int, help="training examples generated (default 320)")
    p.add_argument("--eval-examples", dest="eval_examples", type=int, help="held-out examples (default 40; 0: skip)")
    p.add_argument("--gradient-checkpointing", dest="gradient_checkpointing", action="store_true", default=None)
    p.add_argument("--no-progress", dest="progress", action="store_false", default=None)
    p.add_argument("--output", help="output folder (default runs/finetune)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line, run the fine-tune, return the exit status.

    Example:
        >>> main(["--steps", "0"])   # prints "error: steps must be a positive integer, got 0" on stderr
        2
    """
    args = vars(_parser().parse_args(list(sys.argv[1:] if argv is None else argv)))
    config = args.pop("config")
    if isinstance(args.get("targets"), str) and args["targets"] != "all-linear":
        args["targets"] = [t.strip() for t in args["targets"].split(",") if t.strip()]
    try:
        if config:
            cfg = FinetuneConfig.from_json(config, **args)
        else:
            cfg = FinetuneConfig(**{k: v for k, v in args.items() if v is not None})
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    run(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
