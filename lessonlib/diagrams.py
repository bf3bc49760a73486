"""Diagrams drawn from the lessons' own objects: the LoRA and QLoRA forward paths, and what each
training method stores.

* :func:`lora_forward_diagram`: ``x`` goes through the frozen ``W`` and, beside it, through the
  adapter ``A`` then ``B`` and the scaling ``α / r``; the two results are summed. Every shape printed
  on it is read from the tensors (or shapes) it is given, in the lesson's ``x @ W`` notation
  (``ΔW = A @ B``) or in ``peft``'s (``lora_A.weight`` is ``r × in``, ``lora_B.weight`` ``out × r``).
* :func:`qlora_forward_diagram`: the same with a 4-bit base: the stored codes and block scales are
  dequantized to the compute dtype for each matrix product, the adapter stays in higher precision;
  the bits per weight come from :func:`lessonlib.quantization.bits_per_parameter`.
* :func:`memory_diagram`: one square per method (full fine-tuning, LoRA, QLoRA, ...) whose area is
  its total training memory, cut into boxes whose areas are the bytes of each component of a
  :class:`lessonlib.memory.MemoryBreakdown`; every box is drawn to the same scale.

The three share one palette (:data:`PALETTE`): frozen base grey, trainable adapter orange, quantized
base indigo, the same colours as lesson 05's bar charts (:data:`lessonlib.memory_calculator.COLORS`).
They have no axes, draw no random numbers, and return the matplotlib ``Figure`` (drawn with
``pyplot``, so a notebook cell shows it with ``plt.show()``); pass ``ax=`` to draw on an axis of
your own instead. Each text artist that carries a number has a ``gid``; :func:`diagram_labels`
returns them, so a lesson can assert that its picture shows its own tensors' shapes.

Example:
    >>> import matplotlib.pyplot as plt
    >>> fig = lora_forward_diagram((8, 8), (8, 2), (2, 8))
    >>> diagram_labels(fig)["A"]
    'A: 8 × 2  (d_in × r)'
    >>> plt.close(fig)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from lessonlib.memory import COMPONENT_LABELS, COMPONENTS, GiB, MiB, MemoryBreakdown
from lessonlib.memory_calculator import COLORS
from lessonlib.quantization import DTYPES, TORCH_DTYPE_NAMES, bits_per_parameter
from lessonlib.validation import one_of, positive_int, positive_number

PALETTE = {
    "frozen": COLORS["frozen_weights"],
    "trainable": COLORS["trainable_weights"],
    "quantized": COLORS["quant_state"],
    "scales": "#9fa8da",
    "compute": "#e8eaf6",
    "line": "#424242",
}
"""The diagrams' colours: frozen base, trainable adapter, quantized base (the 4-bit codes), their
block scales, the temporary dequantized weight, and arrows."""

CONVENTIONS = ("x @ W", "peft")
"""How :func:`lora_forward_diagram` reads its shapes: the lesson's row-vector ``x @ W`` with
``ΔW = A @ B`` (``W``: d_in × d_out, ``A``: d_in × r, ``B``: r × d_out), or ``peft``'s ``nn.Linear``
layout (``base_layer.weight``: out × in, ``lora_A.weight``: r × in, ``lora_B.weight``: out × r)."""

# per convention: the matrices' names, their shapes' meanings, and the title without / with alpha
_LORA_LAYOUTS = {
    "x @ W": (("W", "A", "B"), ("d_in × d_out", "d_in × r", "r × d_out"),
              ("h = x @ W + x @ A @ B", "h = x @ W + (α/r) · x @ A @ B")),
    "peft": (("base_layer.weight", "lora_A.weight", "lora_B.weight"), ("out × in", "r × in", "out × r"),
             ("h = base_layer(x) + lora_B(lora_A(x))", "h = base_layer(x) + lora_B(lora_A(x)) · α/r")),
}

METHOD_NAMES = {"full": "full fine-tuning", "lora": "LoRA", "qlora": "QLoRA"}
"""Headings of :func:`memory_diagram` for the method names of :data:`lessonlib.memory.METHODS`."""

CODE_BITS = 4
"""Bits of one stored 4-bit code (NF4 or FP4), before its share of the block scales."""

_Y_TOP, _Y_BOT = 2.75, 1.25  # the two paths of the forward diagrams, in inches from the bottom
_LEFT = 1.5                  # where the boxes start, right of the input x


# ------------------------------------------------------------------------------------------------
# checking the inputs
# ------------------------------------------------------------------------------------------------


def _shape(name: str, value: Any, ndim: int | None = 2) -> tuple[int, ...]:
    """The shape of a tensor (anything with ``.shape``) or of a sequence of sizes, checked."""
    raw = value.shape if hasattr(value, "shape") else value
    if isinstance(raw, (str, bytes)) or not isinstance(raw, Sequence):
        raise ValueError(f"{name} must be a tensor or a shape (a tuple of sizes), got {type(value).__name__}")
    if any(isinstance(n, bool) or not isinstance(n, int) and not hasattr(n, "__index__") for n in raw):
        raise ValueError(f"{name}'s shape must hold integers, got {tuple(raw)!r}")
    shape = tuple(int(n) for n in raw)
    if ndim is not None and len(shape) != ndim:
        raise ValueError(f"{name} must be a {ndim}-D matrix, got shape {shape}")
    if ndim is None and not shape:
        raise ValueError(f"{name} must have at least one dimension, got shape {shape}")
    return shape


def _check_sizes(name: str, shape: tuple[int, ...], meaning: str) -> None:
    if any(n < 1 for n in shape):
        raise ValueError(f"{name} must have positive sizes ({meaning}), got shape {shape}")


def _check_alpha(alpha: Any) -> float | None:
    return None if alpha is None else positive_number("alpha (lora_alpha, or None)", alpha)


def _dtype_name(name: str, value: Any) -> str:
    """The course's name (``"fp32"``, ``"bf16"``, ``"fp16"``) of a dtype given as a word or a torch dtype."""
    text = str(value).removeprefix("torch.")
    by_torch = {torch_name: word for word, torch_name in TORCH_DTYPE_NAMES.items()}
    if text in DTYPES:
        return text
    if text in by_torch:
        return by_torch[text]
    accepted = ", ".join([*DTYPES, *(f"torch.{n}" for n in TORCH_DTYPE_NAMES.values())])
    raise ValueError(f"{name} must be one of {accepted}, got {value!r}")


