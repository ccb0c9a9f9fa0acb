"""The course's figures: what ``GradientMonitor`` recorded, drawn so it reads in five seconds.

Every function takes the monitor's data (the monitor itself, or a list of its records:
``monitor.history``, ``monitor.activations``, ``monitor.histograms``), draws on ``ax``
when given (otherwise on a new figure) and returns the ``Axes`` (or the ``Figure`` for
multi-panel plots). Every figure has a title and labelled axes; values that span orders
of magnitude are on log scales. Layers are coloured from the input (dark) to the output
(yellow) in every figure; categories use the colour-blind-safe Okabe-Ito palette together
with a second cue (marker, line style or hatch), never red against green alone.

Each function draws under the course style, the file ``gradflow.mplstyle`` beside this
module, through ``plt.style.context``: importing this module or calling a plot function
leaves matplotlib's global settings (``rcParams``) as they were, and a function that raises
closes any figure it opened. ``use_course_style()`` applies the style to the whole session,
for notebooks that want their own figures to match (a global change, made on purpose).

    use_course_style()
    plot_gradient_flow(monitor)                  # bars per layer, one step
    plot_gradient_heatmap(monitor)               # layer x step
    plot_histograms(monitor, "hidden.0.linear")  # one layer's distribution over time
    plot_update_ratio(monitor)                   # |dW| / |W| with the 1e-3 line
    plot_activation_health(monitor)              # dead ReLUs and saturated tanh/sigmoid
    plot_dashboard(monitor)                      # four of the above in one figure
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import matplotlib as mpl
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure

from .monitor import to_matrix

UPDATE_RATIO_RULE = 1e-3  # Karpathy's rule of thumb for |dW| / |W| per step
STYLE = Path(__file__).with_name("gradflow.mplstyle")

# Okabe & Ito (2008), "Color Universal Design": distinguishable with every common form of
# colour blindness. Categories also differ by marker and line style (CATEGORY_STYLES).
OKABE_ITO = {
    "orange": "#E69F00", "sky blue": "#56B4E9", "bluish green": "#009E73", "yellow": "#F0E442",
    "blue": "#0072B2", "vermillion": "#D55E00", "reddish purple": "#CC79A7", "black": "#000000",
}
NONFINITE_COLOR = OKABE_ITO["vermillion"]  # NaN/Inf, always with a hatch or a cross as well
CATEGORY_STYLES = tuple(
    {"color": OKABE_ITO[c], "marker": m, "linestyle": ls}
    for c, m, ls in [("blue", "o", "-"), ("vermillion", "s", "--"), ("bluish green", "^", "-."),
                     ("orange", "D", ":"), ("reddish purple", "v", "-"), ("sky blue", "P", "--")]
)

_Plot = TypeVar("_Plot", bound=Callable)


def use_course_style() -> None:
    """Apply the course style (``gradflow.mplstyle``) to the whole session: 90 dpi (small
    committed notebooks), larger fonts, light grids, no top/right spines, constrained layout.

    The plot functions of this module use the style by themselves without changing any
    global setting; call this when a notebook's own figures should match them."""
    plt.style.use(STYLE)


def course_style() -> object:
    """A context manager under which figures get the course style, undone on exit:
    ``with course_style(): fig, ax = plt.subplots()``."""
    return plt.style.context(STYLE)


def category_style(index: int) -> dict:
    """Colour, marker and line style of category ``index`` (cycles after six)."""
    return dict(CATEGORY_STYLES[index % len(CATEGORY_STYLES)])


def _styled(plot: _Plot) -> _Plot:
    """Run ``plot`` under the course style; if it raises, close the figures it opened."""

    @functools.wraps(plot)
    def wrapper(*args, **kwargs):
        before = set(plt.get_fignums())
        try:
            with course_style():
                return plot(*args, **kwargs)
        except BaseException:
            for number in set(plt.get_fignums()) - before:
                plt.close(number)
            raise

    return wrapper  # type: ignore[return-value]


