"""ipywidgets explorers for live lessons: the user interface and nothing else.

Each explorer is one small class: it owns its controls (``ipywidgets``), a matplotlib
``Figure`` shown as PNG bytes in an ``Image`` widget (see ``figure_png``: no ``display``
call, so the cell's only output is the widget, in a live kernel and under nbval), and the
data it last drew. ``compute()`` measures with ``gradflow_lessons.probes``; ``draw()``
draws with ``gradflow_lessons.plots``. Every callback is a plain method, so a test can set
a control's ``.value`` and check the redrawn data without a browser.

    explorer = SkipConnectionExplorer(inputs, targets)
    explorer.widget          # display this in a notebook
    explorer.depth.value = 40  # redraws, as moving the slider does

The figure's alt text (what a screen reader says instead of the picture) is the explorer's
``alt`` attribute, rewritten with the numbers on every redraw, and the PNG's own
``Description`` text chunk, which the course site uses as the picture's alt.
``ipywidgets.Image`` has no ``alt``, and setting its ``tooltip`` makes JupyterLab's widget
manager (jupyterlab_widgets 3.0) fail to draw the image at all, so neither is used.
"""

from __future__ import annotations

import io
import zlib

import ipywidgets as widgets
import matplotlib as mpl
import torch
from matplotlib.figure import Figure

from .models import ACTIVATIONS, INITS
from .plots import CATEGORY_STYLES, explorer_figure, redraw_lines
from .probes import (  # re-exported: lessons and tests import them from here
    GradientProfile,
    gradient_profile,
    mlp_gradient_norms,
    recurrence_gradient_norms,
)
from .skips import CONNECTIONS

__all__ = [
    "COLORS", "GradientFlowExplorer", "RecurrenceExplorer", "SkipConnectionExplorer", "figure_png",
    "mlp_gradient_norms", "recurrence_gradient_norms",
]

# plain, residual, dense: Okabe-Ito colours, and a marker and line style each as well
LINE_STYLES = {c: CATEGORY_STYLES[i] for i, c in enumerate(("residual", "plain", "dense"))}
COLORS = {c: style["color"] for c, style in LINE_STYLES.items()}


def figure_png(figure: Figure, dpi: int = 100, alt: str | None = None) -> bytes:
    """``figure`` rendered as PNG bytes, the value of an ``ipywidgets.Image``.

    Unlike ``display(figure)`` inside an ``Output`` widget, setting an ``Image``'s value never
    writes to the cell's own outputs, so a kernel without a widget front end (nbval, a test)
    records exactly what a browser shows: the widget view.

    Args:
        figure: the figure to render.
        dpi: resolution.
        alt: the figure's alt text, one sentence saying what it shows (and its numbers),
            stored in the PNG as its ``Description`` (``png_description`` reads it back).
    """
    buffer = io.BytesIO()
    # savefig restores a figure without a layout engine by asking rcParams again, so under the
    # course style (constrained layout) a fixed-layout figure would turn constrained after its
    # first render, and every later render would pay for the layout pass.
    with mpl.rc_context({"figure.constrained_layout.use": False, "figure.autolayout": False}):
        figure.savefig(buffer, format="png", dpi=dpi, metadata={"Description": alt} if alt else None)
    return buffer.getvalue()


def png_description(png: bytes) -> str | None:
    """The ``Description`` text chunk of PNG bytes (``figure_png``'s ``alt``), or None."""
    png = bytes(png)  # an Image widget's value may be a memoryview
    position = 8  # after the signature; then chunks: length, type, data, CRC
    while position + 8 <= len(png):
        length = int.from_bytes(png[position:position + 4], "big")
        kind, data = png[position + 4:position + 8], png[position + 8:position + 8 + length]
        if kind == b"tEXt" and data.startswith(b"Description\0"):
            return data.split(b"\0", 1)[1].decode("latin-1")
        if kind == b"iTXt" and data.startswith(b"Description\0"):  # text beyond Latin-1: UTF-8
            compressed, rest = data[12], data[14:]
            text = rest.split(b"\0", 2)[2]  # after the language tag and the translated keyword
            return (zlib.decompress(text) if compressed else text).decode("utf-8")
        position += 12 + length
    return None


