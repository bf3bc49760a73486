"""Parameter counts for LoRA, computed analytically from a model's configuration.

Nothing is built and nothing is downloaded: the shapes of every linear layer follow from a few
numbers of the configuration (hidden size, MLP size, layers, attention and key/value heads,
vocabulary, tied embeddings). From them this module computes the model's parameters, the
parameters LoRA trains at rank ``r`` on chosen target modules, and the size of the adapter. The
unit tests check every figure against ``peft`` on models built on the meta device.

A LoRA adapter on a linear layer ``in_features -> out_features`` adds ``lora_A`` (r x in) and
``lora_B`` (out x r): ``r * (in + out)`` trainable numbers per targeted module, no bias.

Supported architectures (``model_type``): llama, mistral, qwen2, gemma, phi3 (fused ``qkv_proj``
and ``gate_up_proj``) and gpt2 (fused ``c_attn``, ``Conv1D`` layers, learned positions, biases).

A model is named by a registry name, a ``config.json`` file (or a folder holding one: a model you
downloaded or trained), a plain dict or a ``transformers`` config.

Public API:
    :func:`registry_names`, :data:`REGISTRY`  the real models that ship with the package
    :func:`resolve_config`   a name, a path, a dict or a config object -> a ``PretrainedConfig``
    :func:`model_shape`      every size the calculators need, resolved once (:class:`ModelShape`)
    :func:`linear_layers`    the linear layers of a model, by module type (:class:`LinearLayer`)
    :func:`parameter_groups` where the base model's parameters live (embeddings, attention, ...)
    :func:`count_parameters` trainable / total parameters for LoRA (:class:`ParamCount`)
    :func:`build_on_meta`    the real ``transformers`` model on the meta device (no memory)
    :func:`main`             the command line, ``python -m lessonlib params``

Example:
    >>> from lessonlib.params import count_parameters
    >>> c = count_parameters("llama-2-7b", rank=8, targets=("q_proj", "v_proj"))
    >>> c.trainable, round(c.percent, 3)
    (4194304, 0.062)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from lessonlib.quantization import DTYPE_BYTES
from lessonlib.validation import one_of, positive_int, positive_int_arg

if TYPE_CHECKING:  # transformers is imported only when a function needs it
    from transformers import PretrainedConfig

ALL_LINEAR = "all-linear"
"""``peft``'s shorthand for every linear layer except the output head (``lm_head``)."""

DEFAULT_TARGETS = ("q_proj", "v_proj")
"""The targets of the original LoRA paper, and ``peft``'s default for Llama-style models."""

_OTHER_DEFAULT_TARGETS = {"gpt2": ("c_attn",), "phi3": ("qkv_proj",)}
"""Defaults where the attention is fused (GPT-2's is ``peft``'s; Phi-3's is the same idea)."""

# The configuration fields that decide the shapes, per model type. A dict missing one is refused.
_NEEDED_FIELDS = {
    "llama": ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size"),
    "gpt2": ("n_embd", "n_layer", "n_head", "vocab_size"),
}
for _name in ("mistral", "qwen2", "gemma", "phi3"):
    _NEEDED_FIELDS[_name] = _NEEDED_FIELDS["llama"]
SUPPORTED_MODEL_TYPES = tuple(sorted(_NEEDED_FIELDS))
"""The ``model_type`` values whose layout this module knows."""

