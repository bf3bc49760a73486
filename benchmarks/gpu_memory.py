"""Training memory on a CUDA GPU, measured, next to the calculator's estimate (amp-bf16).

Run on a machine with a CUDA GPU and the course installed (one short command, about a minute):

    .venv/bin/python benchmarks/gpu_memory.py

Without CUDA it prints one line and exits 0 (``--smoke`` instead runs the same code on a CPU with a
tiny model, without the GPU's counters: what the test suite checks). Nothing is downloaded: both models are randomly
initialised from their configurations (memory depends on shapes, not on values): SmolLM2-135M
(the course's model) and a Llama-style model of about 1.1 B parameters (TinyLlama-1.1B's shape:
hidden 2048, 22 layers, 32 heads with 4 key/value heads, MLP 5632, vocabulary 32000).

For each model and method (full fine-tuning, LoRA r = 16 on all linear layers, QLoRA NF4 with
double quantization), under ``amp-bf16`` as ``transformers``' Trainer runs ``bf16=True`` (full
fine-tuning on an fp32 model, LoRA on a bf16 base with fp32 adapters, QLoRA with bf16 compute
after ``prepare_model_for_kbit_training``), one warm-up step and one measured step of batch
2 x 512 tokens with AdamW, it prints:

* the tensors ``lessonlib.memory.measure_training_step`` counts on the GPU, next to the estimate's;
* ``torch.cuda.max_memory_allocated`` next to the estimate's allocated peak (tensors, workspaces,
  backward transients: ``lessonlib.memory.allocated_peak``);
* ``torch.cuda.max_memory_reserved`` next to that plus the estimate's allocator share;
* the CUDA context: what the GPU's driver reports in use (``torch.cuda.mem_get_info``) beyond
  PyTorch's reserved memory, at start and after the runs, next to ``CUDA_CONTEXT_BYTES``.
"""

from __future__ import annotations

import gc
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MODELS = {
    "smollm2-135m": "smollm2-135m",
    "llama-1.1b (random)": dict(model_type="llama", hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
                                num_attention_heads=32, num_key_value_heads=4, vocab_size=32000,
                                tie_word_embeddings=False),
}
SMOKE_MODELS = {"tiny llama (random)": dict(model_type="llama", hidden_size=64, intermediate_size=160,
                                             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                             vocab_size=256, tie_word_embeddings=True)}
BATCH, SEQ, RANK = 2, 512, 16
MiB = 2**20


def context_bytes(torch) -> int:  # noqa: ANN001
    """What the driver reports in use on this GPU beyond PyTorch's reserved memory (context, other processes)."""
    free, total = torch.cuda.mem_get_info()
    return total - free - torch.cuda.memory_reserved()


def mib(value: int | None) -> str:
    return "n/a" if value is None else f"{value / MiB:,.0f}"


def build(name: str, cfg, method: str, folder: Path, device: str):  # noqa: ANN001
    """The model as amp-bf16's usual set-up loads it (lessonlib.models.build_model), from a randomly initialised copy."""
    import torch
    from transformers import AutoModelForCausalLM

    from lessonlib.models import build_model
    from lessonlib.params import resolve_config

    saved = folder / name.replace(" ", "_")
    if not saved.exists():
        torch.manual_seed(0)
        AutoModelForCausalLM.from_config(resolve_config(cfg), dtype=torch.bfloat16).save_pretrained(saved)
    return build_model(method, r=RANK, lora_alpha=2 * RANK, source=saved, precision="amp-bf16", device=device)


def run(device: str = "cuda") -> list[str]:
    """The table's lines: every model x method on ``device`` (``"cpu"``: the smoke run, tiny model, no counters)."""
    import torch

    from lessonlib.env import quiet_library_logs
    from lessonlib.memory import (CUDA_CONTEXT_BYTES, TENSOR_COMPONENTS, allocated_peak, estimate_training_memory,
                                  measure_training_step)

    quiet_library_logs()
    cuda = device == "cuda"
    models, seq = (MODELS, SEQ) if cuda else (SMOKE_MODELS, 16)
    if cuda:
        torch.ones(1, device="cuda")
        lines = [f"GPU: {torch.cuda.get_device_name()}, torch {torch.__version__}, CUDA {torch.version.cuda}",
                 f"CUDA context at start: {context_bytes(torch) / MiB:,.0f} MiB "
                 f"(the calculator plans {CUDA_CONTEXT_BYTES / MiB:,.0f} MiB)", ""]
    else:
        lines = ["smoke run on the CPU: no GPU counters", ""]
    header = f"{'model':<20}{'method':<7}{'tensors meas./est. MiB':>26}{'allocated meas./est.':>24}" \
             f"{'reserved meas./est.':>23}  largest component differences"
    lines.append(header)
    with tempfile.TemporaryDirectory() as tmp:
        for name, cfg in models.items():
            for method in ("full", "lora", "qlora"):
                model = build(name, cfg, method, Path(tmp), device).train()
                vocab = model.config.vocab_size
                ids = torch.randint(0, vocab, (BATCH, seq), device=device)
                batch = dict(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids)
                opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6)
                measure_training_step(model, batch, opt, autocast="bf16")  # warm-up: creates AdamW's state
                m = measure_training_step(model, batch, opt, autocast="bf16")
                est = estimate_training_memory(cfg, method, batch=BATCH, seq=seq, rank=RANK, precision="amp-bf16",
                                               device=device)
                diffs = sorted(((getattr(m, k) - getattr(est, k), k) for k in TENSOR_COMPONENTS),
                               key=lambda d: -abs(d[0]))[:2]
                reserved_est = allocated_peak(est) + est.runtime_parts.get("allocator", 0)
                lines.append(
                    f"{name:<20}{method:<7}{mib(m.tensors):>14} /{mib(est.tensors):>9}"
                    f"{mib(m.peak_allocated):>13} /{mib(allocated_peak(est)):>9}"
                    f"{mib(m.peak_reserved):>12} /{mib(reserved_est):>9}  "
                    + ", ".join(f"{k} {d / MiB:+,.1f}" for d, k in diffs))
                del model, opt, batch, m
                gc.collect()
                if cuda:
                    torch.cuda.empty_cache()
    if cuda:
        lines += ["", f"CUDA context after the runs: {context_bytes(torch) / MiB:,.0f} MiB"]
    lines.append(f"measured: measure_training_step on the {device} (second step); "
                 f"est.: estimate_training_memory(device={device!r})")
    return lines


def main(argv: list[str] | None = None) -> int:
    from lessonlib.models import resolve_device

    argv = sys.argv[1:] if argv is None else argv
    if argv == ["--smoke"]:
        print("\n".join(run("cpu")))
        return 0
    if argv:
        print(f"error: unknown arguments {' '.join(argv)}; accepted: --smoke", file=sys.stderr)
        return 2
    if resolve_device() == "cpu":
        print("No CUDA GPU here: benchmarks/gpu_memory.py skipped (run it on a machine with one).")
        return 0
    print("\n".join(run()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