def _io_labels(x: Any, d_in: int, d_out: int) -> tuple[str, str]:
    """The labels of the input and the output: ``x`` and ``h`` with their shapes (``…`` for unknown
    leading sizes when ``x`` is None), ``x`` checked against ``d_in``."""
    lead: tuple[Any, ...] = ("…",)
    if x is not None:
        shape = _shape("x", x, ndim=None)
        if shape[-1] != d_in:
            raise ValueError(f"x's last size must be the layer's input size {d_in}, got x of shape {shape}")
        lead = shape[:-1]
    return f"x\n{_dims(*lead, d_in)}", f"h\n{_dims(*lead, d_out)}"


def _dims(*sizes: Any) -> str:
    return " × ".join(str(n) for n in sizes)


def _scaling_text(alpha: float, r: int) -> str:
    return f"× α/r = {alpha / r:.4g}\nα = {alpha:g}, r = {r}"


# ------------------------------------------------------------------------------------------------
# drawing
# ------------------------------------------------------------------------------------------------


def _canvas(ax: Any, width: float, height: float) -> tuple[Any, Any]:
    """A figure of ``width × height`` inches whose data units are inches (or the given axis, same frame)."""
    if ax is None:
        import matplotlib.pyplot as plt

        fig = plt.figure(figsize=(width, height))
        ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, width)
    ax.set_ylim(0, height)
    ax.set_aspect("equal")
    ax.axis("off")
    return ax.figure, ax


def _text(ax: Any, x: float, y: float, text: str, *, gid: str | None = None, size: float = 9,
          bold: bool = False, ha: str = "center", va: str = "center", color: str = "black") -> Any:
    artist = ax.text(x, y, text, ha=ha, va=va, fontsize=size, fontweight="bold" if bold else "normal",
                     color=color, linespacing=1.3)
    if gid:
        artist.set_gid(gid)
    return artist


def _box(ax: Any, x0: float, yc: float, width: float, height: float, color: str, *, dashed: bool = False) -> None:
    from matplotlib.patches import FancyBboxPatch

    ax.add_patch(FancyBboxPatch((x0, yc - height / 2), width, height, boxstyle="round,pad=0,rounding_size=0.08",
                                facecolor=color, edgecolor=PALETTE["line"], linewidth=1,
                                linestyle="--" if dashed else "-"))