# Real models, from their published configurations (only the fields that decide parameter counts).
REGISTRY: dict[str, dict[str, Any]] = {
    "smollm2-135m": dict(model_type="llama", hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True),
    "smollm2-360m": dict(model_type="llama", hidden_size=960, intermediate_size=2560, num_hidden_layers=32,
                         num_attention_heads=15, num_key_value_heads=5, vocab_size=49152, tie_word_embeddings=True),
    "smollm2-1.7b": dict(model_type="llama", hidden_size=2048, intermediate_size=8192, num_hidden_layers=24,
                         num_attention_heads=32, num_key_value_heads=32, vocab_size=49152, tie_word_embeddings=True),
    "llama-2-7b": dict(model_type="llama", hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=32, vocab_size=32000, tie_word_embeddings=False),
    "llama-2-13b": dict(model_type="llama", hidden_size=5120, intermediate_size=13824, num_hidden_layers=40,
                        num_attention_heads=40, num_key_value_heads=40, vocab_size=32000, tie_word_embeddings=False),
    "llama-2-70b": dict(model_type="llama", hidden_size=8192, intermediate_size=28672, num_hidden_layers=80,
                        num_attention_heads=64, num_key_value_heads=8, vocab_size=32000, tie_word_embeddings=False),
    # LLaMA (2023), the models of the QLoRA paper: its 33B ("llama-30b" in transformers' ports) and 65B
    "llama-33b": dict(model_type="llama", hidden_size=6656, intermediate_size=17920, num_hidden_layers=60,
                      num_attention_heads=52, num_key_value_heads=52, vocab_size=32000, tie_word_embeddings=False),
    "llama-65b": dict(model_type="llama", hidden_size=8192, intermediate_size=22016, num_hidden_layers=80,
                      num_attention_heads=64, num_key_value_heads=64, vocab_size=32000, tie_word_embeddings=False),
    "llama-3.1-8b": dict(model_type="llama", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                         num_attention_heads=32, num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=False),
    "llama-3.1-70b": dict(model_type="llama", hidden_size=8192, intermediate_size=28672, num_hidden_layers=80,
                          num_attention_heads=64, num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=False),
    "mistral-7b": dict(model_type="mistral", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=8, vocab_size=32000, tie_word_embeddings=False),
    "qwen2.5-0.5b": dict(model_type="qwen2", hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                         num_attention_heads=14, num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    "qwen2.5-7b": dict(model_type="qwen2", hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                       num_attention_heads=28, num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False),
    "phi-3-mini": dict(model_type="phi3", hidden_size=3072, intermediate_size=8192, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=32, vocab_size=32064, tie_word_embeddings=False),
    "gemma-2b": dict(model_type="gemma", hidden_size=2048, intermediate_size=16384, num_hidden_layers=18,
                     num_attention_heads=8, num_key_value_heads=1, head_dim=256, vocab_size=256000,
                     tie_word_embeddings=True),
    "gpt2": dict(model_type="gpt2", n_embd=768, n_layer=12, n_head=12, n_positions=1024, vocab_size=50257,
                 tie_word_embeddings=True),
}


def registry_names() -> list[str]:
    """Return the names of the real models that ship with the package, in registry order.

    Example:
        >>> registry_names()[:3]
        ['smollm2-135m', 'smollm2-360m', 'smollm2-1.7b']
    """
    return list(REGISTRY)


def _registry_key(name: str) -> str | None:
    """Find a registry name, ignoring case, an organisation prefix and ``-hf``/``-instruct`` endings."""
    key = name.strip().lower().rsplit("/", 1)[-1].replace("_", "-")
    for suffix in ("-instruct", "-hf", "-v0.1"):
        key = key.removesuffix(suffix)
    aliases = {"gpt2-small": "gpt2", "gpt-2": "gpt2", "gpt-2-small": "gpt2", "phi-3-mini-4k": "phi-3-mini"}
    key = aliases.get(key, key)
    return key if key in REGISTRY else None


def read_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """Return the fields of a ``config.json`` file, or of the ``config.json`` inside a folder.

    Raises:
        ValueError: no such file or folder, a folder without ``config.json``, a file that is not
            a JSON object (the message names the path and what was wrong).

    Example:
        >>> import json, tempfile, pathlib
        >>> folder = pathlib.Path(tempfile.mkdtemp())
        >>> _ = (folder / "config.json").write_text(json.dumps(REGISTRY["smollm2-135m"]))
        >>> read_config_file(folder)["hidden_size"]
        576
        >>> read_config_file(folder / "missing.json")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: no such file or folder: .../missing.json
    """
    path = Path(path).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ValueError(f"folder {path} holds no config.json")
        path = path / "config.json"
    elif not path.is_file():
        raise ValueError(f"no such file or folder: {path}")
    try:
        fields = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path} is not a readable JSON file ({exc})") from None
    if not isinstance(fields, dict):
        raise ValueError(f"{path} does not hold a JSON object (a model configuration)")
    return fields