class SkipConnectionExplorer:
    """Plain, residual and dense MLPs side by side as depth changes (lesson 06).

    For the chosen depth, activation and initialisation it builds the three networks with
    the same seed and plots the gradient norm of every layer's weights, stem to head, on a
    log scale: the plain network's input end fades geometrically with depth, the residual
    and dense ones keep it.

    Args:
        inputs: ``[N, D]`` batch the gradients are taken on.
        targets: ``[N]`` class labels.
        depth: initial number of hidden layers.
        width: units per layer.
        max_depth: the depth slider's maximum.
        activation: initial activation (a name in ``models.ACTIVATIONS``).
        init: initial initialisation (a name in ``models.INITS``).

    Attributes:
        depth, activation, init: the controls (``IntSlider``, ``Dropdown``, ``Dropdown``).
        profiles: the last ``GradientProfile`` of each connection, as drawn.
        lines: the matplotlib line of each connection.
        image: the ``Image`` widget showing the figure (``figure_png``).
        alt: the figure's alt text, as last drawn (also in the PNG, ``png_description``).
        widget: the ``VBox`` to display.
    """

    def __init__(
        self,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        depth: int = 20,
        width: int = 32,
        max_depth: int = 60,
        activation: str = "relu",
        init: str = "default",
    ) -> None:
        self.inputs, self.targets, self.width = inputs, targets, width
        self.depth = widgets.IntSlider(value=depth, min=1, max=max_depth, description="depth",
                                       continuous_update=False)
        self.activation = widgets.Dropdown(options=sorted(ACTIVATIONS), value=activation,
                                           description="activation")
        self.init = widgets.Dropdown(options=list(INITS), value=init, description="init")
        self.image = widgets.Image(format="png")
        self.figure, self.axes = explorer_figure()
        self.lines = {c: self.axes.plot([], [], ms=4, label=c, **LINE_STYLES[c])[0]
                      for c in CONNECTIONS}
        self.axes.set(xlabel="layer (0 = stem, last = head)",
                      ylabel=r"$\|\partial L/\partial W\|_F$ (log scale)")
        self.axes.legend(loc="lower right")
        self.profiles: dict[str, GradientProfile] = {}
        for control in (self.depth, self.activation, self.init):
            control.observe(self.on_change, names="value")
        self.widget = widgets.VBox(
            [widgets.HBox([self.depth, self.activation, self.init]), self.image]
        )
        self.update()

    def on_change(self, change: dict | None = None) -> None:
        """The callback every control calls: recompute and redraw."""
        self.update()

    def compute(self) -> dict[str, GradientProfile]:
        """The three gradient profiles for the controls' current values."""
        return {
            c: gradient_profile(c, self.depth.value, self.inputs, self.targets, width=self.width,
                                activation=self.activation.value, init=self.init.value)
            for c in CONNECTIONS
        }

    def update(self) -> None:
        """Recompute the profiles, then redraw."""
        self.profiles = self.compute()
        self.draw()

    def draw(self) -> None:
        """Redraw the lines and title from ``profiles`` and update the image."""
        firsts = ", ".join(f"{c} {p.first_layer:.1e}" for c, p in self.profiles.items())
        redraw_lines(self.axes, {self.lines[c]: (range(len(p.grad_norms)), p.grad_norms)
                                 for c, p in self.profiles.items()},
                     f"depth {self.depth.value}: gradient at the stem: {firsts}")
        alt = (f"Gradient norm of every layer, stem to head, log scale, for plain, residual and "
               f"dense networks of depth {self.depth.value}; at the stem: {firsts}.")
        self.alt = alt
        self.image.value = figure_png(self.figure, alt=alt)