def _trapezoid(ax: Any, x0: float, x1: float, yc: float, h0: float, h1: float, color: str) -> None:
    """A layer that narrows (``h0 > h1``: d → r) or widens (``h0 < h1``: r → d)."""
    from matplotlib.patches import Polygon

    corners = [(x0, yc - h0 / 2), (x1, yc - h1 / 2), (x1, yc + h1 / 2), (x0, yc + h0 / 2)]
    ax.add_patch(Polygon(corners, closed=True, facecolor=color, edgecolor=PALETTE["line"], linewidth=1))


def _arrow(ax: Any, *points: tuple[float, float]) -> None:
    """A line through ``points`` with an arrow head on its last segment."""
    from matplotlib.patches import FancyArrowPatch

    if len(points) > 2:
        xs, ys = zip(*points[:-1])
        ax.plot(xs, ys, color=PALETTE["line"], linewidth=1.2, solid_capstyle="butt")
    ax.add_patch(FancyArrowPatch(points[-2], points[-1], arrowstyle="-|>", mutation_scale=12,
                                 color=PALETTE["line"], linewidth=1.2, shrinkA=0, shrinkB=0))


def _sum_node(ax: Any, x: float, y: float, radius: float = 0.22) -> None:
    from matplotlib.patches import Circle

    ax.add_patch(Circle((x, y), radius, facecolor="white", edgecolor=PALETTE["line"], linewidth=1.2))
    _text(ax, x, y, "+", size=14, bold=True)


def _input_and_output(ax: Any, x_label: str, h_label: str, x_sum: float, box_starts: tuple[float, float]) -> None:
    """``x`` on the left, forked into both paths; the sum on the top path and ``h`` after it."""
    mid, fork = (_Y_TOP + _Y_BOT) / 2, _LEFT - 0.35
    _text(ax, 0.5, mid, x_label, gid="x", size=9.5)
    ax.plot([0.98, fork], [mid, mid], color=PALETTE["line"], linewidth=1.2)
    _arrow(ax, (fork, mid), (fork, _Y_TOP), (box_starts[0], _Y_TOP))
    _arrow(ax, (fork, mid), (fork, _Y_BOT), (box_starts[1], _Y_BOT))
    _sum_node(ax, x_sum, _Y_TOP)
    _arrow(ax, (x_sum + 0.22, _Y_TOP), (x_sum + 0.5, _Y_TOP))
    _text(ax, x_sum + 1.0, _Y_TOP, h_label, gid="h", size=9.5)


def _adapter_path(ax: Any, a_label: str, b_label: str, alpha: float | None, r: int, x_sum: float) -> None:
    """The adapter path on the bottom line: A narrows to r, B widens back, × α/r, up into the sum."""
    a0, a1, b0, b1 = _LEFT, _LEFT + 1.6, _LEFT + 2.4, _LEFT + 4.0
    for (x0, x1, h0, h1), symbol, label, gid in (((a0, a1, 0.9, 0.4), "A", a_label, "A"),
                                                 ((b0, b1, 0.4, 0.9), "B", b_label, "B")):
        _trapezoid(ax, x0, x1, _Y_BOT, h0, h1, PALETTE["trainable"])
        _text(ax, (x0 + x1) / 2, _Y_BOT + 0.08, symbol, size=12, bold=True)
        _text(ax, (x0 + x1) / 2, _Y_BOT - 0.13, "trainable", size=7.5)
        _text(ax, (x0 + x1) / 2, _Y_BOT - 0.52, label, gid=gid, size=8.5, va="top")
    _arrow(ax, (a1, _Y_BOT), (b0, _Y_BOT))
    end = b1
    if alpha is not None:
        s0, width = b1 + 0.55, 1.25
        _arrow(ax, (b1, _Y_BOT), (s0, _Y_BOT))
        _box(ax, s0, _Y_BOT, width, 0.62, "white")
        _text(ax, s0 + width / 2, _Y_BOT, _scaling_text(alpha, r), gid="scale", size=8.5)
        end = s0 + width
    _arrow(ax, (end, _Y_BOT), (x_sum, _Y_BOT), (x_sum, _Y_TOP - 0.22))