def _looks_like_path(text: str) -> bool:
    return text.endswith(".json") or os.sep in text or text.startswith((".", "~")) or Path(text).exists()


def resolve_config(model: str | os.PathLike | Mapping[str, Any] | PretrainedConfig) -> PretrainedConfig:
    """Return a ``transformers`` config for a registry name, a path, a plain dict or a config object.

    A string is a registry name (case, an organisation prefix and ``-hf``/``-Instruct`` endings
    are ignored) or, when it is no registry name, the path of a ``config.json`` file or of a
    folder holding one (:func:`read_config_file`).

    A dict needs ``model_type`` and the fields that decide the shapes (for Llama-style models:
    hidden_size, intermediate_size, num_hidden_layers, num_attention_heads, vocab_size;
    ``num_key_value_heads``, ``head_dim`` and ``tie_word_embeddings`` take the library's
    defaults when left out). It is built with ``transformers.AutoConfig.for_model``.

    Raises:
        ValueError: neither a registry name nor a config file (the message lists the registry),
            a bad config file, a dict without ``model_type`` or without a needed field (the
            message names it), an unsupported ``model_type``.

    Example:
        >>> cfg = resolve_config("SmolLM2-135M")
        >>> cfg.model_type, cfg.hidden_size, cfg.num_key_value_heads, cfg.tie_word_embeddings
        ('llama', 576, 3, True)
        >>> resolve_config({"model_type": "llama", "hidden_size": 64})
        Traceback (most recent call last):
        ...
        ValueError: config is missing 'intermediate_size' (a llama config needs: hidden_size, intermediate_size, num_hidden_layers, num_attention_heads, vocab_size)
    """
    if isinstance(model, os.PathLike):
        model = read_config_file(model)
    elif isinstance(model, str):
        key = _registry_key(model)
        if key is not None:
            model = REGISTRY[key]
        elif _looks_like_path(model):
            model = read_config_file(model)
        else:
            raise ValueError(f"unknown model {model!r}: not a registry name ({', '.join(REGISTRY)}) "
                             "nor a config.json file or a folder holding one")
    if isinstance(model, Mapping):
        fields = dict(model)
        model_type = fields.pop("model_type", None)
        if model_type is None:
            raise ValueError(f"config is missing 'model_type' (one of: {', '.join(SUPPORTED_MODEL_TYPES)})")
        _check_model_type(model_type)
        needed = _NEEDED_FIELDS[model_type]
        for name in needed:
            if fields.get(name) is None:
                raise ValueError(f"config is missing {name!r} (a {model_type} config needs: {', '.join(needed)})")
        from transformers import AutoConfig

        try:
            return AutoConfig.for_model(model_type, **fields)
        except Exception as exc:  # noqa: BLE001 (any field the library rejects: say which, in one line)
            detail = " ".join(str(exc).split())
            raise ValueError(f"this {model_type} config is not valid: {detail}") from None
    if not hasattr(model, "model_type") or not hasattr(model, "to_dict"):
        raise ValueError(f"expected a registry name, a dict or a transformers config, got {type(model).__name__}")
    _check_model_type(model.model_type)
    for name in _NEEDED_FIELDS[model.model_type]:
        if getattr(model, name, None) is None:
            raise ValueError(f"config is missing {name!r}")
    return model


def _check_model_type(model_type: Any) -> None:
    if not isinstance(model_type, str) or model_type not in _NEEDED_FIELDS:
        raise ValueError(f"model_type {model_type!r} is not supported; supported: {', '.join(SUPPORTED_MODEL_TYPES)}")