def _records(data: object, attribute: str, what: str) -> list:
    records = list(getattr(data, attribute, data))
    if not records:
        raise ValueError(f"no {what} to plot: call monitor.record() after loss.backward() first")
    return records


def _valued(records: list, field: str) -> list:
    """The records that have a value of ``field``: the fine statistics (mean and max |g|, the
    zero fraction) exist on the monitor's detail records only, and a gap there is not a NaN.

    Raises:
        ValueError: no record has one.
    """
    valued = [r for r in records if getattr(r, field) is not None]
    if valued:
        return valued
    if field == "update_ratio":
        raise ValueError("no record has an update_ratio: create the monitor as GradientMonitor(model, "
                         "optimizer) and call record() before optimizer.step()")
    raise ValueError(
        f"no record has a value of {field!r}: the monitor takes mean and max |g|, the zero fraction "
        "and the activation statistics on its detail records only (every detail_every-th record(); "
        "detail_every=0 takes none); create it with GradientMonitor(..., detail_every=1) to have them "
        "at every step"
    )


def _axes(ax: Axes | None, figsize: tuple[float, float] | None = None) -> Axes:
    return plt.subplots(figsize=figsize)[1] if ax is None else ax


def layer_colors(layers: Sequence[str]) -> dict[str, tuple]:
    """One colour per layer, input (dark) to output (yellow)."""
    cmap = mpl.colormaps["viridis"]
    return {name: cmap(i / max(len(layers) - 1, 1) * 0.9) for i, name in enumerate(layers)}


@_styled
def plot_gradient_flow(
    history: object, step: int | None = None, ax: Axes | None = None, title: str | None = None,
    field: str = "grad_norm",
) -> Axes:
    """Bars of each layer's gradient norm ``||g||`` at one step, log scale, input to output.

    Args:
        history: the monitor or ``monitor.history``.
        step: the step to show (default: the last recorded one).
        ax: where to draw.
        title: the title (default says which step).
        field: what the bars show: ``"grad_norm"``, ``"grad_max_abs"`` or ``"grad_mean_abs"``.

    A layer with NaN/Inf gradients gets a hatched vermillion bar reaching the top and a
    "NaN/Inf" label.
    """
    records = _valued(_records(history, "history", "gradient records"), field)
    step = max(r.step for r in records) if step is None else step
    rows = [r for r in records if r.step == step]
    if not rows:
        raise ValueError(f"no record of {field} at step {step}; its recorded steps run "
                         f"{records[0].step}..{records[-1].step}")
    ax = _axes(ax)
    names = [r.layer for r in rows]
    norms = np.array([np.nan if getattr(r, field) is None else getattr(r, field) for r in rows], dtype=float)
    finite = np.isfinite(norms) & (norms > 0)
    top = norms[finite].max() * 10 if finite.any() else 1.0
    colors = layer_colors(names)
    x = np.arange(len(rows))
    ax.bar(x[finite], norms[finite], color=[colors[n] for n, f in zip(names, finite) if f])
    for i, r in enumerate(rows):
        if r.nonfinite:
            ax.bar(i, top, color=NONFINITE_COLOR, alpha=0.6, hatch="xx", edgecolor="black")
            ax.text(i, top, f"NaN/Inf\n({r.nonfinite})", ha="center", va="bottom", fontsize=8,
                    color=NONFINITE_COLOR)
        elif norms[i] == 0:
            ax.text(i, 0.02, "0", ha="center", va="bottom", transform=ax.get_xaxis_transform())
    ax.set_yscale("log")
    ax.set_xticks(x, names, rotation=45, ha="right")
    labels = {"grad_norm": "gradient norm ||g||", "grad_max_abs": "max |g|", "grad_mean_abs": "mean |g|"}
    ax.set(xlabel="layer (input → output)", ylabel=f"{labels.get(field, field)} (log scale)",
           title=title or f"Gradient flow at step {step}")
    return ax