def diagram_labels(fig: Any) -> dict[str, str]:
    """The texts of a diagram that carry numbers, by name (``"W"``, ``"A"``, ``"B"``, ``"x"``, ...).

    The names are the ``gid`` of each text artist; :func:`lora_forward_diagram`,
    :func:`qlora_forward_diagram` and :func:`memory_diagram` list theirs in their docstrings.

    Example:
        >>> import matplotlib.pyplot as plt
        >>> fig = lora_forward_diagram((8, 8), (8, 2), (2, 8), alpha=4)
        >>> sorted(diagram_labels(fig))
        ['A', 'B', 'W', 'caption', 'h', 'scale', 'title', 'x']
        >>> plt.close(fig)
    """
    return {t.get_gid(): t.get_text() for ax in fig.axes for t in ax.texts if t.get_gid()}


# ------------------------------------------------------------------------------------------------
# LoRA
# ------------------------------------------------------------------------------------------------


def lora_forward_diagram(W: Any, A: Any, B: Any, *, alpha: float | None = None, x: Any = None,
                         convention: str = "x @ W", ax: Any = None) -> Any:
    """Draw a LoRA layer's forward pass: ``x`` through the frozen ``W``, and through ``A``, ``B`` and
    ``α / r`` beside it, summed into ``h``; return the figure (10 × 3.9 inches).

    The shapes shown are those of ``W``, ``A`` and ``B`` (tensors, or shapes as tuples); the rank
    ``r`` is their inner size. ``convention`` says how to read them (:data:`CONVENTIONS`):

    * ``"x @ W"`` (the lesson's demo): ``W`` is d_in × d_out, ``A`` d_in × r, ``B`` r × d_out,
      ``h = x @ W + (α/r) · x @ A @ B``;
    * ``"peft"``: ``W`` is ``base_layer.weight`` (out × in), ``A`` is ``lora_A.weight`` (r × in),
      ``B`` is ``lora_B.weight`` (out × r), ``h = base_layer(x) + lora_B(lora_A(x)) · α/r``.

    Args:
        W, A, B: the frozen weight and the two adapter matrices (tensors or shapes).
        alpha: ``lora_alpha``; None draws no scaling (the plain ``W + A @ B`` of the demo).
        x: the input (tensor or shape), to show its batch sizes; its last size must be d_in.
        convention: one of :data:`CONVENTIONS`.
        ax: an axis to draw on (its limits become 10 × 3.9 units); None makes a new figure.

    Labels (:func:`diagram_labels`): ``title``, ``x``, ``W``, ``A``, ``B``, ``scale`` (with
    ``alpha``), ``h`` and ``caption`` (how many numbers train).

    Raises:
        ValueError: a shape that is not 2-D or not positive, inner sizes that do not match
            (``A``'s ``r`` against ``B``'s), ``A`` or ``B`` not matching ``W``, ``r < 1``, a
            non-positive ``alpha``, an ``x`` of the wrong size, an unknown convention.

    Example:
        >>> import torch, matplotlib.pyplot as plt
        >>> W, A, B = torch.zeros(8, 8), torch.zeros(8, 2), torch.zeros(2, 8)
        >>> fig = lora_forward_diagram(W, A, B, alpha=4, x=torch.zeros(4, 8))
        >>> labels = diagram_labels(fig)
        >>> labels["W"], labels["B"], labels["h"]
        ('W: 8 × 8  (d_in × d_out)', 'B: 2 × 8  (r × d_out)', 'h\\n4 × 8')
        >>> labels["scale"]
        '× α/r = 2\\nα = 4, r = 2'
        >>> plt.close(fig)
        >>> lora_forward_diagram(W, A, torch.zeros(3, 8))
        Traceback (most recent call last):
        ...
        ValueError: the inner sizes must match: A is 8 × 2 (r = 2), so B must have 2 rows, got B of shape (3, 8)
    """
    one_of("convention", convention, CONVENTIONS)
    w, a, b = _shape("W", W), _shape("A", A), _shape("B", B)
    names, meanings, title = _LORA_LAYOUTS[convention]
    if convention == "x @ W":
        (d_in, d_out), (a_in, r), (b_r, b_out) = w, a, b
        rows, columns = "rows", "columns"
    else:  # peft's weights are the transposes: (out × in), (r × in), (out × r)
        (d_out, d_in), (r, a_in), (b_out, b_r) = w, a, b
        rows, columns = "columns", "rows"
    a_name, b_name = names[1], names[2]
    positive_int(f"the rank r ({a_name}'s {columns}, {a_name} is {_dims(*a)})", r)
    for name, shape, meaning in zip(names, (w, a, b), meanings):
        _check_sizes(name, shape, meaning)
    if b_r != r:
        raise ValueError(f"the inner sizes must match: {a_name} is {_dims(*a)} (r = {r}), so {b_name} must have {r} "
                         f"{rows}, got {b_name} of shape {b}")
    if a_in != d_in:
        raise ValueError(f"{a_name} must have {names[0]}'s {d_in} {rows} (d_in), got {a_name} of shape {a}")
    if b_out != d_out:
        raise ValueError(f"{b_name} must have {names[0]}'s {d_out} {columns} (d_out), got {b_name} of shape {b}")
    title = title[alpha is not None]
    alpha = _check_alpha(alpha)
    x_label, h_label = _io_labels(x, d_in, d_out)

    fig, ax = _canvas(ax, 10, 3.9)
    _text(ax, 5, 3.55, title, gid="title", size=12)
    x_sum = 8.45
    _box(ax, _LEFT, _Y_TOP, 4.0, 0.8, PALETTE["frozen"])
    _text(ax, _LEFT + 2.0, _Y_TOP + 0.14, f"{names[0]}: {_dims(*w)}  ({meanings[0]})", gid="W", size=9.5)
    _text(ax, _LEFT + 2.0, _Y_TOP - 0.16, "frozen: no gradient, no optimizer state", size=8)
    _arrow(ax, (_LEFT + 4.0, _Y_TOP), (x_sum - 0.22, _Y_TOP))
    _adapter_path(ax, f"{names[1]}: {_dims(*a)}  ({meanings[1]})", f"{names[2]}: {_dims(*b)}  ({meanings[2]})",
                  alpha, r, x_sum)
    _input_and_output(ax, x_label, h_label, x_sum, (_LEFT, _LEFT))
    trained, frozen = a[0] * a[1] + b[0] * b[1], w[0] * w[1]
    _text(ax, 5, 0.22, f"trained: {names[1]} and {names[2]}, {trained:,} numbers ({100 * trained / frozen:.3g}% of "
                       f"{names[0]}'s {frozen:,}); {names[0]} stays as it is", gid="caption", size=8.5)
    return fig


