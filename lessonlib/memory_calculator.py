"""Lesson 05's pictures of training memory: stacked bars per method, and the interactive calculator.

:func:`draw_breakdowns` draws one stacked bar per :class:`~lessonlib.memory.MemoryBreakdown`
(weights, quantization state, autocast copies, gradients, optimizer state, activations, and the
CUDA runtime as a hatched block of its own) with the GPU's memory as a line, in GiB; the notebook
uses it for measured and estimated figures, and the calculator for its chart.

:func:`memory_calculator` is the interactive version (ipywidgets): GPU memory, model, method,
precision recipe, rank, batch, sequence length and gradient checkpointing; the chart redraws and a
line says whether it fits.

For browser tests: the widgets' descriptions are ``"GPU (GiB)"``, ``"model"``, ``"method"``,
``"precision"``, ``"rank"``, ``"batch"``, ``"seq length"`` and ``"grad. checkpointing"``; the
result is the text ``lora: 17.4 GiB of 12 GiB: does not fit`` of an HTML widget with the CSS class
``memory-result``.

Example:
    >>> calc = memory_calculator(gpu_gb=12, model="llama-2-7b", method="qlora", seq=512)
    >>> calc.result_text()
    'qlora: 10.2 GiB of 12 GiB: fits'
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from typing import Any

from lessonlib.memory import (ACTIVATION_MODEL_TYPES, COMPONENT_LABELS, COMPONENTS, DEFAULT_PRECISION, METHODS,
                              PRECISIONS, GiB, MemoryBreakdown, estimate_training_memory)
from lessonlib.widgets import figure_png
from lessonlib.validation import int_between, number_in, one_of

RESULT_CLASS = "memory-result"
"""CSS class of the HTML widget that shows ``METHOD: X GiB of Y GiB: fits`` (for browser tests)."""

COLORS = {"frozen_weights": "#9e9e9e", "quant_state": "#5c6bc0", "trainable_weights": "#ffa726",
          "weight_copies": "#ffe082", "gradients": "#ef5350", "optimizer_state": "#ab47bc",
          "activations": "#26a69a", "runtime": "#eeeeee"}
"""One colour per component, the same in every chart of the course."""

SEQ_LENGTHS = (128, 256, 512, 1024, 2048, 4096, 8192)
"""Sequence lengths offered by the calculator."""


def draw_breakdowns(ax: Any, breakdowns: Mapping[str, MemoryBreakdown], gpu_memory_gb: float | None = None,
                    title: str = "") -> None:
    """Draw one stacked bar (in GiB) per breakdown on a matplotlib axis; a dashed line at the GPU's memory.

    The CUDA runtime is drawn hatched on top, apart from the tensors; components that are zero
    in every bar are left out of the legend.

    Example:
        >>> from matplotlib.figure import Figure
        >>> ax = Figure().subplots()
        >>> draw_breakdowns(ax, {"a": MemoryBreakdown(activations=GiB)}, gpu_memory_gb=2)
        >>> [float(b.get_height()) for b in ax.patches if b.get_height() > 0]
        [1.0]
    """
    names = list(breakdowns)
    bottoms = [0.0] * len(names)
    for kind in COMPONENTS:
        heights = [getattr(breakdowns[n], kind) / GiB for n in names]
        shown = any(heights)
        ax.bar(names, heights, bottom=bottoms, color=COLORS[kind], label=COMPONENT_LABELS[kind] if shown else None,
               hatch="//" if kind == "runtime" else None, edgecolor="#9e9e9e" if kind == "runtime" else None)
        bottoms = [b + h for b, h in zip(bottoms, heights)]
    for x, total in enumerate(bottoms):
        ax.annotate(f"{total:.1f}", (x, total), xytext=(0, 2), textcoords="offset points", ha="center",
                    va="bottom", fontsize=8)
    if gpu_memory_gb is not None:   # labelled in the legend, so no text crosses a bar
        ax.axhline(gpu_memory_gb, color="black", linestyle="--", linewidth=1, label=f"GPU memory, {gpu_memory_gb:g} GiB")
    top = max([*bottoms, gpu_memory_gb or 0.0])
    ax.set_ylim(0, top * 1.15 if top > 0 else 1.0)  # from zero, with room for the totals above the bars
    ax.set_ylabel("GiB")
    if title:
        ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)  # beside the bars, never on them


class MemoryCalculator:
    """The widgets of :func:`memory_calculator` and the estimates they show.

    Attributes: ``gpu_gb``, ``model``, ``method``, ``precision``, ``rank``, ``batch``, ``seq``,
    ``checkpointing`` (the inputs), ``result`` (HTML with the CSS class :data:`RESULT_CLASS`), ``chart`` (a PNG of
    the three methods' stacked bars), ``widget`` (the box holding them) and ``estimates`` (the
    current :class:`~lessonlib.memory.MemoryBreakdown` per method; empty while the input is invalid).
    """

    def __init__(self, gpu_gb: float, model: str, method: str, rank: int, batch: int, seq: int,
                 checkpointing: bool, models: Sequence[str], precision: str = DEFAULT_PRECISION) -> None:
        import ipywidgets as w

        self.estimates: dict[str, MemoryBreakdown] = {}
        self.gpu_gb = w.BoundedFloatText(value=gpu_gb, min=1, max=1000, step=1, description="GPU (GiB)")
        self.model = w.Dropdown(options=list(models), value=model, description="model")
        self.method = w.ToggleButtons(options=list(METHODS), value=method, description="method")
        self.precision = w.Dropdown(options=list(PRECISIONS), value=precision, description="precision")
        self.rank = w.IntSlider(value=rank, min=1, max=256, description="rank", continuous_update=False)
        self.batch = w.IntSlider(value=batch, min=1, max=64, description="batch", continuous_update=False)
        self.seq = w.Dropdown(options=list(SEQ_LENGTHS), value=seq, description="seq length")
        self.checkpointing = w.Checkbox(value=checkpointing, description="grad. checkpointing")
        self.result = w.HTML()
        self.result.add_class(RESULT_CLASS)
        self.chart = w.Image(format="png")
        inputs = [self.gpu_gb, self.model, self.method, self.precision, self.rank, self.batch, self.seq,
                  self.checkpointing]
        self.widget = w.VBox([w.HBox(inputs[:2]), self.method, self.precision, w.HBox(inputs[4:6]),
                              w.HBox(inputs[6:]), self.result, self.chart])
        for item in inputs:
            item.observe(self.redraw, names="value")
        self.redraw()

    def result_text(self) -> str:
        """The text of the result widget, e.g. ``'qlora: 10.2 GiB of 12 GiB: fits'``."""
        return html.unescape(self.result.value.replace("<b>", "").replace("</b>", ""))

    def redraw(self, _change: Any = None) -> None:
        """Recompute the three estimates; redraw the result line and the chart."""
        try:
            self.estimates = {m: estimate_training_memory(
                self.model.value, m, batch=self.batch.value, seq=self.seq.value, rank=self.rank.value,
                precision=self.precision.value, gradient_checkpointing=self.checkpointing.value) for m in METHODS}
        except ValueError as exc:
            self.estimates = {}
            self.result.value = f"<b>error: {html.escape(str(exc))}</b>"
            self.chart.value = b""
            return
        chosen = self.estimates[self.method.value]
        verdict = "fits" if chosen.fits(self.gpu_gb.value) else "does not fit"
        self.result.value = (f"<b>{self.method.value}: {chosen.total_gib:.1f} GiB of {self.gpu_gb.value:g} GiB: "
                             f"{verdict}</b>")
        self._draw_chart()

    def _draw_chart(self) -> None:
        ckpt = ", checkpointing" if self.checkpointing.value else ""
        title = (f"{self.model.value}, {self.precision.value}, r={self.rank.value}, "
                 f"batch {self.batch.value} x {self.seq.value}{ckpt}")
        self.chart.value = figure_png(lambda ax: draw_breakdowns(ax, self.estimates, self.gpu_gb.value, title),
                                      figsize=(6, 3.2))

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)


def memory_calculator(gpu_gb: float = 12, model: str = "llama-2-7b", method: str = "qlora", rank: int = 16,
                      batch: int = 1, seq: int = 512, checkpointing: bool = False,
                      models: Sequence[str] | None = None, precision: str = DEFAULT_PRECISION) -> MemoryCalculator:
    """Return the interactive training-memory calculator (display it, or ``display(calc.widget)``).

    Every figure comes from :func:`lessonlib.memory.estimate_training_memory` on a GPU (CUDA
    runtime included), AdamW, LoRA on all linear layers, QLoRA with NF4 and double quantization,
    and the chosen precision recipe (default ``amp-bf16``).

    Raises:
        ValueError: a model not among ``models``, a method, precision, rank, batch or length the
            widgets do not offer.

    Example:
        >>> calc = memory_calculator(gpu_gb=24, model="llama-2-7b", method="lora", seq=512)
        >>> calc.result_text()
        'lora: 17.4 GiB of 24 GiB: fits'
        >>> calc.gpu_gb.value = 16
        >>> calc.result_text()
        'lora: 17.4 GiB of 16 GiB: does not fit'
    """
    from lessonlib.params import REGISTRY

    if models is None:
        models = [name for name, cfg in REGISTRY.items() if cfg.get("model_type") in ACTIVATION_MODEL_TYPES]
    models = list(models)
    one_of("model", model, models)
    one_of("method", method, METHODS)
    one_of("precision", precision, PRECISIONS)
    one_of("seq", seq, SEQ_LENGTHS)
    int_between("rank", rank, 1, 256)
    int_between("batch", batch, 1, 64)
    number_in("gpu_gb", gpu_gb, 1, 1000, high_open=False)
    return MemoryCalculator(float(gpu_gb), model, method, rank, batch, seq, checkpointing, models, precision)