@dataclass(frozen=True)
class LinearLayer:
    """One kind of linear layer in a model: ``count`` modules named ``name`` of the same shape.

    ``name`` is the module's own name (what ``peft``'s ``target_modules`` matches), ``group`` the
    block it sits in (``"attention"``, ``"mlp"`` or ``"head"``). GPT-2's ``c_proj`` appears twice,
    once per group, with different shapes.

    Example:
        >>> layer = LinearLayer("q_proj", 576, 576, bias=False, count=30, group="attention")
        >>> layer.weights, layer.lora_parameters(8)
        (9953280, 276480)
    """

    name: str
    in_features: int
    out_features: int
    bias: bool
    count: int
    group: str = "attention"

    @property
    def weights(self) -> int:
        """Parameters of all ``count`` modules: weights plus biases."""
        return self.count * (self.in_features * self.out_features + (self.out_features if self.bias else 0))

    def lora_parameters(self, rank: int, dora: bool = False) -> int:
        """Trainable LoRA parameters on all ``count`` modules: ``count * r * (in + out)``.

        With ``dora`` (DoRA, ``use_dora=True`` in peft) each module also trains a magnitude vector,
        one number per output row: ``count * (r * (in + out) + out)``.
        """
        return self.count * (rank * (self.in_features + self.out_features) + (self.out_features if dora else 0))


def _tied(config: PretrainedConfig) -> bool:
    return bool(getattr(config, "tie_word_embeddings", False))


def linear_layers(model: str | Mapping[str, Any] | PretrainedConfig) -> list[LinearLayer]:
    """Return the model's linear layers by module type, in the order they appear in a block.

    The output head ``lm_head`` comes last (group ``"head"``); when the embeddings are tied its
    weight is the embedding matrix, so :func:`parameter_groups` counts it once, there.

    Example:
        >>> [(l.name, l.in_features, l.out_features, l.count) for l in linear_layers("smollm2-135m")][:3]
        [('q_proj', 576, 576, 30), ('k_proj', 576, 192, 30), ('v_proj', 576, 192, 30)]
        >>> [l.name for l in linear_layers("gpt2")]
        ['c_attn', 'c_proj', 'c_fc', 'c_proj', 'lm_head']
    """
    cfg = resolve_config(model)
    kind = cfg.model_type
    if kind == "gpt2":
        d, n = cfg.n_embd, cfg.n_layer
        inner = getattr(cfg, "n_inner", None) or 4 * d
        return [
            LinearLayer("c_attn", d, 3 * d, True, n, "attention"),
            LinearLayer("c_proj", d, d, True, n, "attention"),
            LinearLayer("c_fc", d, inner, True, n, "mlp"),
            LinearLayer("c_proj", inner, d, True, n, "mlp"),
            LinearLayer("lm_head", d, cfg.vocab_size, False, 1, "head"),
        ]
    d, n, inter = cfg.hidden_size, cfg.num_hidden_layers, cfg.intermediate_size
    heads = cfg.num_attention_heads
    kv = getattr(cfg, "num_key_value_heads", None) or heads
    head_dim = getattr(cfg, "head_dim", None) or d // heads
    q_out, kv_out = heads * head_dim, kv * head_dim
    attn_bias = bool(getattr(cfg, "attention_bias", False))
    qkv_bias, o_bias = attn_bias, attn_bias
    if kind == "qwen2":  # Qwen2 always has biases on q, k, v and none on o
        qkv_bias, o_bias = True, False
    elif kind in ("mistral", "phi3"):
        qkv_bias = o_bias = False
    mlp_bias = bool(getattr(cfg, "mlp_bias", False)) if kind == "llama" else False
    if kind == "phi3":
        attention = [LinearLayer("qkv_proj", d, q_out + 2 * kv_out, False, n), LinearLayer("o_proj", q_out, d, False, n)]
        mlp = [LinearLayer("gate_up_proj", d, 2 * inter, False, n, "mlp"),
               LinearLayer("down_proj", inter, d, False, n, "mlp")]
    else:
        attention = [
            LinearLayer("q_proj", d, q_out, qkv_bias, n),
            LinearLayer("k_proj", d, kv_out, qkv_bias, n),
            LinearLayer("v_proj", d, kv_out, qkv_bias, n),
            LinearLayer("o_proj", q_out, d, o_bias, n),
        ]
        mlp = [
            LinearLayer("gate_proj", d, inter, mlp_bias, n, "mlp"),
            LinearLayer("up_proj", d, inter, mlp_bias, n, "mlp"),
            LinearLayer("down_proj", inter, d, mlp_bias, n, "mlp"),
        ]
    return [*attention, *mlp, LinearLayer("lm_head", d, cfg.vocab_size, False, 1, "head")]