# ------------------------------------------------------------------------------------------------
# QLoRA
# ------------------------------------------------------------------------------------------------


def qlora_forward_diagram(shape: Any, rank: int, *, alpha: float | None = None, blocksize: int = 64,
                          double_quant: bool = True, nested_blocksize: int = 256, compute_dtype: Any = "bf16",
                          adapter_dtype: Any = "fp32", quant_type: str = "nf4", x: Any = None,
                          ax: Any = None) -> Any:
    """Draw a QLoRA layer's forward pass and return the figure (10 × 5.5 inches).

    The frozen weight is stored as 4-bit codes plus one absmax per block of ``blocksize`` weights
    (with ``double_quant``, those absmaxes as 8-bit codes with one fp32 scale per
    ``nested_blocksize`` of them); for every matrix product it is dequantized to ``compute_dtype``,
    used, and dropped. The adapter ``lora_A.weight`` (r × in) and ``lora_B.weight`` (out × r) stays
    in ``adapter_dtype`` and trains. The bits per stored weight are
    :func:`lessonlib.quantization.bits_per_parameter` of these settings.

    Args:
        shape: the layer's weight shape ``(out, in)`` as bitsandbytes keeps it
            (``layer.weight.quant_state.shape``), or a tensor of that shape.
        rank: LoRA's ``r``.
        alpha: ``lora_alpha``; None draws no scaling.
        blocksize, double_quant, nested_blocksize: the quantization state's ``blocksize``,
            ``nested`` and ``state2.blocksize``.
        compute_dtype, adapter_dtype: ``"fp32"``, ``"bf16"``, ``"fp16"`` or a torch dtype
            (e.g. ``layer.compute_dtype``, ``lora_A.weight.dtype``).
        quant_type: ``"nf4"`` or ``"fp4"`` (``quant_state.quant_type``).
        x: the input (tensor or shape), to show its batch sizes; its last size must be ``in``.
        ax: an axis to draw on (its limits become 10 × 5.5 units); None makes a new figure.

    Labels (:func:`diagram_labels`): ``title``, ``codes``, ``scales``, ``bits``, ``dequantize``,
    ``matmul``, ``x``, ``A``, ``B``, ``scale`` (with ``alpha``), ``h`` and ``caption``.

    Raises:
        ValueError: a bad shape or rank, block sizes that are not positive integers, an unknown
            dtype or quantization type, a non-positive ``alpha``, an ``x`` of the wrong size.

    Example:
        >>> import matplotlib.pyplot as plt
        >>> fig = qlora_forward_diagram((576, 576), rank=8, alpha=16)
        >>> labels = diagram_labels(fig)
        >>> labels["bits"]
        '= 4.127 bits per stored weight, against 16 in bf16'
        >>> labels["A"]
        'lora_A.weight: 8 × 576\\n(r × in), fp32'
        >>> plt.close(fig)
        >>> qlora_forward_diagram((576, 576), rank=8, compute_dtype="int8")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: compute_dtype must be one of fp32, bf16, fp16, torch.float32, ..., got 'int8'
    """
    out_f, in_f = _shape("shape", shape)
    _check_sizes("shape", (out_f, in_f), "out × in")
    r = positive_int("the rank r", rank)
    alpha = _check_alpha(alpha)
    one_of("quant_type", quant_type, ("nf4", "fp4"))
    if not isinstance(double_quant, bool):
        raise ValueError(f"double_quant must be True or False, got {double_quant!r}")
    bits = bits_per_parameter(blocksize, double_quant=double_quant, nested_blocksize=nested_blocksize)
    compute = _dtype_name("compute_dtype", compute_dtype)
    adapter = _dtype_name("adapter_dtype", adapter_dtype)
    x_label, h_label = _io_labels(x, in_f, out_f)
    plain_bits = {"fp32": 32, "bf16": 16, "fp16": 16}[compute]

    fig, ax = _canvas(ax, 10, 5.5)
    title = "h = x @ dequantize(codes, scales).T + lora_B(lora_A(x))" + ("" if alpha is None else " · α/r")
    _text(ax, 5, 5.22, title, gid="title", size=12)
    store_w, codes_y, scales_y = 3.9, 4.32, 3.58
    _text(ax, _LEFT, codes_y + 0.52, "stored in memory: the frozen weight, in 4 bits", size=9, bold=True, ha="left")
    _box(ax, _LEFT, codes_y, store_w, 0.62, PALETTE["quantized"])
    _text(ax, _LEFT + store_w / 2, codes_y, f"{quant_type.upper()} codes: {CODE_BITS} bits per weight\n"
                                            f"{_dims(out_f, in_f)} = {out_f * in_f:,} weights, 2 per byte",
          gid="codes", size=8.5, color="white")
    if double_quant:
        scales = (f"absmax: one per {blocksize} weights, as 8-bit codes\n"
                  f"+ one fp32 scale per {nested_blocksize} absmaxes (double quant.)")
    else:
        scales = f"absmax: one fp32 per {blocksize} weights\n(no double quantization)"
    _box(ax, _LEFT, scales_y, store_w, 0.62, PALETTE["scales"])
    _text(ax, _LEFT + store_w / 2, scales_y, scales, gid="scales", size=8.5)
    _text(ax, _LEFT + store_w / 2, scales_y - 0.5,
          f"= {bits:.4g} bits per stored weight, against {plain_bits} in {compute}", gid="bits", size=8.5)

    x_sum = 8.45
    d0, d_w, d_y, d_h = 6.0, 1.9, (codes_y + scales_y) / 2, 0.95
    _box(ax, d0, d_y, d_w, d_h, PALETTE["compute"], dashed=True)
    _text(ax, d0 + d_w / 2, d_y, f"dequantize to {compute}\n{_dims(out_f, in_f)}, for this\nproduct only",
          gid="dequantize", size=8.5)
    _arrow(ax, (_LEFT + store_w, codes_y), (d0, d_y + 0.2))
    _arrow(ax, (_LEFT + store_w, scales_y), (d0, d_y - 0.2))
    _box(ax, d0, _Y_TOP, d_w, 0.5, PALETTE["compute"])
    _text(ax, d0 + d_w / 2, _Y_TOP, f"x @ W.T in {compute}", gid="matmul", size=8.5)
    _arrow(ax, (d0 + d_w / 2, d_y - d_h / 2), (d0 + d_w / 2, _Y_TOP + 0.25))
    _arrow(ax, (d0 + d_w, _Y_TOP), (x_sum - 0.22, _Y_TOP))
    _adapter_path(ax, f"lora_A.weight: {_dims(r, in_f)}\n(r × in), {adapter}",
                  f"lora_B.weight: {_dims(out_f, r)}\n(out × r), {adapter}", alpha, r, x_sum)
    _input_and_output(ax, x_label, h_label, x_sum, (d0, _LEFT))
    trained = r * (in_f + out_f)
    _text(ax, 5, 0.22, f"trained: {trained:,} adapter numbers in {adapter}; the {compute} copy of W exists only "
                       f"while its product runs", gid="caption", size=8.5)
    return fig


