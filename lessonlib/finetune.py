"""Fine-tuning as a command, built on TRL's ``SFTTrainer``: QLoRA (or LoRA) on the booking task or your data.

    python -m lessonlib finetune --steps 40 --output runs/qlora
    python -m lessonlib finetune --data train.jsonl --eval-fraction 0.1 --output runs/mine
    python -m lessonlib finetune --config cfg.json --steps 80        # JSON with the same keys; flags win
    python -m lessonlib finetune --config cfg.json --resume           # go on from the last checkpoint
    torchrun --nproc-per-node 2 -m lessonlib.finetune --config cfg.json
    accelerate launch --multi_gpu --num_processes 2 -m lessonlib.finetune --config cfg.json

Flags and config keys come from one dataclass, :class:`FinetuneArguments`, through transformers'
``HfArgumentParser``. The trainer does the rest: batching, gradient accumulation, evaluation
during training, checkpoints and resuming, bf16 autocast on a GPU, and data parallelism when
launched with several processes (gloo on a CPU, NCCL on GPUs: every process ends with the same adapter).

Data: without ``--data``, the course's booking task (:func:`lessonlib.data.booking_splits`;
evaluation on its held-out validation split). With ``--data``, a JSONL file in TRL's formats
(see :func:`lessonlib.data.read_jsonl`), checked line by line before anything is loaded or written.

Writes into the output folder: ``checkpoint-N/`` (every ``save_steps``), ``log.jsonl`` (one line
per logged step: training loss, learning rate, and the evaluation loss when it is computed),
``adapter/`` (the trained adapter, ``save_pretrained``), ``rank{R}.json`` per process (a SHA-256
of its adapter, its losses, timing, peak memory) and, when ``score_examples`` > 0, ``eval.json``
(exact match, valid-JSON rate and per-field accuracy of greedy generations on the evaluation data).

Example:
    >>> args = FinetuneArguments(steps=3, r=4)
    >>> args.r, args.alpha, args.quantization
    (4, 16, 'nf4-dq')
    >>> FinetuneArguments(quantization="int3")
    Traceback (most recent call last):
    ...
    ValueError: quantization must be one of none, nf4, nf4-dq, fp4, got 'int3'
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from lessonlib.models import QUANTIZATIONS
from lessonlib.quantization import TORCH_DTYPE_NAMES
from lessonlib.validation import non_negative_int, number_in, one_of, positive_int, positive_number

PRECISIONS = ("auto", "fp32", "bf16", "fp16")

DEFAULT_EVAL_FRACTION = 0.1
"""Share of ``--data`` held out for evaluation when neither ``--eval-data`` nor ``--eval-fraction`` is given."""


@dataclass
class FinetuneArguments:
    """Everything one fine-tuning run needs: the flags of the command and the keys of ``--config``."""

    model: str | None = field(default=None, metadata={"help": "model folder or hub id (default: the course's SmolLM2-135M-Instruct)"})
    quantization: str = field(default="nf4-dq", metadata={"help": "none, nf4, nf4-dq (QLoRA, default) or fp4"})
    compute_dtype: str | None = field(default=None, metadata={"help": "dtype of the 4-bit products: fp32, bf16, fp16 (or float32, bfloat16, float16; default: bf16 on a GPU, fp16 on one without bf16, fp32 on a CPU)"})
    precision: str = field(default="auto", metadata={"help": "training precision: auto (bf16 autocast on a GPU that has it, fp16 on an older GPU, fp32 on a CPU), fp32, bf16, fp16"})
    r: int = field(default=8, metadata={"help": "LoRA rank"})
    alpha: int = field(default=16, metadata={"help": "LoRA alpha"})
    targets: str = field(default="all-linear", metadata={"help": "'all-linear' or comma-separated module names, e.g. q_proj,v_proj"})
    dropout: float = field(default=0.0, metadata={"help": "LoRA dropout"})
    data: str | None = field(default=None, metadata={"help": "training data, JSONL (default: the booking task)"})
    eval_data: str | None = field(default=None, metadata={"help": "evaluation data, JSONL"})
    eval_fraction: float | None = field(default=None, metadata={"help": "with --data and no --eval-data: the share held out for evaluation (default 0.1)"})
    max_length: int = field(default=256, metadata={"help": "longest example in tokens; a longer one in your data is an error"})
    n_train: int = field(default=320, metadata={"help": "booking task: training examples generated"})
    eval_examples: int = field(default=40, metadata={"help": "booking task: held-out examples for evaluation (0: none)"})
    steps: int = field(default=40, metadata={"help": "optimizer steps"})
    batch_size: int = field(default=8, metadata={"help": "examples per micro-batch per process"})
    grad_accum: int = field(default=1, metadata={"help": "micro-batches per optimizer step (gradient accumulation)"})
    lr: float = field(default=2e-3, metadata={"help": "peak learning rate (linear warm-up over 10%% of the steps, then linear decay)"})
    eval_steps: int = field(default=10, metadata={"help": "steps between evaluation losses (0: none during training)"})
    save_steps: int = field(default=10, metadata={"help": "steps between checkpoints"})
    score_examples: int = field(default=40, metadata={"help": "evaluation examples scored by generation at the end (0: none)"})
    resume: bool = field(default=False, metadata={"help": "go on from the last checkpoint in --output"})
    gradient_checkpointing: bool = field(default=False, metadata={"help": "recompute activations in the backward pass"})
    seed: int = field(default=0, metadata={"help": "seed of the data order and the adapter initialisation"})
    output: str = field(default="runs/finetune", metadata={"help": "output folder"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})

    def __post_init__(self) -> None:
        one_of("quantization", self.quantization, QUANTIZATIONS)
        if self.compute_dtype is not None:
            one_of("compute_dtype", self.compute_dtype, (*TORCH_DTYPE_NAMES, *TORCH_DTYPE_NAMES.values()))
        one_of("precision", self.precision, PRECISIONS)
        for name in ("r", "alpha", "steps", "batch_size", "grad_accum", "n_train", "save_steps", "max_length"):
            positive_int(name, getattr(self, name))
        for name in ("eval_examples", "eval_steps", "score_examples"):
            non_negative_int(name, getattr(self, name))
        positive_number("lr", self.lr)
        number_in("dropout", self.dropout, 0, 1)
        if self.eval_fraction is not None:
            number_in("eval_fraction", self.eval_fraction, 0, 1, low_open=True)
        if self.eval_data and self.eval_fraction is not None:
            raise ValueError("give eval_data (a file) or eval_fraction (a share of data), not both")
        if self.eval_data and not self.data:
            raise ValueError("eval_data needs data (the booking task brings its own evaluation split)")

    @property
    def target_modules(self) -> str | list[str]:
        """``targets`` as peft wants it: ``"all-linear"`` or a list of module names.

        Example:
            >>> FinetuneArguments(targets="q_proj, v_proj").target_modules
            ['q_proj', 'v_proj']
        """
        if self.targets == "all-linear":
            return self.targets
        return [t.strip() for t in self.targets.split(",") if t.strip()]


class UsageError(ValueError):
    """A command-line or config problem: printed as one line, exit status 2."""


def _parser() -> Any:
    from transformers import HfArgumentParser

    class OneLineParser(HfArgumentParser):
        def error(self, message: str) -> None:  # argparse prints usage + error; one line is enough
            raise UsageError(message)

    parser = OneLineParser(FinetuneArguments, prog="python -m lessonlib finetune",
                           description="QLoRA / LoRA fine-tune with TRL's SFTTrainer on the booking task or "
                                       "your JSONL data (runs under torchrun and accelerate launch too).")
    parser.add_argument("--config", help="JSON file with any of these keys (underscores); flags given win")
    return parser


def parse_arguments(argv: Sequence[str]) -> FinetuneArguments:
    """Parse flags (and ``--config FILE.json``, whose values the flags override) into the dataclass.

    Raises:
        UsageError: an unknown flag or config key, a bad value, an unreadable config.

    Example:
        >>> parse_arguments(["--steps", "5", "--batch-size", "2"]).batch_size
        2
        >>> parse_arguments(["--steps", "0"])
        Traceback (most recent call last):
        ...
        lessonlib.finetune.UsageError: steps must be a positive integer, got 0
    """
    parser = _parser()
    try:
        config, rest = parser.parse_known_args(list(argv))  # validates types of the flags as well
        if config.config:
            try:
                values = json.loads(Path(config.config).read_text())
            except (OSError, ValueError) as exc:
                raise UsageError(f"cannot read the config {config.config}: {exc}") from None
            if not isinstance(values, dict):
                raise UsageError(f"{config.config}: the config must be a JSON object, got {type(values).__name__}")
            known = {f.name for f in dataclasses.fields(FinetuneArguments)}
            unknown = sorted(set(values) - known)
            if unknown:
                raise UsageError(f"{config.config}: unknown config keys {unknown}; accepted: {sorted(known)}")
            parser.set_defaults(**values)
        if rest:
            raise UsageError(f"unrecognized arguments: {' '.join(rest)}")
        args, _namespace = parser.parse_args_into_dataclasses(list(argv), look_for_args_file=False)
    except UsageError:
        raise
    except (ValueError, TypeError) as exc:  # __post_init__ and type conversions
        raise UsageError(str(exc)) from None
    return args


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


def load_examples(args: FinetuneArguments, tokenizer: Any) -> tuple[list[Any], list[Any]]:
    """Return (training, evaluation) examples: the booking task, or the ``--data`` file(s), validated.

    Raises:
        lessonlib.data.DataError: a bad line in a data file (its number and what is wrong).

    Example:
        >>> train, val = load_examples(FinetuneArguments(n_train=3, eval_examples=2), tokenizer=None)
        >>> len(train), len(val)
        (3, 2)
    """
    from lessonlib import data

    if not args.data:
        splits = data.booking_splits(args.n_train, args.eval_examples, 0, seed=args.seed)
        return list(splits.train), list(splits.val)
    train = data.read_jsonl(args.data, tokenizer, args.max_length)
    if args.eval_data:
        return train, data.read_jsonl(args.eval_data, tokenizer, args.max_length)
    return data.split_off(train, DEFAULT_EVAL_FRACTION if args.eval_fraction is None else args.eval_fraction,
                          seed=args.seed)


def training_precision(args: FinetuneArguments) -> str:
    """``fp32``, ``bf16`` or ``fp16``: ``auto`` is bf16 on a GPU with bf16, fp16 on an older GPU, fp32 on a CPU.

    Example:
        >>> training_precision(FinetuneArguments(precision="fp32"))
        'fp32'
    """
    if args.precision != "auto":
        return args.precision
    from lessonlib.models import half_dtype, resolve_device

    return "fp32" if resolve_device() == "cpu" else half_dtype()


def sft_config(args: FinetuneArguments, has_eval: bool) -> Any:
    """The ``trl.SFTConfig`` of a run (what the trainer is told).

    Example:
        >>> cfg = sft_config(FinetuneArguments(steps=4, output="/tmp/run"), has_eval=True)  # doctest: +SKIP
        >>> cfg.max_steps, cfg.completion_only_loss  # doctest: +SKIP
        (4, True)
    """
    from trl import SFTConfig

    from lessonlib.models import resolve_device

    precision = training_precision(args)
    evaluate = has_eval and args.eval_steps > 0
    return SFTConfig(
        output_dir=args.output,
        max_steps=args.steps,
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=max(args.batch_size, 16),
        gradient_accumulation_steps=args.grad_accum,
        learning_rate=args.lr,
        lr_scheduler_type="linear",               # warm-up, then linear decay (as the loop)
        warmup_steps=max(1, math.ceil(0.1 * args.steps)),
        weight_decay=0.0,
        seed=args.seed,
        data_seed=args.seed,
        max_length=args.max_length,
        completion_only_loss=True,           # the loss on the answer only (TRL's default for prompt/completion)
        activation_checkpointing=args.gradient_checkpointing,   # transformers' new name of gradient checkpointing
        activation_checkpointing_kwargs={"use_reentrant": False} if args.gradient_checkpointing else None,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_cpu=resolve_device() == "cpu",
        eval_strategy="steps" if evaluate else "no",
        eval_steps=args.eval_steps if evaluate else None,
        save_strategy="steps",
        save_steps=args.save_steps,
        logging_steps=1,
        report_to=[],
        disable_tqdm=not args.progress,
        ddp_find_unused_parameters=False,
        dataloader_num_workers=0,
    )


def callbacks(output: Path) -> list[Any]:
    """The trainer callbacks of every run: keep bitsandbytes' 4-bit CPU weights unpacked, log to JSONL.

    Example:
        >>> [type(c).__name__ for c in callbacks(Path("/tmp/run"))]  # doctest: +SKIP
        ['Keep4bitWeightsUnpacked', 'JsonlLog']
    """
    from transformers import TrainerCallback

    from lessonlib.train import keep_4bit_weights_unpacked

    class Keep4bitWeightsUnpacked(TrainerCallback):
        """bitsandbytes 0.50 repacks 4-bit weights on a CPU's first no-grad forward (evaluation), after
        which training diverges; see :func:`lessonlib.train.keep_4bit_weights_unpacked`."""

        def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
            keep_4bit_weights_unpacked(model)

    class JsonlLog(TrainerCallback):
        """One JSON line per log event (training loss, learning rate, evaluation loss) in ``log.jsonl``."""

        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
            if state.is_world_process_zero and logs:
                with open(output / "log.jsonl", "a") as f:
                    f.write(json.dumps({"step": state.global_step, **logs}) + "\n")

    return [Keep4bitWeightsUnpacked(), JsonlLog()]


def run(args: FinetuneArguments, extra_callbacks: Sequence[Any] = ()) -> dict[str, Any]:
    """Fine-tune as ``args`` say on this process (one of several when launched so); return its report.

    The data are read and checked first: a bad line raises :class:`lessonlib.data.DataError`
    before any model is loaded or any file written. ``extra_callbacks`` go to the trainer (tests
    use one to interrupt a run).

    Example:
        >>> run(FinetuneArguments(steps=2, eval_examples=0, output="/tmp/x"))  # doctest: +SKIP
    """
    import torch

    from lessonlib.env import quiet_library_logs
    from lessonlib.models import load_base, load_tokenizer, lora_config, resolve_device
    from lessonlib.train import evaluate, peak_memory_mib

    quiet_library_logs()
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    out = Path(args.output)
    if args.resume and not any(out.glob("checkpoint-*")):
        raise UsageError(f"--resume: no checkpoint-* folder in {out} to resume from")
    tokenizer = load_tokenizer(args.model)
    train_items, eval_items = load_examples(args, tokenizer)

    from trl import SFTTrainer

    from lessonlib.data import to_dataset

    device = resolve_device()
    if device == "cuda":
        torch.cuda.set_device(local_rank)  # "cuda" below is this process's GPU
    elif world > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))  # share the cores, do not oversubscribe
    out.mkdir(parents=True, exist_ok=True)
    config = sft_config(args, has_eval=bool(eval_items))
    # The base as build_model prepares it; SFTTrainer adds the adapter (peft_config) and, on an
    # unquantized base, turns on gradient checkpointing itself (SFTConfig).
    quantized = args.quantization != "none"
    model = load_base("qlora" if quantized else "lora", source=args.model,
                      quantization=args.quantization if quantized else None,
                      compute_dtype=args.compute_dtype, device=device,
                      gradient_checkpointing=args.gradient_checkpointing and quantized)
    lora = lora_config(args.r, args.alpha, args.target_modules, args.dropout)
    trainer = SFTTrainer(model=model, args=config, train_dataset=to_dataset(train_items),
                         eval_dataset=to_dataset(eval_items) if eval_items and args.eval_steps else None,
                         processing_class=tokenizer, peft_config=lora,
                         callbacks=callbacks(out) + list(extra_callbacks))
    from transformers import PrinterCallback

    trainer.remove_callback(PrinterCallback)   # without a progress bar: the logs go to log.jsonl, not the screen
    # TRL stores a QLoRA adapter in bf16; keep fp32 master weights (autocast does the bf16 compute on a GPU).
    for p in trainer.model.parameters():
        if p.requires_grad:
            p.data = p.data.float()
    initial_hash = adapter_hash(trainer.model)
    start = time.perf_counter()
    trainer.train(resume_from_checkpoint=True if args.resume else None)
    seconds = time.perf_counter() - start
    history = trainer.state.log_history
    report = {
        "rank": rank,
        "world_size": world,
        "initial_adapter_sha256": initial_hash,
        "adapter_sha256": adapter_hash(trainer.model),
        "trainable_parameters": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
        "global_step": trainer.state.global_step,
        "loss_history": [h["loss"] for h in history if "loss" in h],
        "eval_loss_history": [[h["step"], h["eval_loss"]] for h in history if "eval_loss" in h],
        "train_seconds": seconds,
        "peak_memory_mib": peak_memory_mib(device),
        "config": dataclasses.asdict(args),
    }
    (out / f"rank{rank}.json").write_text(json.dumps(report, indent=1))
    if trainer.is_world_process_zero():
        trainer.model.save_pretrained(out / "adapter")
        tokenizer.save_pretrained(out / "adapter")
        summary = (f"{world} process(es), {trainer.state.global_step} steps of "
                   f"{args.batch_size * args.grad_accum * world} examples in {seconds:.0f} s; "
                   f"peak memory {report['peak_memory_mib']:,.0f} MiB")
        if report["loss_history"]:
            summary += f"; training loss {report['loss_history'][0]:.3f} -> {report['loss_history'][-1]:.3f}"
        if args.score_examples and eval_items:
            scored = eval_items[:args.score_examples]
            longest = max(len(tokenizer(c["completion"][-1]["content"] if isinstance(c, dict) else c.answer,
                                        add_special_tokens=False)["input_ids"]) for c in scored)
            ev = evaluate(trainer.model, tokenizer, scored, max_new_tokens=longest + 1)
            s = ev.scores
            (out / "eval.json").write_text(json.dumps(
                {"examples": s.n, "exact_match": s.exact_match, "valid_json": s.valid_json, "fields": s.fields,
                 "generations": ev.generations}, indent=1))
            report["exact_match"] = s.exact_match
            summary += f"; exact match on {s.n} evaluation examples {s.exact_match:.0%}"
        print(summary + f"; adapter in {out / 'adapter'}")
    return report


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line, run the fine-tune, return the exit status (2: bad usage or bad data).

    Example:
        >>> main(["--steps", "0"])   # prints "error: steps must be a positive integer, got 0" on stderr
        2
    """
    from lessonlib.data import DataError

    try:
        args = parse_arguments(sys.argv[1:] if argv is None else argv)
        run(args)
    except (UsageError, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        if exc.filename is None:
            raise
        print(f"error: cannot read {exc.filename}: {exc.strerror}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