@_styled
def plot_gradient_heatmap(
    history: object, field: str = "grad_norm", ax: Axes | None = None, title: str | None = None
) -> Axes:
    """A layer x step map of ``field`` (default the gradient norm), log colour scale.

    Args:
        history: the monitor or ``monitor.history`` (or ``monitor.activations`` with an
            activation field).
        field: a record attribute, e.g. ``"grad_norm"``, ``"grad_max_abs"``, ``"update_ratio"``.
        ax: where to draw.
        title: the title.

    Rows are layers (input at the top), columns recorded steps. White cells are exactly
    zero (no gradient at all); vermillion cells marked with a cross are NaN/Inf (or have no
    record).
    """
    records = _valued(_records(history, "history", "records"), field)
    layers, steps, values = to_matrix(records, field)
    ax = _axes(ax)
    finite = np.isfinite(values)
    positive = values[finite & (values > 0)]
    low, high = (positive.min(), positive.max()) if positive.size else (1e-12, 1.0)
    shown = np.where(finite & (values <= 0), low / 10, values)  # zeros: below the scale
    shown = np.ma.masked_where(~finite, shown)
    cmap = mpl.colormaps["viridis"].with_extremes(bad=NONFINITE_COLOR, under="white")
    edges = np.array(steps, dtype=float)
    edges = np.concatenate([edges - 0.5, [edges[-1] + 0.5]]) if len(steps) == 1 else np.concatenate(
        [[edges[0] - (edges[1] - edges[0]) / 2], (edges[1:] + edges[:-1]) / 2,
         [edges[-1] + (edges[-1] - edges[-2]) / 2]])
    mesh = ax.pcolormesh(edges, np.arange(len(layers) + 1) - 0.5, shown,
                         norm=LogNorm(low, max(high, low * 1.001)), cmap=cmap)
    bad_rows, bad_columns = np.nonzero(~finite)
    if bad_rows.size:  # a second cue besides the colour
        ax.scatter(np.asarray(steps, dtype=float)[bad_columns], bad_rows, marker="x", color="black",
                   s=16, linewidths=1)
    ax.set_yticks(np.arange(len(layers)), layers)
    ax.invert_yaxis()
    ax.grid(False)
    label = field.replace("_", " ")
    ax.figure.colorbar(mesh, ax=ax, extend="min" if (finite & (values <= 0)).any() else "neither",
                       label=f"{label} (log scale)")
    ax.set(xlabel="training step", ylabel="layer", title=title or f"{label} per layer and step")
    return ax


@_styled
def plot_norms_over_time(
    history: object, field: str = "grad_norm", ax: Axes | None = None, title: str | None = None
) -> Axes:
    """One line per layer of ``field`` over training steps, log scale."""
    records = _valued(_records(history, "history", "records"), field)
    layers, steps, values = to_matrix(records, field)
    ax = _axes(ax)
    for name, row in zip(layers, values):
        ax.plot(steps, row, color=layer_colors(layers)[name], label=name)
    ax.set_yscale("log")
    label = field.replace("_", " ")
    ax.set(xlabel="training step", ylabel=f"{label} (log scale)", title=title or f"{label} over training")
    ax.legend(fontsize=7, ncol=2 if len(layers) > 6 else 1)
    return ax