def parameter_groups(model: str | Mapping[str, Any] | PretrainedConfig) -> dict[str, int]:
    """Return where the base model's parameters live; the values add up to the model's total.

    Groups: ``embeddings`` (token, plus learned positions for GPT-2), ``attention`` and ``mlp``
    (all layers, with biases), ``norms`` (every normalization layer, final one included) and
    ``lm_head`` (0 when tied to the embeddings: the same matrix is not counted twice).

    Example:
        >>> groups = parameter_groups("smollm2-135m")
        >>> groups["embeddings"], groups["lm_head"], sum(groups.values())
        (28311552, 0, 134515008)
    """
    cfg = resolve_config(model)
    layers = linear_layers(cfg)
    groups = {"embeddings": 0, "attention": 0, "mlp": 0, "norms": 0, "lm_head": 0}
    for layer in layers:
        if layer.group == "head":
            groups["lm_head"] = 0 if _tied(cfg) else layer.weights
        else:
            groups[layer.group] += layer.weights
    if cfg.model_type == "gpt2":
        d = cfg.n_embd
        groups["embeddings"] = (cfg.vocab_size + cfg.n_positions) * d
        groups["norms"] = (2 * cfg.n_layer + 1) * 2 * d  # LayerNorm: weight and bias
    else:
        d = cfg.hidden_size
        groups["embeddings"] = cfg.vocab_size * d
        groups["norms"] = (2 * cfg.num_hidden_layers + 1) * d  # RMSNorm: weight only
    return groups


@dataclass(frozen=True)
class ModelShape:
    """Every size of a model that the calculators need, resolved once from its configuration.

    ``linears`` are the linear layers of one kind each (:class:`LinearLayer`, ``lm_head``
    excluded; it is ``head``); ``sliding_window`` is the attention window of the layers that use
    one (None when every layer attends to the whole sequence) and ``sliding_layers`` how many
    layers do.

    Example:
        >>> s = model_shape("smollm2-135m")
        >>> s.hidden, s.heads, s.kv_heads, s.head_dim, s.tied, s.base_params
        (576, 9, 3, 64, True, 134515008)
        >>> model_shape("mistral-7b").sliding_window, model_shape("llama-2-7b").sliding_window is None
        (4096, True)
    """

    model_type: str
    hidden: int
    layers: int
    vocab: int
    tied: bool
    linears: tuple[LinearLayer, ...]
    head: LinearLayer
    groups: dict[str, int]
    intermediate: int = 0
    heads: int = 0
    kv_heads: int = 0
    head_dim: int = 0
    sliding_window: int | None = None
    sliding_layers: int = 0

    @property
    def base_params(self) -> int:
        """All parameters of the model (a tied output head counted once)."""
        return sum(self.groups.values())

    @property
    def linear_weights(self) -> int:
        """Weights of the linear layers without ``lm_head`` (what 4-bit quantization stores in 4 bits)."""
        return sum(layer.count * layer.in_features * layer.out_features for layer in self.linears)