# --------------------------------------------------------------------------- lessons 02 and 03
# Per-layer gradient norms of a plain MLP (depth, width, activation, init, gain), and the
# backward signal of a recurrence h_t = phi(W h_{t-1}) whose W has a chosen spectral radius.


class GradientFlowExplorer:
    """Per-layer gradient norms of one MLP as depth, width, activation, init and gain change
    (lesson 02).

    Draws ``||dL/dW_l||_F`` for every linear layer, input to output, on a log scale, and puts
    the ratio first / last layer in the title: a sigmoid network's curve falls by about a
    factor 4 or more per layer; ReLU with Kaiming init stays level.

    Args:
        inputs: ``[N, D]`` batch the gradients are taken on.
        targets: ``[N]`` class labels.
        depth, width, activation, init, gain: the initial values of the controls.
        max_depth: the depth slider's maximum.

    Attributes:
        depth, width, activation, init, gain: the controls.
        norms: the gradient norms last drawn, input layer first.
        line: the matplotlib line; ``image``: the ``Image`` showing the figure (``figure_png``);
        ``alt``: its alt text; ``widget``: the ``VBox`` to display.
    """

    WIDTHS = (16, 32, 64, 128)  # 256 at depth 60 costs ~300 ms per update on 2 cores

    def __init__(
        self,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        depth: int = 20,
        width: int = 64,
        activation: str = "sigmoid",
        init: str = "xavier",
        gain: float = 1.0,
        max_depth: int = 60,
    ) -> None:
        self.inputs, self.targets = inputs, targets
        self.depth = widgets.IntSlider(value=depth, min=2, max=max_depth, description="depth",
                                       continuous_update=False)
        self.width = widgets.Dropdown(options=sorted({*self.WIDTHS, width}), value=width,
                                      description="width")
        self.activation = widgets.Dropdown(options=sorted(ACTIVATIONS), value=activation,
                                           description="activation")
        self.init = widgets.Dropdown(options=list(INITS), value=init, description="init")
        self.gain = widgets.FloatSlider(value=gain, min=0.25, max=3.0, step=0.05, description="gain",
                                        continuous_update=False)
        self.image = widgets.Image(format="png")
        self.figure, self.axes = explorer_figure()
        (self.line,) = self.axes.plot([], [], ms=3, **CATEGORY_STYLES[0])
        self.axes.set(xlabel="linear layer l (1 = input layer)",
                      ylabel=r"$\|\partial L/\partial W_l\|_F$ (log scale)")
        self.norms: list[float] = []
        controls = (self.depth, self.width, self.activation, self.init, self.gain)
        for control in controls:
            control.observe(self.on_change, names="value")
        self.widget = widgets.VBox([widgets.HBox(controls[:3]), widgets.HBox(controls[3:]), self.image])
        self.update()

    def on_change(self, change: dict | None = None) -> None:
        """The callback every control calls: recompute and redraw."""
        self.update()

    def update(self) -> None:
        """Measure the gradient norms for the current controls, then redraw."""
        self.norms = self.compute()
        self.draw()

    def compute(self) -> list[float]:
        """``probes.mlp_gradient_norms`` for the controls' current values."""
        return mlp_gradient_norms(
            self.inputs, self.targets, self.depth.value, self.width.value,
            self.activation.value, self.init.value, self.gain.value,
        )

    def draw(self) -> None:
        """Redraw the line and title from ``norms`` and update the image."""
        ratio = self.norms[0] / self.norms[-1] if self.norms[-1] > 0 else float("nan")
        setting = (f"{self.activation.value}, {self.init.value} init (gain {self.gain.value:g}), "
                   f"depth {self.depth.value}, width {self.width.value}")
        redraw_lines(self.axes, {self.line: (range(1, len(self.norms) + 1), self.norms)},
                     f"{setting}: first / last layer = {ratio:.1e}")
        alt = (f"Gradient norm of each linear layer, input to output, log scale: {setting}; "
               f"the first layer gets {ratio:.1e} times the last layer's gradient.")
        self.alt = alt
        self.image.value = figure_png(self.figure, alt=alt)