@_styled
def plot_histograms(
    histograms: object, layer: str, kind: str = "gradient", ax: Axes | None = None,
    title: str | None = None,
) -> Axes:
    """How one layer's distribution moves over training: steps left to right, bins bottom
    to top, colour the fraction of entries in each bin.

    Args:
        histograms: the monitor or ``monitor.histograms`` (record with ``histogram_every``).
        layer: the layer's name.
        kind: ``"gradient"`` (bins of log10 |g|) or ``"activation"`` (bins of values).
        ax: where to draw.
        title: the title.
    """
    records = [h for h in _records(histograms, "histograms", "histograms")
               if h.layer == layer and h.kind == kind]
    if not records:
        raise ValueError(f"no {kind} histograms of layer {layer!r}; pass histogram_every=N to "
                         "GradientMonitor and check the name against monitor.layers")
    ax = _axes(ax)
    counts = np.stack([h.counts.numpy() for h in records], 1)  # [bins, steps]
    fractions = counts / np.maximum(counts.sum(0, keepdims=True), 1)
    steps = np.array([h.step for h in records], dtype=float)
    half = (steps[1] - steps[0]) / 2 if len(steps) > 1 else 0.5
    x = np.concatenate([steps - half, [steps[-1] + half]])
    mesh = ax.pcolormesh(x, records[0].edges.numpy(), np.ma.masked_equal(fractions, 0), cmap="viridis")
    ax.grid(False)
    ax.figure.colorbar(mesh, ax=ax, label="fraction of entries")
    ylabel = "log10 |gradient entry|" if kind == "gradient" else "activation value"
    ax.set(xlabel="training step", ylabel=ylabel, title=title or f"{kind.capitalize()} histogram of {layer}")
    return ax


@_styled
def plot_update_ratio(
    history: object, ax: Axes | None = None, reference: float = UPDATE_RATIO_RULE,
    title: str | None = None,
) -> Axes:
    """Update-to-data ratio ``||W_after - W_before|| / ||W||`` per layer over steps, log
    scale, with the rule-of-thumb line at ``reference`` (1e-3): far below, the layer
    barely learns; far above, its weights are being rewritten each step.

    Needs ``GradientMonitor(model, optimizer)``.
    """
    records = [r for r in _records(history, "history", "gradient records") if r.update_ratio is not None]
    if not records:
        raise ValueError("no update ratios recorded: pass the optimizer, "
                         "GradientMonitor(model, optimizer), and call record() before optimizer.step()")
    layers, steps, values = to_matrix(records, "update_ratio")
    ax = _axes(ax)
    colors = layer_colors(layers)
    for name, row in zip(layers, values):
        ax.plot(steps, row, color=colors[name], label=name)
    ax.axhline(reference, color="black", linestyle="--", linewidth=1, label=f"rule of thumb {reference:g}")
    ax.set_yscale("log")
    ax.set(xlabel="training step", ylabel="||ΔW|| / ||W|| per step (log scale)",
           title=title or "Update-to-data ratio")
    ax.legend(fontsize=7, ncol=2 if len(layers) > 6 else 1)
    return ax


_FRACTIONS = {
    "dead_fraction": ("Dead ReLU units", "fraction of units dead", "ReLU"),
    "saturated_fraction": ("Saturated tanh / sigmoid outputs", "fraction of outputs saturated",
                           "tanh or sigmoid"),
}


@_styled
def plot_activation_fraction(
    activations: object, field: str = "dead_fraction", ax: Axes | None = None, title: str | None = None
) -> Axes:
    """One line per layer over training steps of ``field``: ``"dead_fraction"`` (ReLU
    units that are zero for the whole batch) or ``"saturated_fraction"`` (tanh/sigmoid
    outputs on the flat part of the curve, |tanh| >= 0.99).

    Args:
        activations: the monitor or ``monitor.activations``.
        field: ``"dead_fraction"`` or ``"saturated_fraction"``.
        ax: where to draw.
        title: the title.
    """
    if field not in _FRACTIONS:
        raise ValueError(f"field must be one of {sorted(_FRACTIONS)}, got {field!r}")
    name, ylabel, kind = _FRACTIONS[field]
    records = [r for r in _records(activations, "activations", "activation records")
               if getattr(r, field) is not None]
    ax = _axes(ax)
    if records:
        layers, steps, values = to_matrix(records, field)
        colors = layer_colors(layers)
        for layer, row in zip(layers, values):
            ax.plot(steps, row, color=colors[layer], label=layer)
        ax.legend(fontsize=7)
    else:
        ax.text(0.5, 0.5, f"no {kind} layers in this model", ha="center", va="center",
                transform=ax.transAxes, color="gray")
    ax.set(xlabel="training step", ylabel=ylabel, title=title or name, ylim=(-0.03, 1.03))
    return ax