def model_shape(model: str | os.PathLike | Mapping[str, Any] | PretrainedConfig) -> ModelShape:
    """Resolve a model's configuration once into a :class:`ModelShape`.

    Example:
        >>> [l.name for l in model_shape("llama-2-7b").linears]
        ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj']
    """
    cfg = resolve_config(model)
    layers = linear_layers(cfg)
    kind = cfg.model_type
    if kind == "gpt2":
        return ModelShape(kind, cfg.n_embd, cfg.n_layer, cfg.vocab_size, _tied(cfg), tuple(layers[:-1]), layers[-1],
                          parameter_groups(cfg), intermediate=getattr(cfg, "n_inner", None) or 4 * cfg.n_embd,
                          heads=cfg.n_head, kv_heads=cfg.n_head, head_dim=cfg.n_embd // cfg.n_head)
    heads = cfg.num_attention_heads
    window = getattr(cfg, "sliding_window", None)
    layer_types = getattr(cfg, "layer_types", None)
    if not window:
        window, sliding = None, 0
    elif layer_types:
        sliding = sum(1 for t in layer_types if t == "sliding_attention")
    else:
        sliding = cfg.num_hidden_layers if kind == "mistral" else 0
    return ModelShape(
        kind, cfg.hidden_size, cfg.num_hidden_layers, cfg.vocab_size, _tied(cfg), tuple(layers[:-1]), layers[-1],
        parameter_groups(cfg), intermediate=cfg.intermediate_size, heads=heads,
        kv_heads=getattr(cfg, "num_key_value_heads", None) or heads,
        head_dim=getattr(cfg, "head_dim", None) or cfg.hidden_size // heads,
        sliding_window=window if sliding else None, sliding_layers=sliding)


def _module_names(cfg: PretrainedConfig) -> list[str]:
    return list(dict.fromkeys(layer.name for layer in linear_layers(cfg)))


def default_targets(model: str | Mapping[str, Any] | PretrainedConfig) -> tuple[str, ...]:
    """Return the default LoRA targets for a model: q_proj and v_proj, or the fused attention input.

    Example:
        >>> default_targets("mistral-7b"), default_targets("gpt2")
        (('q_proj', 'v_proj'), ('c_attn',))
    """
    return _OTHER_DEFAULT_TARGETS.get(resolve_config(model).model_type, DEFAULT_TARGETS)


def resolve_targets(model: str | Mapping[str, Any] | PretrainedConfig,
                    targets: str | Iterable[str] | None = None) -> tuple[str, ...]:
    """Return the module names LoRA targets, as ``peft`` resolves them.

    ``None`` means :func:`default_targets`; ``"all-linear"`` every linear layer except
    ``lm_head``; a string with commas is split; otherwise the names must be module names the
    model has (a name matches that module in every layer, as in ``peft``).

    Example:
        >>> resolve_targets("gpt2", "all-linear")
        ('c_attn', 'c_proj', 'c_fc')
        >>> resolve_targets("llama-2-7b", "q_proj,v_proj")
        ('q_proj', 'v_proj')
    """
    cfg = resolve_config(model)
    have = _module_names(cfg)
    if targets is None:
        return default_targets(cfg)
    if isinstance(targets, str):
        if targets.strip().lower() == ALL_LINEAR:
            return tuple(name for name in have if name != "lm_head")
        targets = targets.split(",")
    names = tuple(dict.fromkeys(str(t).strip() for t in targets))
    if not names or "" in names:
        raise ValueError(f"targets must name at least one module (or be {ALL_LINEAR!r}); this model has: {', '.join(have)}")
    unknown = [name for name in names if name not in have]
    if unknown:
        raise ValueError(f"this {cfg.model_type} model has no module {', '.join(map(repr, unknown))}; "
                         f"its linear modules are: {', '.join(have)} (or use {ALL_LINEAR!r})")
    return names


@dataclass
class ParamCount:
    """The parameters of a model with a LoRA adapter, as :func:`count_parameters` computed them.

    ``base`` is the model without adapter; ``trainable`` the adapter (LoRA A and B, and DoRA's
    magnitude vectors when ``dora``); ``total``
    is both together and ``percent`` is ``100 * trainable / total``: the two numbers and the
    share that ``peft``'s ``print_trainable_parameters`` shows. ``by_module`` maps each targeted
    module name to its trainable parameters (all layers together).

    Example:
        >>> c = count_parameters("smollm2-135m", rank=8, targets="all-linear")
        >>> c.base, c.trainable, c.by_module["q_proj"]
        (134515008, 2442240, 276480)
        >>> c.adapter_bytes("fp32")
        9768960
    """

    model: str
    rank: int
    targets: tuple[str, ...]
    base: int
    trainable: int
    by_module: dict[str, int] = field(default_factory=dict)
    dora: bool = False

    @property
    def total(self) -> int:
        """All parameters with the adapter attached (``peft``'s "all params")."""
        return self.base + self.trainable

    @property
    def percent(self) -> float:
        """Trainable share of all parameters, in percent."""
        return 100 * self.trainable / self.total

    def adapter_bytes(self, dtype: str = "fp32") -> int:
        """Bytes of the adapter's tensors stored in ``dtype`` (``fp32``, ``bf16`` or ``fp16``).

        A saved ``adapter_model.safetensors`` is this plus a small header (names and shapes).
        """
        return self.trainable * dtype_bytes(dtype)

    def base_bytes(self, dtype: str = "fp32") -> int:
        """Bytes of the full model's weights in ``dtype`` (what a full fine-tune saves)."""
        return self.base * dtype_bytes(dtype)

    def rows(self) -> list[tuple[str, str]]:
        """Return the table as ``(label, value)`` rows, numbers with thousands separators."""
        rows = [("model", self.model), ("rank", str(self.rank)), ("targets", ", ".join(self.targets))]
        if self.dora:
            rows.append(("DoRA", "yes (+ one magnitude per output row)"))
        rows += [(f"  {name}", f"{n:,}") for name, n in self.by_module.items()]
        rows += [
            ("trainable", f"{self.trainable:,}"),
            ("total", f"{self.total:,}"),
            ("trainable %", f"{self.percent:.4f}%"),
            ("adapter (fp32)", format_bytes(self.adapter_bytes("fp32"))),
            ("adapter (bf16)", format_bytes(self.adapter_bytes("bf16"))),
        ]
        return rows

    def table(self) -> str:
        """Return :meth:`rows` as an aligned plain-text table (what the CLI prints)."""
        rows = self.rows()
        width = max(len(label) for label, _ in rows)
        return "\n".join(f"{label:<{width}} : {value}" for label, value in rows)


def dtype_bytes(dtype: str) -> int:
    """Return the bytes per number of ``dtype`` (``fp32``, ``bf16`` or ``fp16``).

    Example:
        >>> dtype_bytes("bf16")
        2
    """
    return DTYPE_BYTES[one_of("dtype", dtype, DTYPE_BYTES)]

def format_bytes(n: int) -> str:
    """Return a byte count in binary units (KiB, MiB, GiB: powers of 1024), as the whole course shows them.

    Example:
        >>> format_bytes(9_768_960), format_bytes(512), format_bytes(13_476_831_232)
        ('9.32 MiB', '512 B', '12.55 GiB')
    """
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n} B"