# ------------------------------------------------------------------------------------------------
# memory
# ------------------------------------------------------------------------------------------------


def _bytes_text(n: int) -> str:
    if n >= GiB:
        return f"{n / GiB:.1f} GiB"
    if n >= MiB // 10:
        return f"{n / MiB:.1f} MiB"
    return "< 0.1 MiB"


def memory_diagram(breakdowns: Mapping[str, MemoryBreakdown], *, title: str = "", width: float = 10.0,
                   ax: Any = None) -> Any:
    """Draw what each method keeps in memory as squares whose areas are bytes; return the figure.

    One square per breakdown (e.g. ``{"full": ..., "lora": ..., "qlora": ...}`` from
    :func:`lessonlib.memory.estimate_training_memory` or :func:`~lessonlib.memory.measure_training_step`):
    its area is the total, and it is cut into horizontal boxes, one per non-zero component
    (:data:`lessonlib.memory.COMPONENTS`: frozen weights at the bottom, then quantization state,
    trainable weights, ...), each box's area the bytes of its component. All squares share one
    scale, so a square half the area holds half the bytes. Each box is named beside its square
    with its size in GiB (MiB below 1 GiB) in a list under its square, top box first, each with
    its colour.

    Args:
        breakdowns: method name -> :class:`~lessonlib.memory.MemoryBreakdown`; ``"full"``,
            ``"lora"`` and ``"qlora"`` get the headings of :data:`METHOD_NAMES`, other names are
            shown as given.
        title: a line above the squares (optional).
        width: the figure's width in inches (the largest square is at most 3.2 inches).
        ax: an axis to draw on (its limits become the figure's size in inches); None makes a new figure.

    Labels (:func:`diagram_labels`): ``"NAME/COMPONENT"`` for each box's label (e.g.
    ``"lora/gradients"``), ``"NAME"`` for each heading, ``title`` and ``caption``. Patches: each
    box is a ``Rectangle`` with the gid ``"NAME/COMPONENT"``, each square's outline ``"NAME"``.

    Raises:
        ValueError: no breakdowns, something that is not a MemoryBreakdown, a negative component,
            a breakdown of 0 bytes, or a width too small for the squares' lists side by side.

    Example:
        >>> import matplotlib.pyplot as plt
        >>> from lessonlib.memory import GiB, MemoryBreakdown
        >>> fig = memory_diagram({"full": MemoryBreakdown(trainable_weights=4 * GiB, gradients=4 * GiB),
        ...                       "lora": MemoryBreakdown(frozen_weights=2 * GiB, trainable_weights=GiB // 8)})
        >>> labels = diagram_labels(fig)
        >>> labels["full"], labels["lora/frozen_weights"], labels["lora/trainable_weights"]
        ('full fine-tuning: 8.0 GiB', 'frozen weights: 2.0 GiB', 'trainable weights: 128.0 MiB')
        >>> boxes = {p.get_gid(): p for p in fig.axes[0].patches if p.get_gid()}
        >>> area = lambda p: p.get_width() * p.get_height()
        >>> round(area(boxes["full/gradients"]) / area(boxes["lora/frozen_weights"]), 6)
        2.0
        >>> plt.close(fig)
    """
    from matplotlib.patches import Rectangle

    if not isinstance(breakdowns, Mapping) or not breakdowns:
        raise ValueError("breakdowns must be a non-empty mapping of method name -> MemoryBreakdown")
    for name, b in breakdowns.items():
        if not isinstance(b, MemoryBreakdown):
            raise ValueError(f"breakdowns[{name!r}] must be a MemoryBreakdown (from estimate_training_memory or "
                             f"measure_training_step), got {type(b).__name__}")
        negative = [c for c in COMPONENTS if getattr(b, c) < 0]
        if negative:
            raise ValueError(f"breakdowns[{name!r}] has negative bytes in {', '.join(negative)}")
        if b.total <= 0:
            raise ValueError(f"breakdowns[{name!r}] holds 0 bytes: there is nothing to draw")

    label_size, head_size, row = 9, 10.5, 0.22
    char_w = 0.6 * label_size / 72                          # inches per character, a generous average
    rows = {name: [(c, getattr(b, c)) for c in reversed(COMPONENTS) if getattr(b, c) > 0]   # top box first
            for name, b in breakdowns.items()}
    labels = {name: {c: f"{COMPONENT_LABELS.get(c, c.replace('_', ' '))}: {_bytes_text(v)}" for c, v in rows[name]}
              for name in breakdowns}
    heads = {name: f"{METHOD_NAMES.get(name, name)}: {_bytes_text(b.total)}" for name, b in breakdowns.items()}
    swatch, between, margin, max_side = 0.24, 0.45, 0.2, 3.0
    columns = {name: max(swatch + char_w * max(len(t) for t in labels[name].values()),
                         char_w * head_size / label_size * len(heads[name])) for name in breakdowns}
    roots = {name: math.sqrt(b.total) for name, b in breakdowns.items()}
    room = width - 2 * margin - between * (len(breakdowns) - 1)

    def blocks(scale: float) -> dict[str, float]:
        return {name: max(scale * roots[name], columns[name]) for name in breakdowns}

    scale = max_side / max(roots.values())                   # inches per sqrt(byte), shrunk until all fit
    while sum(blocks(scale).values()) > room and scale * max(roots.values()) > 0.5:
        scale *= 0.98
    if sum(blocks(scale).values()) > room:
        raise ValueError(f"width {width:g} inches is too small for {len(breakdowns)} squares and their labels; "
                         f"give at least {sum(blocks(scale).values()) + width - room:.1f}")
    sides = {name: scale * roots[name] for name in breakdowns}
    list_h = max(len(r) for r in rows.values()) * row
    bottom = 0.5 + list_h + 0.15                             # the squares stand on one line above their lists
    height = bottom + max(sides.values()) + 0.45 + (0.4 if title else 0)
    fig, ax = _canvas(ax, width, height)

    left = margin + (room - sum(blocks(scale).values())) / 2
    for name, b in breakdowns.items():
        side, block = sides[name], blocks(scale)[name]
        x0, y = left + (block - side) / 2, bottom + side
        for component, value in rows[name]:               # from the top of the square down
            h = side * value / b.total
            y -= h
            box = Rectangle((x0, y), side, h, facecolor=COLORS.get(component, "#bdbdbd"), edgecolor="white",
                            linewidth=0.6, hatch="//" if component == "runtime" else None)
            box.set_gid(f"{name}/{component}")
            ax.add_patch(box)
        outline = Rectangle((x0, bottom), side, side, fill=False, edgecolor=PALETTE["line"], linewidth=1)
        outline.set_gid(name)
        ax.add_patch(outline)
        _text(ax, left + block / 2, bottom + side + 0.2, heads[name], gid=name, size=head_size, bold=True)
        x_list = left + (block - columns[name]) / 2
        for i, (component, _) in enumerate(rows[name]):
            y_row = bottom - 0.15 - row * (i + 0.5)
            ax.add_patch(Rectangle((x_list, y_row - 0.07), 0.14, 0.14, facecolor=COLORS.get(component, "#bdbdbd"),
                                   edgecolor=PALETTE["line"], linewidth=0.5,
                                   hatch="//" if component == "runtime" else None))
            _text(ax, x_list + swatch, y_row, labels[name][component], gid=f"{name}/{component}", size=label_size,
                  ha="left")
        left += block + between
    if title:
        _text(ax, width / 2, height - 0.25, title, gid="title", size=11)
    _text(ax, width / 2, 0.22, "area = bytes: every box and square is drawn to the same scale",
          gid="caption", size=8.5, color="#424242")
    return fig