@_styled
def plot_activation_health(activations: object, title: str | None = None) -> Figure:
    """Dead ReLU units (left) and saturated tanh/sigmoid outputs (right) over training,
    one line per layer (see ``plot_activation_fraction``). Returns the figure."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4), sharey=True)
    for ax, field in zip(axes, _FRACTIONS):
        plot_activation_fraction(activations, field, ax=ax)
    if title:
        fig.suptitle(title)
    return fig


@_styled
def plot_dashboard(monitor: object, title: str | None = None) -> Figure:
    """Four panels of one monitor: gradient flow at the last step, the layer x step heat
    map, update ratios (gradient norms over time without an optimizer), and dead ReLU
    units (saturated outputs when the model has no ReLU). Returns the figure.

    Raises:
        TypeError: ``monitor`` is not the monitor itself (``monitor.history`` is a list of
            gradient records only; the dashboard also needs ``monitor.activations``).
    """
    if not hasattr(monitor, "history") or not hasattr(monitor, "activations"):
        raise TypeError(
            f"plot_dashboard needs the GradientMonitor itself (it reads monitor.history and "
            f"monitor.activations), got {type(monitor).__name__}: pass `monitor`, not "
            f"`monitor.history`; for a list of records use plot_gradient_flow or "
            f"plot_gradient_heatmap")
    _records(monitor, "history", "gradient records")
    fig, axes = plt.subplots(2, 2, figsize=(12, 7))
    plot_gradient_flow(monitor, ax=axes[0, 0])
    plot_gradient_heatmap(monitor, ax=axes[0, 1])
    if any(r.update_ratio is not None for r in monitor.history):
        plot_update_ratio(monitor, ax=axes[1, 0])
    else:
        plot_norms_over_time(monitor, ax=axes[1, 0])
    activations = monitor.activations
    if activations:
        has_relu = any(r.dead_fraction is not None for r in activations)
        plot_activation_fraction(activations, "dead_fraction" if has_relu else "saturated_fraction",
                                 ax=axes[1, 1])
    else:
        axes[1, 1].set_visible(False)
    if title:
        fig.suptitle(title)
    return fig


# --------------------------------------------------------------------------- explorers
# The widgets' figures: built once, redrawn on every control change, rendered to PNG.


def explorer_figure(figsize: tuple[float, float] = (8, 3.6)) -> tuple[Figure, Axes]:
    """A figure with one log-y axes for an explorer, fast to redraw.

    Plot on it with ``plot`` (``semilogy`` would reset the tick formatter). It renders in well
    under 100 ms: a fixed layout (no tight/constrained layout pass, which draws the figure
    twice) and plain-text tick labels ("1e-05": no mathtext to parse on every draw). The
    figure is not registered with pyplot, so it never shows up by itself in a notebook.
    """
    from matplotlib.ticker import LogFormatter, MaxNLocator, NullFormatter

    with course_style():
        figure = Figure(figsize=figsize, layout="none")
        figure.subplots_adjust(left=0.1, right=0.97, bottom=0.14, top=0.9)
        axes = figure.subplots()
    axes.set_yscale("log")
    axes.yaxis.set_major_formatter(LogFormatter(labelOnlyBase=True))
    axes.yaxis.set_minor_formatter(NullFormatter())
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))  # layers and time steps
    return figure, axes


def redraw_lines(axes: Axes, data: dict, title: str) -> None:
    """Give each line in ``data`` (``{Line2D: (x, y)}``) its new points, rescale ``axes``
    to them and set the title: what an explorer's ``draw()`` does on every change."""
    for line, (x, y) in data.items():
        line.set_data(x, y)
    axes.relim()
    axes.autoscale_view()
    axes.set_title(title, fontsize=10)