def count_parameters(model: str | Mapping[str, Any] | PretrainedConfig, rank: int = 8,
                     targets: str | Iterable[str] | None = None, dora: bool = False) -> ParamCount:
    """Count the parameters LoRA trains at ``rank`` on ``targets``, without building the model.

    Args:
        model: a registry name (see :func:`registry_names`), a config dict or a transformers config.
        rank: LoRA's ``r``, a positive integer no larger than any targeted layer's smaller side.
        targets: module names (e.g. ``("q_proj", "v_proj")`` or ``"q_proj,v_proj"``), or
            ``"all-linear"`` (every linear layer except ``lm_head``, as in ``peft``), or None
            for :func:`default_targets` (``q_proj, v_proj``; ``c_attn`` for GPT-2).
        dora: DoRA (``peft``'s ``use_dora=True``): each targeted layer also trains one magnitude
            per output row.

    Raises:
        ValueError: bad model, rank or targets; the message says what is accepted.

    Example:
        >>> count_parameters("llama-2-7b", 8).trainable
        4194304
        >>> count_parameters("llama-2-7b", 8, dora=True).trainable   # + 32 layers x (4096 + 4096)
        4456448
        >>> count_parameters("llama-2-7b", 0)
        Traceback (most recent call last):
        ...
        ValueError: rank must be a positive integer, got 0
    """
    positive_int("rank", rank)
    cfg = resolve_config(model)
    names = resolve_targets(cfg, targets)
    chosen = [layer for layer in linear_layers(cfg) if layer.name in names]
    narrowest = min(chosen, key=lambda layer: min(layer.in_features, layer.out_features))
    smallest = min(narrowest.in_features, narrowest.out_features)
    if rank > smallest:
        raise ValueError(f"rank {rank} is larger than {narrowest.name}'s smaller dimension "
                         f"({narrowest.in_features} x {narrowest.out_features}); with these targets "
                         f"the rank can be at most {smallest}")
    by_module: dict[str, int] = {}
    for layer in chosen:
        by_module[layer.name] = by_module.get(layer.name, 0) + layer.lora_parameters(rank, dora)
    label = model if isinstance(model, str) else getattr(cfg, "name_or_path", "") or cfg.model_type
    return ParamCount(model=label, rank=rank, targets=names, base=sum(parameter_groups(cfg).values()),
                      trainable=sum(by_module.values()), by_module=by_module, dora=bool(dora))


