"""Interactive calculators for the notebooks (ipywidgets).

:func:`lora_calculator` is lesson 03's parameter-count calculator: pick a model, a rank and the
target modules; the table and the chart redraw. Every number comes from
:func:`lessonlib.params.count_parameters`.

For browser tests: the rank slider's description is ``"rank"``, and the trainable count is the
text ``trainable: 4,194,304`` of an HTML widget that carries the CSS class ``lora-trainable``.

Example:
    >>> calc = lora_calculator("llama-2-7b")
    >>> calc.trainable_text()
    'trainable: 4,194,304'
"""

from __future__ import annotations

import html
from collections.abc import Callable, Sequence
from typing import Any

from lessonlib.params import ParamCount, count_parameters, default_targets, linear_layers, registry_names
from lessonlib.validation import int_between, one_of

TRAINABLE_CLASS = "lora-trainable"
"""CSS class of the HTML widget that shows ``trainable: N`` (for browser tests)."""


def figure_png(draw: Callable[[Any], None], figsize: tuple[float, float] = (5, 2.8), dpi: int = 80) -> bytes:
    """Return a PNG of one matplotlib Axes that ``draw(ax)`` fills: the picture of a chart widget.

    The calculators show their charts as PNG bytes in an ``Image`` widget rather than in an
    ``Output`` widget: no output messages, so they behave the same in JupyterLab, under nbval and
    in a plain script.

    Example:
        >>> figure_png(lambda ax: ax.plot([0, 1], [1, 0]))[:4]
        b'\\x89PNG'
    """
    from io import BytesIO

    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    draw(fig.subplots())
    fig.tight_layout()
    buffer = BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


class LoraCalculator:
    """The widgets of :func:`lora_calculator` and the count they show.

    Attributes: ``model`` (Dropdown), ``rank`` (IntSlider, description ``"rank"``), ``targets``
    (SelectMultiple of the model's linear modules), ``trainable`` (HTML, ``trainable: N``),
    ``table`` (HTML), ``chart`` (Image: a PNG bar chart), ``widget`` (the VBox holding them),
    ``count`` (the current :class:`~lessonlib.params.ParamCount`, None while the input is invalid).
    """

    def __init__(self, model: str, rank: int, targets: Sequence[str] | None, models: Sequence[str],
                 max_rank: int) -> None:
        import ipywidgets as w

        self.count: ParamCount | None = None
        self._updating = False
        self.model = w.Dropdown(options=list(models), value=model, description="model")
        self.rank = w.IntSlider(value=rank, min=1, max=max_rank, description="rank", continuous_update=False)
        self.targets = w.SelectMultiple(description="targets", rows=7)
        self.trainable = w.HTML()
        self.trainable.add_class(TRAINABLE_CLASS)
        self.table = w.HTML()
        self.chart = w.Image(format="png")
        self._set_target_options(targets)
        self.widget = w.VBox([w.HBox([self.model, self.rank]), self.targets, self.trainable,
                              w.HBox([self.table, self.chart])])
        self.model.observe(self._model_changed, names="value")
        self.rank.observe(self.redraw, names="value")
        self.targets.observe(self.redraw, names="value")
        self.redraw()

    def _set_target_options(self, targets: Sequence[str] | None) -> None:
        names = [layer.name for layer in linear_layers(self.model.value) if layer.group != "head"]
        self.targets.options = list(dict.fromkeys(names))
        self.targets.value = tuple(targets) if targets is not None else default_targets(self.model.value)

    def _model_changed(self, _change=None) -> None:
        self._updating = True  # changing the options empties the selection: no redraw in between
        try:
            self._set_target_options(None)
        finally:
            self._updating = False
        self.redraw()

    def trainable_text(self) -> str:
        """The text of the trainable-count widget, e.g. ``'trainable: 4,194,304'``."""
        return html.unescape(self.trainable.value.replace("<b>", "").replace("</b>", ""))

    def redraw(self, _change=None) -> None:
        """Recompute the count and redraw the trainable text, the table and the chart."""
        if self._updating:
            return
        try:
            self.count = count_parameters(self.model.value, self.rank.value, tuple(self.targets.value))
        except ValueError as exc:
            self.count = None
            self.trainable.value = f"<b>error: {html.escape(str(exc))}</b>"
            self.table.value = ""
            self.chart.value = b""
            return
        self.trainable.value = f"<b>trainable: {self.count.trainable:,}</b>"
        cells = "".join(f"<tr><td>{html.escape(k.strip())}</td><td style='text-align:right'>{html.escape(v)}</td></tr>"
                        for k, v in self.count.rows())
        self.table.value = f"<table>{cells}</table>"
        self._draw_chart()

    def _draw_chart(self) -> None:
        # Drawn to PNG bytes in an Image widget: no output messages, so it behaves the same in
        # JupyterLab, in nbval's kernel and outside Jupyter.
        count = self.count

        def draw(ax) -> None:
            ax.barh(list(count.by_module)[::-1], list(count.by_module.values())[::-1], color="tab:orange")
            ax.set_xlabel("trainable parameters (all layers)")
            ax.set_title(f"{count.model}, r = {count.rank}: {count.percent:.3f}% of {count.total:,}", fontsize=9)

        self.chart.value = figure_png(draw, figsize=(5, 2.8))

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)


def lora_calculator(model: str = "smollm2-135m", rank: int = 8, targets: Sequence[str] | None = None,
                    models: Sequence[str] | None = None, max_rank: int = 128) -> LoraCalculator:
    """Return the interactive LoRA parameter calculator (display it, or ``display(calc.widget)``).

    Args:
        model: the registry name selected at first.
        rank: the rank selected at first (the slider runs from 1 to ``max_rank``).
        targets: module names selected at first (default: the model's default targets).
        models: the names offered in the dropdown (default: the whole registry).

    Example:
        >>> calc = lora_calculator("smollm2-135m", rank=8)
        >>> calc.rank.value = 16
        >>> calc.trainable_text(), calc.count.trainable
        ('trainable: 921,600', 921600)
    """
    models = list(models) if models is not None else registry_names()
    one_of("model", model, models)
    int_between("rank", rank, 1, max_rank)
    return LoraCalculator(model, rank, targets, models, max_rank)