class RecurrenceExplorer:
    """The backward signal of ``h_t = phi(W h_{t-1})`` as the spectral radius of ``W`` changes
    (lesson 03).

    Draws ``||dL/dh_t||`` against the time step ``t`` on a log scale, with the prediction
    ``radius^(T-t)`` (scaled to match at ``t = T``) dashed: below radius 1 the gradient from
    the end never reaches the start, above 1 it explodes.

    Args:
        radius, steps, nonlinearity: the initial values of the controls.
        width: size of ``h_t``.

    Attributes:
        radius, steps, nonlinearity: the controls.
        norms: ``||dL/dh_t||`` last drawn, ``t = 0 .. T``.
        line, prediction: the matplotlib lines; ``image``: the ``Image`` showing the figure;
        ``alt``: its alt text; ``widget``: the ``VBox`` to display.
    """

    def __init__(self, radius: float = 1.1, steps: int = 50, nonlinearity: str = "linear",
                 width: int = 32) -> None:
        self.hidden_size = width
        self.radius = widgets.FloatSlider(value=radius, min=0.5, max=1.5, step=0.05,
                                          description="spectral radius", continuous_update=False,
                                          style={"description_width": "initial"})
        self.steps = widgets.IntSlider(value=steps, min=5, max=200, description="steps T",
                                       continuous_update=False)
        self.nonlinearity = widgets.Dropdown(options=["linear", "tanh", "relu"], value=nonlinearity,
                                             description="phi")
        self.image = widgets.Image(format="png")
        self.figure, self.axes = explorer_figure()
        (self.line,) = self.axes.plot([], [], color=CATEGORY_STYLES[0]["color"], label="measured")
        (self.prediction,) = self.axes.plot([], [], "k--", lw=1, label="radius^(T - t)")
        self.axes.set(xlabel="time step t", ylabel=r"$\|\partial L/\partial h_t\|$ (log scale)")
        self.axes.legend(loc="best")
        self.norms: list[float] = []
        controls = (self.radius, self.steps, self.nonlinearity)
        for control in controls:
            control.observe(self.on_change, names="value")
        self.widget = widgets.VBox([widgets.HBox(controls), self.image])
        self.update()

    def on_change(self, change: dict | None = None) -> None:
        """The callback every control calls: recompute and redraw."""
        self.update()

    def update(self) -> None:
        """Measure the backward signal for the current controls, then redraw."""
        self.norms = self.compute()
        self.draw()

    def compute(self) -> list[float]:
        """``probes.recurrence_gradient_norms`` for the controls' current values."""
        return recurrence_gradient_norms(self.radius.value, self.steps.value, self.hidden_size,
                                         self.nonlinearity.value)

    def draw(self) -> None:
        """Redraw the measured and predicted lines and the title, and update the image."""
        radius, steps = self.radius.value, self.steps.value
        ratio = self.norms[0] / self.norms[-1]
        setting = f"{self.nonlinearity.value} recurrence, spectral radius {radius:.2f}, T = {steps}"
        redraw_lines(self.axes, {
            self.line: (range(steps + 1), self.norms),
            self.prediction: (range(steps + 1),
                              [self.norms[-1] * radius ** (steps - t) for t in range(steps + 1)]),
        }, f"{setting}: ||dL/dh_0|| / ||dL/dh_T|| = {ratio:.1e}")
        alt = (f"Norm of dL/dh_t against time step t, log scale, measured (solid) and predicted "
               f"radius^(T - t) (dashed): {setting}; dL/dh_0 is {ratio:.1e} times dL/dh_T.")
        self.alt = alt
        self.image.value = figure_png(self.figure, alt=alt)