def build_on_meta(model: str | Mapping[str, Any] | PretrainedConfig):
    """Build the real ``transformers`` causal-LM model on the meta device: shapes, no memory.

    Useful to check the analytical counts (``peft`` counts parameters on it) and to look at the
    module tree. A 7B model takes a fraction of a second.

    Example:
        >>> m = build_on_meta("smollm2-135m")
        >>> sum(p.numel() for p in m.parameters()), next(m.parameters()).device.type
        (134515008, 'meta')
    """
    import torch
    from transformers import AutoModelForCausalLM

    cfg = resolve_config(model)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(cfg)


class CommandLineParser(argparse.ArgumentParser):
    """An ``argparse`` parser whose errors are one line on stderr (``error: ...``) and exit status 2.

    The course's commands (``params``, ``memory``, ``route``) use it, so that a bad value never
    prints a usage block or a traceback.

    Example:
        >>> parser = CommandLineParser(prog="demo")
        >>> from lessonlib.validation import positive_int_arg
        >>> _ = parser.add_argument("--rank", type=positive_int_arg)
        >>> parser.parse_args(["--rank", "0"])
        Traceback (most recent call last):
        ...
        SystemExit: 2
    """

    def error(self, message: str) -> NoReturn:
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(2)


def run_command(parser: argparse.ArgumentParser, argv: list[str] | None, command: Any) -> int:
    """Parse ``argv`` and call ``command(args)``; a ``ValueError`` becomes one line on stderr and status 2.

    Example:
        >>> def fail(args):
        ...     raise ValueError("rank is too large")
        >>> run_command(CommandLineParser(prog="demo"), [], fail)
        2
    """
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a bad value (2, already reported in one line)
        return exc.code if isinstance(exc.code, int) else 2
    try:
        return command(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


MODEL_HELP = "a registry name (see `python -m lessonlib params --list`), or a config.json file or a folder holding one"
"""Help text of the ``--model`` option shared by the commands."""


def main(argv: list[str] | None = None) -> int:
    """Command line: ``python -m lessonlib params --model NAME|PATH --rank R --targets a,b | all-linear``.

    Prints the table of :meth:`ParamCount.table`; ``--list`` prints the registry. ``--model``
    also takes a ``config.json`` file or a folder holding one. Bad input prints one line on
    stderr and returns 2.

    Example:
        >>> main(["--model", "llama-2-7b", "--rank", "8"])  # doctest: +ELLIPSIS
        model          : llama-2-7b
        ...
        trainable      : 4,194,304
        ...
        0
    """
    parser = CommandLineParser(prog="python -m lessonlib params",
                               description="Parameter counts for LoRA on a model (computed from its config).")
    parser.add_argument("--model", default="smollm2-135m", help=MODEL_HELP + "; default smollm2-135m")
    parser.add_argument("--rank", "-r", type=positive_int_arg, default=8, help="LoRA rank r (default 8)")
    parser.add_argument("--targets", default=None,
                        help="comma-separated module names, or all-linear (default q_proj,v_proj; c_attn for gpt2)")
    parser.add_argument("--dora", action="store_true", help="DoRA: add the magnitude vectors (use_dora=True)")
    parser.add_argument("--list", action="store_true", help="list the models in the registry and exit")

    def command(args: argparse.Namespace) -> int:
        if args.list:
            for name in registry_names():
                print(name)
            return 0
        print(count_parameters(args.model, args.rank, args.targets, dora=args.dora).table())
        return 0

    return run_command(parser, argv, command)


if __name__ == "__main__":
    sys.exit(main())
